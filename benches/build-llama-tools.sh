#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench`, `llama-perplexity` and `rpc-server`
# (ggml's RPC server behind llama.cpp's command line) from the very
# llama.cpp tree that llama-cpp-sys-2 vendors, for the comparisons in
# benches/README.md. Two flavours:
#
#   (default)   linked against a ggml that boards/ggml.sh built
#               (target/ggml/host unless --ggml NAME): the very kernels
#               ferrite runs, so a ratio measures ferrite's wrapper alone.
#   --stock     llama.cpp's own ggml, built the way llama.cpp's CMake builds it
#               by default for a portable binary (GGML_NATIVE=OFF, i.e. the
#               AVX/AVX2/FMA/F16C/BMI2 kernel set on x86_64): what a user who
#               builds llama.cpp for distribution gets. Output:
#               target/llama-tools-stock unless OUT_DIR is given.
#
# llama-cpp-sys-2 ships llama.cpp without the tools' sources; they come from
# the llama-cpp-python source package, whose tools build unchanged against
# the vendored tree.
# Usage: benches/build-llama-tools.sh [--stock | --ggml NAME] [OUT_DIR]
# Needs: cmake, a C++ compiler, python3 -m pip; cargo fetch having run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode=shared
ggml=host
while [ $# -gt 0 ]; do
  case "$1" in
    --stock) mode=stock; shift ;;
    --ggml) ggml="$2"; shift 2 ;;
    -*) echo "usage: $0 [--stock | --ggml NAME] [OUT_DIR]" >&2; exit 2 ;;
    *) break ;;
  esac
done
default_out="$root/target/llama-tools"
[ "$mode" = stock ] && default_out="$root/target/llama-tools-stock"
[ "$mode" = shared ] && [ "$ggml" != host ] && default_out="$root/target/llama-tools-$ggml"
out="${1:-$default_out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
ver="$(sed -n 's/^llama-cpp-sys-2 = "=\(.*\)"/\1/p' "$root/Cargo.toml")"
reg="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$ver" | head -1)"
[ -d "$reg/llama.cpp" ] || { echo "llama-cpp-sys-2 $ver not in the cargo registry: run cargo fetch" >&2; exit 1; }
work="$out/src"
rm -rf "$work" && mkdir -p "$work"
cp -r "$reg/llama.cpp" "$work/llama.cpp"
chmod -R u+w "$work/llama.cpp"
( cd "$work" && python3 -m pip download -q --no-deps --no-binary :all: llama-cpp-python -d . )
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
sdist_tools="$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp/tools)"
for t in llama-bench perplexity rpc; do
  rm -rf "$work/llama.cpp/tools/$t"
  cp -r "$sdist_tools/$t" "$work/llama.cpp/tools/$t"
done
printf 'add_subdirectory(llama-bench)\nadd_subdirectory(perplexity)\nadd_subdirectory(rpc)\n' > "$work/llama.cpp/tools/CMakeLists.txt"
args=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=ON)
if [ "$mode" = stock ]; then
  args+=(-DGGML_NATIVE=OFF)
else
  prefix="$root/target/ggml/$ggml"
  bash "$root/boards/ggml.sh" "$ggml"   # a no-op when up to date
  args+=(-DLLAMA_USE_SYSTEM_GGML=ON -DCMAKE_PREFIX_PATH="$prefix")
fi
cmake -S "$work/llama.cpp" -B "$work/build" "${args[@]}" >/dev/null
cmake --build "$work/build" --target llama-bench llama-perplexity -j "$(nproc)"
cp "$work/build/bin/llama-bench" "$work/build/bin/llama-perplexity" "$out/"
# rpc-server needs ggml's RPC backend: boards/ggml.sh builds it in; the stock
# ggml only with -DGGML_RPC=ON, which --stock leaves off.
if [ "$mode" = shared ]; then
  cmake --build "$work/build" --target ggml-rpc-server -j "$(nproc)"
  cp "$work/build/bin/ggml-rpc-server" "$out/rpc-server"
fi
echo "built: $(ls "$out" | grep -v '^src$' | tr '\n' ' ')in $out"
