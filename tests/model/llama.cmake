# Tests of the Llama model, checkpoints, LoRA, sampling and `cairn generate`.
cairn_test(llama_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/llama_test.cc DEPS cairn::model nlohmann_json::nlohmann_json)
cairn_test(lora_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/lora_test.cc DEPS cairn::model nlohmann_json::nlohmann_json)
cairn_test(sampling_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/sampling_test.cc DEPS cairn::model)
cairn_test(generate_cli_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/generate_cli_test.cc
  DEPS cairn::text nlohmann_json::nlohmann_json NEEDS_NODE)
