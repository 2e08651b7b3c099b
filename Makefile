# histo-bench: `make demo` and `make test` each set everything up from nothing (a .venv in the repo).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= data/demo
# The gpu extra (DALI, cuCIM) has wheels for Linux x86_64 only; there it is installed so its code paths are
# tested CPU-only even without a GPU.
ifeq ($(shell uname -sm),Linux x86_64)
EXTRAS := dev,gpu
else
EXTRAS := dev
endif
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# pytest-benchmark: committed baselines live in bench_results/pytest-benchmark/<CPU model>/<platform>/, one per
# processor model (a baseline from another processor says nothing about this one: these VMs come as AMD EPYC and
# Intel Xeon, ~2x apart on some cases); a case fails when its fastest round is more than BENCH_TOLERANCE slower
# than the baseline's fastest. The minimum, because noise only ever adds time; and wide, because these are noisy
# 2-core VMs: the same code on the same VM read the store in min 78 ms at one moment and 182 ms an hour later. On a CPU without a baseline the cases run and report,
# uncompared, and say how to record one (`make bench-save` on a quiet machine).
BENCH_TOLERANCE ?= 200%
CPU_MODEL := $(shell (grep -m1 'model name' /proc/cpuinfo 2>/dev/null || echo 'model name: unknown') | \
	sed 's/^[^:]*: *//; s/[^A-Za-z0-9]\{1,\}/-/g; s/^-//; s/-$$//')
BENCH_DIR := bench_results/pytest-benchmark/$(CPU_MODEL)
BENCH_ARGS := -m bench --benchmark-storage=file://$(BENCH_DIR) --benchmark-min-rounds=3 \
	--benchmark-max-time=0.5 --benchmark-warmup=on --benchmark-columns=min,median,max,rounds
BENCH_COMPARE = $(if $(wildcard $(BENCH_DIR)/*/*.json),--benchmark-compare \
	--benchmark-compare-fail=min:$(BENCH_TOLERANCE),)

.PHONY: install browser demo test bench bench-save lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# Bytecode for the project's own modules: an editable install writes none, nor does Python itself where
# PYTHONDONTWRITEBYTECODE is set (as on our 2-core machines); each command would compile them again
# (~50 ms of histo-ingest's start).
install: $(STAMP)
	@$(BIN)/python -m compileall -q histo_bench ingest models pipelines benchmark
	@$(BIN)/python tests/ingest/dicom_fixtures.py || true  # small DICOM test slides; skipped quietly offline

demo: install
	$(BIN)/histo-ingest demo --out $(DEMO_DIR)/breakhis --slides $(DEMO_DIR)/slides
	$(BIN)/histo-ingest breakhis $(DEMO_DIR)/breakhis --out $(DEMO_DIR)/breakhis.zarr
	$(BIN)/histo-ingest tile $(DEMO_DIR)/slides --out $(DEMO_DIR)/tiles.zarr --mag 20 --mag 5 --multiscale
	$(BIN)/histo-bench train --model abmil_gated --data $(DEMO_DIR)/tiles.zarr \
		--labels $(DEMO_DIR)/slides/labels.csv --extractor resnet34 --epochs 15 --out $(DEMO_DIR)/mil
	$(BIN)/histo-bench predict --checkpoint $(DEMO_DIR)/mil/best.pt --data $(DEMO_DIR)/tiles.zarr \
		--out $(DEMO_DIR)/mil/predictions
	$(BIN)/histo-bench train --model fusion_effnet_b0 --data $(DEMO_DIR)/tiles.zarr \
		--labels $(DEMO_DIR)/slides/labels.csv --epochs 1 --max-tiles 8 --out $(DEMO_DIR)/fusion-slides
	$(BIN)/histo-bench suite magnification-transfer --model resnet18 --task binary --data $(DEMO_DIR)/breakhis.zarr \
		--epochs 12 --lr 2e-3 --image-size 64 --batch-size 16 --device cpu --out $(DEMO_DIR)/suite
	$(BIN)/histo-bench run --model resnet18 --checkpoint $(DEMO_DIR)/suite/resnet18/mixed/best.pt \
		--data $(DEMO_DIR)/breakhis.zarr --device cpu --batch-sizes 1,8 --max-time 1 --mag 100X --mag 400X \
		--out $(DEMO_DIR)/bench
	$(BIN)/histo-bench explain --checkpoint $(DEMO_DIR)/suite/resnet18/mixed/best.pt \
		--data $(DEMO_DIR)/breakhis.zarr --device cpu --max-images 100
	$(BIN)/histo-bench report $(DEMO_DIR)

lint: install
	$(BIN)/ruff check .

# Debian's chromium renders report.html in one test: installed where apt-get runs as root, else that test skips.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the report.html render test"; \
		(apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
		 apt-get install -y -q chromium >/dev/null 2>&1)) || echo "chromium not installed: that test will skip"; \
	fi

test: lint browser
	$(BIN)/python -m pytest --durations=30
	$(MAKE) --no-print-directory bench

bench: install
	@[ -n "$(BENCH_COMPARE)" ] || echo "no pytest-benchmark baseline for CPU '$(CPU_MODEL)' in $(BENCH_DIR): running \
	uncompared (record one with make bench-save on a quiet machine)"
	$(BIN)/python -m pytest $(BENCH_ARGS) $(BENCH_COMPARE)

bench-save: install
	$(BIN)/python -m pytest $(BENCH_ARGS) --benchmark-save=baseline

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .benchmarks

# The wheels the GPU check carries to the lent H200 (benchmark/gpu_check.sh), at the versions constraints.txt pins,
# for CPython 3.12 manylinux x86_64, into the ignored .whl/zarr and .whl/cucim; then their sizes are recorded in
# benchmark/gpu_check/wheels.txt (what the rehearsal counts where the folders are absent, as in CI).
WHEEL_PLATFORM := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -c constraints.txt
.PHONY: gpu-wheels
gpu-wheels: install
	rm -rf .whl/zarr .whl/cucim
	$(BIN)/python -m pip download -q $(WHEEL_PLATFORM) -d .whl/zarr zarr numcodecs donfig msgspec google-crc32c crc32c
	$(BIN)/python -m pip download -q $(WHEEL_PLATFORM) -d .whl/cucim cucim-cu13 lazy_loader nvidia-nvimgcodec-cu13
	$(BIN)/python -m benchmark.gpu_check.cli wheels --write-manifest
