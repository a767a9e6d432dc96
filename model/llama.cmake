# The Llama model, its Hugging Face checkpoints, LoRA, sampling and generation.
# Torch-free (cairn_text): configs and options, shared file helpers.
list(APPEND CAIRN_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/llama_config.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/sampling_options.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/files.cc)
# libtorch (cairn_model).
list(APPEND CAIRN_MODEL_TORCH_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/linear.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/llama.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/hf_checkpoint.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/lora.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/sampling.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/generate.cc)
