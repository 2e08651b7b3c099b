"""A cuCIM read leaves nothing behind: no ``cufile.log`` in the current folder, no cuFile lines on stdout or stderr
(cuCIM starts cuFile when imported where torch has loaded libcufile; without a CUDA driver that start fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.readers import READERS
from ingest.readers.cucim_reader import keep_cufile_log_out_of_cwd
from ingest.synthetic.slide import write_synthetic_slide

ROOT = Path(__file__).resolve().parents[2]
WHY = READERS.get("cucim").unavailable()  # found without importing cucim (an import here would write the log)

READ = """
import torch  # loads libcufile, as every histo-bench command that trains or predicts does
from ingest.readers import open_slide
reader = open_slide({path!r}, "cucim")
print(reader.name, reader.read_region((0, 0), (64, 64)).shape)
"""


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "slide.tif", width=1024, height=768,
                                 levels=(1, 4), seed=0)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUFILE_")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.skipif(WHY is not None, reason=str(WHY))
def test_cucim_read_leaves_no_file_and_prints_nothing(slide, tmp_path):
    res = subprocess.run([sys.executable, "-c", READ.format(path=str(slide))], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert res.stdout == "cucim (64, 64, 3)\n"
    assert "cuFile" not in res.stderr and "libcuda" not in res.stderr


@pytest.mark.skipif(WHY is not None, reason=str(WHY))
def test_user_log_path_is_kept(slide, tmp_path):
    log = tmp_path / "logs" / "mine.log"
    log.parent.mkdir()
    code = READ.format(path=str(slide)) + "import os; print(os.environ['CUFILE_LOGFILE_PATH'])\n"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(CUFILE_LOGFILE_PATH=str(log)),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[-1] == str(log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_log_default_respects_the_users_settings(monkeypatch):
    for name in ("CUFILE_LOGFILE_PATH", "CUFILE_ENV_PATH_JSON"):
        monkeypatch.delenv(name, raising=False)
    keep_cufile_log_out_of_cwd()
    assert os.environ["CUFILE_LOGFILE_PATH"] == os.devnull
    monkeypatch.setenv("CUFILE_LOGFILE_PATH", "/somewhere/cufile.log")
    keep_cufile_log_out_of_cwd()
    assert os.environ["CUFILE_LOGFILE_PATH"] == "/somewhere/cufile.log"
    monkeypatch.delenv("CUFILE_LOGFILE_PATH")
    monkeypatch.setenv("CUFILE_ENV_PATH_JSON", "/somewhere/cufile.json")
    keep_cufile_log_out_of_cwd()
    assert "CUFILE_LOGFILE_PATH" not in os.environ
