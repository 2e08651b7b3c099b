#!/usr/bin/env bash
# The whole GPU check of issue 5 item 5 / issue 4 item 11, for a lent H100/H200 (the `device` tool), one model per call:
#
#   here, once:   ../shared/tools/device-wheels.sh      # zarr, cuCIM, OpenSlide, imagecodecs wheels -> .whl/
#                 benchmark/gpu_check.sh --download-extra # matplotlib + onnxruntime-gpu wheels -> .whl/extra
#   per model:    run(command="bash benchmark/gpu_check.sh deit_small", carry=[".whl/zarr", ".whl/cucim", ".whl/extra"])
#                 then copy the returned files into bench_results/ and commit them.
#
# On the device it installs the carried wheels into /tmp/site, writes the environment, trains a checkpoint with the
# paper protocol on the embedded demo store (records images/s and peak GPU MB per epoch), and runs `histo-bench run`
# with every backend available there, writing everything under $OUT (the device tool's output folder).
set -euo pipefail
P=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
if [ "${1:-}" = "--download-extra" ]; then
  mkdir -p .whl/extra
  python3 -m pip download -q "${P[@]}" -d .whl/extra matplotlib contourpy cycler fonttools kiwisolver pyparsing \
    onnxruntime-gpu onnx coloredlogs humanfriendly flatbuffers nvidia-ml-py
  du -sh .whl/extra
  exit 0
fi
MODEL=${1:?usage: benchmark/gpu_check.sh MODEL [extra histo-bench run flags]}
shift
OUT=${OUT:-/tmp/gpu-check}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*/*.whl
export PYTHONPATH=/tmp/site:$PWD HISTO_BENCH_HOME=/tmp/histo-bench-home
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt"
python3 -m benchmark.cli env --json > "$OUT/env.json"
python3 -m benchmark.cli -v run --model "$MODEL" --device cuda --train-epochs 3 --out "$OUT/bench_results" "$@" \
  2>&1 | tee "$OUT/run-$MODEL.log"
cp -r "runs/bench-$MODEL" "$OUT/train-$MODEL" 2>/dev/null || true
rm -f "$OUT"/train-"$MODEL"/*.pt  # weights stay on the device
