#!/usr/bin/env bash
# Check that an x86_64 ferrite binary runs on any AVX2 machine (x86-64-v3):
# no AVX-512 instruction (zmm registers, opmask registers, xmm/ymm16-31)
# outside functions that choose their code by the CPU at run time (Rust
# crates' `*avx512*` paths behind `is_x86_feature_detected!`). The host ggml
# is built without AVX-512 by default (boards/ggml.sh host); this catches a
# `native` ggml or a stray -march=native reaching a release build.
# Usage: boards/check-x86-portable.sh target/release/ferrite
set -euo pipefail
bin="${1:?usage: boards/check-x86-portable.sh BINARY}"
objdump -d --no-show-raw-insn "$bin" | awk '
  /^[0-9a-f]+ <.*>:$/ { fn = $2; next }
  /%zmm|%k[1-7]|%[xy]mm(1[6-9]|2[0-9]|3[01])/ { n[fn]++ }
  END { for (f in n) print n[f], f }' | sort -rn >"${TMPDIR:-/tmp}/avx512-fns.txt"
bad=$(grep -iv "avx512" "${TMPDIR:-/tmp}/avx512-fns.txt" || true)
echo "functions with AVX-512 instructions: $(wc -l <"${TMPDIR:-/tmp}/avx512-fns.txt") (all run-time dispatched: $([ -z "$bad" ] && echo yes || echo no))"
if [ -n "$bad" ]; then
  echo "AVX-512 instructions in code that does not check the CPU first:" >&2
  echo "$bad" | head -20 >&2
  exit 1
fi
