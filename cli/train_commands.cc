// Training commands: thin shells over the train.* ops (runtime/messages/train.h, docs/PROTOCOL.md).
//
//   cairn train submit JOB.yaml [--set KEY=VALUE]... [--watch]
//   cairn train status JOB [--watch]
//   cairn train list [--state STATE]
//   cairn train cancel JOB
//   cairn train logs JOB [--follow] [--since-step N]
//   cairn train demo-data --out DIR            (local: the demo corpus and a tokenizer for it)
//
// Watching (submit --watch, status --watch) follows train.watch: on a terminal, one progress line
// redrawn in place (step/total, bar, loss, eval loss, tokens/s, ETA); otherwise one plain line per
// logging step. It ends with the job: exit 0 when it succeeded, 1 when it failed or was
// cancelled, 4 when a guard stopped it (early stopping, loss watchdog), with the reason printed.
// Ctrl-C detaches (exit 130) and leaves the job running.
//
// With --json every command prints JSON on stdout, the wire's field names key for key: one object
// for submit, status, list and cancel; one object per line for streams (submit --watch prints the
// submit reply, then each JobStatus; logs prints each TrainLogEvent).
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "model/data.h"
#include "model/detail/files.h"
#include "model/tokenizer.h"
#include "runtime/messages/registry.h"
#include "runtime/messages/train.h"

namespace cairn::cli {
namespace {

using nlohmann::json;

// Exit codes of the watching commands, beside kExitOk / kExitError / kExitUnavailable.
constexpr int kExitJobStopped = 4;  // a guard (early stopping, loss watchdog) stopped the job
constexpr int kExitDetached = 130;  // Ctrl-C: detached, the job goes on (128 + SIGINT)

template <class T>
json to_json(const T& value) {
  return json::from_msgpack(wire::encode(value));
}

// ---- formatting ----

std::string fixed(double value, int decimals) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

std::string percent(int64_t step, int64_t total) {
  return total > 0 ? fixed(100.0 * static_cast<double>(step) / static_cast<double>(total), 0) + "%" : "-";
}

std::string checkpoint_text(const msg::CheckpointRef& c) {
  return c.model + " version " + c.version + " (step " + std::to_string(c.step) + ")";
}

// Columns of the terminal on stdout; 0 when unknown.
int terminal_columns() {
  winsize size{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0) return size.ws_col;
  return 0;
}

// ---- Ctrl-C ----

volatile std::sig_atomic_t g_interrupted = 0;

void on_sigint(int) { g_interrupted = 1; }

// Catches SIGINT while it lives (so a stream can detach cleanly) and restores the previous
// handler after.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted = 0;
    struct sigaction action {};
    action.sa_handler = on_sigint;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_);
  }
  ~InterruptGuard() { sigaction(SIGINT, &previous_, nullptr); }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  bool interrupted() const { return g_interrupted != 0; }

 private:
  struct sigaction previous_ {};
};

// ---- streams ----

// How a stream pumped by pump_stream ended.
struct StreamEnd {
  Status status;             // the stream's final status (ok: it ended normally)
  bool interrupted = false;  // Ctrl-C: the caller detaches
};

// Subscribes to `op` and hands each item, decoded as Item, to `on_item` on this thread (the
// client's callbacks run on its I/O thread and must not block, so items are queued for this one).
// Returns when the stream ends or on Ctrl-C. An item that does not decode ends the stream with
// its error.
template <class Item, class Request, class OnItem>
StreamEnd pump_stream(Client& client, std::string_view op, const Request& request, OnItem on_item) {
  struct Shared {
    std::mutex mutex;  // guards everything below
    std::condition_variable changed;
    std::deque<Item> items;
    std::optional<Status> end;
  };
  auto shared = std::make_shared<Shared>();
  InterruptGuard interrupt;
  auto subscription = client.subscribe(
      op, wire::encode(request),
      [shared](const std::string& body) {
        auto item = wire::decode_bytes<Item>(body);
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (item.ok()) {
          shared->items.push_back(std::move(item).value());
        } else if (!shared->end) {
          shared->end = item.status().with_context("a stream item");
        }
        shared->changed.notify_all();
      },
      [shared](const Status& status) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        if (!shared->end) shared->end = status;
        shared->changed.notify_all();
      });
  while (true) {
    std::deque<Item> items;
    std::optional<Status> end;
    {
      std::unique_lock<std::mutex> lock(shared->mutex);
      // Signals do not wake a condition variable: poll the flag a few times a second.
      shared->changed.wait_for(lock, std::chrono::milliseconds(100),
                               [&] { return !shared->items.empty() || shared->end.has_value(); });
      items.swap(shared->items);
      end = shared->end;
    }
    for (auto& item : items) on_item(item);
    if (end) return {*end, false};
    if (interrupt.interrupted()) return {Status(), true};
  }
}

// ---- the progress view ----

// Renders a job's statuses as they arrive: a line redrawn in place on a terminal, plain lines
// otherwise, JSON lines with --json. Used on one thread.
class ProgressView {
 public:
  ProgressView(bool json, bool tty) : json_(json), tty_(tty) {}

  void update(const msg::JobStatus& s) {
    if (json_) {
      std::cout << to_json(s).dump() << std::endl;
      return;
    }
    if (s.state != last_.state) {
      note("job " + s.job_id + ": " + s.state + (s.reason.empty() ? "" : ": " + s.reason));
    }
    if (!s.last_checkpoint.model.empty() && (s.last_checkpoint.model != last_.last_checkpoint.model ||
                                             s.last_checkpoint.version != last_.last_checkpoint.version)) {
      note("checkpoint: " + checkpoint_text(s.last_checkpoint));
    }
    if (s.eval_loss != last_.eval_loss && s.eval_loss > 0) {
      // The status's step is that of the last logging step, not necessarily the evaluation's.
      note("eval loss " + fixed(s.eval_loss, 4) + " (perplexity " + fixed(std::exp(s.eval_loss), 1) + ")");
    }
    if (tty_) {
      draw(s);
    } else if (s.step != last_.step && s.step > 0) {
      std::cout << progress_line(s, false) << std::endl;
    }
    last_ = s;
  }

  // Ends the in-place line so that what follows starts on a line of its own.
  void end_line() {
    if (tty_ && drawn_) std::cout << "\n" << std::flush;
    drawn_ = false;
  }

 private:
  // A line of its own above the progress line.
  void note(const std::string& text) {
    if (tty_ && drawn_) std::cout << "\r\033[K";
    std::cout << text << std::endl;
    drawn_ = false;
  }

  void draw(const msg::JobStatus& s) {
    const int columns = terminal_columns();
    std::string line = progress_line(s, true);
    // The bar is multi-byte; count it as its display width so the line never wraps (a wrapped
    // line cannot be redrawn with \r).
    if (columns > 0 && display_width(line) >= static_cast<size_t>(columns)) line = progress_line(s, false);
    if (columns > 0 && display_width(line) >= static_cast<size_t>(columns)) line.resize(static_cast<size_t>(columns - 1));
    std::cout << "\r\033[K" << line << std::flush;
    drawn_ = true;
  }

  static size_t display_width(const std::string& text) {
    size_t width = 0;
    for (unsigned char c : text) width += (c & 0xC0) != 0x80 ? 1 : 0;  // count UTF-8 lead bytes
    return width;
  }

  static std::string progress_line(const msg::JobStatus& s, bool with_bar) {
    std::string line = "step " + std::to_string(s.step) + "/" + (s.total_steps > 0 ? std::to_string(s.total_steps) : "?");
    if (with_bar && s.total_steps > 0) {
      constexpr int kBarWidth = 24;
      const int filled = static_cast<int>(kBarWidth * std::clamp<double>(static_cast<double>(s.step) /
                                                                             static_cast<double>(s.total_steps), 0, 1));
      line += " [";
      for (int i = 0; i < kBarWidth; ++i) line += i < filled ? "█" : "·";
      line += "]";
    }
    line += " " + percent(s.step, s.total_steps);
    if (s.step > 0) line += "  loss " + fixed(s.loss, 4);
    if (s.eval_loss > 0) line += "  eval " + fixed(s.eval_loss, 4);
    if (s.tokens_per_s > 0) line += "  " + fixed(s.tokens_per_s, 0) + " tok/s";
    if (s.eta_s > 0 && !msg::job_state_is_final(s.state)) line += "  ETA " + format_duration(s.eta_s, 0);
    if (s.state != msg::kJobRunning) line += "  (" + s.state + ")";
    return line;
  }

  const bool json_;
  const bool tty_;
  bool drawn_ = false;   // the progress line is on screen, without a newline after it
  msg::JobStatus last_;  // the previous update, to print what changed
};

// The exit code of a job in a final state.
int job_exit_code(const msg::JobStatus& s) {
  if (s.state == msg::kJobSucceeded) return kExitOk;
  if (s.state == msg::kJobStopped) return kExitJobStopped;
  return kExitError;
}

// The last lines of a watch: what the job ended with.
void print_outcome(const msg::JobStatus& s) {
  const double seconds = s.updated_ms > s.started_ms ? static_cast<double>(s.updated_ms - s.started_ms) / 1000 : 0;
  std::string text = "job " + s.job_id + " " + s.state + " at step " + std::to_string(s.step) + "/" +
                     std::to_string(s.total_steps) + " after " + format_duration(seconds, 0);
  if (s.step > 0) text += ", loss " + fixed(s.loss, 4);
  if (s.eval_loss > 0) text += ", eval loss " + fixed(s.eval_loss, 4);
  if (!s.reason.empty()) text += ": " + s.reason;
  (s.state == msg::kJobSucceeded ? std::cout : std::cerr) << text << "\n";
  if (!s.last_checkpoint.model.empty()) {
    std::cout << "model " << s.last_checkpoint.model << " version " << s.last_checkpoint.version << " (step "
              << s.last_checkpoint.step << "): cairn models download " << s.last_checkpoint.model << "/"
              << s.last_checkpoint.version << " --to DIR\n";
  }
  if (!s.run_id.empty()) std::cout << "run " << s.run_id << ": cairn runs metrics " << s.run_id << " loss\n";
}

// Follows train.watch until the job is final; returns the exit code (see the top of the file).
int watch_job(Client& client, const ConnectArgs& args, const std::string& command, const std::string& job_id) {
  ProgressView view(args.json, !args.json && isatty(STDOUT_FILENO) == 1);
  StreamEnd end = pump_stream<msg::JobStatus>(client, msg::kTrainWatch, msg::TrainJobRequest{job_id},
                                              [&](const msg::JobStatus& s) { view.update(s); });
  view.end_line();
  if (end.interrupted) {
    if (!args.json) {
      std::cerr << "detached: job " << job_id << " keeps running (cairn train status " << job_id
                << " --watch to follow it again, cairn train cancel " << job_id << " to stop it)\n";
    }
    return kExitDetached;
  }
  if (!end.status.ok()) return report_error(args, command, end.status);
  // The stream's final reply (the final JobStatus) is not handed to subscribers by Client::
  // subscribe, so ask for it.
  auto final_status = client.call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{job_id}, timeout_of(args));
  if (!final_status.ok()) return report_error(args, command, final_status.status());
  if (args.json) {
    std::cout << to_json(*final_status).dump() << std::endl;
  } else {
    print_outcome(*final_status);
  }
  if (!msg::job_state_is_final(final_status->state)) {
    return report_error(args, command, Status(Code::internal, "the watch of job " + job_id + " ended while it is " +
                                                                  final_status->state));
  }
  return job_exit_code(*final_status);
}

// Connects; on failure reports it and returns nullptr with *exit_code set.
std::unique_ptr<Client> connect_or_report(const ConnectArgs& args, const std::string& command, int* exit_code) {
  auto client = open_client(args);
  if (!client.ok()) {
    *exit_code = report_error(args, command, client.status());
    return nullptr;
  }
  return std::move(client).value();
}

// ---- commands ----

struct SubmitArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  bool watch = false;
};

int cmd_submit(const ConnectArgs& args, const SubmitArgs& submit) {
  const std::string command = "train submit";
  auto yaml = detail::read_file(submit.config_file);
  if (!yaml.ok()) return report_error(args, command, yaml.status());
  for (const auto& o : submit.overrides) {
    if (o.find('=') == std::string::npos || o.front() == '=') {
      return report_error(args, command, Status(Code::invalid_argument, "--set: expected KEY=VALUE, got \"" + o + "\""));
    }
  }
  int code = kExitOk;
  auto client = connect_or_report(args, command, &code);
  if (!client) return code;

  msg::TrainSubmitRequest request;
  request.config_yaml = std::move(yaml).value();
  // The node resolves the config's relative paths (datasets, tokenizer) against the directory of
  // config_name, so send the file's absolute path: a node on this machine then finds them wherever
  // it was started.
  std::error_code ec;
  request.config_name = std::filesystem::absolute(submit.config_file, ec).lexically_normal().string();
  if (ec) request.config_name = submit.config_file;
  request.overrides = submit.overrides;
  auto reply = client->call_as<msg::TrainSubmitReply>(msg::kTrainSubmit, request, timeout_of(args));
  if (!reply.ok()) return report_error(args, command, reply.status());

  if (args.json) {
    std::cout << to_json(*reply).dump() << std::endl;
  } else {
    for (const auto& w : reply->warnings) std::cerr << "warning: " << w << "\n";
    std::cout << "submitted job " << reply->job_id << " (run " << reply->run_id << ")\n";
    if (submit.watch) std::cout << "watching it; Ctrl-C detaches and leaves the job running\n";
  }
  if (!submit.watch) return kExitOk;
  return watch_job(*client, args, command, reply->job_id);
}

// The loss curve of the job's run from the registry, or "" when it has none (or no registry).
std::string loss_sparkline(Client& client, const ConnectArgs& args, const std::string& run_id) {
  if (run_id.empty()) return "";
  msg::GetMetricHistoryRequest request;
  request.run_id = run_id;
  request.metric_key = "loss";
  request.max_results = 1000;
  auto history = client.call_as<msg::MetricHistoryReply>(msg::kGetMetricHistory, request, timeout_of(args));
  if (!history.ok() || history->metrics.empty()) return "";
  std::vector<double> values;
  for (const auto& m : history->metrics) values.push_back(m.value);
  return sparkline(values, 60) + "  (" + std::to_string(values.size()) + " points)";
}

void print_status(const msg::JobStatus& s, const std::string& curve) {
  std::cout << "job         " << s.job_id << (s.name.empty() ? "" : " (" + s.name + ")") << "\n"
            << "state       " << s.state << (s.reason.empty() ? "" : ": " + s.reason) << "\n"
            << "progress    " << s.step << "/" << s.total_steps << " steps (" << percent(s.step, s.total_steps)
            << "), epoch " << fixed(s.epoch, 2) << "\n";
  if (s.step > 0) {
    std::cout << "loss        " << fixed(s.loss, 4) << (s.eval_loss > 0 ? "   eval loss " + fixed(s.eval_loss, 4) : "")
              << "   lr " << format_value(s.lr) << "\n";
  }
  if (s.tokens_per_s > 0) {
    std::cout << "speed       " << fixed(s.tokens_per_s, 0) << " tokens/s"
              << (s.eta_s > 0 && !msg::job_state_is_final(s.state) ? ", ETA " + format_duration(s.eta_s, 0) : "")
              << "\n";
  }
  std::cout << "started     " << format_time(s.started_ms) << "   updated " << format_time(s.updated_ms) << "\n";
  if (!s.run_id.empty()) std::cout << "run         " << s.run_id << " (experiment " << s.experiment_id << ")\n";
  if (!s.last_checkpoint.model.empty()) std::cout << "checkpoint  " << checkpoint_text(s.last_checkpoint) << "\n";
  for (const auto& w : s.workers) {
    std::cout << "worker      rank " << w.rank << " on " << w.node << ": " << w.state
              << (w.step > 0 ? ", step " + std::to_string(w.step) : std::string()) << "\n";
  }
  if (s.restarts > 0) std::cout << "restarts    " << s.restarts << "\n";
  if (!s.parameters_digest.empty()) std::cout << "parameters  " << s.parameters_digest << "\n";
  if (!curve.empty()) std::cout << "loss curve  " << curve << "\n";
}

int cmd_status(const ConnectArgs& args, const std::string& job_id, bool watch) {
  const std::string command = "train status";
  int code = kExitOk;
  auto client = connect_or_report(args, command, &code);
  if (!client) return code;
  if (watch) return watch_job(*client, args, command, job_id);
  auto status = client->call_as<msg::JobStatus>(msg::kTrainStatus, msg::TrainJobRequest{job_id}, timeout_of(args));
  if (!status.ok()) return report_error(args, command, status.status());
  if (args.json) {
    std::cout << to_json(*status).dump() << "\n";
  } else {
    print_status(*status, loss_sparkline(*client, args, status->run_id));
  }
  return kExitOk;
}

int cmd_list(const ConnectArgs& args, const std::string& state) {
  const std::string command = "train list";
  int code = kExitOk;
  auto client = connect_or_report(args, command, &code);
  if (!client) return code;
  auto reply = client->call_as<msg::TrainListReply>(msg::kTrainList, msg::TrainListRequest{state}, timeout_of(args));
  if (!reply.ok()) return report_error(args, command, reply.status());
  if (args.json) {
    std::cout << to_json(*reply).dump() << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : reply->jobs) {
    rows.push_back({j.job_id, j.name.empty() ? "-" : j.name, j.state,
                    std::to_string(j.step) + "/" + std::to_string(j.total_steps), j.step > 0 ? fixed(j.loss, 4) : "-",
                    j.eval_loss > 0 ? fixed(j.eval_loss, 4) : "-", j.tokens_per_s > 0 ? fixed(j.tokens_per_s, 0) : "-",
                    format_time(j.started_ms), j.reason});
  }
  print_table({"JOB", "NAME", "STATE", "STEP", "LOSS", "EVAL LOSS", "TOK/S", "STARTED", "REASON"}, rows);
  return kExitOk;
}

int cmd_cancel(const ConnectArgs& args, const std::string& job_id) {
  const std::string command = "train cancel";
  int code = kExitOk;
  auto client = connect_or_report(args, command, &code);
  if (!client) return code;
  auto status = client->call_as<msg::JobStatus>(msg::kTrainCancel, msg::TrainJobRequest{job_id}, timeout_of(args));
  if (!status.ok()) return report_error(args, command, status.status());
  if (args.json) {
    std::cout << to_json(*status).dump() << "\n";
  } else if (status->state == msg::kJobCancelled) {
    std::cout << "cancelled job " << job_id << " at step " << status->step << "\n";
  } else if (msg::job_state_is_final(status->state)) {
    std::cout << "job " << job_id << " had already ended: " << status->state << "\n";
  } else {
    std::cout << "cancelling job " << job_id << " (" << status->state << ", step " << status->step
              << "); cairn train status " << job_id << " shows when it has stopped\n";
  }
  return kExitOk;
}

struct LogsArgs {
  std::string job_id;
  bool follow = false;
  int64_t since_step = 0;
};

int cmd_logs(const ConnectArgs& args, const LogsArgs& logs) {
  const std::string command = "train logs";
  int code = kExitOk;
  auto client = connect_or_report(args, command, &code);
  if (!client) return code;
  msg::TrainLogsRequest request;
  request.job_id = logs.job_id;
  request.follow = logs.follow;
  request.since_step = logs.since_step;
  StreamEnd end = pump_stream<msg::TrainLogEvent>(*client, msg::kTrainLogs, request, [&](const msg::TrainLogEvent& e) {
    if (args.json) {
      std::cout << to_json(e).dump() << std::endl;
      return;
    }
    // "2024-05-01 12:34:56Z" -> the time of day is enough beside a job's own log.
    std::string time = format_time(e.time_ms);
    if (time.size() > 11) time = time.substr(11);
    std::cout << time << "  " << (e.level == "info" ? "" : e.level + ": ") << e.message << std::endl;
  });
  if (end.interrupted) return kExitDetached;
  if (!end.status.ok()) return report_error(args, command, end.status);
  return kExitOk;
}

// ---- demo data (local) ----

struct DemoDataArgs {
  std::string out;
  std::string dictd_dir = "/usr/share/dictd";
  size_t vocab_size = 4096;
};

// Writes OUT/devil.jsonl (a completion dataset: one entry of The Devil's Dictionary per line),
// OUT/devil.txt (the same text, entries separated by <|endoftext|>: the tokenizer's corpus) and
// OUT/tokenizer.json (byte-level BPE learnt from it).
int cmd_demo_data(const DemoDataArgs& demo, bool json_output) {
  ConnectArgs report_args;
  report_args.json = json_output;
  const std::string command = "train demo-data";
  auto documents = devil_corpus_documents(demo.dictd_dir);
  if (!documents.ok()) {
    return report_error(report_args, command,
                        documents.status().with_context("the demo corpus needs Debian's dict-devil package"));
  }
  std::error_code ec;
  std::filesystem::create_directories(demo.out, ec);
  if (ec) return report_error(report_args, command, Status(Code::io_error, demo.out + ": " + ec.message()));
  const std::string dataset = (std::filesystem::path(demo.out) / "devil.jsonl").string();
  const std::string corpus = (std::filesystem::path(demo.out) / "devil.txt").string();
  const std::string tokenizer = (std::filesystem::path(demo.out) / "tokenizer.json").string();
  if (Status s = write_completion_jsonl(*documents, dataset); !s.ok()) return report_error(report_args, command, s);
  BpeTrainOptions options;
  options.vocab_size = demo.vocab_size;
  std::string text;
  for (const auto& d : *documents) text += d + "\n" + options.special_tokens.front() + "\n";
  if (Status s = detail::write_file_atomically(corpus, text); !s.ok()) return report_error(report_args, command, s);
  auto trained = train_bpe({corpus}, options);
  if (!trained.ok()) return report_error(report_args, command, trained.status());
  if (Status s = save_tokenizer_json(*trained, tokenizer); !s.ok()) return report_error(report_args, command, s);
  if (json_output) {
    std::cout << json{{"dataset", dataset},     {"corpus", corpus},
                      {"tokenizer", tokenizer}, {"documents", documents->size()},
                      {"bytes", text.size()},   {"vocab_size", trained->vocab_size()}}
                     .dump()
              << "\n";
  } else {
    std::cout << "wrote " << dataset << " (" << documents->size() << " entries of The Devil's Dictionary, "
              << format_bytes(static_cast<double>(text.size())) << ") and " << tokenizer << " ("
              << trained->vocab_size() << " tokens)\n";
  }
  return kExitOk;
}

}  // namespace

void add_train_commands(CLI::App& app) {
  auto args = std::make_shared<ConnectArgs>();
  auto* train = app.add_subcommand("train", "Training jobs: submit, watch, list, cancel, logs");
  train->require_subcommand(1);

  auto submit = std::make_shared<SubmitArgs>();
  auto* submit_cmd = leaf(*train, "submit", "Submit a training job (YAML, Axolotl's keys; see configs/train/)", args,
                          [args, submit] { return cmd_submit(*args, *submit); });
  submit_cmd->add_option("config", submit->config_file, "The job's YAML file")->required()->check(CLI::ExistingFile);
  submit_cmd->add_option("--set", submit->overrides,
                         "KEY=VALUE applied over the file (VALUE read as YAML), e.g. max_steps=20 (repeatable)")
      ->allow_extra_args(false);
  submit_cmd->add_flag("--watch", submit->watch,
                       "Follow the job with a progress bar until it ends (exit 0 succeeded, 1 failed or cancelled, "
                       "4 stopped by a guard); Ctrl-C detaches and leaves it running");

  auto job = std::make_shared<std::string>();
  auto status_watch = std::make_shared<bool>(false);
  auto* status = leaf(*train, "status", "Show a job: state, progress, loss, speed, checkpoint, workers", args,
                      [args, job, status_watch] { return cmd_status(*args, *job, *status_watch); });
  status->add_option("job", *job, "Job id")->required();
  status->add_flag("--watch", *status_watch, "Follow the job as submit --watch does");

  auto state = std::make_shared<std::string>();
  auto* list = leaf(*train, "list", "List the node's jobs, newest first", args, [args, state] { return cmd_list(*args, *state); });
  list->add_option("--state", *state, "Only jobs in this state (queued, running, succeeded, ...; \"active\": not ended)");

  auto cancel_job = std::make_shared<std::string>();
  auto* cancel = leaf(*train, "cancel", "Cancel a job (its last checkpoint stays registered)", args,
                      [args, cancel_job] { return cmd_cancel(*args, *cancel_job); });
  cancel->add_option("job", *cancel_job, "Job id")->required();

  auto logs = std::make_shared<LogsArgs>();
  auto* logs_cmd = leaf(*train, "logs", "A job's log: messages, progress, evaluations, checkpoints, state changes", args,
                        [args, logs] { return cmd_logs(*args, *logs); });
  logs_cmd->add_option("job", logs->job_id, "Job id")->required();
  logs_cmd->add_flag("--follow,-f", logs->follow, "Keep printing new events until the job ends (Ctrl-C stops)");
  logs_cmd->add_option("--since-step", logs->since_step, "Only events from this optimizer step on");

  auto demo = std::make_shared<DemoDataArgs>();
  auto demo_json = std::make_shared<bool>(false);
  auto* demo_cmd = train->add_subcommand(
      "demo-data", "Write the demo corpus (The Devil's Dictionary, from dict-devil) as a dataset, and a tokenizer for it");
  demo_cmd->add_option("--out", demo->out, "Folder for devil.jsonl, devil.txt and tokenizer.json")->required();
  demo_cmd->add_option("--vocab-size", demo->vocab_size, "Tokenizer vocabulary size")->capture_default_str();
  demo_cmd->add_option("--dictd-dir", demo->dictd_dir, "Where devil.index and devil.dict.dz are")->capture_default_str();
  demo_cmd->add_flag("--json", *demo_json, "Print what was written as JSON");
  demo_cmd->callback([demo, demo_json] { std::exit(cmd_demo_data(*demo, *demo_json)); });
}

}  // namespace cairn::cli
