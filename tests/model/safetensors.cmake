cairn_test(safetensors_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/safetensors_test.cc DEPS cairn::text)
cairn_test(safetensors_torch_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/safetensors_torch_test.cc DEPS cairn::model)
