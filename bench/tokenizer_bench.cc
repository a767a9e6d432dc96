// tokenizer_bench: encode throughput of Cairn's byte-level BPE (model/tokenizer.h) against npm's
// tiktoken (the WASM build of OpenAI's Rust tokenizer) and gpt-tokenizer (pure JavaScript), all with
// GPT-2's vocabulary, on the same text (issue #4). Every encoder must give the same ids.
//
// Rounds alternate between the JavaScript peers (one node process per round, bench/tokenizer/peers.js)
// and Cairn, so that load from other work on the machine falls on all of them alike. Each encoder
// encodes the whole text once untimed (caches, JIT) before it is timed; Cairn's first encode with a
// freshly loaded tokenizer (cold word cache) is reported as well. All are single-threaded.
//
// Goal (issue #4): Cairn >= 1.5x tiktoken's MB/s.
//
// Run it with bench/tokenizer/run.sh, which installs the npm packages and makes the 5 MiB text:
//   tokenizer_bench --text FILE --gpt2 DIR --peers PEERS_JS --work DIR [--rounds N]
//                   [--results FILE | --no-results]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_support.h"
#include "model/tokenizer.h"

namespace cairn::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kGoalVsTiktoken = 1.5;  // Cairn MB/s / tiktoken MB/s, at least

struct BenchOptions {
  std::string text;          // the text to encode (UTF-8)
  std::string gpt2_dir;      // encoder.json + vocab.bpe
  std::string peers_script;  // bench/tokenizer/peers.js, with its node_modules beside it
  std::string work_dir;      // where the peers write their ids
  size_t rounds = 3;         // timed encodes per encoder, alternating
  std::string results = std::string(CAIRN_SOURCE_DIR) + "/bench/RESULTS.md";  // "" = do not append
};

BenchOptions parse_args(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--text") {
      options.text = value();
    } else if (arg == "--gpt2") {
      options.gpt2_dir = value();
    } else if (arg == "--peers") {
      options.peers_script = value();
    } else if (arg == "--work") {
      options.work_dir = value();
    } else if (arg == "--rounds") {
      options.rounds = std::stoul(value());
      if (options.rounds == 0) die("--rounds must be at least 1");
    } else if (arg == "--results") {
      options.results = value();
    } else if (arg == "--no-results") {
      options.results.clear();
    } else {
      die("unknown argument " + arg +
          " (usage: --text FILE --gpt2 DIR --peers PEERS_JS --work DIR [--rounds N] [--results FILE | --no-results])");
    }
  }
  if (options.text.empty() || options.gpt2_dir.empty() || options.peers_script.empty() || options.work_dir.empty()) {
    die("--text, --gpt2, --peers and --work are required (bench/tokenizer/run.sh passes them)");
  }
  return options;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Encoder {
  std::string name;
  std::string version;
  std::vector<double> mb_per_s;  // one per round
  std::vector<int32_t> ids;      // from the last round
  double median() const {
    std::vector<double> sorted = mb_per_s;
    std::sort(sorted.begin(), sorted.end());
    return sorted.empty() ? 0 : sorted[sorted.size() / 2];
  }
};

double mb_per_s(size_t bytes, Clock::duration elapsed) {
  return static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(elapsed).count();
}

// One round of the JavaScript peers: node encodes (untimed, then timed once) with each of them.
void run_peers(const BenchOptions& options, std::map<std::string, Encoder>* peers, bool keep_ids) {
  const std::string command =
      "node " + quoted(options.peers_script) + " " + quoted(options.text) + " " + quoted(options.work_dir) + " 1";
  if (std::system(command.c_str()) != 0) die("the JavaScript peers failed: " + command);
  nlohmann::json results;
  try {
    results = nlohmann::json::parse(read_file(options.work_dir + "/peers.json"));
    for (const auto& r : results) {
      Encoder& peer = (*peers)[r["name"].get<std::string>()];
      peer.name = r["name"].get<std::string>();
      peer.version = r["version"].get<std::string>();
      peer.mb_per_s.push_back(r["runs_mb_per_s"][0].get<double>());
      if (keep_ids) {
        const std::string bytes = read_file(r["ids_file"].get<std::string>());
        peer.ids.resize(bytes.size() / sizeof(int32_t));
        std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(peer.ids.data()));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    die(options.work_dir + "/peers.json: " + e.what());
  }
}

// Where two id sequences first differ, with the text around it, or "" when they are equal.
std::string first_difference(const Tokenizer& tokenizer, const std::vector<int32_t>& ours,
                             const std::vector<int32_t>& theirs) {
  if (ours == theirs) return "";
  size_t i = 0;
  while (i < ours.size() && i < theirs.size() && ours[i] == theirs[i]) ++i;
  const size_t from = i > 8 ? i - 8 : 0;
  auto context = [&](const std::vector<int32_t>& ids) {
    return tokenizer.decode(std::vector<int32_t>(ids.begin() + static_cast<long>(std::min(from, ids.size())),
                                                 ids.begin() + static_cast<long>(std::min(i + 8, ids.size()))));
  };
  return "ids differ at position " + std::to_string(i) + " (" + std::to_string(ours.size()) + " vs " +
         std::to_string(theirs.size()) + " ids); Cairn: \"" + context(ours) + "\", peer: \"" + context(theirs) + "\"";
}

int run(const BenchOptions& options) {
  const MachineInfo machine = describe_machine();
  const std::string text = read_file(options.text);

  // Cold: a freshly loaded tokenizer, its word cache empty.
  const auto load_start = Clock::now();
  auto loaded = Tokenizer::load(options.gpt2_dir);
  if (!loaded.ok()) die("loading GPT-2's files: " + loaded.status().to_string());
  const Tokenizer tokenizer = std::move(*loaded);
  const double load_s = std::chrono::duration<double>(Clock::now() - load_start).count();
  const auto cold_start = Clock::now();
  Encoder cairn{"cairn", "this tree", {}, tokenizer.encode(text)};
  const double cold_mb_per_s = mb_per_s(text.size(), Clock::now() - cold_start);
  std::fprintf(stderr, "text: %zu bytes, %zu ids; GPT-2 tokenizer loaded in %.2f s; cold encode %.1f MB/s\n",
               text.size(), cairn.ids.size(), load_s, cold_mb_per_s);

  std::map<std::string, Encoder> peers;
  for (size_t round = 0; round < options.rounds; ++round) {
    run_peers(options, &peers, round + 1 == options.rounds);
    const auto start = Clock::now();
    cairn.ids = tokenizer.encode(text);
    cairn.mb_per_s.push_back(mb_per_s(text.size(), Clock::now() - start));
    std::fprintf(stderr, "round %zu:", round + 1);
    for (const auto& [name, peer] : peers) std::fprintf(stderr, " %s %.2f MB/s,", name.c_str(), peer.mb_per_s.back());
    std::fprintf(stderr, " cairn %.2f MB/s\n", cairn.mb_per_s.back());
  }
  for (const auto& [name, peer] : peers) {
    const std::string difference = first_difference(tokenizer, cairn.ids, peer.ids);
    if (!difference.empty()) die(name + ": " + difference);
  }
  if (peers.count("tiktoken") == 0) die("no tiktoken figures from the peers");

  // Rows shared by the terminal table and the markdown section.
  std::vector<std::vector<std::string>> rows;
  auto range = [](const Encoder& e) {
    auto [lo, hi] = std::minmax_element(e.mb_per_s.begin(), e.mb_per_s.end());
    return fixed(*lo, 2) + " - " + fixed(*hi, 2);
  };
  rows.push_back({"cairn", "this tree", fixed(cairn.median(), 2), range(cairn), "1.00x"});
  for (const auto& [name, peer] : peers) {
    rows.push_back({name, peer.version, fixed(peer.median(), 2), range(peer),
                    fixed(cairn.median() / peer.median(), 2) + "x"});
  }
  const double vs_tiktoken = cairn.median() / peers["tiktoken"].median();
  const std::string goal = "cairn >= " + fixed(kGoalVsTiktoken, 1) + "x tiktoken";
  const std::string verdict = vs_tiktoken >= kGoalVsTiktoken ? "met" : "MISSED";
  const std::string method = std::to_string(text.size()) + " bytes, " + std::to_string(cairn.ids.size()) +
                             " ids, identical from every encoder; median of " + std::to_string(options.rounds) +
                             " rounds, each encoder warmed up by one untimed encode, single-threaded. Cairn cold "
                             "(first encode after load): " + fixed(cold_mb_per_s, 2) + " MB/s; load " +
                             fixed(load_s, 2) + " s.";

  std::printf("\ncairn tokenizer benchmark: %s, %u cores, %s build, load average %s at start\n%s\n\n",
              machine.cpu_model.c_str(), machine.cores, CAIRN_BUILD_TYPE, machine.load.c_str(), method.c_str());
  std::printf("  %-14s %-10s %-12s %-18s %s\n", "encoder", "version", "MB/s", "range", "cairn is");
  for (const auto& row : rows) {
    std::printf("  %-14s %-10s %-12s %-18s %s\n", row[0].c_str(), row[1].c_str(), row[2].c_str(), row[3].c_str(),
                row[4].c_str());
  }
  std::printf("\ngoal (issue #4): %s: %sx, %s\n\n", goal.c_str(), fixed(vs_tiktoken, 2).c_str(), verdict.c_str());

  if (!options.results.empty()) {
    std::ostringstream md;
    md << "\n## tokenizer_bench, " << machine.date_utc << "\n\n"
       << "Machine: " << machine.kernel << ", " << machine.cpu_model << ", " << machine.cores << " cores; "
       << CAIRN_BUILD_TYPE << " build; load average " << machine.load << " at start. GPT-2 encode of "
       << "bench/tokenizer/run.sh's text: " << method << "\n\n"
       << "| encoder | version | MB/s (median) | range | cairn is |\n| --- | --- | --- | --- | --- |\n";
    for (const auto& row : rows) {
      md << "| " << row[0] << " | " << row[1] << " | " << row[2] << " | " << row[3] << " | " << row[4] << " |\n";
    }
    md << "\n| goal | measured | result |\n| --- | --- | --- |\n"
       << "| " << goal << " | " << fixed(vs_tiktoken, 2) << "x | " << verdict << " |\n";
    const Status appended = append_results(options.results, kResultsHeader, md.str());
    if (!appended.ok()) die(appended.to_string());
    std::printf("appended to %s\n", options.results.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace cairn::bench

int main(int argc, char** argv) { return cairn::bench::run(cairn::bench::parse_args(argc, argv)); }
