#!/usr/bin/env bash
# Interleaved comparison of `ferrite bench` against llama.cpp's `llama-bench`
# built from the same vendored llama.cpp (benches/build-llama-tools.sh):
# same model, same threads, same tests, alternating A B B A ... so drift in
# machine speed hits both. Prints each round and the median ratio.
# Usage: benches/compare.sh [ROUNDS] [THREADS]   (env: FERRITE, LLAMA_BENCH, MODEL)
set -euo pipefail
rounds="${1:-5}"
threads="${2:-$(nproc)}"
ferrite="${FERRITE:-target/release/ferrite}"
lb="${LLAMA_BENCH:-target/llama-tools/llama-bench}"
model="${MODEL:-$("$ferrite" models path smollm2-135m)}"
out="$(mktemp -d)"
run_f() { "$ferrite" bench -m "$model" -t "$threads" -r 5 --json >"$out/f$1.json"; }
run_l() { "$lb" -m "$model" -t "$threads" -r 5 -o json >"$out/l$1.json" 2>/dev/null; }
for i in $(seq "$rounds"); do
  # Alternate which goes first, so neither always runs on a warmer machine.
  if [ $((i % 2)) -eq 1 ]; then run_f "$i"; run_l "$i"; else run_l "$i"; run_f "$i"; fi
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def test(o): return f"pp{o['n_prompt']}" if o["n_prompt"] else f"tg{o['n_gen']}"
ratios = {}
print(f"{'round':>5} {'test':>6} {'ferrite t/s':>12} {'llama-bench t/s':>16} {'ratio':>6}")
for i in range(1, rounds + 1):
    f = {test(o): o for o in json.load(open(f"{out}/f{i}.json"))}
    l = {test(o): o for o in json.load(open(f"{out}/l{i}.json"))}
    for t in f:
        r = f[t]["avg_ts"] / l[t]["avg_ts"]
        ratios.setdefault(t, []).append(r)
        print(f"{i:>5} {t:>6} {f[t]['avg_ts']:>12.2f} {l[t]['avg_ts']:>16.2f} {r:>6.3f}")
for t, rs in ratios.items():
    print(f"{t}: median ratio ferrite/llama-bench = {statistics.median(rs):.3f} (min {min(rs):.3f}, max {max(rs):.3f})")
PY
