#!/usr/bin/env bash
# Build whisper.cpp's own `whisper-cli` and `whisper-bench` from the whisper.cpp
# tree that whisper-rs-sys vendors, linked against the same shared ggml ferrite
# links (target/ggml/host, from boards/ggml.sh), for the real-time-factor
# comparison in benches/README.md: both sides then run the very same kernels.
#
# whisper-rs-sys ships whisper.cpp without examples/; they come from the
# pywhispercpp==1.5.1 source package, whose whisper.cpp tree carries them.
# Usage: benches/build-whisper-tools.sh [OUT_DIR]
# Needs: cmake, a C++ compiler, python3 -m pip; `bash .ci/deps` having run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/whisper-tools}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
ver="$(sed -n 's/^whisper-rs-sys = "=\(.*\)"/\1/p' "$root/Cargo.toml")"
reg="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/whisper-rs-sys-"$ver" 2>/dev/null | head -1)"
[ -d "$reg/whisper.cpp" ] || { echo "whisper-rs-sys $ver not in the cargo registry: run cargo fetch" >&2; exit 1; }
[ -f "$root/target/ggml/host/lib/libggml.a" ] || bash "$root/boards/ggml.sh" host
work="$out/src"
rm -rf "$work" && mkdir -p "$work"
cp -r "$reg/whisper.cpp" "$work/whisper.cpp"
chmod -R u+w "$work/whisper.cpp"
( cd "$work" && python3 -m pip download -q --no-deps --no-binary pywhispercpp pywhispercpp==1.5.1 -d . )
tar -xzf "$work"/pywhispercpp-1.5.1.tar.gz -C "$work"
ex="$work/pywhispercpp-1.5.1/whisper.cpp/examples"
mkdir -p "$work/whisper.cpp/examples"
cp -r "$ex/cli" "$ex/bench" "$ex"/common*.cpp "$ex"/common*.h "$ex"/grammar-parser.* "$ex"/json.hpp \
  "$ex"/dr_wav.h "$ex"/miniaudio.h "$ex"/stb_vorbis.c "$work/whisper.cpp/examples/" 2>/dev/null || true
cat > "$work/whisper.cpp/examples/CMakeLists.txt" <<'CM'
add_library(common STATIC common.cpp common-ggml.cpp common-whisper.cpp grammar-parser.cpp)
target_include_directories(common PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(common PRIVATE whisper ${CMAKE_THREAD_LIBS_INIT})
target_compile_features(common PUBLIC cxx_std_17)
add_subdirectory(cli)
add_subdirectory(bench)
CM
cmake -S "$work/whisper.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DWHISPER_USE_SYSTEM_GGML=ON -DCMAKE_PREFIX_PATH="$root/target/ggml/host" \
  -DWHISPER_BUILD_EXAMPLES=ON -DWHISPER_BUILD_TESTS=OFF -DWHISPER_SDL2=OFF -DWHISPER_CURL=OFF >/dev/null
cmake --build "$work/build" --target whisper-cli whisper-bench -j "$(nproc)"
cp "$work/build/bin/whisper-cli" "$work/build/bin/whisper-bench" "$out/"
echo "built: $out/whisper-cli $out/whisper-bench"
