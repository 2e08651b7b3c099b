"""``histo-bench run``: checkpoint (trained first when none is given) -> every backend x precision x batch size ->
timing, memory and accuracy rows -> ``bench_results/<model>/<environment tag>/``.

    from benchmark.run import BenchConfig, run_benchmark
    out_dir, rows = run_benchmark(BenchConfig(model="swin_tiny", device="cuda"))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark import accuracy
from benchmark.accuracy import load_eval_sets, run_logits
from benchmark.backends import BACKENDS, BENCH_PRECISIONS
from benchmark.backends.eager import Eager
from benchmark.compute import flops_per_image, matmul_rate
from benchmark.harness import SweepPoint, TimingConfig, one_line, sweep, time_calls
from benchmark.reports.benchmark_report import write_report
from benchmark.results import env_tag, environment, make_row, save_rows
from histo_bench.device import DeviceError, resolve_device
from histo_bench.errors import ConfigError, HistoBenchError
from histo_bench.provenance import data_sentence
from ingest.store import ImageStore, StoreError
from models.registry import count_params
from pipelines.data.base import DataConfig
from pipelines.data.tasks import align_classes, check_task
from pipelines.training.checkpoint import CheckpointError, load_checkpoint
from pipelines.training.classifier import TrainConfig, train

log = logging.getLogger(__name__)

CUDA_BATCH_SIZES: tuple[int, ...] = (1, 8, 32, 128, 256)
CPU_BATCH_SIZES: tuple[int, ...] = (1, 8, 32)
#: (backend, precision, point) after each measured or skipped sweep point, for progress display.
BenchProgress = Callable[[str, str, SweepPoint | None], None]


class BenchError(HistoBenchError, RuntimeError):
    """The benchmark cannot run (no such checkpoint or store, a model family it does not handle...)."""


@dataclass(frozen=True)
class BenchConfig:
    """One ``histo-bench run``.

    Attributes:
        model: registered classifier name; with a checkpoint, it must match the checkpoint's model.
        checkpoint: a ``best.pt`` from ``histo-bench train``; None trains one first (``runs/bench-<model>``, reused
            when complete) with the paper protocol for ``train_epochs`` epochs.
        data: image store for the accuracy columns (None: the checkpoint's store, or the embedded demo store).
        backends: backend names (empty: every registered backend; unavailable ones become skipped rows).
        precisions: restrict to these precisions (empty: each backend's defaults for the device).
        batch_sizes: the sweep (empty: 1,8,32,128,256 on CUDA; 1,8,32 on CPU).
        device: "auto", "cpu", "cuda" or "cuda:N".
        image_size: input side (None: the checkpoint's).
        magnifications: test magnifications for accuracy (empty: every magnification of the store).
        max_eval_images: cap on test images per magnification (None: the whole test split).
        task: "subtype" or "binary", for a checkpoint trained first (a given checkpoint brings its own task).
        train_epochs: epochs when a checkpoint has to be trained first.
        train_max_steps: steps per epoch for that training (None: the whole split; default 10 on CPU).
        warmup, min_iters, min_time_s, max_time_s: timing overrides (None: the device's defaults).
        out: results root; rows go to ``<out>/<model>/<environment tag>/``.
    """

    model: str = "swin_tiny"
    checkpoint: str | None = None
    data: str | None = None
    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    device: str = "auto"
    image_size: int | None = None
    magnifications: tuple[str, ...] = ()
    max_eval_images: int | None = None
    task: str = "subtype"
    train_epochs: int = 2
    train_max_steps: int | None = None
    warmup: int | None = None
    min_iters: int | None = None
    min_time_s: float | None = None
    max_time_s: float | None = None
    out: str = "bench_results"

    def __post_init__(self) -> None:
        for name in self.backends:
            BACKENDS.get(name)  # KeyError listing the valid names
        bad = [p for p in self.precisions if p not in BENCH_PRECISIONS]
        if bad:
            raise ConfigError(f"unknown precision {bad[0]!r}: use {', '.join(BENCH_PRECISIONS)}")
        if any(b < 1 for b in self.batch_sizes):
            raise ConfigError("batch sizes must be >= 1")
        check_task(self.task)
        if self.train_epochs < 1:
            raise ConfigError("train_epochs must be >= 1")
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ConfigError("max_eval_images must be >= 1")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"--image-size {self.image_size}: must be >= 8 (or left out for the checkpoint's own)")


def train_checkpoint(config: BenchConfig, device: str) -> Path:
    """Train ``config.model`` with the paper protocol on mixed magnifications (demo-sized on CPU); reuse a complete
    earlier run."""

    cpu = not device.startswith("cuda")
    steps = config.train_max_steps if config.train_max_steps is not None else (10 if cpu else None)
    train_config = TrainConfig(model=config.model, store=config.data, train_magnification="mixed",
                               epochs=config.train_epochs, max_steps_per_epoch=steps, batch_size=16 if cpu else 64,
                               image_size=config.image_size or 224, device=device, task=config.task,
                               out=f"runs/bench-{config.model}" + ("-binary" if config.task == "binary" else ""))
    log.info("no --checkpoint: training %s for %d epoch(s)%s into %s", config.model, config.train_epochs,
             f" x {steps} steps" if steps else "", train_config.run_dir)
    result = train(train_config)
    return result.run_dir / "best.pt"


def _variants(config: BenchConfig, device: str, model) -> list[tuple[str, str, Any, str | None]]:
    """(backend, precision, instance, reason-if-skipped) for every requested backend."""
    out = []
    for name in config.backends or tuple(BACKENDS.names()):
        backend = BACKENDS.get(name)()
        reason = backend.unavailable(device, model)
        precisions = [p for p in (config.precisions or backend.default_precisions(device)) if p in backend.precisions]
        if not precisions:
            precisions = list(backend.default_precisions_cuda[:1] or backend.precisions[:1])
            reason = reason or (f"none of the precisions {', '.join(config.precisions)} apply (it runs "
                                f"{', '.join(backend.precisions)})" if config.precisions else "nothing to run here")
        for p in precisions:
            skip = reason or (None if config.backends else backend.default_skip(device, p))
            out.append((name, p, backend, skip))
    return out


def run_benchmark(config: BenchConfig, progress: BenchProgress | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run the whole benchmark; returns the results folder and the rows (also written there with the report)."""


    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise BenchError(str(exc)) from exc
    ckpt, loaded = _load_classifier(config, device)
    model, train_cfg, classes = loaded.build(device), loaded.config, list(loaded.classes)
    store = align_classes(_open_store(config.data or train_cfg["store"]), classes, train_cfg.get("task", "subtype"))
    image_size = config.image_size or train_cfg["image_size"]
    env = environment(device)
    tag = env_tag(env)
    out_dir = Path(config.out) / config.model / tag
    timing = TimingConfig.for_device(device, warmup=config.warmup, min_iters=config.min_iters,
                                     min_time_s=config.min_time_s, max_time_s=config.max_time_s)
    flops, ceiling = _ceiling(model, config.model, image_size, device, env)
    data_config = DataConfig(image_size=image_size, load_size=max(train_cfg["load_size"], image_size),
                             batch_size=64, loader="torch", num_workers=0, task=train_cfg.get("task", "subtype"))
    mags = list(config.magnifications or store.attrs["magnifications"])
    sets = load_eval_sets(store, mags, data_config, device, config.max_eval_images)
    # one eager fp32 callable (shape-independent): the reference logits now, the end-of-run recheck later
    eager_fp32 = Eager().prepare(model, torch.zeros(1, 3, image_size, image_size, device=device), "fp32")
    reference = {s.magnification: run_logits(eager_fp32, s.images, 32, device) for s in sets}
    common = dict(model=config.model, task=train_cfg.get("task", "subtype"), device=device, image_size=image_size,
                  params_m=count_params(model) / 1e6, gflops_per_image=flops / 1e9, ceiling_ips=ceiling,
                  checkpoint=str(ckpt), data=data_sentence(store.attrs.get("origin"), store=str(store.path)),
                  env_tag=tag, env=env)
    sizes = list(config.batch_sizes or (CUDA_BATCH_SIZES if device.startswith("cuda") else CPU_BATCH_SIZES))
    sweeps = _Sweeps(model, device, image_size, sizes, timing, sets, classes, reference, ceiling, common, progress)
    rows: list[dict[str, Any]] = []
    for name, precision, backend, reason in _variants(config, device, model):
        if reason:
            rows.append(sweeps.skipped(name, precision, reason))
        else:
            rows += sweeps.measure(name, precision, backend)
    _recheck_eager(rows, eager_fp32, image_size, device, timing)
    save_rows(rows, out_dir)
    (out_dir / "config.json").write_text(json.dumps({**asdict(config), "device": device,
                                                                   "checkpoint": str(ckpt)}, indent=1))
    write_report(rows, out_dir)
    return out_dir, rows


def _load_classifier(config: BenchConfig, device: str) -> tuple[Path, Any]:
    """(checkpoint path, loaded checkpoint) of the image classifier to benchmark: ``config.checkpoint``, or one
    trained first; a :class:`BenchError` when it cannot be read or holds another model."""

    ckpt = Path(config.checkpoint) if config.checkpoint else train_checkpoint(config, device)
    try:
        loaded = load_checkpoint(ckpt, ("classifier",), device, "`histo-bench run` (it benchmarks image classifiers)")
    except CheckpointError as exc:
        raise BenchError(str(exc)) from exc
    if loaded.model != config.model:
        raise BenchError(f"{ckpt} holds {loaded.model}, not {config.model} (pass --model {loaded.model})")
    return ckpt, loaded


def _open_store(path: str | Path):
    """The image store for the accuracy columns; a :class:`BenchError` saying why when it cannot be opened."""

    try:
        return ImageStore(path)
    except (StoreError, FileNotFoundError) as exc:
        raise BenchError(f"{path}: {exc}") from exc


def _ceiling(model, name: str, image_size: int, device: str, env: dict[str, Any]) -> tuple[float, float | None]:
    """(FLOPs per image, the matmul-bound throughput ceiling in images/s or None); the measured matmul rate goes
    into ``env``."""

    flops = flops_per_image(model, image_size)
    rate = matmul_rate(device)
    env["matmul_tflops"] = rate / 1e12
    env["matmul_dtype"] = "bf16" if device.startswith("cuda") else "fp32"
    ceiling = rate / flops if flops else None
    log.info("%s: %.2f GFLOPs/image at %d px; matmul %.1f TFLOP/s -> ceiling %.0f images/s", name,
             flops / 1e9, image_size, rate / 1e12, ceiling or 0)
    return flops, ceiling


@dataclass
class _Sweeps:
    """What every (backend, precision) of one run shares, and how one becomes its result rows."""

    model: Any
    device: str
    image_size: int
    sizes: list[int]
    timing: TimingConfig
    sets: list
    classes: list[str]
    reference: dict
    ceiling: float | None
    common: dict[str, Any]
    progress: BenchProgress | None

    def skipped(self, name: str, precision: str, reason: str) -> dict[str, Any]:
        """The one row of a variant that does not run here, saying why."""

        log.info("%s %s skipped: %s", name, precision, reason)
        row = make_row(**self.common, backend=name, precision=precision, status="skipped", reason=reason)
        if self.progress:
            self.progress(name, precision, None)
        return row

    def measure(self, name: str, precision: str, backend) -> list[dict[str, Any]]:
        """One row per batch size: the timing sweep, then accuracy through the callable the sweep kept."""


        def on_point(point):
            if self.progress:
                self.progress(name, precision, point)

        model, image_size, device, ceiling = self.model, self.image_size, self.device, self.ceiling
        runner = type(backend)()  # a fresh instance whose caches (exports, graphs, sessions) die with this variant
        points = sweep(lambda x, b=runner, p=precision: b.prepare(model, x, p),
                       lambda bs: torch.randn(bs, 3, image_size, image_size, device=device), self.sizes, device,
                       self.timing, on_point)
        acc = _accuracy(points, self.sets, self.classes, self.reference, device)
        note = acc.pop("reason", "")
        rows = []
        for point in points:
            fields = {**point.timing, **(acc if point.status == "ok" else {})}
            if point.status == "ok" and ceiling:
                fields["ceiling_fraction"] = fields["throughput_ips"] / ceiling
            rows.append(make_row(**self.common, **fields, backend=name, precision=precision,
                                 batch_size=point.batch_size, status=point.status,
                                 reason=point.reason or (note if point.status == "ok" else ""),
                                 prepare_s=point.prepare_s))
            point.infer = None
        del runner, points  # release compiled graphs / captured memory before the next backend
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        return rows


def _recheck_eager(rows: list[dict[str, Any]], eager_fp32, image_size: int, device: str,
                   timing: TimingConfig) -> None:
    """Time eager fp32 again after every other backend, into ``recheck_throughput_ips``: the baseline of every
    comparison, measured twice, shows whether the machine stayed steady through the run."""


    for row in rows:
        if row["backend"] == "eager" and row["precision"] == "fp32" and row["status"] == "ok":
            x = torch.randn(row["batch_size"], 3, image_size, image_size, device=device)
            row["recheck_throughput_ips"] = time_calls(eager_fp32, x, device, timing).summary(
                row["batch_size"])["throughput_ips"]


def _accuracy(points: list[SweepPoint], sets, classes, reference, device: str) -> dict[str, Any]:
    """Accuracy fields through the one callable the sweep kept (largest successful batch size up to 64)."""
    kept = [p for p in points if p.status == "ok" and p.infer is not None]
    if not kept or not sets:
        return {}
    eval_point = kept[0]
    try:
        fields, _ = accuracy.accuracy_fields(eval_point.infer, sets, eval_point.batch_size, classes, reference, device)
    except Exception as exc:  # noqa: BLE001  (timing stands; the accuracy columns say why they are empty)
        log.warning("accuracy failed at batch %d: %s", eval_point.batch_size, one_line(exc))
        return {"reason": f"accuracy failed: {one_line(exc)}"}
    return fields
