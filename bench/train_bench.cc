// train_bench: training throughput of Cairn's Trainer (model/trainer.h) against PyTorch eager on
// the same model, rows and optimizer (issue #5), in one run:
//
//   single  one process, --threads ATen threads (2), our Trainer in-process against
//           bench/train/torch_peer.py (the same Llama in plain torch, torch.optim.AdamW,
//           clip_grad_norm_). Goal: >= 1.3x the peer's tokens/s.
//   ddp     2 processes with 1 thread each: this program re-executed as rank 0 and rank 1, each a
//           Trainer over a TCP ring (cluster/collective.h), against bench/train/ddp_peer.py
//           (DistributedDataParallel over gloo). Goal: >= 1.0x.
//
// Model: a Llama of --hidden 256, --layers 4, --heads 4, the intermediate size the pretraining
// config derives (768), tied embeddings, the demo tokenizer's vocabulary (4096; `cairn train
// demo-data` writes it with the corpus). Rows: --seq 256 tokens packed from the demo corpus
// (sample packing, documents masked from each other), --micro-batch 8 per rank, written to a file
// the peers read, so both sides train on exactly the same rows. AdamW at a constant 3e-4,
// weight decay 0, gradients clipped at 1.0. tokens/s counts every position of every row.
//
// Both sides run with OPENBLAS_NUM_THREADS=1 and MALLOC_MMAP_THRESHOLD_=33554432
// MALLOC_TRIM_THRESHOLD_=17179869184 (set here, then the program re-executes itself so the
// allocator sees them). The peer starts from our initial weights (exported to safetensors), so the
// first step's losses must agree: the table shows both.
//
//   train_bench [--mode all|single|ddp] [--steps N] [--warmup N] [--rounds N] [--micro-batch N]
//               [--seq N] [--hidden N] [--intermediate N] [--layers N] [--heads N] [--threads N]
//               [--bucket-mib X] [--python PATH] [--results FILE | --no-results]
//
// Timing on this 2-core machine is noisy: each round runs ours, then the peer; the table reports
// the best round of each (and every round's figure).

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_support.h"
#include "cluster/collective.h"
#include "model/data.h"
#include "model/tokenizer.h"
#include "model/train_config.h"
#include "model/trainer.h"

namespace cairn::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr double kGoalSingle = 1.3;  // our tokens/s over torch eager's, at least
constexpr double kGoalDdp = 1.0;     // over DDP + gloo, at least
constexpr const char* kEnvMarker = "CAIRN_TRAIN_BENCH_ENV";
// The environment both sides run with (see the top of the file).
constexpr const char* kEnv[][2] = {{"OPENBLAS_NUM_THREADS", "1"},
                                   {"MALLOC_MMAP_THRESHOLD_", "33554432"},
                                   {"MALLOC_TRIM_THRESHOLD_", "17179869184"}};

struct BenchOptions {
  std::string mode = "all";
  int steps = 10;   // timed optimizer steps per round
  int warmup = 2;   // untimed steps first
  int rounds = 2;
  int micro_batch = 8;
  int seq = 256;
  int hidden = 256;
  int intermediate = 0;  // 0: derived as the config does (768 for hidden 256)
  int layers = 4;
  int heads = 4;
  int threads = 2;  // single mode; ddp ranks use 1 each
  // ddp mode: TrainerOptions::bucket_bytes in MiB; 0 keeps the Trainer's default.
  double bucket_mib = 0;
  std::string python = "/usr/bin/python3";
  std::string results = CAIRN_SOURCE_DIR "/bench/RESULTS.md";
  // Internal: run as rank `child_rank` of a ddp job in `work_dir`.
  int child_rank = -1;
  std::string work_dir;
};

BenchOptions parse_args(int argc, char** argv) {
  BenchOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(flag + " needs a value");
      return argv[++i];
    };
    auto number = [&]() { return std::atoi(value().c_str()); };
    if (flag == "--mode") {
      o.mode = value();
    } else if (flag == "--steps") {
      o.steps = number();
    } else if (flag == "--warmup") {
      o.warmup = number();
    } else if (flag == "--rounds") {
      o.rounds = number();
    } else if (flag == "--micro-batch") {
      o.micro_batch = number();
    } else if (flag == "--seq") {
      o.seq = number();
    } else if (flag == "--hidden") {
      o.hidden = number();
    } else if (flag == "--intermediate") {
      o.intermediate = number();
    } else if (flag == "--layers") {
      o.layers = number();
    } else if (flag == "--heads") {
      o.heads = number();
    } else if (flag == "--threads") {
      o.threads = number();
    } else if (flag == "--bucket-mib") {
      o.bucket_mib = std::atof(value().c_str());
    } else if (flag == "--python") {
      o.python = value();
    } else if (flag == "--results") {
      o.results = value();
    } else if (flag == "--no-results") {
      o.results.clear();
    } else if (flag == "--child-rank") {
      o.child_rank = number();
    } else if (flag == "--work-dir") {
      o.work_dir = value();
    } else {
      die("unknown flag " + flag + " (see the top of bench/train_bench.cc)");
    }
  }
  if (o.mode != "all" && o.mode != "single" && o.mode != "ddp") die("--mode: all, single or ddp");
  if (o.steps < 1 || o.warmup < 0 || o.rounds < 1 || o.micro_batch < 1 || o.seq < 2) die("bad sizes");
  return o;
}

// The flags that fix the model and the rows, for re-executing this program as a rank.
std::vector<std::string> shape_flags(const BenchOptions& o) {
  return {"--steps",  std::to_string(o.steps),  "--warmup", std::to_string(o.warmup), "--micro-batch",
          std::to_string(o.micro_batch),        "--seq",    std::to_string(o.seq),    "--hidden",
          std::to_string(o.hidden),             "--intermediate", std::to_string(o.intermediate),
          "--layers", std::to_string(o.layers), "--heads",  std::to_string(o.heads),
          "--bucket-mib", std::to_string(o.bucket_mib)};
}

// Runs `argv` with stdout captured; dies when it fails. Returns stdout.
std::string run_captured(const std::vector<std::string>& argv) {
  std::string command;
  for (const auto& a : argv) command += "'" + a + "' ";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) die("cannot run " + command);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int status = ::pclose(pipe);
  if (status != 0) die(command + "failed (status " + std::to_string(status) + "); its output: " + out);
  return out;
}

// The JSON object on the last non-empty line of `out`.
json last_json_line(const std::string& out, const std::string& who) {
  std::istringstream in(out);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  try {
    return json::parse(last);
  } catch (const json::exception& e) {
    die(who + " printed no JSON result: " + e.what() + "; output: " + out);
  }
}

// ---- the job both sides train ----

struct Fixture {
  std::string dir;             // work directory
  std::string tokenizer_path;  // the demo tokenizer
  std::string rows_path;       // int32 [n, 4, seq] for the peers
  std::vector<PackedRow> rows;
  int64_t vocab = 0;
};

// Writes the demo data with `cairn train demo-data`, packs rows of the corpus, and writes them for
// the peers: per row input_ids, labels, position_ids and segment ids (document k -> k + 1,
// padding -> 0).
Fixture make_fixture(const BenchOptions& o, const std::string& dir, size_t row_count) {
  Fixture f;
  f.dir = dir;
  run_captured({CAIRN_BINARY, "train", "demo-data", "--out", dir});
  f.tokenizer_path = dir + "/tokenizer.json";
  auto tokenizer = take(Tokenizer::load(f.tokenizer_path), "tokenizer");
  f.vocab = static_cast<int64_t>(tokenizer.vocab_size());
  DataOptions data;
  data.sequence_len = o.seq;
  data.long_example_policy = LongExamplePolicy::split;
  auto dataset = take(load_datasets({{dir + "/devil.jsonl", "completion"}}, tokenizer, data), "demo dataset");
  StreamOptions stream;
  stream.sample_packing = true;
  stream.num_epochs = 0;
  auto batches = take(BatchStream::create(dataset, DataSplit::train, stream), "stream");
  std::vector<int32_t> flat;
  while (f.rows.size() < row_count) {
    auto row = batches.next();
    if (!row) die("the demo corpus gave no rows");
    std::vector<int32_t> segments(static_cast<size_t>(o.seq), 0);
    size_t at = 0;
    for (size_t d = 0; d < row->doc_lens.size(); ++d) {
      for (int32_t i = 0; i < row->doc_lens[d]; ++i) segments[at++] = static_cast<int32_t>(d + 1);
    }
    for (const auto* part : {&row->input_ids, &row->labels, &row->position_ids, &segments}) {
      flat.insert(flat.end(), part->begin(), part->end());
    }
    f.rows.push_back(std::move(*row));
  }
  f.rows_path = dir + "/rows.bin";
  std::ofstream out(f.rows_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(flat.data()), static_cast<std::streamsize>(flat.size() * sizeof(int32_t)));
  if (!out) die(f.rows_path + ": write failed");
  return f;
}

TrainJobConfig job_config(const BenchOptions& o, const Fixture& f) {
  TrainJobConfig c;
  ArchitectureSpec spec;
  spec.hidden_size = o.hidden;
  spec.intermediate_size = o.intermediate;
  spec.num_hidden_layers = o.layers;
  spec.num_attention_heads = o.heads;
  c.architecture = spec;
  c.tokenizer = f.tokenizer_path;
  c.datasets = {{f.dir + "/devil.jsonl", "completion"}};
  c.sequence_len = o.seq;
  c.sample_packing = true;
  c.micro_batch_size = o.micro_batch;
  c.max_steps = o.warmup + o.steps;
  c.learning_rate = 3e-4;
  c.lr_scheduler = LrScheduler::constant;
  c.weight_decay = 0.0;
  c.max_grad_norm = 1.0;
  return c;
}

TrainerInit trainer_init(const BenchOptions& o, const Fixture& f) {
  TrainerInit init;
  init.tokenizer_path = f.tokenizer_path;
  init.schedule.rows_per_step = o.micro_batch;
  init.schedule.total_steps = o.warmup + o.steps;
  init.schedule.steps_per_epoch = init.schedule.total_steps;
  return init;
}

double process_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// What one side measured.
struct Measured {
  double tokens_per_s = 0;
  // This process's (rank 0's) own tokens per second of its CPU time, every thread counted: load
  // from other processes on the machine barely moves it, unlike tokens_per_s.
  double tokens_per_cpu_s = 0;
  double first_loss = 0;  // the loss of the first step (before any update)
  double last_loss = 0;
};

// Trains warmup + steps steps; rank `rank` of `world` takes rows rank*b .. rank*b+b-1 of each
// step's world*b rows, as the peers do. `collective` (may be null for one rank) is barriered
// around the timed steps so that they measure the job, not a rank's start.
Measured train_ours(const BenchOptions& o, const Fixture& f, Trainer& trainer, int rank, int world,
                    Collective* collective) {
  Measured m;
  const size_t b = static_cast<size_t>(o.micro_batch);
  size_t next = 0;
  Clock::time_point start;
  double cpu_start = 0;
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    if (step == o.warmup) {
      if (collective != nullptr) check(collective->barrier(), "barrier");
      start = Clock::now();
      cpu_start = process_cpu_seconds();
    }
    std::vector<PackedRow> batch;
    for (size_t i = 0; i < b; ++i) batch.push_back(f.rows[(next + static_cast<size_t>(rank) * b + i) % f.rows.size()]);
    next += b * static_cast<size_t>(world);
    check(trainer.accumulate(batch), "accumulate");
    StepStats stats = take(trainer.step(), "step");
    if (step == 0) m.first_loss = stats.loss;
    m.last_loss = stats.loss;
  }
  if (collective != nullptr) check(collective->barrier(), "barrier");
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu_seconds = process_cpu_seconds() - cpu_start;
  const double own_tokens = static_cast<double>(o.steps) * static_cast<double>(b) * static_cast<double>(o.seq);
  m.tokens_per_s = own_tokens * static_cast<double>(world) / seconds;
  m.tokens_per_cpu_s = own_tokens / cpu_seconds;
  return m;
}

std::vector<std::string> peer_flags(const BenchOptions& o, const Fixture& f, int intermediate) {
  return {"--hidden", std::to_string(o.hidden), "--intermediate", std::to_string(intermediate),
          "--layers", std::to_string(o.layers), "--heads", std::to_string(o.heads),
          "--vocab", std::to_string(f.vocab), "--seq", std::to_string(o.seq),
          "--micro-batch", std::to_string(o.micro_batch), "--lr", "3e-4", "--weight-decay", "0",
          "--max-grad-norm", "1.0", "--warmup", std::to_string(o.warmup), "--steps", std::to_string(o.steps),
          "--rows", f.rows_path, "--weights", f.dir + "/init/model.safetensors"};
}

Measured measure_peer(const BenchOptions& o, const std::string& script, std::vector<std::string> flags) {
  std::vector<std::string> argv = {o.python, std::string(CAIRN_SOURCE_DIR) + "/bench/train/" + script};
  argv.insert(argv.end(), flags.begin(), flags.end());
  json result = last_json_line(run_captured(argv), script);
  Measured m;
  m.tokens_per_s = result.at("tokens_per_s").get<double>();
  m.tokens_per_cpu_s = result.at("tokens_per_cpu_s").get<double>();
  m.first_loss = result.at("losses").front().get<double>();
  m.last_loss = result.at("losses").back().get<double>();
  return m;
}

int derived_intermediate(const BenchOptions& o, const Fixture& f) {
  auto config = job_config(o, f);
  auto llama = take(to_llama_config(*config.architecture, f.vocab, o.seq), "architecture");
  return static_cast<int>(llama.intermediate_size);
}

// ---- ddp ranks ----

// A child process running this program as one rank, with pipes to its stdin and from its stdout.
struct Child {
  pid_t pid = -1;
  FILE* in = nullptr;   // its stdin
  FILE* out = nullptr;  // its stdout

  std::string read_line() {
    char buf[4096];
    if (std::fgets(buf, sizeof buf, out) == nullptr) die("rank process ended early");
    std::string line(buf);
    if (!line.empty() && line.back() == '\n') line.pop_back();
    return line;
  }
  void finish() {
    if (in) std::fclose(in);
    if (out) std::fclose(out);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("a rank process failed");
  }
};

Child spawn_rank(const BenchOptions& o, int rank) {
  int to_child[2], from_child[2];
  if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) die("pipe failed");
  std::vector<std::string> args = {"/proc/self/exe", "--child-rank", std::to_string(rank), "--work-dir", o.work_dir};
  for (auto& flag : shape_flags(o)) args.push_back(flag);
  const pid_t pid = ::fork();
  if (pid < 0) die("fork failed");
  if (pid == 0) {
    ::dup2(to_child[0], STDIN_FILENO);
    ::dup2(from_child[1], STDOUT_FILENO);
    for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) ::close(fd);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv("/proc/self/exe", argv.data());
    std::_Exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  Child child;
  child.pid = pid;
  child.in = ::fdopen(to_child[1], "w");
  child.out = ::fdopen(from_child[0], "r");
  return child;
}

// Rank side: binds a ring endpoint, prints "port N", reads "peers ADDR ADDR" from stdin, trains
// with one thread, and (rank 0) prints the result as JSON.
int run_child(const BenchOptions& o) {
  constexpr int kWorld = 2;
  Fixture f;
  f.dir = o.work_dir;
  f.tokenizer_path = o.work_dir + "/tokenizer.json";
  f.vocab = static_cast<int64_t>(take(Tokenizer::load(f.tokenizer_path), "tokenizer").vocab_size());
  // The rows the parent packed, read back from the peers' file.
  std::ifstream in(o.work_dir + "/rows.bin", std::ios::binary | std::ios::ate);
  const auto bytes = static_cast<size_t>(in.tellg());
  in.seekg(0);
  std::vector<int32_t> flat(bytes / sizeof(int32_t));
  in.read(reinterpret_cast<char*>(flat.data()), static_cast<std::streamsize>(bytes));
  const size_t seq = static_cast<size_t>(o.seq);
  for (size_t r = 0; r * 4 * seq < flat.size(); ++r) {
    const int32_t* base = flat.data() + r * 4 * seq;
    PackedRow row;
    row.input_ids.assign(base, base + seq);
    row.labels.assign(base + seq, base + 2 * seq);
    row.position_ids.assign(base + 2 * seq, base + 3 * seq);
    const int32_t* segments = base + 3 * seq;
    for (size_t i = 0; i < seq && segments[i] != 0; ++i) {
      if (i == 0 || segments[i] != segments[i - 1]) row.doc_lens.push_back(0);
      ++row.doc_lens.back();
    }
    f.rows.push_back(std::move(row));
  }

  auto endpoint = take(RingEndpoint::listen(HostPort{"127.0.0.1", 0}), "ring listen");
  std::printf("port %u\n", static_cast<unsigned>(endpoint->bound().port));
  std::fflush(stdout);
  char line[512];
  if (std::fgets(line, sizeof line, stdin) == nullptr) die("no peers line");
  RingOptions ring;
  ring.rank = o.child_rank;
  ring.world_size = kWorld;
  ring.secret = "train_bench";
  std::istringstream peers(line);
  std::string word;
  peers >> word;
  while (peers >> word) ring.peers.push_back(take(parse_host_port(word), "peer address"));
  auto collective = take(endpoint->connect(ring), "ring connect");

  TrainerOptions options;
  options.rank = o.child_rank;
  options.world_size = kWorld;
  options.collective = collective.get();
  options.num_threads = 1;
  if (o.bucket_mib > 0) options.bucket_bytes = static_cast<size_t>(o.bucket_mib * (1 << 20));
  auto trainer = take(Trainer::create(job_config(o, f), trainer_init(o, f), options), "trainer");
  Measured m = train_ours(o, f, *trainer, o.child_rank, kWorld, collective.get());
  if (o.child_rank == 0) {
    std::printf("%s\n", json{{"tokens_per_s", m.tokens_per_s}, {"tokens_per_cpu_s", m.tokens_per_cpu_s},
                              {"first_loss", m.first_loss}, {"last_loss", m.last_loss}}
                            .dump()
                            .c_str());
    std::fflush(stdout);
  }
  return 0;
}

Measured measure_ours_ddp(const BenchOptions& o) {
  std::vector<Child> ranks = {spawn_rank(o, 0), spawn_rank(o, 1)};
  std::string peers = "peers";
  for (auto& r : ranks) {
    std::string line = r.read_line();
    while (line.rfind("port ", 0) != 0) line = r.read_line();  // skipping anything logged first
    peers += " 127.0.0.1:" + line.substr(5);
  }
  for (auto& r : ranks) {
    std::fprintf(r.in, "%s\n", peers.c_str());
    std::fflush(r.in);
  }
  // Rank 0's result is its first line that is a JSON object (libraries may log to stdout too).
  std::string line = ranks[0].read_line();
  while (line.empty() || line.front() != '{') line = ranks[0].read_line();
  json result = last_json_line(line, "rank 0");
  for (auto& r : ranks) r.finish();
  Measured m;
  m.tokens_per_s = result.at("tokens_per_s").get<double>();
  m.tokens_per_cpu_s = result.at("tokens_per_cpu_s").get<double>();
  m.first_loss = result.at("first_loss").get<double>();
  m.last_loss = result.at("last_loss").get<double>();
  return m;
}

// ---- report ----

struct Comparison {
  std::string name;
  std::vector<Measured> ours, peer;
  double goal = 0;

  static double best(const std::vector<Measured>& runs) {
    double b = 0;
    for (const auto& r : runs) b = std::max(b, r.tokens_per_s);
    return b;
  }
  static double best_cpu(const std::vector<Measured>& runs) {
    double b = 0;
    for (const auto& r : runs) b = std::max(b, r.tokens_per_cpu_s);
    return b;
  }
  static std::string all(const std::vector<Measured>& runs) {
    std::string s;
    for (const auto& r : runs) s += (s.empty() ? "" : ", ") + fixed(r.tokens_per_s, 0);
    return s;
  }
  double ratio() const { return best(ours) / best(peer); }
  // Each round's ours / peer (the peer runs right after ours), sorted: the load shifts less
  // within a round than between rounds, so these pair like with like better than the best of each.
  std::vector<double> round_ratios() const {
    std::vector<double> r;
    for (size_t i = 0; i < ours.size() && i < peer.size(); ++i) r.push_back(ours[i].tokens_per_s / peer[i].tokens_per_s);
    std::sort(r.begin(), r.end());
    return r;
  }
};

void ensure_environment(char** argv) {
  if (std::getenv(kEnvMarker) != nullptr) return;
  for (const auto& kv : kEnv) ::setenv(kv[0], kv[1], 1);
  ::setenv(kEnvMarker, "1", 1);
  ::execv("/proc/self/exe", argv);
  die(std::string("re-exec failed: ") + std::strerror(errno));
}

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) {
  using namespace cairn;
  using namespace cairn::bench;
  ensure_environment(argv);
  BenchOptions o = parse_args(argc, argv);
  if (o.child_rank >= 0) return run_child(o);
  const MachineInfo machine = describe_machine();

  char dir_template[] = "/tmp/cairn-train-bench-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) die("mkdtemp failed");
  o.work_dir = dir_template;
  // Distinct rows for every step of the 2-rank job (the single job uses the first half of each).
  Fixture f = make_fixture(o, o.work_dir, static_cast<size_t>(o.micro_batch) * 2 * static_cast<size_t>(o.warmup + o.steps));
  const int intermediate = derived_intermediate(o, f);
  std::cerr << "train_bench: model hidden " << o.hidden << ", intermediate " << intermediate << ", " << o.layers
            << " layers, " << o.heads << " heads, vocab " << f.vocab << "; rows of " << o.seq << " tokens, micro-batch "
            << o.micro_batch << "; " << o.warmup << " warmup + " << o.steps << " timed steps, " << o.rounds
            << " rounds\n";

  std::vector<Comparison> comparisons;
  int64_t parameters = 0;
  if (o.mode == "all" || o.mode == "single") {
    Comparison c{"single process, " + std::to_string(o.threads) + " threads: Trainer vs torch eager", {}, {}, kGoalSingle};
    for (int round = 0; round < o.rounds; ++round) {
      TrainerOptions options;
      options.num_threads = o.threads;
      auto trainer = take(Trainer::create(job_config(o, f), trainer_init(o, f), options), "trainer");
      parameters = trainer->trainable_parameter_count();
      if (round == 0) check(trainer->export_model(o.work_dir + "/init"), "export initial weights");
      c.ours.push_back(train_ours(o, f, *trainer, 0, 1, nullptr));
      auto flags = peer_flags(o, f, intermediate);
      flags.insert(flags.end(), {"--threads", std::to_string(o.threads)});
      c.peer.push_back(measure_peer(o, "torch_peer.py", flags));
      std::cerr << "train_bench: single round " << round + 1 << ": ours " << fixed(c.ours.back().tokens_per_s, 0)
                << " tokens/s, torch " << fixed(c.peer.back().tokens_per_s, 0) << " tokens/s\n";
    }
    comparisons.push_back(c);
  }
  if (o.mode == "all" || o.mode == "ddp") {
    if (!std::filesystem::exists(o.work_dir + "/init/model.safetensors")) {
      TrainerOptions options;
      options.num_threads = 1;
      auto trainer = take(Trainer::create(job_config(o, f), trainer_init(o, f), options), "trainer");
      parameters = trainer->trainable_parameter_count();
      check(trainer->export_model(o.work_dir + "/init"), "export initial weights");
    }
    Comparison c{"2 processes x 1 thread: Trainer over the TCP ring vs DDP + gloo", {}, {}, kGoalDdp};
    for (int round = 0; round < o.rounds; ++round) {
      c.ours.push_back(measure_ours_ddp(o));
      auto flags = peer_flags(o, f, intermediate);
      flags.insert(flags.end(), {"--world", "2", "--threads", "1"});
      c.peer.push_back(measure_peer(o, "ddp_peer.py", flags));
      std::cerr << "train_bench: ddp round " << round + 1 << ": ours " << fixed(c.ours.back().tokens_per_s, 0)
                << " tokens/s, torch " << fixed(c.peer.back().tokens_per_s, 0) << " tokens/s\n";
    }
    comparisons.push_back(c);
  }

  std::ostringstream t;
  t << "| setting | Cairn tokens/s (best; rounds) | torch tokens/s (best; rounds) | ratio | goal | tokens per CPU-second "
       "Cairn / torch (ratio) | first-step loss Cairn / torch |\n"
    << "| --- | --- | --- | --- | --- | --- | --- |\n";
  for (const auto& c : comparisons) {
    t << "| " << c.name << " | " << fixed(Comparison::best(c.ours), 0) << " (" << Comparison::all(c.ours) << ") | "
      << fixed(Comparison::best(c.peer), 0) << " (" << Comparison::all(c.peer) << ") | " << fixed(c.ratio(), 2)
      << "x | >= " << fixed(c.goal, 1) << "x: " << (c.ratio() >= c.goal ? "met" : "NOT met") << " | "
      << fixed(Comparison::best_cpu(c.ours), 0) << " / " << fixed(Comparison::best_cpu(c.peer), 0) << " ("
      << fixed(Comparison::best_cpu(c.ours) / Comparison::best_cpu(c.peer), 2) << "x) | "
      << fixed(c.ours.front().first_loss, 4) << " / " << fixed(c.peer.front().first_loss, 4) << " |\n";
  }
  for (const auto& c : comparisons) {
    const std::vector<double> r = c.round_ratios();
    t << "\n" << c.name << ": per-round ratio (sorted):";
    for (double x : r) t << " " << fixed(x, 2) << "x";
    t << "; median " << fixed(r[r.size() / 2], 2) << "x.\n";
  }
  std::cout << t.str();

  if (!o.results.empty()) {
    std::ostringstream s;
    s << "\n## train_bench (issue #5): " << machine.date_utc << "\n\n";
    s << machine_summary(machine) << ". Peer: PyTorch eager (" << o.python
      << ", Debian python3-torch 1.13).\n";
    s << "Model: Llama, hidden " << o.hidden << ", intermediate " << intermediate << ", " << o.layers << " layers, "
      << o.heads << " heads, vocab " << f.vocab << " (demo tokenizer), tied embeddings, " << parameters
      << " parameters. Rows: " << o.seq << " tokens packed from the demo corpus, micro-batch " << o.micro_batch
      << " per rank; AdamW lr 3e-4, clip 1.0; " << o.warmup << " warmup + " << o.steps << " timed steps, best of "
      << o.rounds << " rounds. OPENBLAS_NUM_THREADS=1, MALLOC_MMAP_THRESHOLD_=33554432, "
      << "MALLOC_TRIM_THRESHOLD_=17179869184 for both; tokens/s counts every position of every row (all ranks); "
      << "tokens per CPU-second: rank 0's own rows over rank 0's CPU time, every thread counted, which load from "
      << "other processes barely moves.\n\n";
    s << t.str();
    append_section(o.results, s.str());
  }
  std::filesystem::remove_all(o.work_dir);
  return 0;
}
