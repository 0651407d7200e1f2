# Included after every project() call of the cmake builds that cargo runs
# (CMAKE_PROJECT_INCLUDE in .cargo/config.toml). Only whisper.cpp's build acts:
# whisper-rs-sys tells rustc to link ggml, ggml-base and ggml-cpu statically but
# searches only its own build tree, so this links the shared ggml's static
# libraries (from CMAKE_PREFIX_PATH, built by boards/ggml.sh) into that tree.
if(PROJECT_NAME STREQUAL "whisper.cpp" AND WHISPER_USE_SYSTEM_GGML)
    set(_ferrite_ggml_dir "${CMAKE_BINARY_DIR}/ferrite-ggml-libs")
    file(MAKE_DIRECTORY "${_ferrite_ggml_dir}")
    foreach(_prefix IN LISTS CMAKE_PREFIX_PATH)
        file(GLOB _libs "${_prefix}/lib/libggml*.a" "${_prefix}/lib/ggml*.lib")
        foreach(_lib IN LISTS _libs)
            get_filename_component(_name "${_lib}" NAME)
            file(CREATE_LINK "${_lib}" "${_ferrite_ggml_dir}/${_name}" SYMBOLIC)
        endforeach()
    endforeach()
endif()
