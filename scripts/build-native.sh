#!/usr/bin/env bash
# Builds the engine: the Node-API addon (node-gyp) and the standalone driver
# (CMake). `build-native.sh addon|driver` builds one; no argument builds both.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
jobs=$(nproc 2>/dev/null || echo 2)
if [ "$what" = all ] || [ "$what" = addon ]; then
  # Build against the running Node's own headers when it ships them (no
  # download); otherwise node-gyp fetches the headers for this Node version.
  prefix=$(dirname "$(dirname "$(command -v node)")")
  nodedir=()
  [ -f "$prefix/include/node/node_api.h" ] && nodedir=(--nodedir "$prefix")
  (cd native && ../node_modules/.bin/node-gyp rebuild -j "$jobs" --loglevel=error "${nodedir[@]}" >&2)
fi
if [ "$what" = all ] || [ "$what" = driver ]; then
  cmake -S native -B build/driver -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build/driver -j "$jobs" >/dev/null
fi
