#!/usr/bin/env bash
# Build ferrite for a board profile: the profile's target triple, and on ARM
# its GGML_CPU_ARM_ARCH, so ggml compiles the kernels the board's cores have
# (dotprod/fp16/i8mm on a Pi 5 or Orin; plain armv8-a on a Pi 4). Each board
# gets its own target dir, since the flags differ.
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
if [ -n "$arch" ]; then
  export GGML_CPU_ARM_ARCH="$arch"
  # llama-cpp-sys-2 overrides GGML_CPU_ARM_ARCH on aarch64 Linux; the wrapper
  # appends -march=$arch last so the board's kernels are compiled anyway.
  prefix="$(echo "$target" | sed 's/-unknown//')"
  [ "$target" = "aarch64-unknown-linux-gnu" ] && prefix=aarch64-linux-gnu
  [ "$target" = "armv7-unknown-linux-gnueabihf" ] && prefix=arm-linux-gnueabihf
  tvar="$(echo "$target" | tr - _)"
  export FERRITE_MARCH="$arch"
  export "CC_$tvar=$here/toolchain/cc" "CXX_$tvar=$here/toolchain/cxx"
  if command -v "$prefix-gcc" >/dev/null; then
    export FERRITE_CC="$prefix-gcc" FERRITE_CXX="$prefix-g++"
  else
    export FERRITE_CC=gcc FERRITE_CXX=g++   # building on the board itself
  fi
fi
echo "board $board: target $target${arch:+, GGML_CPU_ARM_ARCH=$arch}" >&2
exec cargo "$cmd" --release --target "$target" --target-dir "target/board-$board" "$@"
