#!/usr/bin/env bash
# The GPU check (issue 15 part 1): one run of at most five minutes on the lent H200, ordered so that a run cut short
# still returns the most valuable part; and its CPU rehearsal, which fails here on whatever would fail there.
#
#   here, once:     make gpu-wheels      # zarr stack + cuCIM + nvImageCodec wheels (cp312) -> .whl/zarr, .whl/cucim
#   rehearse:       bash benchmark/gpu_check.sh --rehearse [--out DIR]    # CPU, tiny sizes, the GPU's package set
#   on the device:  run(command="bash benchmark/gpu_check.sh", carry=[".whl/zarr", ".whl/cucim"], timeout_s=420)
#
# Steps (benchmark/gpu_check/plan.py): carry size (before any GPU work) -> install the wheels into a temporary
# --target folder -> environment + nvidia-smi + bf16 matmul / copy ceilings -> a synthetic store -> per model
# (deit_small, swin_tiny): fixed-step bf16 training on the device-resident loader, then `histo-bench run` (eager
# fp32, amp bf16, compile, cudagraphs; batch 1, 32, 256) -> loader-bench (input-pipeline efficiency) -> cuCIM GPU
# vs CPU on a deflate slide written there. Under $OUT (at most 5 files): summary.md, gpu_check.log,
# results.tar.gz (bench_results/<model>/<env tag>/...), steps.json.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
MODE=device
OUT_DIR=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) MODE=rehearse ;;
    --out) OUT_DIR=$2; shift ;;
    *) echo "usage: benchmark/gpu_check.sh [--rehearse] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
trap 'rm -rf "$SITE" "$WORK"' EXIT
export HISTO_BENCH_HOME=$WORK/home PYTHONUNBUFFERED=1 CUFILE_LOGFILE_PATH=/dev/null

if [ "$MODE" = device ]; then
  : "${OUT_DIR:?set OUT (the device tool does) or pass --out}"
  PY=(python3)
  PYTHONPATH=$PWD "${PY[@]}" -m benchmark.gpu_check.cli carry --wheels-required || exit 1
  "${PY[@]}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    .whl/zarr/*.whl .whl/cucim/*.whl || { echo "error: the carried wheels did not install" >&2; exit 1; }
else
  OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/gpu-check-out.XXXXXX)}
  VENV_PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
  # only the GPU machine's package set plus the carried ones: `python -S` sees no site-packages but $SITE
  PY=("$VENV_PY" -S)
  # one BLAS/OpenMP thread: on a busy 2-core machine torch's spinning threads make tiny steps ~5x slower
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  PYTHONPATH=$PWD "${PY[@]}" -m benchmark.gpu_check.cli carry || exit 1
  VENV_SITE=$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  PYTHONPATH=$PWD "${PY[@]}" -m benchmark.gpu_check.cli site --venv-site "$VENV_SITE" --to "$SITE" || exit 1
  if ls .whl/zarr/*.whl .whl/cucim/*.whl >/dev/null 2>&1; then  # would they install on CPython 3.12 there?
    "$VENV_PY" -m pip install -q --dry-run --no-index --no-deps --ignore-installed --only-binary=:all: \
      --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --target "$WORK/dry" \
      .whl/zarr/*.whl .whl/cucim/*.whl || { echo "error: the carried wheels would not install there" >&2; exit 1; }
  fi
fi
mkdir -p "$OUT_DIR"
export PYTHONPATH=$SITE:$PWD
"${PY[@]}" -m benchmark.gpu_check.cli run --plan "$MODE" --out "$OUT_DIR" --work "$WORK"
CODE=$?
echo "gpu check ($MODE): exit $CODE; summary: $OUT_DIR/summary.md" >&2
exit $CODE
