#!/usr/bin/env bash
# The fine-tune benches' training text: 16 JSONL lines of 220 words each,
# drawn from a fixed word list with bash's RANDOM seeded to 1, so every run
# and both scripts (finetune-speed.sh, finetune-memory.sh) train on the same
# bytes.
#   benches/finetune-text.sh OUT.jsonl
set -euo pipefail
out=${1:?usage: benches/finetune-text.sh OUT.jsonl}
words=(the board reads a line from the serial port and model answers token by
       while fan spins led blinks green for listening amber thinking small quiet)
RANDOM=1
for i in $(seq 16); do
  line=""
  for j in $(seq 220); do line+="${words[RANDOM % ${#words[@]}]} "; done
  printf '{"text": "%s"}\n' "$line"
done >"$out"
