# Every third-party dependency is found here, once, and exposed as an imported target.
find_package(Threads REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Boost 1.74 REQUIRED)
find_package(msgpack CONFIG REQUIRED)  # target msgpackc-cxx
find_package(nlohmann_json 3 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(spdlog REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
# RocksDB's config sets this and it breaks find_package(Torch) and gflags users after it.
unset(GFLAGS_USE_TARGET_NAMESPACE)

# CAF 0.17 ships no CMake config: make imported targets from its libraries.
function(cairn_import_caf component)
  find_library(CAF_${component}_LIBRARY NAMES caf_${component} REQUIRED)
  add_library(caf::${component} SHARED IMPORTED GLOBAL)
  set_target_properties(caf::${component} PROPERTIES IMPORTED_LOCATION ${CAF_${component}_LIBRARY})
endfunction()
find_path(CAF_INCLUDE_DIR caf/all.hpp REQUIRED)
cairn_import_caf(core)
set_target_properties(caf::core PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${CAF_INCLUDE_DIR}
  INTERFACE_LINK_LIBRARIES Threads::Threads)
cairn_import_caf(io)
set_target_properties(caf::io PROPERTIES INTERFACE_LINK_LIBRARIES caf::core)

if(CAIRN_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(CAIRN_BUILD_BENCH)
  find_package(benchmark QUIET)
endif()

# CUDA is optional: gpu/ builds its CUDA backend only when a compiler is found.
set(CAIRN_HAVE_CUDA OFF)
if(NOT CAIRN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Hopper (the GPU machines) by default; override with -DCAIRN_CUDA_ARCHITECTURES=...
    set(CAIRN_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures for gpu/")
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CAIRN_HAVE_CUDA ON)
  elseif(CAIRN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "CAIRN_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  endif()
endif()
message(STATUS "cairn: CUDA backend ${CAIRN_HAVE_CUDA}")

# libtorch (Debian's CPU build here; the pip libtorch with CUDA on the GPU machines). Only model/
# and the actors that run models link it: its headers cost ~40 s per translation unit.
find_package(Torch REQUIRED)
unset(GFLAGS_USE_TARGET_NAMESPACE)
# Debian's TorchConfig puts its flags on the `torch` target; keep them off every other target.
