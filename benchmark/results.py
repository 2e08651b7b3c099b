"""Benchmark result rows: the schema, the environment recorded with them, and their files.

One row per (model, backend, precision, batch_size), every field always present (None where it does not apply),
written as ``results.jsonl`` under ``bench_results/<model>/<environment tag>/`` together with ``results.csv``,
``results.md`` and the plots. Accuracy fields are dicts keyed by magnification (``macro_f1["100X"]``); the CSV
flattens them to ``macro_f1_100X``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from benchmark.environment import cpu_name, git_sha, gpu_names, package_version
from histo_bench.errors import ConfigError
from histo_bench.files import atomic_write_text

#: Every row has exactly these keys, in this order.
ROW_FIELDS: tuple[str, ...] = (
    "model", "task", "backend", "precision", "batch_size", "status", "reason", "device", "image_size",
    "n_iters", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "throughput_ips",
    "recheck_throughput_ips",
    "peak_mem_mb", "nvml_mem_delta_mb", "prepare_s", "first_call_s",
    "params_m", "gflops_per_image", "ceiling_ips", "ceiling_fraction",
    "macro_f1", "accuracy", "n_test_images", "n_test_patients", "eval_batch_size", "max_abs_logit_diff",
    "top1_agreement", "checkpoint", "data", "env_tag", "env",
)
KEY_FIELDS: tuple[str, ...] = ("model", "backend", "precision", "batch_size")
METRIC_DICTS: tuple[str, ...] = ("macro_f1", "accuracy", "n_test_images", "n_test_patients")


def make_row(**values: Any) -> dict[str, Any]:
    """A row with every field of :data:`ROW_FIELDS`; unknown keys are an error (one name per concept)."""
    unknown = set(values) - set(ROW_FIELDS)
    if unknown:
        raise KeyError(f"not result fields: {sorted(unknown)}")
    row = {name: values.get(name) for name in ROW_FIELDS}
    for name in METRIC_DICTS:
        row[name] = row[name] or {}
    return row


def environment(device: str) -> dict[str, Any]:
    """What the numbers were measured on: hardware, driver, library versions, commit, time (UTC)."""

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    smi = gpu_names()
    return {
        "device": device, "gpu": gpu, "driver": smi[0].split(",")[-1].strip() if smi else None,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "timm": package_version("timm"),
        "torch_tensorrt": package_version("torch-tensorrt"), "tensorrt": package_version("tensorrt"),
        "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
        "git_sha": git_sha(), "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def env_tag(env: dict[str, Any]) -> str:
    """A folder name for the machine: ``nvidia-h100-80gb-hbm3-torch2.11.0`` or ``cpu-2c-x86_64-torch2.14.1``."""
    hw = env["gpu"] or f"cpu-{env['cpu_count']}c-{platform.machine()}"
    torch_version = str(env["torch"]).split("+")[0]
    return re.sub(r"[^a-z0-9.]+", "-", f"{hw}-torch{torch_version}".lower()).strip("-")


def save_rows(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """``results.jsonl`` + ``results.csv`` in ``out_dir`` (replacing an earlier run's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    flat = [flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    return path


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV-friendly copy: metric dicts become ``<field>_<magnification>`` columns, ``env`` becomes ``env_*``."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key in METRIC_DICTS:
            flat.update({f"{key}_{mag}": v for mag, v in value.items()})
        elif key == "env":
            flat.update({f"env_{k}": v for k, v in (value or {}).items()})
        else:
            flat[key] = value
    return flat


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows from a ``results.jsonl`` or the folder holding one; a clear error when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path}: no benchmark results here (run `histo-bench run` first)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not a JSON row ({exc.msg})") from None
    return rows


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS)


def compare_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows measured in both sets (same model, backend, precision, batch size), with B/A ratios.

    ``throughput_ratio`` > 1 and ``latency_ratio`` < 1 mean B is faster; ``f1_delta`` is B minus A per magnification.
    """
    index_b = {row_key(r): r for r in b if r["status"] == "ok"}
    out = []
    for ra in a:
        rb = index_b.get(row_key(ra))
        if ra["status"] != "ok" or rb is None:
            continue
        out.append({
            **dict(zip(KEY_FIELDS, row_key(ra), strict=True)),
            "throughput_a": ra["throughput_ips"], "throughput_b": rb["throughput_ips"],
            "throughput_ratio": rb["throughput_ips"] / ra["throughput_ips"],
            "p50_a": ra["latency_p50_ms"], "p50_b": rb["latency_p50_ms"],
            "latency_ratio": rb["latency_p50_ms"] / ra["latency_p50_ms"],
            "f1_delta": {m: rb["macro_f1"][m] - f for m, f in ra["macro_f1"].items()
                         if m in rb["macro_f1"] and f is not None and rb["macro_f1"][m] is not None},
        })
    return out
