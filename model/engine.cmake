# The inference engine: continuous batching over a paged KV cache (model/engine.h).
# Torch-free (cairn_text): the block manager and incremental detokenization.
list(APPEND CAIRN_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/kv_blocks.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/engine_text.cc)
# libtorch (cairn_model).
list(APPEND CAIRN_MODEL_TORCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/engine.cc)
