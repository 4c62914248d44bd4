#!/usr/bin/env bash
# Builds the engine: the standalone driver (CMake; with the CUDA backend
# wherever a CUDA compiler is) and the Node-API addon (node-gyp), which links
# the driver build's CUDA library when there is one. `build-native.sh
# addon|driver` builds one; no argument builds both, the driver first.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
jobs=$(nproc 2>/dev/null || echo 2)
if [ "$what" = all ] || [ "$what" = driver ]; then
  # CARAVAN_MARCH (default native) and CUDAARCHS build for other machines (the container image does).
  cmake -S native -B build/driver -DCMAKE_BUILD_TYPE=Release -DCARAVAN_MARCH="${CARAVAN_MARCH:-native}" >/dev/null
  cmake --build build/driver -j "$jobs" >/dev/null
fi
if [ "$what" = all ] || [ "$what" = addon ]; then
  if [ -f build/driver/cuda-paths.env ] && [ -f build/driver/libcaravan_cuda.a ]; then
    set -a
    # shellcheck disable=SC1091
    . build/driver/cuda-paths.env
    set +a
  fi
  # Build against the running Node's own headers when it ships them (no
  # download); otherwise node-gyp fetches the headers for this Node version.
  prefix=$(dirname "$(dirname "$(command -v node)")")
  nodedir=()
  [ -f "$prefix/include/node/node_api.h" ] && nodedir=(--nodedir "$prefix")
  (cd native && ../node_modules/.bin/node-gyp rebuild -j "$jobs" --loglevel=error "${nodedir[@]}" >&2)
fi
