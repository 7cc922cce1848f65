#!/usr/bin/env bash
# Every single-GPU microbenchmark moesim ships, in one go, for a lent GPU machine (the session
# tool gives 15 minutes of device time, so this is one prepared script, about 5 minutes long).
#
#   OUT=results/h100 bash bench/gpu_session.sh     # writes log.txt and six moesim-bench/v1 files
#
# Steps: record the machine (GPU, clocks, driver, nvcc, torch); build bench/cuda with the nvcc
# and cuBLAS found there; cuBLASLt GEMM (BF16, FP8) and grouped GEMM sweeps, copy bandwidth (HBM,
# host <-> device); the PyTorch GEMM, grouped-GEMM and memcpy benchmarks. Every benchmark checks
# its data before it times anything and writes no file when the check fails. A step that fails
# is logged and the rest still run. Collectives and EP dispatch need two or more GPUs: skipped
# with a line when only one is visible.
set -u
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step machine
date -u +%Y-%m-%dT%H:%M:%SZ
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit,pci.bus_id --format=csv || true
nvcc --version | tail -2 || echo "no nvcc"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || true

step build
# machine code for the GPU that is here only (the Makefile's default adds sm_100: twice the time)
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
arch=()
[ -n "$cc" ] && arch=("GENCODE=-gencode arch=compute_$cc,code=sm_$cc")
make -C bench -j4 PYTHON="$PY" BUILD="$PWD/bench/build" "${arch[@]}" print-config all || echo "BUILD FAILED"

run() {  # run LABEL TIMEOUT CMD...: one benchmark, its status logged, never fatal
  local label=$1 limit=$2; shift 2
  step "$label"
  timeout "$limit" "$@"
  echo "--- $label exit status $?"
}
if [ -x bench/build/gemm_bench ]; then
  run "cuBLASLt GEMM" 240 bench/build/gemm_bench --json "$OUT/gemm-cublaslt.json"
  run "cuBLASLt grouped GEMM" 180 bench/build/gemm_bench --mode grouped --json "$OUT/grouped_gemm-cublaslt.json"
fi
if [ -x bench/build/memcpy_bench ]; then
  run "CUDA memcpy" 120 bench/build/memcpy_bench --json "$OUT/memcpy-cuda.json"
fi

for name in gemm grouped_gemm memcpy; do
  run "torch $name" 180 $PY -c "
import sys
from moesim.bench.micro.run import run_benchmark, format_table
data = run_benchmark('$name', backend='cuda', json_path='$OUT/$name-torch.json')
print(format_table(data))
sys.exit(0 if data['check']['passed'] else 1)"
done

gpus=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${gpus:-0}" -lt 2 ]; then
  step "collective, ep_dispatch: skipped, $gpus GPU visible (they need 2 or more)"
fi
step done
ls -l "$OUT"
