"""The error root's edges: what counts as a full disk, which OSErrors become one line, a DataLoader worker's
re-raised error, the temporary files a killed write leaves."""

from __future__ import annotations

import errno
import sys

import pytest
import typer
from typer.testing import CliRunner

from histo_bench.command_group import HandledGroup, one_line
from histo_bench.errors import ConfigError, DiskFullError, disk_full, environment_message
from histo_bench.files import atomic_write, remove_stray_temporaries


def test_only_a_full_disk_or_torchs_write_failure_is_a_full_disk(tmp_path):
    assert isinstance(disk_full(tmp_path / "x", OSError(errno.ENOSPC, "No space left on device")), DiskFullError)
    quota = disk_full(tmp_path / "x", OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert "disk quota exceeded" in str(quota)
    torch_full = disk_full(tmp_path / "x", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                                                        "16302080 vs 16301976"))
    assert "no space left on device or quota exceeded" in str(torch_full) and str(tmp_path / "x") in str(torch_full)
    assert disk_full(tmp_path / "x", PermissionError(errno.EACCES, "Permission denied")) is None
    assert disk_full(tmp_path / "x", RuntimeError("a bug in the write callback")) is None


def test_a_failing_write_that_is_not_a_full_disk_keeps_its_own_error(tmp_path):
    def buggy(fh):
        raise RuntimeError("a bug in the write callback")

    with pytest.raises(RuntimeError, match="a bug in the write callback"):
        atomic_write(tmp_path / "x.json", buggy)
    assert list(tmp_path.iterdir()) == []


def test_environment_errors_need_a_path_except_a_full_disk():
    assert environment_message(OSError(errno.EROFS, "Read-only file system", "/ro/x")) == (
        "/ro/x: Read-only file system (choose a writable --out)")
    assert environment_message(OSError(errno.ENOSPC, "No space left on device")).startswith("a write: No space")
    assert environment_message(OSError(errno.EPERM, "Operation not permitted")) is None  # no path: a bug, traceback
    assert environment_message(OSError(errno.ENOENT, "No such file or directory", "/x")) is None


def test_an_error_re_raised_by_a_dataloader_worker_prints_its_own_one_line():
    from torch._utils import ExceptionWrapper

    try:
        raise ConfigError("s.zarr/images/c/0/0/0/0: shard index checksum mismatch (truncated)")
    except ConfigError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(ConfigError) as info:
        wrapped.reraise()
    assert "Original Traceback" in str(info.value)
    assert one_line(str(info.value)) == "s.zarr/images/c/0/0/0/0: shard index checksum mismatch (truncated)"

    app = typer.Typer(cls=HandledGroup)

    @app.command()
    def fails() -> None:
        wrapped.reraise()

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["fails"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: s.zarr/images/c/0/0/0/0: shard index checksum mismatch (truncated)"]


def test_stray_temporaries_of_dead_writers_only(tmp_path):
    dead = tmp_path / ".last.pt.4194303.tmp"  # above any live pid here
    alive = tmp_path / f".last.pt.{__import__('os').getpid()}.tmp"
    users = [tmp_path / ".notes.2023.tmp", tmp_path / ".last.pt.99999999999999999999.tmp", tmp_path / "last.pt"]
    for path in (dead, alive, *users):
        path.write_bytes(b"x")
    assert remove_stray_temporaries(tmp_path) == [dead]
    assert alive.exists() and all(p.exists() for p in users)
