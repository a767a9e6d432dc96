# One helper per kind of target, so every library, test and benchmark is built the same way.

set(CAIRN_WARNINGS -Wall -Wextra -Wno-unused-parameter)

# cairn_library(NAME SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# Makes cairn_NAME (alias cairn::NAME); headers are included as "folder/header.h" from the root.
function(cairn_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(cairn_${name} ${ARG_SOURCES})
  add_library(cairn::${name} ALIAS cairn_${name})
  target_include_directories(cairn_${name} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/cairn>)
  target_link_libraries(cairn_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  target_compile_options(cairn_${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${CAIRN_WARNINGS}>)
endfunction()

# cairn_test(NAME SOURCES ... [DEPS ...] [LABELS ...] [TIMEOUT s] [NEEDS_NODE])
# A GoogleTest executable registered with ctest. Every test knows CAIRN_BINARY (the freshly built
# `cairn`) and CAIRN_SOURCE_DIR (for fixtures); NEEDS_NODE makes the test build `cairn` first.
function(cairn_test name)
  cmake_parse_arguments(ARG "NEEDS_NODE" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${CAIRN_WARNINGS})
  target_compile_definitions(${name} PRIVATE
    CAIRN_BINARY="$<TARGET_FILE:cairn>" CAIRN_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  if(ARG_NEEDS_NODE)
    add_dependencies(${name} cairn)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
endfunction()

# cairn_bench(NAME SOURCES ... [DEPS ...]): a benchmark program; never part of ctest.
function(cairn_bench name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_compile_options(${name} PRIVATE ${CAIRN_WARNINGS})
  target_compile_definitions(${name} PRIVATE
    CAIRN_BINARY="$<TARGET_FILE:cairn>" CAIRN_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_dependencies(${name} cairn)
endfunction()
