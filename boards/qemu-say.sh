#!/usr/bin/env bash
# `ferrite say` built for aarch64, run under qemu-user, against the x86 build
# on the same text: Piper (ONNX Runtime's aarch64 library from the manifest,
# phonemes from Debian's arm64 libespeak-ng) and the espeak-ng fallback voice.
#
# Usage: boards/qemu-say.sh ARM_BINARY [X86_BINARY]
#
# What the run needs, and why it is set up this way:
# - An arm64 root with libespeak-ng1 and its dependencies, glibc and
#   libstdc++ all from one Debian release (mmdebstrap --variant=extract: the
#   packages unpacked, nothing run, nothing on this machine changed). The
#   cross toolchain's /usr/aarch64-linux-gnu cannot serve: its glibc is a
#   different build from Debian's arm64 one that libespeak-ng's chain pulls
#   in, and the two in one process spin forever in pthread_create (seen).
# - proc/cpuinfo in that root, describing the Cortex-A76 that qemu emulates
#   (a Pi 5's). qemu-user 7.2 shows the guest the host's x86 /proc/cpuinfo
#   (later qemu emulates it for aarch64); ONNX Runtime's cpuinfo library
#   cannot parse that and crashes with SIGSEGV. qemu's -L prefix serves files
#   from the root first, so the guest reads this one.
# - Piper with --noise-scale 0 --noise-w-scale 0, so both runs are
#   deterministic. Tolerance: the same number of samples, at most 16 LSB
#   apart (-66 dBFS) and at least 60 dB SNR: ONNX Runtime's NEON and AVX
#   kernels round differently (measured: 1-2 LSB, 89 dB), while a real
#   fault (other phoneme ids, another rate, a cut) lands near 0 dB.
#   espeak-ng's own voice must match byte for byte.
set -euo pipefail
arm="${1:?usage: boards/qemu-say.sh ARM_BINARY [X86_BINARY]}"
x86="${2:-target/release/ferrite}"
root="target/qemu-root-arm64"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
# The host's Debian release, from its own apt sources (CI runs Debian).
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"

if [ ! -e "$root/usr/lib/aarch64-linux-gnu/libespeak-ng.so.1" ]; then
  command -v mmdebstrap >/dev/null || { $sudo apt-get update -qq; $sudo apt-get install -y -qq mmdebstrap >/dev/null; }
  $sudo rm -rf "$root.tmp"
  $sudo mmdebstrap --quiet --variant=extract --architectures=arm64 \
    --include=libespeak-ng1,libstdc++6,libgomp1 "$suite" "$root.tmp"
  [ -z "$sudo" ] || $sudo chown -R "$(id -u):$(id -g)" "$root.tmp"
  $sudo rm -rf "$root" && mv "$root.tmp" "$root"
fi
mkdir -p "$root/proc"
for i in 0 1; do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i"
done >"$root/proc/cpuinfo"

"$x86" models pull onnxruntime-aarch64 >/dev/null
"$x86" models pull piper-joe-medium >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
text="The capital of Japan is Tokyo. It has about fourteen million people."
run_arm() { qemu-aarch64 -cpu cortex-a76 -L "$root" "$arm" "$@"; }

"$x86" say --tts-threads 2 --noise-scale 0 --noise-w-scale 0 -o "$out/x86.wav" "$text" >/dev/null
t0=$(date +%s)
run_arm say --tts-threads 2 --noise-scale 0 --noise-w-scale 0 -o "$out/arm.wav" "$text" >/dev/null
echo "aarch64 Piper under qemu: $(( $(date +%s) - t0 )) s"
python3 - "$out/x86.wav" "$out/arm.wav" <<'EOF'
import array, math, sys, wave
def pcm(p):
    with wave.open(p) as w:
        return w.getframerate(), array.array("h", w.readframes(w.getnframes()))
(rx, x), (ra, a) = pcm(sys.argv[1]), pcm(sys.argv[2])
if (rx, len(x)) != (ra, len(a)):
    sys.exit(f"Piper: x86 gave {len(x)} samples at {rx} Hz, aarch64 {len(a)} at {ra} Hz")
diff = max((abs(p - q) for p, q in zip(x, a)), default=0)
err = sum((p - q) ** 2 for p, q in zip(x, a))
sig = sum(p * p for p in x)
snr = "exact" if err == 0 else f"{10 * math.log10(sig / err):.1f} dB SNR"
print(f"Piper: {len(x)} samples each, largest difference {diff} LSB, {snr}")
if diff > 16 or (err and 10 * math.log10(sig / err) < 60):
    sys.exit("Piper: aarch64 and x86 differ by more than 16 LSB or 60 dB SNR")
EOF

"$x86" say --voice espeak -o "$out/x86-espeak.wav" "$text" >/dev/null
run_arm say --voice espeak -o "$out/arm-espeak.wav" "$text" >/dev/null
cmp "$out/x86-espeak.wav" "$out/arm-espeak.wav"
echo "espeak-ng voice: identical bytes"
echo "qemu-say: ok"
