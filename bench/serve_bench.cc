// Serving throughput of the inference engine (issue #6): generated tokens/s and time to first
// token at 1, 8, 32 and 64 concurrent clients, against sequential one-request-at-a-time decoding
// with generate() on the same model, and against a plain PyTorch greedy loop with a KV cache
// (bench/serve/torch_greedy.py under /usr/bin/python3), all in the same run.
//
// Clients are threads submitting straight to an InferenceEngine whose step() loop runs on its own
// thread (the batcher's arrangement, without HTTP). Each client sends its requests one after the
// other; every request has a 64-token random prompt and generates 128 tokens greedily (eos
// ignored).
//
//   serve_bench [--no-results] [--quick] [--no-python] [--threads N] [--clients 1,8,...]
//               [--no-sequential]
//
// --quick: fewer layers and requests (a trial run). Appends a section to bench/RESULTS.md unless
// --no-results. Run with OPENBLAS_NUM_THREADS=1 and the malloc environment of scripts/bench.sh.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_support.h"
#include "model/engine.h"
#include "model/generate.h"
#include "model/hf_checkpoint.h"
#include "model/llama.h"

namespace cairn::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  bool results = true;
  bool quick = false;
  bool python = true;
  int threads = 2;
  std::vector<int> clients = {1, 8, 32, 64};
  bool sequential = true;
};

struct Shape {
  int64_t prompt = 64;
  int64_t generated = 128;
};

LlamaConfig bench_config(bool quick) {
  LlamaConfig c;
  c.vocab_size = 8192;
  c.hidden_size = 512;
  c.intermediate_size = 1376;
  c.num_hidden_layers = quick ? 2 : 8;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5;
  c.initializer_range = 0.05;
  c.eos_token_ids = {};
  return c;
}

std::string shape_text(const LlamaConfig& c) {
  std::ostringstream out;
  out << "hidden " << c.hidden_size << ", " << c.num_hidden_layers << " layers, " << c.num_attention_heads
      << " heads (" << c.num_key_value_heads << " kv), head_dim " << c.head_dim << ", MLP " << c.intermediate_size
      << ", vocab " << c.vocab_size << ", fp32";
  return out.str();
}

struct Figures {
  std::string label;
  int clients = 0;
  int64_t requests = 0;
  int64_t tokens = 0;
  double seconds = 0;
  LatencySamples ttft{256};
  double tokens_per_s() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0; }
};

// One request's progress, filled on the engine thread.
struct Waiter {
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  Clock::time_point first_token;
  bool has_first = false;
  std::vector<int64_t> tokens;
  std::string finish_reason;
};

Figures run_engine(InferenceEngine& engine, int clients, int per_client, const std::vector<std::vector<int64_t>>& prompts,
                   const Shape& shape, std::vector<int64_t>* first_output) {
  Figures f;
  f.clients = clients;
  f.label = "engine";
  std::mutex results_mutex;
  std::atomic<size_t> next_prompt{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int r = 0; r < per_client; ++r) {
        const size_t index = next_prompt.fetch_add(1) % prompts.size();
        auto waiter = std::make_shared<Waiter>();
        EngineRequest request;
        request.prompt_ids = prompts[index];
        request.max_tokens = shape.generated;
        request.ignore_eos = true;
        request.on_event = [waiter](const TokenEvent& event) {
          std::lock_guard<std::mutex> lock(waiter->mutex);
          if (!event.final) {
            if (!waiter->has_first) {
              waiter->first_token = Clock::now();
              waiter->has_first = true;
            }
            waiter->tokens.push_back(event.token_id);
            return;
          }
          waiter->finish_reason = event.finish_reason;
          waiter->done = true;
          waiter->done_cv.notify_all();
        };
        const auto submitted = Clock::now();
        auto id = engine.submit(std::move(request));
        check(id, "submit");
        std::unique_lock<std::mutex> lock(waiter->mutex);
        waiter->done_cv.wait(lock, [&] { return waiter->done; });
        std::lock_guard<std::mutex> results_lock(results_mutex);
        f.requests += 1;
        f.tokens += static_cast<int64_t>(waiter->tokens.size());
        if (waiter->has_first) f.ttft.add(waiter->first_token - submitted);
        if (index == 0 && first_output != nullptr && first_output->empty()) *first_output = waiter->tokens;
        (void)c;
      }
    });
  }
  for (auto& t : threads) t.join();
  f.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return f;
}

Figures run_sequential(const LlamaModel& model, int requests, const std::vector<std::vector<int64_t>>& prompts,
                       const Shape& shape, std::vector<int64_t>* first_output) {
  Figures f;
  f.label = "sequential generate()";
  f.clients = 1;
  const auto start = Clock::now();
  for (int r = 0; r < requests; ++r) {
    GenerateOptions options;
    options.max_new_tokens = shape.generated;
    options.stop_at_eos = false;
    const auto submitted = Clock::now();
    bool first = true;
    options.on_token = [&](int64_t) {
      if (first) f.ttft.add(Clock::now() - submitted);
      first = false;
      return true;
    };
    auto out = generate(model, prompts[static_cast<size_t>(r) % prompts.size()], options);
    check(out, "generate");
    if (r == 0 && first_output != nullptr) *first_output = *out;
    f.requests += 1;
    f.tokens += static_cast<int64_t>(out->size());
  }
  f.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return f;
}

struct PythonFigures {
  bool ok = false;
  std::string error;
  std::string version;
  struct Batch {
    int size = 0;
    int64_t requests = 0;
    double tokens_per_s = 0;
    double mean_ttft_ms = 0;
    std::vector<int64_t> first_tokens;
  };
  std::vector<Batch> batches;
};

PythonFigures run_python(const std::string& model_dir, const std::string& prompts_file, const Shape& shape,
                         int threads, int single_requests) {
  PythonFigures p;
  const std::string script = std::string(CAIRN_SOURCE_DIR) + "/bench/serve/torch_greedy.py";
  const std::string command = "/usr/bin/python3 " + script + " --model " + model_dir + " --prompts " + prompts_file +
                              " --new-tokens " + std::to_string(shape.generated) + " --batches 1,32 --single-requests " +
                              std::to_string(single_requests) + " --threads " + std::to_string(threads);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    p.error = "popen failed";
    return p;
  }
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  const int rc = pclose(pipe);
  std::string last;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) last = line;
  }
  if (rc != 0 || last.empty()) {
    p.error = "python peer exited with " + std::to_string(rc) + ": " + output.substr(0, 500);
    return p;
  }
  try {
    auto json = nlohmann::json::parse(last);
    p.version = json.at("torch").get<std::string>();
    for (auto& [size, b] : json.at("batches").items()) {
      PythonFigures::Batch batch;
      batch.size = std::stoi(size);
      batch.requests = b.at("requests").get<int64_t>();
      batch.tokens_per_s = b.at("tokens_per_s").get<double>();
      batch.mean_ttft_ms = b.at("mean_ttft_ms").get<double>();
      batch.first_tokens = b.at("first_tokens").get<std::vector<int64_t>>();
      p.batches.push_back(std::move(batch));
    }
    std::sort(p.batches.begin(), p.batches.end(), [](auto& a, auto& b) { return a.size < b.size; });
    p.ok = true;
  } catch (const std::exception& e) {
    p.error = std::string("python peer output: ") + e.what();
  }
  return p;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--no-results") a.results = false;
    else if (arg == "--quick") a.quick = true;
    else if (arg == "--no-python") a.python = false;
    else if (arg == "--threads" && i + 1 < argc) a.threads = std::atoi(argv[++i]);
    else if (arg == "--clients" && i + 1 < argc) {
      // A trial at some concurrencies only (no results appended).
      a.clients.clear();
      std::istringstream list(argv[++i]);
      for (std::string item; std::getline(list, item, ',');) a.clients.push_back(std::atoi(item.c_str()));
      a.results = false;
    } else if (arg == "--no-sequential") a.sequential = false;
    else {
      std::cerr << "usage: serve_bench [--no-results] [--quick] [--no-python] [--threads N] [--clients 1,8,...] "
                   "[--no-sequential]\n";
      std::exit(2);
    }
  }
  return a;
}

int run(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  at::set_num_threads(args.threads);
  const MachineInfo machine = describe_machine();
  const Shape shape;
  const LlamaConfig config = bench_config(args.quick);

  // The model, saved so the Python peer loads the very same weights.
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("cairn-serve-bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  struct Cleanup {
    std::filesystem::path dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{dir};
  {
    auto model = LlamaModel::random(config, {}, 1);
    if (!model.ok()) return std::cerr << model.status().to_string() << "\n", 1;
    Status saved = save_llama(*model, dir.string());
    if (!saved.ok()) return std::cerr << saved.to_string() << "\n", 1;
  }
  auto reference = load_llama(dir.string());
  if (!reference.ok()) return std::cerr << reference.status().to_string() << "\n", 1;
  auto engine_model = load_llama(dir.string());
  if (!engine_model.ok()) return std::cerr << engine_model.status().to_string() << "\n", 1;

  std::mt19937_64 rng(42);
  std::vector<std::vector<int64_t>> prompts(128);
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(shape.prompt));
    for (auto& id : p) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(config.vocab_size));
  }
  const std::string prompts_file = (dir / "prompts.json").string();
  std::ofstream(prompts_file) << nlohmann::json(prompts).dump();

  EngineOptions options;
  // Room for 64 sequences of prompt + generated tokens without preemption.
  options.kv_cache_bytes = 2ull * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4 *
                           64 * (shape.prompt + shape.generated + options.block_size);
  auto engine = InferenceEngine::create(std::make_unique<LlamaModel>(std::move(*engine_model)), std::nullopt, options);
  if (!engine.ok()) return std::cerr << engine.status().to_string() << "\n", 1;
  std::atomic<bool> stop{false};
  std::thread loop([&] {
    while (!stop) {
      if (!(*engine)->step()) (*engine)->wait_for_work(std::chrono::milliseconds(50));
    }
  });

  std::cerr << "serve_bench: " << shape_text(config) << "; " << shape.prompt << "-token prompts, " << shape.generated
            << " generated tokens each\n";
  std::vector<int64_t> sequential_first, engine_first;
  const int sequential_requests = args.quick ? 1 : 3;
  // Warm up both paths (first-call allocations).
  (void)run_sequential(*reference, 1, prompts, Shape{shape.prompt, 4}, nullptr);
  (void)run_engine(**engine, 1, 1, prompts, Shape{shape.prompt, 4}, nullptr);
  Figures sequential = run_sequential(*reference, args.sequential ? sequential_requests : 0, prompts, shape,
                                      &sequential_first);
  std::cerr << "  sequential: " << fixed(sequential.tokens_per_s(), 1) << " tokens/s\n";
  std::vector<Figures> engine_runs;
  for (int clients : args.clients) {
    const int per_client = clients == 1 ? (args.quick ? 1 : 3) : clients == 8 ? 2 : 1;
    std::vector<int64_t>* first = engine_first.empty() ? &engine_first : nullptr;
    engine_runs.push_back(run_engine(**engine, clients, per_client, prompts, shape, first));
    std::cerr << "  engine, " << clients << " clients: " << fixed(engine_runs.back().tokens_per_s(), 1)
              << " tokens/s\n";
  }
  stop = true;
  (*engine)->notify();
  loop.join();
  const EngineStats stats = (*engine)->stats();
  const bool identical = engine_first == sequential_first;

  PythonFigures python;
  if (args.python) {
    python = run_python(dir.string(), prompts_file, shape, args.threads, args.quick ? 1 : 2);
    if (!python.ok) std::cerr << "  python peer: " << python.error << "\n";
  }
  auto python_at = [&](int size) -> const PythonFigures::Batch* {
    for (const auto& b : python.batches) {
      if (b.size == size) return &b;
    }
    return nullptr;
  };
  const PythonFigures::Batch* py1 = python_at(1);
  const PythonFigures::Batch* py32 = python_at(32);
  const bool python_identical = py1 != nullptr && py1->first_tokens == sequential_first;

  std::ostringstream table;
  table << "| run | clients | requests | generated tokens/s | TTFT p50 | TTFT p99 | vs sequential | vs python batch 1 |\n"
        << "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
  auto ratio = [](double a, double b) { return b > 0 ? fixed(a / b, 2) + "x" : std::string("-"); };
  const double seq_tps = sequential.tokens_per_s();
  const double py1_tps = py1 != nullptr ? py1->tokens_per_s : 0;
  table << "| sequential generate() | 1 | " << sequential.requests << " | " << fixed(seq_tps, 1) << " | "
        << fixed(sequential.ttft.percentile_us(50) / 1000, 1) << " ms | "
        << fixed(sequential.ttft.percentile_us(99) / 1000, 1) << " ms | 1.00x | " << ratio(seq_tps, py1_tps) << " |\n";
  for (Figures& f : engine_runs) {
    table << "| engine | " << f.clients << " | " << f.requests << " | " << fixed(f.tokens_per_s(), 1) << " | "
          << fixed(f.ttft.percentile_us(50) / 1000, 1) << " ms | " << fixed(f.ttft.percentile_us(99) / 1000, 1)
          << " ms | " << ratio(f.tokens_per_s(), seq_tps) << " | " << ratio(f.tokens_per_s(), py1_tps) << " |\n";
  }
  for (const auto& b : python.batches) {
    table << "| python torch " << python.version << ", static batch " << b.size << " | " << b.size << " | "
          << b.requests << " | " << fixed(b.tokens_per_s, 1) << " | mean " << fixed(b.mean_ttft_ms, 1)
          << " ms | - | " << ratio(b.tokens_per_s, seq_tps) << " | " << ratio(b.tokens_per_s, py1_tps) << " |\n";
  }
  Figures none;
  const Figures* found32 = &none;
  for (const Figures& f : engine_runs) {
    if (f.clients == 32) found32 = &f;
  }
  const Figures& at32 = *found32;
  const double goal = seq_tps > 0 ? at32.tokens_per_s() / seq_tps : 0;
  std::ostringstream summary;
  summary << "| goal | measured | result |\n| --- | --- | --- |\n"
          << "| engine at 32 clients >= 8x sequential generate() | " << fixed(goal, 2) << "x | "
          << (goal >= 8 ? "met" : "not met") << " |\n";
  if (py32 != nullptr) {
    summary << "| engine at 32 clients vs python static batch 32 | " << ratio(at32.tokens_per_s(), py32->tokens_per_s)
            << " | informational |\n";
  }

  std::ostringstream section;
  section << "## serve_bench (issue #6): " << machine.date_utc << "\n\n"
          << "Machine: 2-core Debian 12 VM (" << machine.cpu_model << ", " << machine.cores << " cores, "
          << machine.kernel << "); load " << machine.load << " at start; build " << CAIRN_BUILD_TYPE
          << "; ATen threads " << args.threads << ".\n"
          << "Model: random Llama, " << shape_text(config) << ". Each request: " << shape.prompt
          << "-token random prompt, " << shape.generated
          << " tokens greedy (eos ignored). Engine: clients are threads submitting to an InferenceEngine (not "
             "through HTTP), block_size "
          << options.block_size << ", max_step_tokens " << options.max_step_tokens << ", KV budget "
          << (options.kv_cache_bytes >> 20) << " MiB (no preemption: " << stats.preempted_total
          << " preempted). Engine output of prompt 0 " << (identical ? "identical to" : "DIFFERS from")
          << " generate()'s";
  if (py1 != nullptr) section << "; python's " << (python_identical ? "identical too" : "differs (float rounding)");
  section << ". Python peer: bench/serve/torch_greedy.py, plain torch eager greedy loop with a preallocated KV "
             "cache, same weights, one static batch at a time.\n\n"
          << table.str() << "\n" << summary.str();
  if (!python.ok && args.python) section << "\nPython peer failed: " << python.error << "\n";
  std::cout << section.str();
  if (args.results && !args.quick) {
    Status appended = append_results(std::string(CAIRN_SOURCE_DIR) + "/bench/RESULTS.md", "# Benchmark results\n",
                                     "\n" + section.str());
    if (!appended.ok()) return std::cerr << appended.to_string() << "\n", 1;
  }
  return identical || !args.sequential ? 0 : 1;
}

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) { return cairn::bench::run(argc, argv); }
