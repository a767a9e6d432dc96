# Datasets (model/data.h) and chat templates (model/chat_template.h). Torch-free: cairn_text.
list(APPEND CAIRN_MODEL_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/data.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/data_stream.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/data_devil.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/chat_template.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/data_jinja.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/detail/data_util.cc)
