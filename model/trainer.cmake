# The trainer: one data-parallel replica (model/trainer.h), its optimizer (model/optim.h), chunked
# loss and gradient checkpointing (model/detail/train_*). libtorch: cairn_model.
list(APPEND CAIRN_MODEL_TORCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/trainer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/optim.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/train_checkpoint.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/train_loss.cc)
