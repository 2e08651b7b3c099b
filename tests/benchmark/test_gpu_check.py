"""The GPU check's rehearsal (``benchmark/gpu_check.sh --rehearse``): the device run's sequence on the CPU with tiny
sizes and only the GPU machine's packages (plus the carried ones) importable. It must pass here, report a carry
under 60 MiB, return at most 8 files, and fail when a step imports something the GPU machine lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.gpu_check.carry import LIMIT_MIB, measure, read_manifest, wheel_problems
from benchmark.gpu_check.steps import PROBE_ENV

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmark" / "gpu_check.sh"


def rehearse(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--rehearse", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=400, env={**os.environ, "GPU_CHECK_PYTHON": sys.executable, **env})


@pytest.mark.slow
def test_rehearsal_passes_within_the_carry_and_file_limits(tmp_path):
    out = tmp_path / "out"
    proc = rehearse(out)
    assert proc.returncode == 0, proc.stderr[-3000:] + (out / "gpu_check.log").read_text()[-3000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and {"summary.md", "gpu_check.log", "results.tar.gz", "steps.json"} <= set(files)
    report = json.loads((out / "steps.json").read_text())
    assert report["carry"]["total_mib"] < LIMIT_MIB and not report["carry"]["problems"]
    assert [s["status"] for s in report["steps"]] == ["ok"] * len(report["steps"])
    summary = (out / "summary.md").read_text()
    assert "device-resident" in summary and "end to end" in summary and "14.6k" in summary
    assert "compile_max_autotune: time" in summary


@pytest.mark.slow
def test_a_stray_import_of_a_package_the_gpu_machine_lacks_fails_the_rehearsal(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("imagecodecs") is not None  # here it is installed: only the rehearsal hides it
    out = tmp_path / "out"
    proc = rehearse(out, **{PROBE_ENV: "imagecodecs"})
    assert proc.returncode != 0
    assert "No module named 'imagecodecs'" in (out / "gpu_check.log").read_text()
    steps = json.loads((out / "steps.json").read_text())["steps"]
    assert steps[0]["status"] == "failed" and all(s["status"] == "skipped" for s in steps[1:])


def test_carry_counts_the_tree_and_recorded_wheels_when_no_wheel_folder_is_here(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    carry = measure(tmp_path)
    assert carry.tree_bytes == 1000 and "recorded sizes" in carry.source
    assert carry.wheel_bytes == sum(read_manifest().values()) > 30 * 2**20
    assert carry.total_mib < LIMIT_MIB and not carry.problems


def test_a_missing_duplicate_or_foreign_wheel_is_a_problem():
    names = sorted(read_manifest())
    assert wheel_problems(names) == []
    assert any("msgspec: 0 wheels" in p for p in wheel_problems([n for n in names if not n.startswith("msgspec")]))
    assert any("zarr: 2 wheels" in p for p in wheel_problems(names + ["zarr-9.0-py3-none-any.whl"]))
    assert any("not installable" in p for p in wheel_problems(names + ["x-1.0-cp311-cp311-win_amd64.whl"]))


def test_an_oversized_carry_fails(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * (30 * 2**20))
    carry = measure(tmp_path)
    assert carry.total_mib > LIMIT_MIB and any("over the 60 MiB" in p for p in carry.problems)
