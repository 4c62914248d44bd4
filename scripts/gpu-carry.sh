#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has no Node.js
# (the device machines here): this machine's node, node_modules without the
# packages the GPU tests never load, nats-server, OpenBLAS's libraries, and
# the Node addon built with the CUDA backend for any x86-64-v3 CPU.
# Usage: bash scripts/gpu-carry.sh [DIR]   (default .carry, git-ignored; about 50 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.carry}
mkdir -p "$dir"
command -v nvcc >/dev/null || { echo "gpu-carry: needs nvcc, to build the addon's CUDA backend" >&2; exit 1; }

# The addon, for the GPU machine's CPU rather than this one's: its own build
# folders, so this machine's native build stays as it is.
cmake -S native -B build/driver-v3 -DCMAKE_BUILD_TYPE=Release -DCARAVAN_MARCH=x86-64-v3 >/dev/null
cmake --build build/driver-v3 -j "$(nproc)" >/dev/null
rm -rf build/addon-v3 && mkdir -p build/addon-v3 && cp -r native/binding.gyp native/src native/cuda build/addon-v3/
ln -sfn "$PWD/node_modules" build/node_modules
(
  set -a; . build/driver-v3/cuda-paths.env; set +a
  export CARAVAN_MARCH=x86-64-v3
  prefix=$(dirname "$(dirname "$(command -v node)")")
  nodedir=()
  [ -f "$prefix/include/node/node_api.h" ] && nodedir=(--nodedir "$prefix")
  cd build/addon-v3 && ../../node_modules/.bin/node-gyp rebuild -j "$(nproc)" --loglevel=error "${nodedir[@]}" >&2
)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/native/build/Release" "$stage/.deps/bin" "$stage/.gpu-libs"
cp build/addon-v3/build/Release/caravan_engine.node "$stage/native/build/Release/"
cp "$(readlink -f .deps/bin/nats-server)" "$stage/.deps/bin/nats-server"
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  cp "$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')" "$stage/.gpu-libs/$lib"
done
ln -s "$PWD/node_modules" "$stage/node_modules"
# Packages the GPU tests never load: ONNX Runtime, the compilers and their types, the test-time browser driver.
tar -C "$stage" -chf - --exclude='node_modules/onnxruntime-node' --exclude='node_modules/typescript' \
  --exclude='node_modules/@types' --exclude='node_modules/node-gyp' --exclude='node_modules/playwright-core' \
  --exclude='node_modules/.cache' node_modules native .deps .gpu-libs | xz -T0 -6 > "$dir/tree.tar.xz"
xz -T0 -6 -c "$(command -v node)" > "$dir/node.xz"
du -sh "$dir"/*
