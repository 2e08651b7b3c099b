"""The GPU check's steps; the driver runs each in its own process (``python -m benchmark.gpu_check.cli step NAME``).

Every step writes JSON under ``<work>/bench_results/`` as it goes, so a step stopped at its time budget still leaves
what it had measured. Every figure carries a ``measured`` label: ``device-resident`` (inputs already on the device:
the inference sweep, the device-resident loader's training steps) or ``end to end`` (from files or a host-side
loader to the result).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmark.gpu_check.plan import Plan

log = logging.getLogger(__name__)

#: A comma list of module names every step imports first: the test's stray import (a module the GPU machine lacks
#: must make the rehearsal fail).
PROBE_ENV = "GPU_CHECK_PROBE_IMPORT"
#: FLOPs per DeiT-S image at 224 px (the anchor's figure).
DEIT_S_FLOPS = 9.2e9


def probe_imports() -> None:
    for name in filter(None, os.environ.get(PROBE_ENV, "").split(",")):
        importlib.import_module(name.strip())


def write_json(path: Path, data: Any) -> Path:
    from histo_bench.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=1, default=str))


def tag_for(device: str) -> tuple[str, dict[str, Any]]:
    from benchmark.results import env_tag, environment

    env = environment(device)
    return env_tag(env), env


def environment_step(plan: Plan, work: Path) -> None:
    """``histo-bench env --json``, ``nvidia-smi``, and the measured bf16 matmul and device-copy ceilings."""
    from benchmark.environment import describe

    out = work / "bench_results" / "gpu_check"
    write_json(out / "env.json", describe())
    smi = shutil.which("nvidia-smi")
    text = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout if smi else "no nvidia-smi\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nvidia-smi.txt").write_text(text)
    import torch

    from benchmark.compute import matmul_rate

    cuda = plan.device.startswith("cuda")
    tag, env = tag_for(plan.device)
    rate = matmul_rate(plan.device, "bf16", size=8192 if cuda else 512, repeats=10 if cuda else 2)
    copy = _copy_rate(plan.device, 2**30 if cuda else 2**24, torch)
    write_json(out / "ceilings.json", {
        "env_tag": tag, "environment": env, "measured": "device-resident",
        "matmul_tflops": rate / 1e12, "matmul_dtype": "bf16" if cuda else "fp32 (CPU: bf16 is emulated)",
        "copy_gb_s": copy / 1e9, "copy_note": "device-to-device copy_, bytes read + written, best of 10",
        "deit_s_ceiling_ips": rate / DEIT_S_FLOPS})
    log.info("%s: matmul %.1f TFLOP/s, copy %.1f GB/s", tag, rate / 1e12, copy / 1e9)


def _copy_rate(device: str, n_bytes: int, torch) -> float:
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(11):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


def store_step(plan: Plan, work: Path) -> None:
    """A synthetic BreakHis store at 100X and 400X: the loaders' input (no demo data travels)."""
    from ingest.breakhis import IngestConfig, ingest_breakhis
    from ingest.synthetic.breakhis_tree import SyntheticConfig, generate_tree

    tree = work / "breakhis"
    h, w = plan.store_size
    config = SyntheticConfig(patients_per_class=plan.store_patients, images_per_magnification=plan.store_images,
                             magnifications=("100X", "400X"), height=h, width=w)
    t0 = time.perf_counter()
    generate_tree(tree, config, workers=max(1, min(16, os.cpu_count() or 1)))
    summary = ingest_breakhis(IngestConfig(root=str(tree), out=str(work / "store.zarr"),
                                           magnifications=("100X", "400X"), overwrite=True))
    log.info("store: %d images in %.1f s", config.total_images, time.perf_counter() - t0)
    write_json(work / "bench_results" / "gpu_check" / "store.json",
               {"images": config.total_images, "size": [h, w], "seconds": time.perf_counter() - t0,
                "summary": str(summary)})


def model_step(plan: Plan, work: Path, model: str) -> None:
    """Train ``model`` for a fixed number of steps (bf16, device-resident loader) with the one training engine,
    then ``histo-bench run`` on its checkpoint; every sweep point is appended to ``points.jsonl`` as it is
    measured."""
    from benchmark.run import BenchConfig, run_benchmark
    from pipelines.training.classifier import TrainConfig, train

    tag, _ = tag_for(plan.device)
    out = work / "bench_results" / model / tag
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(model=model, store=str(work / "store.zarr"), train_magnification="mixed",
                         epochs=plan.train_epochs, max_steps_per_epoch=plan.train_steps, batch_size=plan.train_batch,
                         precision="bf16", image_size=plan.image_size, loader="device", device=plan.device,
                         out=str(work / "runs" / model), log_every=0, patience=100,
                         model_kwargs=dict(plan.model_kwargs.get(model, {})))
    result = train(config)
    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    write_json(out / "training.json", {
        "model": model, "measured": "device-resident", "loader": "device", "precision": "bf16",
        "batch_size": plan.train_batch, "steps_per_epoch_cap": plan.train_steps, "image_size": plan.image_size,
        "model_kwargs": config.model_kwargs,
        "epochs": [{k: e.get(k) for k in ("epoch", "epoch_seconds", "items_per_s", "peak_gpu_mb", "train_loss")}
                   for e in epochs]})
    points = out / "points.jsonl"
    points.unlink(missing_ok=True)

    def progress(backend: str, precision: str, point) -> None:
        row = {"backend": backend, "precision": precision, "measured": "device-resident"}
        if point is not None:
            row.update(batch_size=point.batch_size, status=point.status, reason=point.reason,
                       prepare_s=point.prepare_s, **{k: v for k, v in point.timing.items() if not isinstance(v, list)})
        with points.open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    cuda = plan.device.startswith("cuda")
    bench = BenchConfig(model=model, checkpoint=str(result.run_dir / "best.pt"), data=str(work / "store.zarr"),
                        backends=plan.backends[model], batch_sizes=plan.batch_sizes, device=plan.device,
                        max_eval_images=32, warmup=3 if cuda else 1, min_iters=10 if cuda else 3,
                        min_time_s=plan.min_time_s, max_time_s=plan.max_time_s, out=str(work / "bench_results"))
    run_benchmark(bench, progress)


def loader_commands(plan: Plan, work: Path) -> list[list[str]]:
    """``histo-bench loader-bench`` per model: device-resident loader vs the torch DataLoader."""
    return [[sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "benchmark.cli", "loader-bench",
             "--model", model, "--data", str(work / "store.zarr"), "--loader", "device", "--loader", "torch",
             "--mag", "mixed", "--batch-size", str(plan.loader_batch), "--image-size", str(plan.loader_image_size),
             "--steps", str(plan.loader_steps), "--precision", plan.loader_precision, "--device", plan.device,
             "--out", str(work / "bench_results" / "loader")] for model in plan.loader_models]


def tiling_step(plan: Plan, work: Path) -> None:
    """cuCIM on a deflate slide written here: ``histo-ingest tile`` end to end (cuCIM reader, CPU decode), then
    the kept tiles read again through cuCIM with ``device="cpu"`` and ``device="cuda"``."""
    from benchmark.gpu_check.slide import COMPRESSION, write_deflate_slide
    from benchmark.tiling import pipeline

    out = work / "bench_results" / "tiling"
    slide = write_deflate_slide(work / "tiling" / "slide.tiff", plan.slide_size, tile=plan.tile_size)
    workers = max(1, min(16, os.cpu_count() or 1))
    row, coords = pipeline(slide, work / "tiling" / "store.zarr", "cucim", 40, plan.tile_size, workers)
    rows = [{"method": "histo-ingest tile (cuCIM reader, CPU decode)", "measured": "end to end", "tiles": row.tiles,
             "seconds": row.seconds, "tiles_per_s": row.tiles_per_s, "stages": row.stages}]
    result = {"slide": f"synthetic {plan.slide_size}x{plan.slide_size} 40x, {COMPRESSION} (deflate) tiles of "
                       f"{plan.tile_size} px", "read_workers": workers, "rows": rows}
    write_json(out / "cucim.json", result)
    for device in ("cpu", "cuda"):
        rows.append(_cucim_reads(slide, coords, plan.tile_size, workers, device))
        write_json(out / "cucim.json", result)


def _cucim_reads(slide: Path, coords, tile: int, workers: int, device: str) -> dict[str, Any]:
    from benchmark.harness import one_line
    from ingest.readers.cucim_reader import CuCIMReader

    name = f"cuCIM read_regions, device={device!r}, decoded tiles copied to host numpy"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return {"method": name, "measured": "end to end", "status": "skipped", "reason": "no CUDA here"}
    try:
        with CuCIMReader(slide, device=device) as reader:
            t0 = time.perf_counter()
            n = sum(1 for _ in reader.read_regions([tuple(c) for c in coords], (tile, tile), 0, num_workers=workers))
            seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001  (the row says why; the other rows stand)
        log.warning("cuCIM %s: %s", device, one_line(exc))
        return {"method": name, "measured": "end to end", "status": "error", "reason": one_line(exc)}
    log.info("cuCIM %s: %d tiles in %.2f s", device, n, seconds)
    return {"method": name, "measured": "end to end", "status": "ok", "tiles": n, "seconds": seconds,
            "tiles_per_s": n / seconds if seconds else None}
