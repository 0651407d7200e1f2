#!/usr/bin/env bash
# Build ferrite for a board profile: the profile's target triple, and on ARM
# its GGML_CPU_ARM_ARCH, so ggml compiles the kernels the board's cores have
# (dotprod/fp16/i8mm on a Pi 5 or Orin; plain armv8-a on a Pi 4). Each board
# gets its own target dir, since the flags differ.
# Usage: boards/build.sh BOARD [cargo build args...]   e.g. boards/build.sh rpi5 --features cuda
set -euo pipefail
board="${1:?usage: boards/build.sh BOARD [cargo args]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"
profile="$here/$board.toml"
[ -f "$profile" ] || { echo "no profile $profile" >&2; exit 2; }
field() { sed -n "s/^$1 *= *\"\(.*\)\"/\1/p" "$profile" | head -1; }
target="$(field target)"
arch="$(field arm_arch)"
if [ -n "$arch" ]; then export GGML_CPU_ARM_ARCH="$arch"; fi
echo "board $board: target $target${arch:+, GGML_CPU_ARM_ARCH=$arch}" >&2
exec cargo build --release --target "$target" --target-dir "target/board-$board" "$@"
