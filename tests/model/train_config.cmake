# Tests of model/train_config.h: the training job config. Fast, torch-free; reads configs/train/.
cairn_test(train_config_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/train_config_test.cc DEPS cairn::text)
