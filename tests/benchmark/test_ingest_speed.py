"""The ingest benchmark's arithmetic: the ratio is against the fastest decode baseline, never a slower one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.ingest_speed import IngestBenchConfig, IngestBenchResult, image_files
from histo_bench.errors import ConfigError
from tests.conftest import write_tree


def test_the_ratio_is_against_the_fastest_start_method():
    result = IngestBenchResult(images=10, workers=2, ingest_wall=[3.3, 3.0], ingest_cpu=[5.5, 5.4],
                               decode={"spawn": {"wall": [3.1, 2.9], "cpu": [5.2, 5.0]},
                                       "fork": {"wall": [2.6, 2.5], "cpu": [4.8, 4.6]}})
    assert result.baseline == "fork"
    assert result.ratio == pytest.approx(3.0 / 2.5)
    assert result.cpu_ratio == pytest.approx(5.4 / 4.6)
    figures = result.to_dict()
    assert figures["baseline"] == "fork" and figures["decode_wall"] == [2.6, 2.5]
    assert figures["decode_by_start_method"]["spawn"]["wall"] == [3.1, 2.9]


@pytest.mark.parametrize("baselines", [(), ("thread",)])
def test_baselines_must_be_start_methods(baselines):
    with pytest.raises(ConfigError, match="baselines"):
        IngestBenchConfig(root=".", baselines=baselines)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_decode_baseline_decodes_every_image(tmp_path, method):
    """Run as :func:`benchmark.ingest_speed.measure` runs it, in a fresh interpreter (forking pytest is unsafe)."""
    write_tree(tmp_path, classes=("adenosis",), patients=1, mags=("40X",), images=3)
    code = f"from benchmark.ingest_speed import decode_tree; print(decode_tree({str(tmp_path)!r}, 2, {method!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert int(done.stdout) == len(image_files(tmp_path)) == 3


def test_the_record_says_what_data_and_machine_it_ran_on(tmp_path):
    """The JSON of ``ingest-bench --out``: the data (as given, before replication: real or synthetic), the machine
    and the commit, beside the figures."""
    from benchmark.ingest_speed import record
    from ingest.breakhis import SYNTHETIC_MARKER

    result = IngestBenchResult(images=36, workers=2, ingest_wall=[3.0], ingest_cpu=[5.0],
                               decode={"fork": {"wall": [2.5], "cpu": [4.6]}})
    rec = record(result, tmp_path, replicate=3)
    assert rec["data"] == {"kind": "user-provided", "root": str(tmp_path.resolve()), "replicated": 3, "images": 36}
    assert rec["ratio"] == pytest.approx(1.2) and rec["cores"] >= 1
    assert rec["machine"]["cpu"] and rec["machine"]["python"] and "core" in rec["machine"]
    assert rec["machine"]["os"].startswith(rec["machine"]["platform"].split()[0])  # the full string, kept apart
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    assert record(result, tmp_path)["data"] == {"kind": "synthetic", "root": str(tmp_path.resolve()),
                                                "replicated": 0, "images": 36}
    (tmp_path / SYNTHETIC_MARKER).write_text("{not json")  # the figures are kept, the reason is said
    data = record(result, tmp_path)["data"]
    assert data["kind"] == "unknown" and "JSONDecodeError" in data["error"]
