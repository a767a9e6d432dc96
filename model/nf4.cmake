# NF4 4-bit quantization (model/nf4.h): part of cairn_model, the torch library.
list(APPEND CAIRN_MODEL_TORCH_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/nf4.cc)
list(APPEND CAIRN_MODEL_TORCH_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/qlora.cc)
