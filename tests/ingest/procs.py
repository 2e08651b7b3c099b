"""Helpers for the data-safety tests: real ``histo-ingest`` subprocesses, their process groups, store digests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Attribute keys that differ between two runs of the same work (wall-clock figures, the run's own paths).
VOLATILE_KEYS = frozenset({"timings", "seconds", "images_per_s", "completed_at", "resumed", "out"})


def ingest_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "ingest", *map(str, args)]


def start(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen:
    """``histo-ingest ARGS`` in its own process group (session), output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(ingest_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=cwd, env=env)


def run(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(ingest_cmd(*args), capture_output=True, text=True, timeout=timeout)


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command) of every live (not zombie) process in process group ``pgid``, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append((int(entry.name), cmdline.strip()[:200]))
    return members


def wait_for(predicate, timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def kill_group_leader(proc: subprocess.Popen) -> int:
    """SIGKILL the command's own process (not its workers) and reap it; returns its process group."""
    pgid = os.getpgid(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    return pgid


def survivors_after(pgid: int, seconds: float) -> list[tuple[int, str]]:
    """The group's live processes once ``seconds`` have passed (or as soon as there are none)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.05)
    left = group_members(pgid)
    for pid, _ in left:  # never leave them behind for the rest of the suite
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def store_digest(root: Path) -> dict[str, object]:
    """Every file under ``root`` by relative path: its bytes, or for ``zarr.json`` its JSON without
    :data:`VOLATILE_KEYS`. Two stores with equal digests hold the same arrays, chunks and attributes."""
    digest: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            digest[rel] = _strip(json.loads(path.read_text())) if path.name == "zarr.json" else path.read_bytes()
    return digest


def diff(a: dict[str, object], b: dict[str, object]) -> list[str]:
    """The paths where two digests differ (for assertion messages)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
