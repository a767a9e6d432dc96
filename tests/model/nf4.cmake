# Tests of model/nf4.h.
cairn_test(nf4_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/nf4_test.cc DEPS cairn::model)
cairn_test(qlora_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/qlora_test.cc DEPS cairn::model)
