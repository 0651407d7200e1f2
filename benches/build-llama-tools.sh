#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench` and `llama-perplexity` from the very
# llama.cpp tree that llama-cpp-sys-2 vendors, linked against the same shared
# ggml ferrite links (target/ggml/host, from boards/ggml.sh), so both sides run
# the very same kernels, for the comparisons in benches/README.md.
#
# llama-cpp-sys-2 ships llama.cpp without the tools' sources; they come from
# the llama-cpp-python source package, whose tools build unchanged against
# the vendored tree. Usage: benches/build-llama-tools.sh [OUT_DIR]
# Needs: cmake, a C++ compiler, python3 -m pip; cargo fetch having run.
set -euo pipefail
out="${1:-target/llama-tools}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
ver="$(sed -n 's/^llama-cpp-sys-2 = "=\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")"
reg="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$ver" | head -1)"
[ -d "$reg/llama.cpp" ] || { echo "llama-cpp-sys-2 $ver not in the cargo registry: run cargo fetch" >&2; exit 1; }
work="$out/src"
rm -rf "$work" && mkdir -p "$work"
cp -r "$reg/llama.cpp" "$work/llama.cpp"
chmod -R u+w "$work/llama.cpp"
( cd "$work" && python3 -m pip download -q --no-deps --no-binary :all: llama-cpp-python -d . )
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
sdist_tools="$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp/tools)"
for t in llama-bench perplexity; do
  rm -rf "$work/llama.cpp/tools/$t"
  cp -r "$sdist_tools/$t" "$work/llama.cpp/tools/$t"
done
printf 'add_subdirectory(llama-bench)\nadd_subdirectory(perplexity)\n' > "$work/llama.cpp/tools/CMakeLists.txt"
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$root/target/ggml/host/lib/libggml.a" ] || bash "$root/boards/ggml.sh" host
cmake -S "$work/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_USE_SYSTEM_GGML=ON -DCMAKE_PREFIX_PATH="$root/target/ggml/host" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=ON >/dev/null
cmake --build "$work/build" --target llama-bench llama-perplexity -j "$(nproc)"
cp "$work/build/bin/llama-bench" "$work/build/bin/llama-perplexity" "$out/"
echo "built: $out/llama-bench $out/llama-perplexity"
