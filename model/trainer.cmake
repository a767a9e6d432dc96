# The trainer: one data-parallel replica (model/trainer.h), its optimizer (model/optim.h), chunked
# loss and gradient checkpointing (model/detail/train_*). libtorch: cairn_model.
list(APPEND CAIRN_MODEL_TORCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/trainer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/optim.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/train_checkpoint.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/train_loss.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/row_blocks.cc)
# at::parallel_for is a header template whose OpenMP pragma only splits the work when the
# including file is compiled with OpenMP (libtorch's own parallel backend); without the flag the
# training path's blocked products (detail/row_blocks.h) run on one thread.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/detail/row_blocks.cc PROPERTIES COMPILE_OPTIONS -fopenmp)
# That file then calls the OpenMP runtime (libgomp, which libtorch loads anyway) directly; the
# target exists only after this file is included, hence the deferred call.
cmake_language(DEFER CALL target_link_libraries cairn_model PRIVATE gomp)
