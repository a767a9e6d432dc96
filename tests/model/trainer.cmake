# Tests of the trainer (model/trainer.h) and its optimizer (model/optim.h).
cairn_test(optim_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/optim_test.cc DEPS cairn::model)
cairn_test(trainer_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/trainer_test.cc DEPS cairn::model cairn::cluster
  TIMEOUT 300)
