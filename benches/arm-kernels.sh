#!/usr/bin/env bash
# Guest instruction counts of the rpi4 (plain armv8-a ggml) and rpi5
# (armv8.2-a+dotprod+fp16 ggml) builds running the same `ferrite bench` under
# `qemu-aarch64 -cpu cortex-a76`, counted by a QEMU plugin
# (benches/qemu-insn.c). Emulated time means little; the instruction count is
# the work the kernels do. One thread, so the count is exact.
# Usage: benches/arm-kernels.sh [N_PROMPT] [N_GEN]   (after boards/build.sh rpi4 and rpi5)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pp="${1:-64}"
tg="${2:-16}"
plugin="$root/target/qemu-insn.so"
cc -shared -fPIC -O2 -o "$plugin" "$root/benches/qemu-insn.c"
model="$("$root/target/release/ferrite" models path smollm2-135m)"
declare -A count
for b in rpi4 rpi5; do
  bin="$root/target/board-$b/aarch64-unknown-linux-gnu/release/ferrite"
  [ -x "$bin" ] || { echo "no $bin: run boards/build.sh $b" >&2; exit 1; }
  out="$(qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu -plugin "$plugin" -d plugin \
    "$bin" bench -m "$model" -p "$pp" -n "$tg" -r 1 -t 1 2>&1)"
  count[$b]="$(sed -n 's/^guest instructions: //p' <<<"$out")"
  sdot="$(aarch64-linux-gnu-objdump -d --no-show-raw-insn "$bin" | grep -c $'\tsdot' || true)"
  printf '%-5s sdot in binary: %5s  guest instructions (pp%s + tg%s, 1 thread): %s\n' \
    "$b" "$sdot" "$pp" "$tg" "${count[$b]}"
done
python3 -c "import sys; a,b=map(int,sys.argv[1:]); print(f'rpi5 build executes {b/a:.3f} of the rpi4 build\'s instructions ({a/b:.2f}x fewer)')" \
  "${count[rpi4]}" "${count[rpi5]}"
