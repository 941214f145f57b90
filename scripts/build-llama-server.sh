#!/usr/bin/env bash
# Build llama-server from the llama.cpp tree vendored in the pinned llama-cpp-python sdist,
# into a cache folder, and reuse an existing build. Prints the binary's path on stdout.
#
#   scripts/build-llama-server.sh            # build (or reuse) and print the path
#   LLMCTL_BUILD_CACHE=/some/dir scripts/build-llama-server.sh
#
# Needs cmake and a C++17 compiler; about 4 minutes on 2 cores. Set LLMCTL_CUDA=1 for -DGGML_CUDA=ON.
# LLMCTL_RPC=1 builds with -DGGML_RPC=ON into its own folder (build-cpu-rpc, build-cuda-rpc), with
# llama.cpp's rpc-server next to llama-server; the plain build's folder is left as it is.
set -euo pipefail

version="0.3.36"
llama_tag="11312"  # the llama.cpp tag vendored in that sdist, reported by --version
cache="${LLMCTL_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmctl/llama-server-$version}"
flavour="cpu"
cmake_extra=()
if [ "${LLMCTL_CUDA:-0}" = "1" ]; then
  flavour="cuda"
  cmake_extra+=("-DGGML_CUDA=ON")
fi
targets=(llama-server)
if [ "${LLMCTL_RPC:-0}" = "1" ]; then
  flavour="$flavour-rpc"
  cmake_extra+=("-DGGML_RPC=ON")
  targets+=(ggml-rpc-server)
fi
bindir="$cache/build-$flavour/bin"
binary="$bindir/llama-server"

built() {
  [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1 || return 1
  if [ "${LLMCTL_RPC:-0}" = "1" ]; then [ -x "$bindir/ggml-rpc-server" ] || return 1; fi
}

if built; then
  echo "$binary"
  exit 0
fi

log() { echo "build-llama-server: $*" >&2; }

# one build at a time: a second caller (another checkout's tests) waits, then reuses the build
mkdir -p "$cache"
exec 9>"$cache.lock"
flock 9
if built; then
  echo "$binary"
  exit 0
fi
missing=()
for tool in cmake c++; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing cmake and g++ with apt-get"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >&2
  else
    log "needs ${missing[*]}: install cmake and a C++17 compiler (apt-get install cmake g++)"
    exit 1
  fi
fi

mkdir -p "$cache"
sdist="$cache/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  log "downloading llama-cpp-python==$version sdist"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp" >&2
  mv "$tmp"/llama_cpp_python-"$version".tar.gz "$sdist"
  rm -rf "$tmp"
fi

src="$cache/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  log "unpacking vendor/llama.cpp"
  rm -rf "$src" "$cache/unpack"
  mkdir -p "$cache/unpack"
  tar -xzf "$sdist" -C "$cache/unpack" "llama_cpp_python-$version/vendor/llama.cpp"
  mv "$cache/unpack/llama_cpp_python-$version/vendor/llama.cpp" "$src"
  rm -rf "$cache/unpack"
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
log "configuring ($flavour)"
cmake -S "$src" -B "$cache/build-$flavour" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_NUMBER="$llama_tag" -DLLAMA_BUILD_COMMIT="b$llama_tag" \
  "${cmake_extra[@]}" >&2
log "building ${targets[*]} (a few minutes)"
cmake --build "$cache/build-$flavour" --target "${targets[@]}" -j "$(nproc)" >&2
"$binary" --version >&2
echo "$binary"
