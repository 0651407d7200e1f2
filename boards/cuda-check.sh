#!/usr/bin/env bash
# The CUDA build's device check, for a machine with an NVIDIA GPU (a Jetson,
# or an x86 host with a driver): build `--features cuda` for this machine's
# GPU if no build is given, then
#   1. `board show` must list the GPU;
#   2. `bench` with every layer on the GPU (--ngl 99), beside the CPU build's;
#   3. the greedy answer with every layer on the GPU must name what the CPU
#      build's names, and is printed beside it (the two round differently,
#      so near-ties may part; the test goldens hold the same way).
# Usage: boards/cuda-check.sh [BOARD]    (default: host; jetson-orin-nano on a
#                                         Jetson; see boards/build.sh)
# Environment: FERRITE_CUDA_BIN  a cuda build to check instead of building one
#              FERRITE_CUDA_ARCHS  device code to build (default: the board
#                                  profile's cuda_arch, else `native`)
#              CUDA_PATH  the toolkit (default: /usr/local/cuda, else the
#                         packaged one, boards/cuda-toolkit.sh)
# Exit status 0 only when all three hold. Prints a summary for benches/README.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
board="${1:-host}"
cd "$root"
. boards/profile.sh
target="$(profile_field "boards/$board.toml" target)"
fail() { echo "cuda-check: FAIL: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this check needs a machine with an NVIDIA GPU and its driver"
nvidia-smi -L

bin="${FERRITE_CUDA_BIN:-$root/target/board-$board/$target/release/ferrite}"
if [ ! -x "$bin" ]; then
  t0=$(date +%s)
  FERRITE_CUDA_ARCHS="${FERRITE_CUDA_ARCHS:-}" boards/build.sh "$board" build --features cuda
  echo "cuda-check: built in $(( $(date +%s) - t0 )) s" >&2
fi
cpu="$root/target/release/ferrite"
[ -x "$cpu" ] || cargo build --release
# The packaged toolkit's cuBLAS is a shared library the binary needs at run time.
for d in "${CUDA_PATH:-}" /usr/local/cuda "$root"/target/cuda/*/nvidia/cu13; do
  [ -n "$d" ] && [ -d "$d/lib" ] && export LD_LIBRARY_PATH="$d/lib:$d/lib64:${LD_LIBRARY_PATH:-}"
done

model="$("$cpu" models path smollm2-135m 2>/dev/null || true)"
if [ -z "$model" ]; then "$cpu" models pull smollm2-135m; model="$("$cpu" models path smollm2-135m)"; fi

echo "== 1. board show lists the GPU"
"$bin" --board "$board" board show | tee /tmp/cuda-check-board.txt | grep '^# gpu' || true
grep -q '^# gpu: ' /tmp/cuda-check-board.txt && ! grep -q 'gpu: none' /tmp/cuda-check-board.txt \
  || fail "board show lists no GPU"

echo "== 2. bench, every layer on the GPU, and the CPU build"
"$bin" bench -m "$model" --ngl 99 -p 512 -n 128 -r 3
"$cpu" bench -m "$model" -p 512 -n 128 -r 3

echo "== 3. the same greedy answer"
q="What is the capital of Japan?"
gpu_answer="$("$bin" ask -m "$model" --ngl 99 --temp 0 -n 32 "$q")"
cpu_answer="$("$cpu" ask -m "$model" --temp 0 -n 32 "$q")"
echo "gpu: $gpu_answer"
echo "cpu: $cpu_answer"
case "$gpu_answer" in *Tokyo*) ;; *) fail "the GPU's answer does not name Tokyo" ;; esac
if [ "$gpu_answer" = "$cpu_answer" ]; then echo "cuda-check: answers equal"; else echo "cuda-check: answers differ after rounding (both name Tokyo)"; fi
echo "cuda-check: ok"
