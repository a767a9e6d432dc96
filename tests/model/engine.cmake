# Tests of the inference engine and its KV block manager.
cairn_test(kv_blocks_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/kv_blocks_test.cc DEPS cairn::text)
cairn_test(engine_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_test.cc DEPS cairn::model)
cairn_test(dot_linear_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/dot_linear_test.cc DEPS cairn::model)
