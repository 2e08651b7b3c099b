"""Peak RSS of the gigapixel stages on a small streamed slide (~45 s; the 100k x 100k figures are
``histo-bench tile-bench --slide gigapixel``, committed in bench_results/tiling/gigapixel_2cpu.md)."""

from __future__ import annotations

import pytest

from benchmark.gigapixel import RSS_LIMIT_MB, run_gigapixel_benchmark

pytestmark = pytest.mark.bench


def test_gigapixel_stages_stay_under_the_rss_limit(tmp_path, record_property):
    result = run_gigapixel_benchmark(tmp_path, size=12288, feature_tiles=32)
    assert result["tiles"] > 500 and result["resnet34_tiles"] == 32
    for name, stage in result["stages"].items():
        record_property(f"{name}_peak_rss_mb", stage["peak_rss_mb"])
        assert stage["peak_rss_mb"] < RSS_LIMIT_MB, f"{name}: {stage}"
