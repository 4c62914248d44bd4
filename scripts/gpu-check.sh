#!/usr/bin/env bash
# The CUDA backend on a GPU machine with no Node.js (CUDA 13, PyTorch), in one
# run: unpacks what scripts/gpu-carry.sh packed, runs the Node suite's GPU
# tests (test/engine/cuda.test.ts: the CUDA stage against the CPU stage, bad
# input, split invariance and state restore on the GPU, and `caravan train
# --device cuda` with host processes over NATS against the in-process run),
# then scripts/gpu-bench.sh (driver build, cuda-check, timings beside PyTorch).
# Usage: bash scripts/gpu-check.sh [CARRY_DIR] [OUT_DIR]   (about 3 minutes on an H100)
set -uo pipefail
cd "$(dirname "$0")/.."
carry=${1:-.carry}
out=${2:-build/gpu-check}
mkdir -p "$out" /tmp/caravan-node/bin
cuda=${CUDA_HOME:-/usr/local/cuda}
export PATH="/tmp/caravan-node/bin:$cuda/bin:$PATH"
export LD_LIBRARY_PATH="$PWD/.gpu-libs:$cuda/targets/x86_64-linux/lib:$cuda/lib64:${LD_LIBRARY_PATH:-}"
t0=$(date +%s)
xz -dc "$carry/node.xz" > /tmp/caravan-node/bin/node && chmod +x /tmp/caravan-node/bin/node
tar -xJf "$carry/tree.tar.xz"
echo "unpacked in $(( $(date +%s) - t0 )) s: node $(node --version)"

# The driver (the tests run its cuda-check), built here for this machine.
cmake -S native -B build/driver -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$cuda/bin/nvcc" >"$out/cmake.log" 2>&1 &&
  cmake --build build/driver -j "$(nproc)" >>"$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
echo "driver built at $(( $(date +%s) - t0 )) s"

node node_modules/ava/entrypoints/cli.mjs --verbose --timeout=4m test/engine/cuda.test.ts 2>&1 | tee "$out/ava.log"
tests=${PIPESTATUS[0]}
echo "GPU tests: exit $tests at $(( $(date +%s) - t0 )) s"

ENGINE=build/driver/caravan-engine bash scripts/gpu-bench.sh "$out"
bench=$?
echo "total: $(( $(date +%s) - t0 )) s"
exit $(( tests != 0 || bench != 0 ))
