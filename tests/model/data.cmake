# Tests of model/data.h and model/chat_template.h. Fast, torch-free; fixtures in tests/model/data/.
cairn_test(data_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/data_test.cc
  DEPS cairn::text nlohmann_json::nlohmann_json)
