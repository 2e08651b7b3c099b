"""Timing: warm-up, timed iterations (CUDA events on GPU, perf_counter on CPU), latency percentiles, peak memory,
and the batch-size sweep of one backend with its out-of-memory backoff.

Every number is per batch: ``latency_*_ms`` is the time of one call on a batch of ``batch_size`` images and
``throughput_ips = batch_size / latency_mean``, so throughput and latency always agree.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from histo_bench.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure one (backend, precision, batch size).

    Attributes:
        warmup: untimed calls after the first call (which compiles / allocates and is recorded apart).
        min_iters: timed calls at least.
        min_time_s: keep timing until this much time has passed (and ``min_iters`` calls were made)...
        max_time_s: ...but stop at this much (at least 3 calls are always timed).
    """

    warmup: int = 3
    min_iters: int = 10
    min_time_s: float = 1.0
    max_time_s: float = 10.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_iters < 3:
            raise ConfigError("warmup must be >= 0 and min_iters >= 3 (p99 of fewer calls means nothing)")
        if not (math.isfinite(self.min_time_s) and math.isfinite(self.max_time_s)):
            raise ConfigError(f"--min-time {self.min_time_s} / --max-time {self.max_time_s}: not finite numbers")
        if self.min_time_s < 0 or self.max_time_s <= 0:
            raise ConfigError(f"--min-time {self.min_time_s:g} / --max-time {self.max_time_s:g}: times must be "
                              "positive (--min-time may be 0)")
        if self.min_time_s > self.max_time_s:
            raise ConfigError(f"--min-time {self.min_time_s:g} is above --max-time {self.max_time_s:g}: give a "
                              "--min-time <= --max-time")

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> TimingConfig:
        """Defaults per device (GPUs get more calls: they are fast and their first calls are noisy)."""
        base = dict(warmup=10, min_iters=50, min_time_s=2.0, max_time_s=20.0) if device.startswith("cuda") else {}
        merged = {**dict(min_time_s=cls.min_time_s, max_time_s=cls.max_time_s), **base,
                  **{k: v for k, v in overrides.items() if v is not None}}
        if overrides.get("max_time_s") is None:  # a longer minimum than the default maximum raises the maximum
            merged["max_time_s"] = max(merged["max_time_s"], merged["min_time_s"])
        elif overrides.get("min_time_s") is None:  # a shorter maximum than the default minimum lowers the minimum
            merged["min_time_s"] = min(merged["min_time_s"], merged["max_time_s"])
        return cls(**merged)


@dataclass
class Timing:
    """What one timed sweep point measured."""

    latencies_ms: list[float]
    first_call_s: float
    peak_mem_mb: float | None = None
    nvml_mem_delta_mb: float | None = None

    def summary(self, batch_size: int) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        mean = float(lat.mean())
        return {"n_iters": int(lat.size), "latency_p50_ms": float(p50), "latency_p90_ms": float(p90),
                "latency_p99_ms": float(p99), "latency_mean_ms": mean,
                "throughput_ips": batch_size / (mean / 1000.0), "first_call_s": self.first_call_s,
                "peak_mem_mb": self.peak_mem_mb, "nvml_mem_delta_mb": self.nvml_mem_delta_mb}


def is_oom(exc: BaseException) -> bool:
    """A CUDA (or host allocator) out-of-memory error."""

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def nvml_used_mb(device: str) -> float | None:
    """Device memory in use per NVML (sees TensorRT's and ONNX Runtime's allocations too), None without NVML."""
    if not device.startswith("cuda"):
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = int(device.split(":")[1]) if ":" in device else 0
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used / 2**20
    except pynvml.NVMLError:
        return None


def time_calls(fn: Callable, x, device: str, config: TimingConfig, nvml_before: float | None = None) -> Timing:
    """Time ``fn(x)``: one first call (recorded alone), ``warmup`` calls, then timed calls, each synchronised.

    ``nvml_before``: NVML used memory read before the backend was prepared (so engine builds and runtime sessions
    count in the delta); read here when not given."""

    cuda = device.startswith("cuda")
    if nvml_before is None:
        nvml_before = nvml_used_mb(device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn(x)
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(config.warmup):
        fn(x)
    latencies: list[float] = []
    start = time.perf_counter()
    while True:
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn(x)
            end.record()
            end.synchronize()
            latencies.append(begin.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(x)
            latencies.append((time.perf_counter() - t) * 1000.0)
        elapsed = time.perf_counter() - start
        n = len(latencies)
        if (n >= config.min_iters and elapsed >= config.min_time_s) or (n >= 3 and elapsed >= config.max_time_s):
            break
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    nvml_after = nvml_used_mb(device)
    delta = nvml_after - nvml_before if nvml_before is not None and nvml_after is not None else None
    return Timing(latencies, first, peak, delta)


@dataclass
class SweepPoint:
    """One batch size's outcome: ``status`` is ok | oom | skipped | error, with ``reason`` unless ok."""

    batch_size: int
    status: str
    reason: str = ""
    prepare_s: float | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    infer: Callable | None = None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def sweep(prepare: Callable[[Any], Callable], make_input: Callable[[int], Any], batch_sizes: list[int], device: str,
          config: TimingConfig, on_point: Callable[[SweepPoint], None] | None = None,
          keep_up_to: int = 64) -> list[SweepPoint]:
    """Prepare and time each batch size in increasing order.

    ``prepare(example)`` returns the callable for that batch size (its duration is ``prepare_s``). On out-of-memory
    the size is recorded as ``oom`` with the error, half that size is tried instead (unless already measured), and
    larger sizes are recorded as ``skipped`` with the reason; other errors are recorded as ``error`` and the sweep
    goes on with the next size. Only one callable is kept (``infer``), that of the largest successful batch size up
    to ``keep_up_to`` (else the smallest): the others are released as soon as they are timed, so compiled graphs
    and captured memory of one size never count in the next size's peak memory.
    """

    points: list[SweepPoint] = []
    done: set[int] = set()
    sizes = sorted(set(batch_sizes))
    oom_at: int | None = None
    kept: list[SweepPoint] = []

    def keep(point: SweepPoint) -> None:
        if point.status != "ok":
            return
        best = kept[0] if kept else None
        if best is None or (point.batch_size <= keep_up_to and
                            (best.batch_size > keep_up_to or point.batch_size > best.batch_size)):
            if best is not None:
                best.infer = None
            kept[:] = [point]
        else:
            point.infer = None

    def measure(bs: int, note: str = "") -> SweepPoint:
        x = make_input(bs)
        nvml_before = nvml_used_mb(device)
        t0 = time.perf_counter()
        try:
            fn = prepare(x)
            prepare_s = time.perf_counter() - t0
            timing = time_calls(fn, x, device, config, nvml_before).summary(bs)
        except Exception as exc:  # noqa: BLE001  (a backend failing must not end the run; the row says why)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            if is_oom(exc):
                return SweepPoint(bs, "oom", f"out of memory at batch {bs}: {one_line(exc)}")
            log.warning("batch %d failed: %s", bs, one_line(exc))
            return SweepPoint(bs, "error", one_line(exc))
        return SweepPoint(bs, "ok", note, prepare_s, timing, fn)

    for bs in sizes:
        if oom_at is not None:
            point = SweepPoint(bs, "skipped", f"larger than batch {oom_at}, which ran out of memory")
        else:
            point = measure(bs)
            done.add(bs)
            keep(point)
        points.append(point)
        if on_point:
            on_point(point)
        if point.status == "oom" and oom_at is None:
            oom_at = bs
            smaller = bs // 2
            while smaller >= 1 and smaller not in done:
                done.add(smaller)
                retry = measure(smaller, note=f"backoff: batch {bs} ran out of memory")
                keep(retry)
                points.append(retry)
                if on_point:
                    on_point(retry)
                if retry.status != "oom":
                    break
                smaller //= 2
    return sorted(points, key=lambda p: (p.batch_size, p.status != "ok"))
