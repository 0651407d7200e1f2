#!/usr/bin/env bash
# Build ferrite for a board profile: the profile's target triple, and a ggml
# built for the board's cores (boards/ggml.sh: GGML_CPU_ARM_ARCH from the
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
field() { sed -n "s/^$1 *= *\"\(.*\)\"/\1/p" "$profile" | head -1; }
target="$(field target)"
arch="$(field arm_arch)"
# The board's own ggml (GGML_CPU_ARM_ARCH from the profile), which llama.cpp and
# whisper.cpp both link; --features cuda adds ggml's CUDA backend.
cuda=""
case " $* " in *cuda*) cuda=--cuda ;; esac
bash "$here/ggml.sh" "$board" $cuda
root="$(cd "$here/.." && pwd)"
export CMAKE_PREFIX_PATH="$root/target/ggml/$board"
echo "board $board: target $target${arch:+, GGML_CPU_ARM_ARCH=$arch}" >&2
exec cargo "$cmd" --release --target "$target" --target-dir "target/board-$board" "$@"
