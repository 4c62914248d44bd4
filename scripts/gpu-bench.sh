#!/usr/bin/env bash
# The CUDA backend on a GPU machine (CUDA 13, PyTorch, no Node.js): builds the
# standalone driver with CMake/nvcc, checks the CUDA backend against the CPU
# backend, then times full training steps of each configuration beside the
# equivalent PyTorch module, ending each with one JSON line
#   {"bench":"cuda","config":..,"gpu":..,"ours_tok_s":..,"torch_tok_s":..,"ratio":..,"mfu_pct":..}
# Usage: [ENGINE=path/to/caravan-engine] bash scripts/gpu-bench.sh [OUT_DIR]   (under 8 minutes on an H100, build included)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu-bench}
mkdir -p "$out"
cuda=${CUDA_HOME:-/usr/local/cuda}
export PATH="$cuda/bin:$PATH"
export LD_LIBRARY_PATH="$cuda/targets/x86_64-linux/lib:$cuda/lib64:${LD_LIBRARY_PATH:-}"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

t0=$(date +%s)
# ENGINE: a driver already built here (scripts/gpu-check.sh builds one first).
engine=${ENGINE:-}
if [ -z "$engine" ]; then
  cmake -S native -B build/gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$cuda/bin/nvcc" >"$out/cmake.log"
  cmake --build build/gpu -j "$(nproc)" >>"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
  engine=build/gpu/caravan-engine
fi

$engine cuda-info
if ! $engine cuda-check | tee "$out/cuda-check.jsonl"; then
  # Where a check fails, memcheck names the first bad access, if there is one.
  if command -v compute-sanitizer >/dev/null; then
    timeout 150 compute-sanitizer --tool memcheck --print-limit 4 $engine cuda-check 2>&1 | grep -v '"ok":true' | tail -25 || true
  fi
fi

for preset in ${PRESETS:-gpt2-124m stage-4096}; do
  ours=$($engine cuda-bench --preset "$preset" --steps "${STEPS:-10}" | tail -1)
  # The same step on the other attention path (the default is auto: gemm at these sizes), side by side.
  flash=$(CARAVAN_ATTENTION=flash $engine cuda-bench --preset "$preset" --steps "${STEPS:-10}" | tail -1)
  torch=$($py native/cuda/bench/torch_reference.py --preset "$preset" --steps "${STEPS:-10}" | tail -1)
  echo "$ours"
  echo "$flash"
  echo "$torch"
  $py - "$ours" "$flash" "$torch" <<'PY' | tee -a "$out/cuda-bench.jsonl"
import json, sys
ours, flash, torch = (json.loads(a) for a in sys.argv[1:4])
print(json.dumps({"bench": "cuda", "config": ours["config"], "gpu": ours["gpu"], "ours_tok_s": ours["tok_s"],
                  "torch_tok_s": torch["torch_tok_s"], "ratio": round(ours["tok_s"] / torch["torch_tok_s"], 3),
                  "mfu_pct": ours["mfu_pct"], "torch_mfu_pct": torch["mfu_pct"], "ours_step_ms": ours["step_ms"],
                  "torch_step_ms": torch["step_ms"], "attention": ours.get("attention"), "ours_phases_ms": ours.get("phases_ms"),
                  "flash_attention_tok_s": flash["tok_s"], "flash_attention_phases_ms": flash.get("phases_ms")}))
PY
done
echo "total: $(( $(date +%s) - t0 )) s"
