# The training job config (model/train_config.h): YAML with Axolotl's keys. Torch-free: cairn_text.
list(APPEND CAIRN_MODEL_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/train_config.cc)
