#!/usr/bin/env bash
# A CUDA toolkit for building ggml's CUDA backend on a machine without one:
# NVIDIA's own CUDA 13 packages from the Python package index (nvcc, cicc,
# ptxas, fatbinary, the runtime, cuBLAS, CCCL), unpacked into the layout nvcc
# expects (nvidia/cu13/{bin,nvvm,include,lib}; nvcc.profile points inside it).
#
# Usage: boards/cuda-toolkit.sh            prints the toolkit's root (CUDA_PATH)
# Installs into target/cuda/13.5 (about 1 GB; the wheels are kept in
# target/cuda/wheels). Quick when already there.
#
# Three gaps between the packages and a full toolkit, filled here:
#  - lib64 -> lib, and the unversioned libcudart.so/libcublas.so/libcublasLt.so
#    links the linker looks for (the packages ship only the .so.13 files).
#  - llama-cpp-sys-2 names cuBLAS's static libraries (cublas_static,
#    cublasLt_static, culibos), which the packages do not ship; rustc bundles
#    them into its rlib, so they must be archives: empty ones here. The
#    symbols come from the shared libcublas/libcublasLt, which whisper-rs-sys
#    links (-lcublas -lcublasLt -lcudart), so the binary needs them at run
#    time (LD_LIBRARY_PATH=target/cuda/13.5/nvidia/cu13/lib, or JetPack's).
#  - lib/stubs/libcuda.so, the driver API's link-time stub (boards/cuda-stub.sh,
#    from cuda.h), as a full toolkit has; the board's driver provides
#    libcuda.so.1 at run time.
# JetPack 6's own CUDA 12 nvcc works too: set CUDA_PATH to it (/usr/local/cuda)
# and skip this script.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version=13.5
dest="$root/target/cuda/$version"
wheels="$root/target/cuda/wheels"
cuda="$dest/nvidia/cu13"
if [ -x "$cuda/bin/nvcc" ] && [ -f "$dest/.complete" ]; then
  echo "$cuda"
  exit 0
fi
case "$(uname -m)" in
  x86_64) ;;
  *) echo "cuda-toolkit.sh: the packages' nvcc runs on x86_64 hosts; on a Jetson use JetPack's nvcc (CUDA_PATH=/usr/local/cuda)" >&2; exit 2 ;;
esac
# Pinned, so every build compiles with the same nvcc.
pkgs=(nvidia-cuda-nvcc==13.5.37 nvidia-nvvm==13.5.37 nvidia-cuda-crt==13.5.37
      nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cublas==13.10.0.20)
mkdir -p "$wheels"
echo "cuda-toolkit.sh: fetching ${pkgs[*]}" >&2
python3 -m pip download -q --no-deps --only-binary :all: --platform manylinux2014_x86_64 \
  --python-version 3.11 -d "$wheels" "${pkgs[@]}" >&2
rm -rf "$dest"
mkdir -p "$dest"
for p in "${pkgs[@]}"; do
  name="${p%%==*}"
  ver="${p##*==}"
  whl="$(ls "$wheels"/"${name//-/_}"-"$ver"-*.whl | head -1)"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$dest"
done
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/*
( cd "$cuda/lib"
  for l in cudart cublas cublasLt; do ln -sf "lib$l.so.13" "lib$l.so"; done
  ar rcs libcublas_static.a
  ar rcs libcublasLt_static.a
  ar rcs libculibos.a
  mkdir -p stubs )
ln -sfn lib "$cuda/lib64"
"$root/boards/cuda-stub.sh" "$cuda"
"$cuda/bin/nvcc" --version >&2
touch "$dest/.complete"
echo "$cuda"
