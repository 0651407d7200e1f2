#!/usr/bin/env bash
# The driver API stub (lib/stubs/libcuda.so) that ggml-cuda links against
# (CMake's CUDA::cuda_driver), as a full CUDA toolkit's lib64/stubs/libcuda.so
# is: every function cuda.h declares, each returning CUDA_ERROR_STUB_LIBRARY
# (34), in a library whose soname is libcuda.so.1, so the binary loads the
# board's real driver at run time. Only the linker sees it. The packaged
# toolkit (boards/cuda-toolkit.sh) has no stubs; a toolkit that has them is
# left alone.
# Usage: boards/cuda-stub.sh CUDA_PATH [CC]
set -euo pipefail
cuda="${1:?usage: cuda-stub.sh CUDA_PATH [CC]}"
cc="${2:-cc}"
out="$cuda/lib/stubs"
[ -e "$out/libcuda.so" ] && exit 0
mkdir -p "$out"
src="$(mktemp --suffix .c)"
trap 'rm -f "$src"' EXIT
# The declared names after cuda.h's own #defines (cuMemAlloc -> cuMemAlloc_v2).
syms="$("$cc" -E -P -I"$cuda/include" "$cuda/include/cuda.h" | tr '\n' ' ' \
  | grep -oP 'CUresult\s+cu[A-Za-z0-9_]+\s*\(' | grep -oP 'cu[A-Za-z0-9_]+' | sort -u)"
[ -n "$syms" ] || { echo "cuda-stub.sh: no functions found in $cuda/include/cuda.h" >&2; exit 1; }
{
  echo '/* The CUDA driver API, each function failing with CUDA_ERROR_STUB_LIBRARY. */'
  for s in $syms; do echo "int $s(void) { return 34; }"; done
} >"$src"
"$cc" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.tmp" "$src"
mv "$out/libcuda.so.tmp" "$out/libcuda.so"
echo "cuda-stub.sh: $(echo "$syms" | wc -l) driver functions stubbed in $out/libcuda.so" >&2
