#!/usr/bin/env bash
# Real-time factor of `ferrite transcribe` against whisper.cpp's own
# `whisper-cli` (benches/build-whisper-tools.sh: the same whisper.cpp, linked
# against the same shared ggml), on the same converted model, the same
# espeak-ng speech (16 kHz mono), the same threads and the same decoding
# (greedy, best-of 1, no timestamps, non-speech tokens suppressed). hyperfine
# interleaves nothing, so the two commands alternate over ROUNDS rounds.
# Usage: benches/whisper-compare.sh [MODEL] [THREADS] [ROUNDS]
#   env: FERRITE (binary), WHISPER_CLI
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model_name="${1:-whisper-tiny.en}"
threads="${2:-$(nproc)}"
rounds="${3:-3}"
ferrite="${FERRITE:-$root/target/release/ferrite}"
cli="${WHISPER_CLI:-$root/target/whisper-tools/whisper-cli}"
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt install hyperfine)" >&2; exit 1; }
model="$("$ferrite" models path "$model_name")"
work="$(mktemp -d)"
espeak-ng -v en-us -s 140 -w "$work/raw.wav" \
  "The weather today is sunny and warm. Please turn off the lights in the kitchen. \
   How many legs does a spider have? Set a timer for ten minutes, then remind me to call my sister."
sox "$work/raw.wav" -r 16000 -c 1 -b 16 "$work/speech.wav"
audio_s="$(sox --i -D "$work/speech.wav")"
echo "audio: $audio_s s, model $model_name, $threads threads"
for r in $(seq "$rounds"); do
  hyperfine -N --warmup 1 --runs 5 --export-json "$work/h$r.json" \
    -n ferrite "$ferrite transcribe $work/speech.wav -m $model -t $threads --no-vad --audio-ctx full" \
    -n whisper-cli "$cli -m $model -f $work/speech.wav -t $threads -nt -bs 1 -bo 1 -sns -np" >/dev/null
done
python3 - "$work" "$rounds" "$audio_s" <<'PY'
import json, statistics, sys
work, rounds, audio = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ratios = []
for r in range(1, rounds + 1):
    res = {x["command"]: x for x in json.load(open(f"{work}/h{r}.json"))["results"]}
    f, w = res["ferrite"]["median"], res["whisper-cli"]["median"]
    ratios.append(w / f)
    print(f"round {r}: ferrite {f:.3f} s (RTF {f/audio:.3f}), whisper-cli {w:.3f} s (RTF {w/audio:.3f}), speed ratio {w/f:.3f}")
print(f"median speed ratio ferrite/whisper-cli = {statistics.median(ratios):.3f} (goal >= 0.98)")
PY
echo "transcripts:"
"$ferrite" transcribe "$work/speech.wav" -m "$model" -t "$threads" --no-vad --audio-ctx full
"$cli" -m "$model" -f "$work/speech.wav" -t "$threads" -nt -bs 1 -bo 1 -sns -np 2>/dev/null
rm -rf "$work"
