# The tokenizer: byte-level BPE (model/tokenizer.h). Torch-free, so it lives in cairn_text.
list(APPEND CAIRN_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_train.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/tokenizer_bpe.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/tokenizer_pretokenize.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/tokenizer_unicode.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/tokenizer_unicode_data.cc)
