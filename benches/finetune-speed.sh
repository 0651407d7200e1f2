#!/usr/bin/env bash
# Training speed of `ferrite finetune` on the default model: rank 8 on all
# seven projections, batches of 4 × 128 tokens (plain text, so every token
# is a target), the issue's reference setting. Prints seconds per step and
# tokens per second over the steps after the first two (warm-up).
#   benches/finetune-speed.sh [THREADS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
steps=${2:-10}
bin=target/release/ferrite
[ -x "$bin" ] || cargo build --release -q
model=$("$bin" models path smollm2-135m 2>/dev/null || "$bin" models pull smollm2-135m)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash benches/finetune-text.sh "$work/text.jsonl"
FERRITE_HOME="$work" "$bin" finetune -m "$model" --data "$work/text.jsonl" --out speed \
  --rank 8 --seq 128 --batch 4 --steps "$steps" --val 0 --save-every 1000 -t "$threads" >/dev/null
python3 - "$work/adapters/speed/log.jsonl" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if r.get("event") == "step"][2:]
s = sum(r["s"] for r in steps) / len(steps)
tok = sum(r["tokens"] for r in steps) / sum(r["s"] for r in steps)
print(f"finetune rank 8, 4x128 tokens, {sys.argv[2]} threads: {s:.2f} s/step, {tok:.0f} tokens/s over {len(steps)} steps")
PY
