# Provides PJRT_INCLUDE_DIR: a folder holding xla/pjrt/c/pjrt_c_api.h (PJRT C API 0.90) and
# xla/pjrt/c/pjrt_c_api_ffi_extension.h, plus xla/ffi/api/*.h.
#
# The headers are third-party and never committed: they are extracted at configure time from the
# tensorflow-cpu==2.21.0 wheel on PyPI (pinned by sha256) into the build directory. Set the
# environment variable CASCADE_PJRT_INCLUDE_DIR (or -DCASCADE_PJRT_INCLUDE_DIR=) to a folder that
# already has them to build offline.

set(_tf_version "2.21.0")
set(_tf_wheel "tensorflow_cpu-${_tf_version}-cp311-cp311-manylinux_2_27_x86_64.whl")
set(_tf_sha256 "2b847d217b02ee7731ed91431daf3250daa0196c3c94614d23be27232e6e5b6c")

if(NOT CASCADE_PJRT_INCLUDE_DIR AND DEFINED ENV{CASCADE_PJRT_INCLUDE_DIR})
  set(CASCADE_PJRT_INCLUDE_DIR "$ENV{CASCADE_PJRT_INCLUDE_DIR}")
endif()

if(CASCADE_PJRT_INCLUDE_DIR)
  if(NOT EXISTS "${CASCADE_PJRT_INCLUDE_DIR}/xla/pjrt/c/pjrt_c_api.h")
    message(FATAL_ERROR "CASCADE_PJRT_INCLUDE_DIR=${CASCADE_PJRT_INCLUDE_DIR} has no xla/pjrt/c/pjrt_c_api.h")
  endif()
  set(PJRT_INCLUDE_DIR "${CASCADE_PJRT_INCLUDE_DIR}")
  return()
endif()

set(PJRT_INCLUDE_DIR "${CMAKE_BINARY_DIR}/pjrt-include")
if(EXISTS "${PJRT_INCLUDE_DIR}/xla/pjrt/c/pjrt_c_api.h"
   AND EXISTS "${PJRT_INCLUDE_DIR}/xla/pjrt/c/pjrt_c_api_ffi_extension.h")
  return()
endif()

find_package(Python3 COMPONENTS Interpreter REQUIRED)
set(_dl "${CMAKE_BINARY_DIR}/pjrt-wheel")
file(MAKE_DIRECTORY "${_dl}")
message(STATUS "Fetching the PJRT C API header from tensorflow-cpu==${_tf_version} (pip download)")
# Pin the exact file (cp311, manylinux_2_27) so the sha256 below holds whatever Python runs pip.
execute_process(
  COMMAND "${Python3_EXECUTABLE}" -m pip download --no-deps --only-binary=:all:
          --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_27_x86_64
          "tensorflow-cpu==${_tf_version}" -d "${_dl}"
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0 OR NOT EXISTS "${_dl}/${_tf_wheel}")
  message(FATAL_ERROR
    "Could not download tensorflow-cpu==${_tf_version} to get pjrt_c_api.h (pip exit ${_rc}). "
    "Make PyPI reachable for pip, or set CASCADE_PJRT_INCLUDE_DIR to a folder holding xla/pjrt/c/pjrt_c_api.h.")
endif()
file(SHA256 "${_dl}/${_tf_wheel}" _sha)
if(NOT _sha STREQUAL _tf_sha256)
  message(FATAL_ERROR "${_tf_wheel}: sha256 ${_sha} does not match the pinned ${_tf_sha256}")
endif()
set(_x "${_dl}/extract")
file(REMOVE_RECURSE "${_x}")
file(ARCHIVE_EXTRACT INPUT "${_dl}/${_tf_wheel}" DESTINATION "${_x}"
     PATTERNS "tensorflow/include/xla/pjrt/c/*.h" "tensorflow/include/xla/ffi/api/*.h")
file(REMOVE_RECURSE "${PJRT_INCLUDE_DIR}")
file(MAKE_DIRECTORY "${PJRT_INCLUDE_DIR}")
file(COPY "${_x}/tensorflow/include/xla" DESTINATION "${PJRT_INCLUDE_DIR}")
file(REMOVE_RECURSE "${_dl}")
if(NOT EXISTS "${PJRT_INCLUDE_DIR}/xla/pjrt/c/pjrt_c_api.h")
  message(FATAL_ERROR "${_tf_wheel} did not contain tensorflow/include/xla/pjrt/c/pjrt_c_api.h")
endif()
message(STATUS "PJRT headers in ${PJRT_INCLUDE_DIR}")
