# safetensors: the torch-free reader and writer, and its bridge to at::Tensor.
list(APPEND CAIRN_MODEL_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/safetensors.cc)
list(APPEND CAIRN_MODEL_TORCH_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/safetensors_torch.cc)
list(APPEND CAIRN_MODEL_TORCH_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/detail/torch_error.cc)
