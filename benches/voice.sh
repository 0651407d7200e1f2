#!/usr/bin/env bash
# Voice benches (issue #15), reported, not asserted; figures in
# benches/README.md.
#   1. `ferrite say` against the `piper` command line (piper-tts), same voice,
#      same text, same CPUs (taskset), interleaved by hyperfine: whole
#      commands, and ferrite's synthesis real-time factor.
#   2. From the end of a spoken question to the first sample of the spoken
#      answer, by stage (tests/tts.rs voice_latency_report).
#   3. The voice detectors on a labelled set (tests/vad_model.rs
#      vad_labelled_set_report).
# Usage: benches/voice.sh [THREADS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
runs=${2:-5}
cpus="0-$((threads - 1))"
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
python3 -c 'import piper' 2>/dev/null || python3 -m pip install -q piper-tts
cargo build --release -q
bin=target/release/ferrite
$bin models pull piper-joe-medium >/dev/null
$bin models pull "onnxruntime-$(uname -m)" >/dev/null
voice=$($bin models path piper-joe-medium)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/text.txt" <<'TEXT'
The old library on the hill holds a large collection of maps. Every morning the baker opens the shop before sunrise. The river runs past the mill and into the quiet valley. My neighbour grows tomatoes and beans in her small garden. The train to the coast leaves from the second platform, and it is usually on time. When the weather is fine, the children walk to school along the river.
TEXT
echo "== say vs piper: $threads thread(s), $runs runs each, interleaved"
hyperfine -N -w 1 -r "$runs" \
  -n ferrite "taskset -c $cpus $bin say --tts-threads $threads -o $tmp/ferrite.wav -- $(tr -d '\n' < "$tmp/text.txt" | sed 's/.*/"&"/')" \
  -n piper "taskset -c $cpus piper -m $voice -i $tmp/text.txt -f $tmp/piper.wav" \
  --export-json "$tmp/say.json" 2>&1 | grep -v '^ *$' || true
python3 - "$tmp/say.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
f, p = r["ferrite"]["median"], r["piper"]["median"]
print(f"median: ferrite {f:.3f} s, piper {p:.3f} s: ferrite is {p / f:.2f}x piper's speed")
PY
taskset -c "$cpus" "$bin" say --tts-threads "$threads" --stats -o "$tmp/ferrite.wav" -- "$(cat "$tmp/text.txt")" >/dev/null
echo "== latency from the end of a question to the first audio"
cargo test --release -q --test integration -- --ignored voice_latency_report --nocapture 2>/dev/null | grep -E 'stt:|question|median'
echo "== voice detectors on a labelled set"
cargo test --release -q --test integration -- --ignored vad_labelled_set_report --nocapture 2>/dev/null | grep -E '^\||labelled'
