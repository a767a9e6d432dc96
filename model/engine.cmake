# The inference engine: continuous batching over a paged KV cache (model/engine.h).
# Torch-free (cairn_text): the block manager and incremental detokenization.
list(APPEND CAIRN_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/kv_blocks.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/engine_text.cc)
# libtorch (cairn_model).
list(APPEND CAIRN_MODEL_TORCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/engine.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/decode_attention.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/dot_linear.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/engine_linear.cc)
# The decode attention kernel and the column-blocked projections share their work through
# at::parallel_for, whose OpenMP pragma only splits the work in files compiled with OpenMP; they
# then need libgomp.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/detail/decode_attention.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/engine_linear.cc PROPERTIES COMPILE_OPTIONS -fopenmp)
cmake_language(DEFER CALL target_link_libraries cairn_model PRIVATE gomp)
