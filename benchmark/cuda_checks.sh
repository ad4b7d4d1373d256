#!/usr/bin/env bash
# CUDA checks for a GPU host that has torch (with pytest, transformers, scipy) but not SGLang: builds the
# extension's CUDA kernels against that torch, runs every test that exercises a CUDA path (op parity and
# distribution tests, the offline speculative decoder, the trainer) plus the CPU tests that depend on the
# host (the CPU kernels' ISA and thread splits: attention, sgl_kernel ops, packed linear), then times each op on the device
# (bench_ops.py) and a drafted step against a plain one (bench_device_costs.py). Logs go to $OUT.
#
#     OUT=/tmp/cuda bash benchmark/cuda_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmark/results/cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DSPARK_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
{
  nvidia-smi -L
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -1
  ${CXX:-c++} --version | head -1
  echo "CXX=${CXX:-c++} -> $(command -v "${CXX:-c++}"), nproc $(nproc)"
} 2>&1 | tee "$OUT/env.txt"

t0=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"
readelf -d dspark_sglang/_C*.so | grep NEEDED | tee -a "$OUT/env.txt"

parallel=()
$PY -c "import xdist" 2>/dev/null && parallel=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
t0=$(date +%s)
timeout ${TEST_TIMEOUT:-1200} $PY -m pytest -q -p no:cacheprovider -rfs "${parallel[@]}" test/ops test/unit/test_cuda_paths.py \
  test/unit/test_prompt_lookup.py test/unit/test_drafter_propose.py test/unit/test_eval_spec_decode.py \
  test/unit/test_training_forward.py test/unit/test_sgl_kernel_cpu_attention.py test/unit/test_sgl_kernel_cpu_ops.py \
  test/unit/test_sgl_kernel_cpu_elementwise.py test/unit/test_drafter_packed_inference.py test/unit/test_sampling.py \
  > "$OUT/pytest.log" 2>&1
rc=$?
tail -25 "$OUT/pytest.log"
echo "tests: $(( $(date +%s) - t0 )) s, rc $rc"

timeout ${BENCH_TIMEOUT:-600} $PY benchmark/kernels/bench_device_costs.py --device cuda --reqs 1,8,32,64 --context 512 2>&1 | tee "$OUT/device_costs.jsonl"
[ "${SKIP_BENCH_OPS:-0}" = 1 ] || $PY benchmark/kernels/bench_ops.py --device cuda --iters 100 2>&1 | tee "$OUT/bench_ops_cuda.jsonl"
exit $rc
