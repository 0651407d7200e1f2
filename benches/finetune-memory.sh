#!/usr/bin/env bash
# Peak memory and speed of `ferrite finetune` with each memory plan
# (--checkpoint-layers off and on) on the reference setting of
# finetune-speed.sh: SmolLM2-135M (or MODEL), rank 8 on all seven
# projections, batches of 4 x SEQ tokens of plain text. Prints, per plan,
# the peak RSS from /usr/bin/time -v and seconds per step from the log.
#   benches/finetune-memory.sh [STEPS] [MODEL] [SEQ] [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-4}
model_name=${2:-smollm2-135m}
seq=${3:-128}
bin=${4:-target/release/ferrite}
[ -x "$bin" ] || cargo build --release -q
model=$("$bin" models path "$model_name" 2>/dev/null || "$bin" models pull "$model_name")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash benches/finetune-text.sh "$work/text.jsonl"
for plan in off on; do
  home="$work/home-$plan"
  /usr/bin/time -v env FERRITE_HOME="$home" "$bin" finetune -m "$model" --data "$work/text.jsonl" \
    --out mem --rank 8 --seq "$seq" --batch 4 --steps "$steps" --val 0 --save-every 1000 -t 2 \
    --checkpoint-layers "$plan" >/dev/null 2>"$work/time-$plan.txt"
  peak=$(awk -F: '/Maximum resident/ {print int($2/1024)}' "$work/time-$plan.txt")
  python3 - "$home/adapters/mem/log.jsonl" "$plan" "$peak" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if r.get("event") == "step"]
rest = steps[1:] or steps
s = sum(r["s"] for r in rest) / len(rest)
print(f"--checkpoint-layers {sys.argv[2]}: peak RSS {sys.argv[3]} MiB, {s:.2f} s/step over {len(rest)} steps")
PY
done
