// The tiny training job the training tests submit (a 2-layer, 32-wide Llama over the fixture
// tokenizer; seconds per job), and the small completion corpus it trains on.
#pragma once

#include <string>

namespace cairn::testing {

inline const std::string kTinyJobTokenizer =
    std::string(CAIRN_SOURCE_DIR) + "/../shared/fixtures/hf/tiny-llama/tokenizer.json";

// A job config over the completion file `data_path`; `settings` adds the test's own keys
// (max_steps, logging_steps, seed, output_model, ...), one "key: value\n" line each.
inline std::string tiny_job_yaml(const std::string& data_path, const std::string& settings) {
  return "architecture:\n"
         "  hidden_size: 32\n"
         "  intermediate_size: 64\n"
         "  num_hidden_layers: 2\n"
         "  num_attention_heads: 2\n"
         "tokenizer: " + kTinyJobTokenizer + "\n"
         "datasets:\n"
         "  - path: " + data_path + "\n"
         "    type: completion\n"
         "sequence_len: 32\n"
         "excess_length_strategy: split\n"
         "micro_batch_size: 2\n"
         "learning_rate: 0.01\n" + settings;
}

// `lines` lines of {"text": ...}, short sentences of a 12-word vocabulary, deterministic.
inline std::string tiny_completion_jsonl(int lines) {
  static const char* kWords[] = {"the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "big", "sun"};
  std::string out;
  for (int i = 0; i < lines; ++i) {
    std::string text;
    for (int w = 0; w < 5 + i % 4; ++w) text += std::string(w ? " " : "") + kWords[(i * 5 + w * 7) % 12];
    out += "{\"text\": \"" + text + "\"}\n";
  }
  return out;
}

}  // namespace cairn::testing
