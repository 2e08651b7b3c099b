"""Timing statistics, and the sweep's out-of-memory backoff and error rows."""

from __future__ import annotations

import pytest
import torch

from benchmark.harness import TimingConfig, sweep, time_calls

FAST = TimingConfig(warmup=1, min_iters=5, min_time_s=0.0, max_time_s=0.5)


def test_timing_summary_is_consistent():
    x = torch.randn(4, 16)
    t = time_calls(lambda v: v @ v.T, x, "cpu", FAST).summary(batch_size=4)
    assert t["n_iters"] >= 5
    assert 0 < t["latency_p50_ms"] <= t["latency_p90_ms"] <= t["latency_p99_ms"]
    assert t["throughput_ips"] == pytest.approx(4 / (t["latency_mean_ms"] / 1000))
    assert t["peak_mem_mb"] is None and t["first_call_s"] >= 0


def test_timing_config_validation_and_device_defaults():
    with pytest.raises(ValueError, match="min_iters"):
        TimingConfig(min_iters=1)
    with pytest.raises(ValueError, match="--min-time 5 is above --max-time 1"):
        TimingConfig(min_time_s=5, max_time_s=1)
    with pytest.raises(ValueError, match="times must be positive"):
        TimingConfig(min_time_s=-1)
    assert TimingConfig.for_device("cuda").min_iters > TimingConfig.for_device("cpu").min_iters
    assert TimingConfig.for_device("cpu", max_time_s=2.0, warmup=None).max_time_s == 2.0
    # one bound given past the other's default moves that default, never the given one
    assert TimingConfig.for_device("cpu", max_time_s=0.2).min_time_s == 0.2
    assert TimingConfig.for_device("cpu", min_time_s=30.0).max_time_s == 30.0


def _oom_above(limit: int):
    def prepare(example):
        def fn(x):
            if x.shape[0] > limit:
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
            return x.sum()
        return fn
    return prepare


def test_out_of_memory_backs_off_and_records_why():
    points = sweep(_oom_above(20), lambda bs: torch.zeros(bs, 2), [1, 8, 32, 64], "cpu", FAST)
    by = {(p.batch_size, p.status): p for p in points}
    assert "out of memory at batch 32" in by[(32, "oom")].reason
    assert by[(16, "ok")].reason == "backoff: batch 32 ran out of memory"
    assert by[(64, "skipped")].reason == "larger than batch 32, which ran out of memory"
    assert {p.batch_size for p in points if p.status == "ok"} == {1, 8, 16}


def test_backoff_halves_until_it_fits_and_stops_at_measured_sizes():
    points = sweep(_oom_above(5), lambda bs: torch.zeros(bs, 2), [4, 32], "cpu", FAST)
    statuses = [(p.batch_size, p.status) for p in points]
    assert statuses == [(4, "ok"), (8, "oom"), (16, "oom"), (32, "oom")]


def test_other_errors_become_error_rows_and_the_sweep_goes_on():
    def prepare(example):
        if example.shape[0] == 2:
            raise ValueError("unsupported shape\nsecond line")
        return lambda x: x.sum()

    points = sweep(prepare, lambda bs: torch.zeros(bs, 2), [1, 2, 4], "cpu", FAST)
    assert [(p.batch_size, p.status) for p in points] == [(1, "ok"), (2, "error"), (4, "ok")]
    assert points[1].reason == "ValueError: unsupported shape"


def test_only_the_evaluation_callable_is_kept():
    points = sweep(lambda example: (lambda x: x.sum()), lambda bs: torch.zeros(bs, 2), [1, 8, 32, 128], "cpu", FAST,
                   keep_up_to=64)
    assert [p.batch_size for p in points if p.infer is not None] == [32]
    points = sweep(lambda example: (lambda x: x.sum()), lambda bs: torch.zeros(bs, 2), [128, 256], "cpu", FAST,
                   keep_up_to=64)
    assert [p.batch_size for p in points if p.infer is not None] == [128]


def test_a_longer_minimum_time_raises_the_default_maximum():
    config = TimingConfig.for_device("cpu", min_time_s=30.0)
    assert config.min_time_s == config.max_time_s == 30.0
