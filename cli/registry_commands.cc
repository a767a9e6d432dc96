// Registry commands: `cairn experiments`, `cairn runs`, `cairn models` and `cairn gc`, each a thin
// shell over the registry.* ops (docs/PROTOCOL.md). With --json a command prints the reply of the
// op it ends with, as JSON, key for key.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cairn/artifacts.h"
#include "cli/commands.h"
#include "runtime/messages/registry.h"

namespace cairn::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A catalogue value as JSON, with the wire's field names.
template <class T>
json to_json(const T& value) {
  return json::from_msgpack(wire::encode(value));
}
json to_json(const json& value) { return value; }

// The steps of one command, run in order against one connection; the first error ends it.
struct Session {
  const ConnectArgs& args;
  std::string command;  // "models register", for error messages
  std::unique_ptr<Client> client;

  template <class Reply, class Request>
  Result<Reply> call(std::string_view op, const Request& request) {
    return client->call_as<Reply>(op, request, timeout_of(args));
  }
  int fail(const Status& status) const { return report_error(args, command, status); }
};

// Connects, then runs `body` with the session; returns the exit code.
template <class Body>
int with_session(const ConnectArgs& args, const std::string& command, Body body) {
  Session session{args, command, nullptr};
  auto client = open_client(args);
  if (!client.ok()) return session.fail(client.status());
  session.client = std::move(client).value();
  return body(session);
}

// Prints `reply` as JSON with --json, else runs `print`.
template <class Reply, class Print>
int output(const ConnectArgs& args, const Reply& reply, Print print) {
  if (args.json) {
    std::cout << to_json(reply).dump() << "\n";
  } else {
    print(reply);
  }
  return kExitOk;
}

}  // namespace

// Formatting shared with the other client commands (cli/commands.h).
std::string format_time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string format_bytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, kUnits[unit]);
  return buf;
}

std::string format_duration(double seconds, int second_decimals) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s < 60) {
    // Whole seconds round half up, as above; printf would round half to even.
    const double shown = second_decimals > 0 ? seconds : static_cast<double>(s);
    std::snprintf(buf, sizeof buf, "%.*fs", second_decimals, shown);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>((s / 60) % 60));
  }
  return buf;
}

std::string format_value(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", value);
  return buf;
}

// Column-aligned text table: a header row, then rows; the last column is not padded.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  };
  print_row(header);
  for (const auto& row : rows) print_row(row);
}

std::string join_tags(const std::vector<msg::Tag>& tags) {
  std::string out;
  for (const auto& t : tags) out += (out.empty() ? "" : ", ") + t.key + "=" + t.value;
  return out;
}

// "k=v" flags into tags; invalid_argument names the flag value without "=".
Result<std::vector<msg::Tag>> parse_tags(const std::vector<std::string>& flags) {
  std::vector<msg::Tag> tags;
  for (const auto& flag : flags) {
    size_t eq = flag.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Status(Code::invalid_argument, "--tag: expected KEY=VALUE, got \"" + flag + "\"");
    }
    tags.push_back({flag.substr(0, eq), flag.substr(eq + 1)});
  }
  return tags;
}

// One line of ▁▂▃▄▅▆▇█ for `values`, at most `width` characters: each character is the mean of its
// share of the values, scaled between their minimum and maximum.
std::string sparkline(const std::vector<double>& values, size_t width) {
  static const char* kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  if (values.empty() || width == 0) return "";
  const size_t n = std::min(width, values.size());
  std::vector<double> buckets(n);
  for (size_t b = 0; b < n; ++b) {
    size_t begin = b * values.size() / n;
    size_t end = (b + 1) * values.size() / n;
    double sum = 0;
    for (size_t i = begin; i < end; ++i) sum += values[i];
    buckets[b] = sum / static_cast<double>(end - begin);
  }
  auto [lo, hi] = std::minmax_element(buckets.begin(), buckets.end());
  const double range = *hi - *lo;
  std::string out;
  for (double v : buckets) {
    int level = range > 0 && std::isfinite(range) ? static_cast<int>(std::lround((v - *lo) / range * 7)) : 3;
    out += kBars[std::clamp(level, 0, 7)];
  }
  return out;
}

namespace {

// Finds an experiment by name, else by id.
Result<msg::Experiment> find_experiment(Session& s, const std::string& name_or_id) {
  msg::GetExperimentRequest by_name;
  by_name.experiment_name = name_or_id;
  auto found = s.call<msg::ExperimentReply>(msg::kGetExperiment, by_name);
  if (found.ok()) return found->experiment;
  if (found.status().code() != Code::not_found && found.status().code() != Code::bad_request) return found.status();
  msg::GetExperimentRequest by_id;
  by_id.experiment_id = name_or_id;
  auto by_id_found = s.call<msg::ExperimentReply>(msg::kGetExperiment, by_id);
  if (by_id_found.ok()) return by_id_found->experiment;
  if (by_id_found.status().code() == Code::not_found || by_id_found.status().code() == Code::bad_request) {
    return Status(Code::not_found, "no experiment named or with id \"" + name_or_id + "\"");
  }
  return by_id_found.status();
}

// NAME@ALIAS or NAME/VERSION.
Result<msg::GetVersionRequest> parse_version_ref(const std::string& ref) {
  msg::GetVersionRequest request;
  if (size_t at = ref.rfind('@'); at != std::string::npos && at > 0 && at + 1 < ref.size()) {
    request.name = ref.substr(0, at);
    request.alias = ref.substr(at + 1);
    return request;
  }
  size_t slash = ref.rfind('/');
  if (slash != std::string::npos && slash > 0 && slash + 1 < ref.size() &&
      std::all_of(ref.begin() + static_cast<std::ptrdiff_t>(slash) + 1, ref.end(),
                  [](char c) { return c >= '0' && c <= '9'; })) {
    request.name = ref.substr(0, slash);
    request.version = ref.substr(slash + 1);
    return request;
  }
  return Status(Code::invalid_argument, "expected NAME@ALIAS or NAME/VERSION, got \"" + ref + "\"");
}

// Progress lines on stderr for files of at least kProgressMinBytes, at most one a second per file,
// plus a last one with the mean rate. Callbacks may come from the client's I/O thread.
class ProgressPrinter {
 public:
  static constexpr uint64_t kProgressMinBytes = uint64_t{16} << 20;

  explicit ProgressPrinter(bool quiet) : quiet_(quiet) {}

  void operator()(const TransferProgress& p) {
    if (quiet_ || p.bytes_total < kProgressMinBytes) return;
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = Clock::now();
    if (p.path != path_) {
      path_ = p.path;
      started_ = now;
      last_line_ = now;
      start_bytes_ = p.bytes_done;
    }
    if (!p.finished && now - last_line_ < std::chrono::seconds(1)) return;
    last_line_ = now;
    const double seconds = std::chrono::duration<double>(now - started_).count();
    const double rate = seconds > 0 ? static_cast<double>(p.bytes_done - start_bytes_) / seconds : 0;
    std::fprintf(stderr, "  %s  %s / %s  (%3.0f%%)  %s/s%s\n", p.path.c_str(),
                 format_bytes(static_cast<double>(p.bytes_done)).c_str(),
                 format_bytes(static_cast<double>(p.bytes_total)).c_str(),
                 100.0 * static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total),
                 format_bytes(rate).c_str(), p.finished ? "  done" : "");
  }

 private:
  const bool quiet_;
  std::mutex mutex_;  // guards everything below
  std::string path_;
  Clock::time_point started_;
  Clock::time_point last_line_;
  uint64_t start_bytes_ = 0;
};

ArtifactTransferOptions transfer_options(const ConnectArgs& args, const std::shared_ptr<ProgressPrinter>& printer) {
  ArtifactTransferOptions options;
  options.timeout = std::max(timeout_of(args), std::chrono::milliseconds(60000));
  options.on_progress = [printer](const TransferProgress& p) { (*printer)(p); };
  return options;
}

// ---- experiments ----

int cmd_experiments_list(const ConnectArgs& args, bool all, uint32_t max) {
  return with_session(args, "experiments list", [&](Session& s) {
    msg::SearchExperimentsRequest request;
    request.view_type = all ? "ALL" : "ACTIVE_ONLY";
    request.max_results = max;
    auto reply = s.call<msg::SearchExperimentsReply>(msg::kSearchExperiments, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::SearchExperimentsReply& r) {
      std::vector<std::vector<std::string>> rows;
      for (const auto& e : r.experiments) {
        rows.push_back({e.experiment_id, e.name, e.lifecycle_stage, format_time(e.creation_time), join_tags(e.tags)});
      }
      print_table({"ID", "NAME", "STAGE", "CREATED", "TAGS"}, rows);
      if (!r.next_page_token.empty()) std::cout << "(more: raise --max)\n";
    });
  });
}

int cmd_experiments_show(const ConnectArgs& args, const std::string& name_or_id) {
  return with_session(args, "experiments show", [&](Session& s) {
    auto experiment = find_experiment(s, name_or_id);
    if (!experiment.ok()) return s.fail(experiment.status());
    return output(args, msg::ExperimentReply{*experiment}, [](const msg::ExperimentReply& r) {
      const auto& e = r.experiment;
      std::cout << "experiment  " << e.name << " (id " << e.experiment_id << ")\n"
                << "stage       " << e.lifecycle_stage << "\n"
                << "created     " << format_time(e.creation_time) << "\n"
                << "updated     " << format_time(e.last_update_time) << "\n";
      if (!e.artifact_location.empty()) std::cout << "artifacts   " << e.artifact_location << "\n";
      for (const auto& t : e.tags) std::cout << "tag         " << t.key << " = " << t.value << "\n";
    });
  });
}

int cmd_experiments_create(const ConnectArgs& args, const std::string& name, const std::vector<std::string>& tags) {
  return with_session(args, "experiments create", [&](Session& s) {
    msg::CreateExperimentRequest request;
    request.name = name;
    auto parsed = parse_tags(tags);
    if (!parsed.ok()) return s.fail(parsed.status());
    request.tags = *parsed;
    auto reply = s.call<msg::CreateExperimentReply>(msg::kCreateExperiment, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [&](const msg::CreateExperimentReply& r) {
      std::cout << "created experiment " << name << " (id " << r.experiment_id << ")\n";
    });
  });
}

// ---- runs ----

struct RunsListArgs {
  std::string experiment;
  std::string filter;
  std::vector<std::string> order_by;
  uint32_t max = 100;
  bool all = false;
};

int cmd_runs_list(const ConnectArgs& args, const RunsListArgs& list) {
  return with_session(args, "runs list", [&](Session& s) {
    auto experiment = find_experiment(s, list.experiment);
    if (!experiment.ok()) return s.fail(experiment.status());
    msg::SearchRunsRequest request;
    request.experiment_ids = {experiment->experiment_id};
    request.filter = list.filter;
    request.order_by = list.order_by;
    request.max_results = list.max;
    request.run_view_type = list.all ? "ALL" : "ACTIVE_ONLY";
    auto reply = s.call<msg::SearchRunsReply>(msg::kSearchRuns, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::SearchRunsReply& r) {
      std::vector<std::vector<std::string>> rows;
      for (const auto& run : r.runs) {
        std::string metrics;
        for (const auto& m : run.data.metrics) metrics += (metrics.empty() ? "" : ", ") + m.key + "=" + format_value(m.value);
        rows.push_back({run.info.run_id, run.info.run_name, run.info.status, format_time(run.info.start_time), metrics});
      }
      print_table({"RUN ID", "NAME", "STATUS", "STARTED", "METRICS"}, rows);
      if (!r.next_page_token.empty()) std::cout << "(more: raise --max)\n";
    });
  });
}

int cmd_runs_show(const ConnectArgs& args, const std::string& run_id) {
  return with_session(args, "runs show", [&](Session& s) {
    auto reply = s.call<msg::RunReply>(msg::kGetRun, msg::RunIdRequest{run_id});
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::RunReply& r) {
      const auto& i = r.run.info;
      std::cout << "run         " << i.run_id << (i.run_name.empty() ? "" : " (" + i.run_name + ")") << "\n"
                << "experiment  " << i.experiment_id << "\n"
                << "status      " << i.status << (i.lifecycle_stage == "deleted" ? " (deleted)" : "") << "\n"
                << "started     " << format_time(i.start_time) << "\n"
                << "ended       " << format_time(i.end_time) << "\n";
      if (!i.user_id.empty()) std::cout << "user        " << i.user_id << "\n";
      if (!i.parent_run_id.empty()) std::cout << "parent run  " << i.parent_run_id << "\n";
      if (!i.config_digest.empty()) std::cout << "config      " << i.config_digest << "\n";
      if (!i.dataset_digest.empty()) std::cout << "dataset     " << i.dataset_digest << "\n";
      for (const auto& p : r.run.data.params) std::cout << "param       " << p.key << " = " << p.value << "\n";
      for (const auto& t : r.run.data.tags) std::cout << "tag         " << t.key << " = " << t.value << "\n";
      for (const auto& m : r.run.data.metrics) {
        std::cout << "metric      " << m.key << " = " << format_value(m.value) << " (step " << m.step << ")\n";
      }
    });
  });
}

int cmd_runs_metrics(const ConnectArgs& args, const std::string& run_id, const std::string& key) {
  return with_session(args, "runs metrics", [&](Session& s) {
    msg::MetricHistoryReply all;
    msg::GetMetricHistoryRequest request;
    request.run_id = run_id;
    request.metric_key = key;
    do {
      auto page = s.call<msg::MetricHistoryReply>(msg::kGetMetricHistory, request);
      if (!page.ok()) return s.fail(page.status());
      all.metrics.insert(all.metrics.end(), page->metrics.begin(), page->metrics.end());
      request.page_token = page->next_page_token;
    } while (!request.page_token.empty());
    return output(args, all, [&](const msg::MetricHistoryReply& r) {
      if (r.metrics.empty()) {
        std::cout << "no points of " << key << " in run " << run_id << "\n";
        return;
      }
      std::vector<std::vector<std::string>> rows;
      std::vector<double> values;
      for (const auto& m : r.metrics) {
        rows.push_back({std::to_string(m.step), format_value(m.value), format_time(m.timestamp)});
        values.push_back(m.value);
      }
      print_table({"STEP", "VALUE", "TIME"}, rows);
      auto [lo, hi] = std::minmax_element(values.begin(), values.end());
      std::cout << "\n" << key << "  " << sparkline(values, 60) << "  min " << format_value(*lo) << "  max "
                << format_value(*hi) << "  last " << format_value(values.back()) << "  (" << values.size()
                << " points)\n";
    });
  });
}

// ---- models ----

void print_versions(const std::vector<msg::ModelVersion>& versions) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : versions) {
    uint64_t bytes = 0;
    for (const auto& a : v.artifacts) bytes += a.size;
    std::string aliases;
    for (const auto& a : v.aliases) aliases += (aliases.empty() ? "" : ",") + a;
    rows.push_back({v.version, v.version_label.empty() ? "-" : v.version_label, v.status,
                    aliases.empty() ? "-" : aliases, std::to_string(v.artifacts.size()),
                    format_bytes(static_cast<double>(bytes)), format_time(v.creation_timestamp),
                    v.run_id.empty() ? "-" : v.run_id});
  }
  print_table({"VERSION", "LABEL", "STATUS", "ALIASES", "FILES", "SIZE", "CREATED", "RUN"}, rows);
}

int cmd_models_list(const ConnectArgs& args, const std::string& prefix, uint32_t max) {
  return with_session(args, "models list", [&](Session& s) {
    msg::SearchModelsRequest request;
    request.name_prefix = prefix;
    request.max_results = max;
    auto reply = s.call<msg::SearchModelsReply>(msg::kSearchModels, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::SearchModelsReply& r) {
      std::vector<std::vector<std::string>> rows;
      for (const auto& m : r.registered_models) {
        std::string aliases;
        for (const auto& a : m.aliases) aliases += (aliases.empty() ? "" : ", ") + a.alias + "->" + a.version;
        rows.push_back({m.name, m.latest_versions.empty() ? "-" : m.latest_versions.front().version,
                        aliases.empty() ? "-" : aliases, format_time(m.last_updated_timestamp)});
      }
      print_table({"NAME", "LATEST", "ALIASES", "UPDATED"}, rows);
      if (!r.next_page_token.empty()) std::cout << "(more: raise --max)\n";
    });
  });
}

int cmd_models_show(const ConnectArgs& args, const std::string& name) {
  return with_session(args, "models show", [&](Session& s) {
    auto reply = s.call<msg::ModelReply>(msg::kGetModel, msg::ModelNameRequest{name});
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::ModelReply& r) {
      const auto& m = r.registered_model;
      std::cout << "model       " << m.name << "\n"
                << "created     " << format_time(m.creation_timestamp) << "\n"
                << "updated     " << format_time(m.last_updated_timestamp) << "\n";
      if (!m.description.empty()) std::cout << "description " << m.description << "\n";
      for (const auto& t : m.tags) std::cout << "tag         " << t.key << " = " << t.value << "\n";
      for (const auto& a : m.aliases) std::cout << "alias       " << a.alias << " -> " << a.version << "\n";
      if (!m.latest_versions.empty()) {
        std::cout << "\n";
        print_versions(m.latest_versions);
      }
    });
  });
}

int cmd_models_create(const ConnectArgs& args, const std::string& name, const std::string& description,
                      const std::vector<std::string>& tags) {
  return with_session(args, "models create", [&](Session& s) {
    msg::CreateModelRequest request;
    request.name = name;
    request.description = description;
    auto parsed = parse_tags(tags);
    if (!parsed.ok()) return s.fail(parsed.status());
    request.tags = *parsed;
    auto reply = s.call<msg::ModelReply>(msg::kCreateModel, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::ModelReply& r) {
      std::cout << "created model " << r.registered_model.name << "\n";
    });
  });
}

int cmd_models_versions(const ConnectArgs& args, const std::string& name, uint32_t max) {
  return with_session(args, "models versions", [&](Session& s) {
    msg::SearchVersionsRequest request;
    request.name = name;
    request.max_results = max;
    auto reply = s.call<msg::SearchVersionsReply>(msg::kSearchVersions, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::SearchVersionsReply& r) {
      print_versions(r.model_versions);
      if (!r.next_page_token.empty()) std::cout << "(more: raise --max)\n";
    });
  });
}

int cmd_alias_set(const ConnectArgs& args, const std::string& name, const std::string& alias,
                  const std::string& version) {
  return with_session(args, "models alias set", [&](Session& s) {
    auto reply = s.call<msg::Empty>(msg::kSetAlias, msg::SetAliasRequest{name, alias, version});
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, json{{"ok", true}}, [&](const json&) {
      std::cout << name << "@" << alias << " -> version " << version << "\n";
    });
  });
}

int cmd_alias_delete(const ConnectArgs& args, const std::string& name, const std::string& alias) {
  return with_session(args, "models alias delete", [&](Session& s) {
    auto reply = s.call<msg::Empty>(msg::kDeleteAlias, msg::AliasRequest{name, alias});
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, json{{"ok", true}}, [&](const json&) { std::cout << "deleted " << name << "@" << alias << "\n"; });
  });
}

int cmd_alias_history(const ConnectArgs& args, const std::string& name, const std::string& alias) {
  return with_session(args, "models alias history", [&](Session& s) {
    auto reply = s.call<msg::AliasHistoryReply>(msg::kAliasHistory, msg::ModelNameRequest{name});
    if (!reply.ok()) return s.fail(reply.status());
    if (!alias.empty()) {
      auto& events = reply->events;
      events.erase(std::remove_if(events.begin(), events.end(), [&](const msg::AliasEvent& e) { return e.alias != alias; }),
                   events.end());
    }
    return output(args, *reply, [](const msg::AliasHistoryReply& r) {
      std::vector<std::vector<std::string>> rows;
      for (const auto& e : r.events) {
        rows.push_back({format_time(e.time), e.alias, e.from_version.empty() ? "-" : e.from_version,
                        e.to_version.empty() ? "-" : e.to_version, e.who});
      }
      print_table({"TIME", "ALIAS", "FROM", "TO", "WHO"}, rows);
    });
  });
}

struct RegisterArgs {
  std::string name;
  std::string from;
  std::string run_id;
  std::string parent_version;
  std::string base_model;
  std::string label;
  std::string description;
  std::vector<std::string> tags;
};

int cmd_models_register(const ConnectArgs& args, const RegisterArgs& reg) {
  return with_session(args, "models register", [&](Session& s) {
    auto tags = parse_tags(reg.tags);
    if (!tags.ok()) return s.fail(tags.status());
    auto printer = std::make_shared<ProgressPrinter>(args.json);
    auto uploaded = upload_directory(*s.client, reg.from, transfer_options(args, printer));
    if (!uploaded.ok()) return s.fail(uploaded.status());
    if (uploaded->empty()) return s.fail(Status(Code::invalid_argument, "--from " + reg.from + ": no files in it"));

    msg::CreateVersionRequest request;
    request.name = reg.name;
    std::error_code ec;
    request.source = std::filesystem::absolute(reg.from, ec).string();
    request.run_id = reg.run_id;
    request.description = reg.description;
    request.tags = *tags;
    request.version_label = reg.label;
    request.parent_version = reg.parent_version;
    request.base_model = reg.base_model;
    request.create_model = true;
    uint64_t total = 0, sent = 0;
    size_t deduplicated = 0;
    for (const auto& u : *uploaded) {
      request.artifacts.push_back(u.artifact);
      total += u.artifact.size;
      sent += u.bytes_sent;
      deduplicated += u.bytes_sent == 0 && u.artifact.size > 0 ? 1 : 0;
    }
    auto reply = s.call<msg::VersionReply>(msg::kCreateVersion, request);
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [&](const msg::VersionReply& r) {
      std::cout << "registered " << r.model_version.name << " version " << r.model_version.version
                << (r.model_version.version_label.empty() ? "" : " (" + r.model_version.version_label + ")") << ": "
                << uploaded->size() << " files, " << format_bytes(static_cast<double>(total)) << "; uploaded "
                << format_bytes(static_cast<double>(sent)) << ", " << deduplicated << " already on the node\n";
    });
  });
}

int cmd_models_download(const ConnectArgs& args, const std::string& ref, const std::string& to) {
  return with_session(args, "models download", [&](Session& s) {
    auto request = parse_version_ref(ref);
    if (!request.ok()) return s.fail(request.status());
    auto version = s.call<msg::VersionReply>(msg::kGetVersion, *request);
    if (!version.ok()) return s.fail(version.status());
    const auto& v = version->model_version;
    if (v.status != "READY") {
      return s.fail(Status(Code::invalid_argument, v.name + " version " + v.version + " is " + v.status + ", not READY"));
    }
    auto printer = std::make_shared<ProgressPrinter>(args.json);
    Status downloaded = download_artifacts(*s.client, v.artifacts, to, transfer_options(args, printer));
    if (!downloaded.ok()) return s.fail(downloaded);
    return output(args, *version, [&](const msg::VersionReply&) {
      uint64_t bytes = 0;
      for (const auto& a : v.artifacts) bytes += a.size;
      std::cout << "downloaded " << v.name << " version " << v.version << " (" << v.artifacts.size() << " files, "
                << format_bytes(static_cast<double>(bytes)) << ", sha256 verified) into " << to << "\n";
    });
  });
}

int cmd_gc(const ConnectArgs& args) {
  return with_session(args, "gc", [&](Session& s) {
    auto reply = s.call<msg::GcReply>(msg::kCollectGarbage, msg::Empty{});
    if (!reply.ok()) return s.fail(reply.status());
    return output(args, *reply, [](const msg::GcReply& r) {
      std::cout << "removed " << r.blobs_removed << " blobs (" << format_bytes(static_cast<double>(r.bytes_freed))
                << "), kept " << r.blobs_kept << "\n";
    });
  });
}

}  // namespace

void add_registry_commands(CLI::App& app) {
  auto args = std::make_shared<ConnectArgs>();

  // experiments
  auto* experiments = app.add_subcommand("experiments", "Experiments of the node's registry");
  experiments->require_subcommand(1);
  {
    auto all = std::make_shared<bool>(false);
    auto max = std::make_shared<uint32_t>(1000);
    auto* list = leaf(*experiments, "list", "List experiments", args,
                      [args, all, max] { return cmd_experiments_list(*args, *all, *max); });
    list->add_flag("--all", *all, "Include deleted experiments");
    list->add_option("--max", *max, "At most this many (default 1000)")->check(CLI::Range(1u, 50000u));

    auto name = std::make_shared<std::string>();
    auto* show = leaf(*experiments, "show", "Show one experiment", args,
                      [args, name] { return cmd_experiments_show(*args, *name); });
    show->add_option("experiment", *name, "Experiment name or id")->required();

    auto create_name = std::make_shared<std::string>();
    auto tags = std::make_shared<std::vector<std::string>>();
    auto* create = leaf(*experiments, "create", "Create an experiment", args,
                        [args, create_name, tags] { return cmd_experiments_create(*args, *create_name, *tags); });
    create->add_option("name", *create_name, "Experiment name")->required();
    create->add_option("--tag", *tags, "KEY=VALUE tag (repeatable)");
  }

  // runs
  auto* runs = app.add_subcommand("runs", "Runs, their params, tags and metrics");
  runs->require_subcommand(1);
  {
    auto list_args = std::make_shared<RunsListArgs>();
    auto* list = leaf(*runs, "list", "Search the runs of an experiment", args,
                      [args, list_args] { return cmd_runs_list(*args, *list_args); });
    list->add_option("--experiment", list_args->experiment, "Experiment name or id")->required();
    list->add_option("--filter", list_args->filter, "MLflow filter, e.g. \"metrics.loss < 2 and params.lr = '3e-4'\"");
    list->add_option("--order-by", list_args->order_by, "e.g. \"metrics.loss ASC\" (repeatable)");
    list->add_option("--max", list_args->max, "At most this many (default 100)")->check(CLI::Range(1u, 50000u));
    list->add_flag("--all", list_args->all, "Include deleted runs");

    auto run_id = std::make_shared<std::string>();
    auto* show = leaf(*runs, "show", "Show a run: info, params, tags, latest metrics", args,
                      [args, run_id] { return cmd_runs_show(*args, *run_id); });
    show->add_option("run_id", *run_id, "Run id")->required();

    auto metrics_run = std::make_shared<std::string>();
    auto key = std::make_shared<std::string>();
    auto* metrics = leaf(*runs, "metrics", "A metric's history, with a sparkline", args,
                         [args, metrics_run, key] { return cmd_runs_metrics(*args, *metrics_run, *key); });
    metrics->add_option("run_id", *metrics_run, "Run id")->required();
    metrics->add_option("key", *key, "Metric key")->required();
  }

  // models
  auto* models = app.add_subcommand("models", "Registered models, versions, aliases and their files");
  models->require_subcommand(1);
  {
    auto prefix = std::make_shared<std::string>();
    auto max = std::make_shared<uint32_t>(100);
    auto* list = leaf(*models, "list", "List models", args, [args, prefix, max] { return cmd_models_list(*args, *prefix, *max); });
    list->add_option("--prefix", *prefix, "Only models whose name starts with this");
    list->add_option("--max", *max, "At most this many (default 100)")->check(CLI::Range(1u, 1000u));

    auto show_name = std::make_shared<std::string>();
    auto* show = leaf(*models, "show", "Show a model, its aliases and latest version", args,
                      [args, show_name] { return cmd_models_show(*args, *show_name); });
    show->add_option("name", *show_name, "Model name")->required();

    auto create_name = std::make_shared<std::string>();
    auto description = std::make_shared<std::string>();
    auto tags = std::make_shared<std::vector<std::string>>();
    auto* create = leaf(*models, "create", "Create a registered model", args, [args, create_name, description, tags] {
      return cmd_models_create(*args, *create_name, *description, *tags);
    });
    create->add_option("name", *create_name, "Model name")->required();
    create->add_option("--description", *description, "Description");
    create->add_option("--tag", *tags, "KEY=VALUE tag (repeatable)");

    auto versions_name = std::make_shared<std::string>();
    auto versions_max = std::make_shared<uint32_t>(100);
    auto* versions = leaf(*models, "versions", "List a model's versions, newest first", args,
                          [args, versions_name, versions_max] { return cmd_models_versions(*args, *versions_name, *versions_max); });
    versions->add_option("name", *versions_name, "Model name")->required();
    versions->add_option("--max", *versions_max, "At most this many (default 100)")->check(CLI::Range(1u, 10000u));

    auto* alias = models->add_subcommand("alias", "Set, delete or audit a model's aliases");
    alias->require_subcommand(1);
    auto alias_model = std::make_shared<std::string>();
    auto alias_name = std::make_shared<std::string>();
    auto alias_version = std::make_shared<std::string>();
    auto* set = leaf(*alias, "set", "Point an alias at a version (creating or moving it)", args,
                     [args, alias_model, alias_name, alias_version] {
                       return cmd_alias_set(*args, *alias_model, *alias_name, *alias_version);
                     });
    set->add_option("name", *alias_model, "Model name")->required();
    set->add_option("alias", *alias_name, "Alias, e.g. production")->required();
    set->add_option("version", *alias_version, "Version number")->required();
    auto* del = leaf(*alias, "delete", "Delete an alias", args,
                     [args, alias_model, alias_name] { return cmd_alias_delete(*args, *alias_model, *alias_name); });
    del->add_option("name", *alias_model, "Model name")->required();
    del->add_option("alias", *alias_name, "Alias")->required();
    auto* history = leaf(*alias, "history", "Every move of a model's aliases: who, when, from and to", args,
                         [args, alias_model, alias_name] { return cmd_alias_history(*args, *alias_model, *alias_name); });
    history->add_option("name", *alias_model, "Model name")->required();
    history->add_option("alias", *alias_name, "Only this alias");

    auto reg = std::make_shared<RegisterArgs>();
    auto* register_cmd = leaf(*models, "register", "Upload a model folder and register it as a new version", args,
                              [args, reg] { return cmd_models_register(*args, *reg); });
    register_cmd->add_option("name", reg->name, "Model name (created if missing)")->required();
    register_cmd->add_option("--from", reg->from, "Folder whose files (recursively) become the version's artifacts")
        ->required()
        ->check(CLI::ExistingDirectory);
    register_cmd->add_option("--run-id", reg->run_id, "The run that produced it (its final metrics are snapshotted)");
    register_cmd->add_option("--parent-version", reg->parent_version, "The version this one was fine-tuned from");
    register_cmd->add_option("--base-model", reg->base_model, "Base model of an adapter: NAME/VERSION or a path");
    register_cmd->add_option("--label", reg->label, "Semantic version label, e.g. 1.2.0");
    register_cmd->add_option("--description", reg->description, "Description");
    register_cmd->add_option("--tag", reg->tags, "KEY=VALUE tag (repeatable)");

    auto ref = std::make_shared<std::string>();
    auto to = std::make_shared<std::string>();
    auto* download = leaf(*models, "download", "Download a version's files, verified, into a folder", args,
                          [args, ref, to] { return cmd_models_download(*args, *ref, *to); });
    download->add_option("version", *ref, "NAME@ALIAS, NAME@latest (the newest) or NAME/VERSION")->required();
    download->add_option("--to", *to, "Destination folder (created if missing)")->required();
  }

  leaf(app, "gc", "Remove artifact blobs no version references (admin)", args, [args] { return cmd_gc(*args); });
}

}  // namespace cairn::cli
