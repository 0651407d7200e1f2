#!/usr/bin/env bash
# Build llama.cpp's own `llama-server`, the reference for the HTTP API bench
# (benches/http-vs-llama-server.py), and from the same tree its
# `llama-speculative-simple` (draft-model speculative decoding) and
# `llama-lookup` (n-gram lookup), the references for benches/speculative.sh.
#
# llama-cpp-sys-2 vendors llama.cpp without tools/server, and the server of
# the nearest llama-cpp-python source package (0.3.36) does not compile
# against the vendored `common` (it calls functions the vendored tree does
# not have yet, e.g. fs_open_ifstream). So this builds that package's whole
# llama.cpp tree (its src, common, ggml and tools/server, unchanged) with
# the same compiler flags as ferrite's host ggml (GGML_NATIVE=ON, OpenMP): a
# neighbouring llama.cpp release, not the very vendored revision; the bench
# says so beside its numbers. The web UI is left out (placeholder assets:
# the bench speaks only the API).
# Usage: benches/build-llama-server.sh [OUT_DIR]   (default target/llama-server)
# Needs: cmake, a C++ compiler, python3 -m pip. About 10 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/llama-server}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$out/src"
mkdir -p "$work"
if ! ls "$work"/llama_cpp_python-"$version".tar.gz >/dev/null 2>&1; then
  ( cd "$work" && python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d . )
fi
tree="$work/llama_cpp_python-$version/vendor/llama.cpp"
[ -d "$tree" ] || tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
# Placeholder UI assets: the asset check wants these names to exist.
dist="$tree/tools/ui/dist"
mkdir -p "$dist"
for f in index.html manifest.webmanifest sw.js build.json version.json bundle.js bundle.css workbox-0.js; do
  [ -f "$dist/$f" ] || echo '{}' > "$dist/$f"
done
cmake -S "$tree" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_UI_GZIP=OFF \
  -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=ON -DGGML_NATIVE=ON >/dev/null
tools=(llama-server llama-speculative-simple llama-lookup llama-bench)
cmake --build "$work/build" --target "${tools[@]}" -j "$(nproc)"
for t in "${tools[@]}"; do cp "$work/build/bin/$t" "$out/"; done
echo "built: ${tools[*]} in $out (llama.cpp from llama-cpp-python $version)"
