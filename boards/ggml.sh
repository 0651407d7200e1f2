#!/usr/bin/env bash
# Build the one ggml that both engines link: llama.cpp (llama-cpp-sys-2, feature
# system-ggml-static) and whisper.cpp (whisper-rs-sys, WHISPER_USE_SYSTEM_GGML).
# Each crate would otherwise compile and statically link its own ggml, and the
# two copies collide at link time (duplicate ggml_*/gguf_* symbols). The source
# is the ggml that llama-cpp-sys-2 vendors, so llama.cpp runs on exactly the ggml
# it was released with; whisper.cpp compiles against it unchanged.
#
# Usage: boards/ggml.sh [host|native|BOARD] [--cuda]
#   host   (default) a portable build for this architecture, as llama.cpp's
#          own CMake builds one (GGML_NATIVE=OFF): on x86_64 the AVX, AVX2,
#          FMA, F16C and BMI2 kernels (x86-64-v3), so a binary built on one
#          machine runs on any AVX2 machine and computes the same numbers
#          there, whatever the build machine's CPU had (AVX-512 or not).
#   native this machine's every instruction (-march=native, GGML_NATIVE=ON):
#          faster prompt processing for Q4_K models on AVX-512 hosts
#          (benches/README.md), but the binary needs this CPU, and greedy
#          answers can differ from the portable build's in near-ties.
#   BOARD  a boards/BOARD.toml profile: its target triple, cross compilers
#          (aarch64-linux-gnu-gcc, ...) and GGML_CPU_ARM_ARCH (arm_arch).
#   --cuda also build ggml's CUDA backend (Jetson, NVIDIA hosts).
# Every build turns on llamafile's tinyBLAS matrix kernels (GGML_LLAMAFILE),
# as llama.cpp's own CMake does: ggml built on its own leaves them off, which
# measured 0.81-0.89x llama.cpp's prompt speed on Q5_0/Q8_0 tensors.
# Every build also has ggml's RPC backend (GGML_RPC, TCP only: no RDMA), for
# `ferrite rpc-server` and `--rpc` (a model split across boards); the ferrite
# crate links its library itself (build.rs).
# Installs into target/ggml/NAME (NAME-cuda with --cuda): headers, static libs
# and ggml's cmake package. cargo runs this itself: boards/ggml/hook.cmake
# calls it from inside llama.cpp's and whisper.cpp's cmake builds, for the
# target being built, and points find_package(ggml) at the result. By hand it
# is only needed for the bench tools (benches/build-*-tools.sh). Quiet and quick
# when up to date. FERRITE_GGML_SOURCE names the ggml source (the hook passes
# it); without it, cargo metadata finds llama-cpp-sys-2's.
set -euo pipefail
name="${1:-host}"
cuda=OFF
[ "${2:-}" = "--cuda" ] && cuda=ON
root="$(cd "$(dirname "$0")/.." && pwd)"
suffix=""
[ "$cuda" = ON ] && suffix=-cuda
prefix="$root/target/ggml/$name$suffix"
build="$root/target/ggml/build-$name$suffix"

# llama-cpp-sys-2's vendored source, wherever cargo unpacked it.
src="${FERRITE_GGML_SOURCE:-}"
[ -n "$src" ] || src="$(cd "$root" && cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "llama-cpp-sys-2":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp", "ggml"))
        break
')"
[ -f "$src/CMakeLists.txt" ] || { echo "ggml.sh: cannot find llama-cpp-sys-2's ggml source (cargo metadata)" >&2; exit 1; }

args=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON
      -DGGML_OPENMP=ON -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DGGML_METAL=OFF
      -DGGML_LLAMAFILE=ON -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF -DGGML_CUDA="$cuda" -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib)
if [ "$name" = host ]; then
  args+=(-DGGML_NATIVE=OFF)
elif [ "$name" = native ]; then
  args+=(-DGGML_NATIVE=ON)
else
  profile="$root/boards/$name.toml"
  [ -f "$profile" ] || { echo "ggml.sh: no profile $profile" >&2; exit 2; }
  . "$root/boards/profile.sh"
  target="$(profile_field "$profile" target)"
  arch="$(profile_field "$profile" arm_arch)"
  case "$target" in
    aarch64-unknown-linux-gnu) cc=aarch64-linux-gnu; proc=aarch64 ;;
    armv7-unknown-linux-gnueabihf) cc=arm-linux-gnueabihf; proc=armv7 ;;
    *) cc=""; proc="" ;;
  esac
  args+=(-DGGML_NATIVE=OFF)
  [ -n "$arch" ] && args+=(-DGGML_CPU_ARM_ARCH="$arch")
  host_arch="$(uname -m)"
  if [ -n "$cc" ] && [ "$host_arch" != "$proc" ] && command -v "$cc-gcc" >/dev/null; then
    args+=(-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR="$proc"
           -DCMAKE_C_COMPILER="$cc-gcc" -DCMAKE_CXX_COMPILER="$cc-g++")
  fi
fi

# ggml's CUDA backend: nvcc from CUDA_PATH (JetPack's /usr/local/cuda on a
# Jetson), else the packaged toolkit (boards/cuda-toolkit.sh, x86_64 hosts);
# device code for FERRITE_CUDA_ARCHS, else the profile's cuda_arch (87 on the
# Orins), else this machine's GPU (`native`, which needs one).
if [ "$cuda" = ON ]; then
  cuda_path="${CUDA_PATH:-}"
  if [ -z "$cuda_path" ] || [ ! -x "$cuda_path/bin/nvcc" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then cuda_path=/usr/local/cuda
    else cuda_path="$("$root/boards/cuda-toolkit.sh")"; fi
  fi
  archs="${FERRITE_CUDA_ARCHS:-}"
  if [ -z "$archs" ] && [ -n "${profile:-}" ]; then archs="$(profile_field "$profile" cuda_arch)"; fi
  if [ -z "$archs" ]; then
    command -v nvidia-smi >/dev/null || { echo "ggml.sh: no GPU here to build for: set FERRITE_CUDA_ARCHS (87 for Orin, 90 for H100)" >&2; exit 2; }
    archs=native
  fi
  # ggml-cuda links the driver API (CUDA::cuda_driver): a toolkit without
  # stubs gets one first.
  [ -e "$cuda_path/lib64/stubs/libcuda.so" ] || "$root/boards/cuda-stub.sh" "$cuda_path"
  args+=(-DCMAKE_CUDA_COMPILER="$cuda_path/bin/nvcc" -DCUDAToolkit_ROOT="$cuda_path"
         -DCMAKE_CUDA_ARCHITECTURES="$archs")
  [ -n "${cc:-}" ] && [ "$(uname -m)" != "${proc:-}" ] && args+=(-DCMAKE_CUDA_HOST_COMPILER="$cc-g++")
fi

# Reconfigure only when the options or the source change.
stamp="$(printf '%s\n' "$src" "${args[@]}" | sha256sum | cut -c1-16)"
if [ -f "$prefix/.stamp" ] && [ "$(cat "$prefix/.stamp")" = "$stamp" ]; then
  exit 0
fi
echo "building ggml for $name$suffix ($src)" >&2
rm -rf "$build" "$prefix"
mkdir -p "$root/target/ggml"
cmake -S "$root/boards/ggml" -B "$build" -DGGML_SOURCE_DIR="$src" "${args[@]}" >"$root/target/ggml/cmake-$name$suffix.log" 2>&1 \
  || { tail -30 "$root/target/ggml/cmake-$name$suffix.log" >&2; exit 1; }
cmake --build "$build" --config Release -j "$(nproc)" >>"$root/target/ggml/cmake-$name$suffix.log" 2>&1 \
  || { tail -30 "$root/target/ggml/cmake-$name$suffix.log" >&2; exit 1; }
cmake --install "$build" >>"$root/target/ggml/cmake-$name$suffix.log" 2>&1
echo "$stamp" >"$prefix/.stamp"
echo "ggml for $name$suffix installed in $prefix" >&2
