# The one ggml that llama.cpp and whisper.cpp share, provided from inside
# cargo's own build. `.cargo/config.toml` sets CMAKE_PROJECT_INCLUDE to this
# file; llama-cpp-sys-2 and whisper-rs-sys forward CMAKE_* variables to cmake,
# so it runs right after the project() call of both crates' cmake builds,
# before their find_package(ggml). So `cargo build`, `cargo test --target
# aarch64-unknown-linux-gnu`, `cross build` and a build on the board itself all
# get a ggml made for the target they build, with no step to run first.
#
# In llama.cpp's and whisper.cpp's projects (both link ggml from outside:
# system-ggml-static and WHISPER_USE_SYSTEM_GGML), it
#  1. builds ggml for cargo's target with boards/ggml.sh NAME (a no-op when up
#     to date; a lock keeps the two build scripts from building it at once).
#     NAME is `host` for a native build, $FERRITE_GGML_BOARD when
#     boards/build.sh names a board, else the portable profile of the target
#     (aarch64: rpi4, armv8-a; armv7: rpi-armv7), plus `-cuda` when GGML_CUDA;
#  2. puts target/ggml/NAME first in CMAKE_PREFIX_PATH for find_package;
#  3. in whisper.cpp's project, links ggml's static libraries into the build
#     tree: whisper-rs-sys names them for rustc without a search path.
# whisper.cpp calls project() twice; act once.
if(NOT (PROJECT_NAME STREQUAL "llama.cpp" OR PROJECT_NAME STREQUAL "whisper.cpp")
   OR NOT DEFINED ENV{TARGET} OR DEFINED _ferrite_prefix)
    return()
endif()

get_filename_component(_ferrite_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

# Which ggml: the board's, the host's, or the target's portable one.
if(DEFINED ENV{FERRITE_GGML_BOARD} AND NOT "$ENV{FERRITE_GGML_BOARD}" STREQUAL "")
    set(_ferrite_ggml "$ENV{FERRITE_GGML_BOARD}")
elseif("$ENV{TARGET}" STREQUAL "$ENV{HOST}")
    set(_ferrite_ggml host)
elseif("$ENV{TARGET}" MATCHES "^aarch64-.*-linux")
    set(_ferrite_ggml rpi4)
elseif("$ENV{TARGET}" MATCHES "^armv7-.*-linux-gnueabihf")
    set(_ferrite_ggml rpi-armv7)
else()
    message(FATAL_ERROR "ferrite: no ggml profile for target $ENV{TARGET}; "
        "name a boards/*.toml profile with FERRITE_GGML_BOARD")
endif()
set(_ferrite_cuda_arg "")
if(GGML_CUDA)
    set(_ferrite_cuda_arg --cuda)
endif()

# llama-cpp-sys-2's vendored ggml: the crate sits next to this build script's
# crate in cargo's registry (or vendor) folder, at the version Cargo.lock pins.
file(READ "${_ferrite_root}/Cargo.lock" _ferrite_lock)
string(REGEX MATCH "name = \"llama-cpp-sys-2\"\nversion = \"([^\"]+)\"" _ferrite_m "${_ferrite_lock}")
get_filename_component(_ferrite_reg "$ENV{CARGO_MANIFEST_DIR}" DIRECTORY)
set(_ferrite_src "")
foreach(_d "llama-cpp-sys-2-${CMAKE_MATCH_1}" "llama-cpp-sys-2")
    if(CMAKE_MATCH_1 AND EXISTS "${_ferrite_reg}/${_d}/llama.cpp/ggml/CMakeLists.txt")
        set(_ferrite_src "${_ferrite_reg}/${_d}/llama.cpp/ggml")
        break()
    endif()
endforeach()
if(_ferrite_src STREQUAL "")
    message(FATAL_ERROR "ferrite: cannot find llama-cpp-sys-2 ${CMAKE_MATCH_1}'s ggml next to $ENV{CARGO_MANIFEST_DIR}")
endif()

file(MAKE_DIRECTORY "${_ferrite_root}/target/ggml")
file(LOCK "${_ferrite_root}/target/ggml/.lock" GUARD PROCESS TIMEOUT 3600)
execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env "FERRITE_GGML_SOURCE=${_ferrite_src}"
            bash "${_ferrite_root}/boards/ggml.sh" "${_ferrite_ggml}" ${_ferrite_cuda_arg}
    RESULT_VARIABLE _ferrite_rc)
file(LOCK "${_ferrite_root}/target/ggml/.lock" RELEASE)
if(NOT _ferrite_rc EQUAL 0)
    message(FATAL_ERROR "ferrite: boards/ggml.sh ${_ferrite_ggml} ${_ferrite_cuda_arg} failed "
        "(${_ferrite_rc}); its log is in target/ggml/")
endif()
set(_ferrite_prefix "${_ferrite_root}/target/ggml/${_ferrite_ggml}")
if(_ferrite_cuda_arg)
    set(_ferrite_prefix "${_ferrite_prefix}-cuda")
endif()
list(PREPEND CMAKE_PREFIX_PATH "${_ferrite_prefix}")
message(STATUS "ferrite: ggml from ${_ferrite_prefix}")

if(PROJECT_NAME STREQUAL "whisper.cpp")
    set(_ferrite_ggml_dir "${CMAKE_BINARY_DIR}/ferrite-ggml-libs")
    file(MAKE_DIRECTORY "${_ferrite_ggml_dir}")
    file(GLOB _libs "${_ferrite_prefix}/lib/libggml*.a" "${_ferrite_prefix}/lib/ggml*.lib")
    foreach(_lib IN LISTS _libs)
        get_filename_component(_name "${_lib}" NAME)
        file(CREATE_LINK "${_lib}" "${_ferrite_ggml_dir}/${_name}" SYMBOLIC)
    endforeach()
endif()
