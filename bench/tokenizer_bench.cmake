# tokenizer_bench (issue #4): Cairn's byte-level BPE against npm's tiktoken and gpt-tokenizer.
# Run it with bench/tokenizer/run.sh, which installs the npm packages and makes the text.
cairn_bench(tokenizer_bench SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_bench.cc
  DEPS cairn::bench_support cairn::text nlohmann_json::nlohmann_json)
