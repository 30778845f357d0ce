#!/usr/bin/env bash
# The prepared GPU check (run on the lent device machine through the device tool, which has CMake,
# ninja and the JAX CUDA 13 PJRT plugin but no network and no Node). From the repo root there:
#   carry: ["build/native/pjrt-include"]   (the PJRT headers, extracted here by the normal build)
#   command: bash scripts/gpu-check.sh
# It builds the C++ driver (cascade_run) and runs target / speculative / cascade on a random
# SmolLM2-135M-shaped model (no model file travels: 94 MB > the 64 MiB carry limit) with the CUDA
# plugin, at bf16 (the seed's precision), printing the same stats table as `cascade-xla run`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check-out}"
mkdir -p "$OUT"
plugin="${CASCADE_PJRT_PLUGIN:-$(python3 -c 'import jax_plugins.xla_cuda13 as m, os; print(os.path.join(os.path.dirname(m.__file__), "xla_cuda_plugin.so"))' 2>/dev/null)}"
[ -f "$plugin" ] || { echo "gpu-check: no CUDA PJRT plugin found (set CASCADE_PJRT_PLUGIN)"; exit 1; }
export CASCADE_PJRT_INCLUDE_DIR="$PWD/build/native/pjrt-include" CASCADE_COMPILE_CACHE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build build/gpu --target cascade_run -j 16 > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
run() { timeout 240 ./build/gpu/cascade_run --plugin "$plugin" --random-smollm2 --precision bf16 --max-tokens 64 "$@" 2>&1 | grep -v '^I0000\|^WARNING'; }
{
  run --mode speculative --draft-layers 8 --k1 4 --compare
  run --mode cascade --draft-layers 8 --k1 4 --k0 64 --branches 4
} | tee "$OUT/gpu-check.txt"
