#!/usr/bin/env bash
# Build ferrite for a board profile: the profile's target triple, and a ggml
# built for the board's cores (boards/ggml.sh, GGML_CPU_ARM_ARCH from the
# profile, so dotprod/fp16/i8mm on a Pi 5 or Orin; plain armv8-a on a Pi 4).
# Each board gets its own target dir and ggml, since the flags differ.
# Usage: boards/build.sh BOARD [build|test] [cargo args...]
#   boards/build.sh rpi5                      release build for a Pi 5
#   boards/build.sh rpi5 test --lib           its unit tests (under qemu via .cargo/config.toml)
#   boards/build.sh jetson-orin-nano build --features cuda
set -euo pipefail
board="${1:?usage: boards/build.sh BOARD [build|test] [cargo args]}"
shift
cmd=build
case "${1:-}" in build|test) cmd="$1"; shift ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
profile="$here/$board.toml"
[ -f "$profile" ] || { echo "no profile $profile" >&2; exit 2; }
. "$here/profile.sh"
target="$(profile_field "$profile" target)"
arch="$(profile_field "$profile" arm_arch)"
# The board's own ggml (GGML_CPU_ARM_ARCH from the profile), which llama.cpp and
# whisper.cpp both link: boards/ggml/hook.cmake builds it from inside cargo's
# build (with ggml's CUDA backend under --features cuda) for the board named here.
export FERRITE_GGML_BOARD="$board"
# Building on the board itself (a Pi or Jetson): .cargo/config.toml's cross
# linker, qemu runner and bindgen sysroot are for x86 hosts; use the native ones.
case "$(uname -m):$target" in
  aarch64:aarch64-*|armv7l:armv7-*)
    tvar="$(echo "$target" | tr 'a-z-' 'A-Z_')"
    export "CARGO_TARGET_${tvar}_LINKER=cc" "CARGO_TARGET_${tvar}_RUNNER=env"
    export "BINDGEN_EXTRA_CLANG_ARGS_$(echo "$target" | tr - _)="
    ;;
esac
# ggml's CUDA backend (--features cuda): nvcc and the CUDA libraries from
# CUDA_PATH, JetPack's /usr/local/cuda, or the packaged toolkit on an x86_64
# host (boards/cuda-toolkit.sh); find_cuda_helper (llama-cpp-sys-2) takes the
# link search path from CUDA_LIBRARY_PATH (its lib64 and lib64/stubs).
case " $* " in
  *cuda*)
    if [ -z "${CUDA_PATH:-}" ]; then
      if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_PATH=/usr/local/cuda
      else CUDA_PATH="$("$here/cuda-toolkit.sh")"; fi
    fi
    export CUDA_PATH CUDA_LIBRARY_PATH="${CUDA_LIBRARY_PATH:-$CUDA_PATH}"
    echo "board $board: CUDA from $CUDA_PATH" >&2
    ;;
esac
echo "board $board: target $target${arch:+, GGML_CPU_ARM_ARCH=$arch}" >&2
exec cargo "$cmd" --release --target "$target" --target-dir "target/board-$board" "$@"
