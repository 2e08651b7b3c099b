"""Work locks: exactly one winner among racing processes, stale locks cleared, never someone else's lock removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from histo_bench.files import pid_alive
from ingest import locks
from ingest.locks import LockBusy, LockOwner, WorkLock, read_owner
from ingest.workers import mp_context


def _race(path: str, barrier, results, all_answered) -> None:
    lock = WorkLock(path, "race")
    barrier.wait()
    won = lock.try_acquire()
    results.put(won)
    if won:
        all_answered.wait(60)  # hold it until every other process has tried
        lock.release()


def _race_many(path, n: int = 6) -> list[bool]:
    ctx = mp_context()
    barrier, results, all_answered = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_race, args=(str(path), barrier, results, all_answered)) for _ in range(n)]
    for w in workers:
        w.start()
    outcome = [results.get(timeout=60) for _ in workers]
    all_answered.set()
    for w in workers:
        w.join(timeout=60)
    return outcome


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path, owner: LockOwner) -> None:
    path.write_text(json.dumps(asdict(owner)))


def _held_until_aged(path, age: float) -> None:
    """The lock at ``path`` cannot be taken now, and can be once its mtime is ``age`` seconds old."""
    assert not WorkLock(path, "new").try_acquire()
    old = time.time() - age
    os.utime(path, (old, old))
    lock = WorkLock(path, "new")
    assert lock.try_acquire()
    lock.release()


def test_one_winner_among_racing_processes(tmp_path):
    outcome = _race_many(tmp_path / "x.lock")
    assert outcome.count(True) == 1, outcome
    assert not (tmp_path / "x.lock").exists()  # released by the winner


def test_one_winner_when_racing_processes_all_find_the_lock_stale(tmp_path):
    path = tmp_path / "x.lock"
    _write_lock(path, replace(LockOwner.me("old"), pid=_dead_pid(), start_ticks=None))
    outcome = _race_many(path)
    assert outcome.count(True) == 1, outcome


def test_a_live_holder_keeps_its_lock_and_is_named(tmp_path):
    first, second = WorkLock(tmp_path / "x.lock", "tiling a"), WorkLock(tmp_path / "x.lock", "tiling a")
    assert first.try_acquire()
    assert not second.try_acquire()
    holder = second.holder()
    assert holder.pid == os.getpid() and "tiling a" in holder.describe()
    with pytest.raises(LockBusy, match=f"held by pid {os.getpid()}"):
        second.acquire(timeout=0.2, poll=0.05)
    first.release()
    assert second.try_acquire()
    second.release()


def test_lock_content_is_whole_from_the_start(tmp_path):
    lock = WorkLock(tmp_path / "x.lock", "ingesting s.zarr")
    with lock:
        owner = read_owner(tmp_path / "x.lock")
        assert owner == lock.owner and owner.host and owner.token
    assert not (tmp_path / "x.lock").exists()


def test_a_dead_pid_on_this_host_is_stale(tmp_path):
    path = tmp_path / "x.lock"
    _write_lock(path, replace(LockOwner.me("old"), pid=_dead_pid()))
    lock = WorkLock(path, "new")
    assert lock.try_acquire()
    assert read_owner(path).token == lock.owner.token
    lock.release()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path):
    me = LockOwner.me("old")
    if me.start_ticks is None:
        pytest.skip("no /proc start times here")
    path = tmp_path / "x.lock"
    _write_lock(path, replace(me, start_ticks=me.start_ticks - 1))  # "this pid", but another process's start
    lock = WorkLock(path, "new")
    assert lock.try_acquire()
    lock.release()


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_is_old(tmp_path, monkeypatch):
    path = tmp_path / "x.lock"
    _write_lock(path, replace(LockOwner.me("remote"), host="some-other-node"))
    _held_until_aged(path, locks.STALE_SECONDS + 5)  # a fresh heartbeat: alive


def test_same_hostname_in_another_pid_namespace_counts_as_another_host(tmp_path):
    """Two containers sharing a hostname but not their pids must not judge each other's pids."""
    path = tmp_path / "x.lock"
    _write_lock(path, replace(LockOwner.me("sidecar"), pid=_dead_pid(), machine="same-host/boot/other-pid-ns"))
    _held_until_aged(path, locks.STALE_SECONDS + 5)  # its (dead) pid means nothing here: the heartbeat rules


def test_a_zombie_holder_is_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not reaped: a zombie
    try:
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()


def test_fields_of_a_newer_version_are_ignored(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({**asdict(LockOwner.me("new")), "something_new": 1}))
    assert read_owner(path).pid == os.getpid()


def test_a_stale_breaker_is_removed_and_a_fresh_one_kept(tmp_path):
    breaker = tmp_path / "x.lock.break"
    breaker.write_text("")
    locks._remove_stale_breaker(breaker)  # fresh (just written): put back
    assert breaker.exists()
    old = time.time() - locks.BREAKER_STALE_SECONDS - 5
    os.utime(breaker, (old, old))
    locks._remove_stale_breaker(breaker)
    assert not breaker.exists() and list(tmp_path.iterdir()) == []


def test_still_mine_and_clearing_a_stale_lock_beside_finished_work(tmp_path):
    lock = WorkLock(tmp_path / "x.lock", "mine")
    assert lock.try_acquire() and lock.still_mine()
    _write_lock(lock.path, replace(LockOwner.me("theirs"), token="t2"))
    assert not lock.still_mine()
    lock.release()
    _write_lock(lock.path, replace(LockOwner.me("killed"), pid=_dead_pid()))
    WorkLock(lock.path, "finished").clear_if_stale()
    assert not lock.path.exists()


def test_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.05)
    lock = WorkLock(tmp_path / "x.lock", "long job")
    with lock:
        old = time.time() - 1000
        os.utime(lock.path, (old, old))
        time.sleep(0.3)
        assert time.time() - lock.path.stat().st_mtime < 5


def test_release_never_removes_a_lock_taken_over_by_another_process(tmp_path):
    lock = WorkLock(tmp_path / "x.lock", "mine")
    assert lock.try_acquire()
    other = replace(LockOwner.me("theirs"), token="another-token")
    _write_lock(lock.path, other)  # e.g. this process stalled, its lock was found stale and taken
    lock.release()
    assert read_owner(lock.path).token == "another-token"


def test_an_unreadable_lock_is_stale_after_its_grace(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("{not json")
    _held_until_aged(path, locks.UNREADABLE_GRACE_SECONDS + 1)


def test_released_on_an_exception(tmp_path):
    lock = WorkLock(tmp_path / "x.lock", "boom")
    with pytest.raises(RuntimeError), lock:
        raise RuntimeError("boom")
    assert not lock.path.exists()


def test_private_files_of_killed_creators_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    """A kill inside :func:`locks.create_exclusive` leaves its private file beside the lock (a flaky SIGKILL test
    found one in a resumed store); the next taker in that folder removes those whose creator is certainly gone, and
    nothing else: not a live or stalled creator's, not another machine's (NFS shows it empty until its fsync)."""
    monkeypatch.setattr(locks, "_SWEPT", set())
    dead, live, here = _dead_pid(), os.getpid(), locks._machine_tag()
    old = time.time() - locks.STALE_SECONDS - 1
    files = {}
    for name, pid, machine, payload, aged in [
            ("dead owner", dead, here, replace(LockOwner.me("killed"), pid=dead), False),
            ("live owner", live, here, LockOwner.me("creating now"), False),
            ("cut short, dead pid", dead, here, None, False),
            ("cut short, live pid, stalled", live, here, None, True),
            ("cut short, other machine", dead, "0badc0de", None, False),
            ("cut short, other machine, stale", dead, "0badc0de", None, True),
            ("cut short, older version", dead, None, None, False)]:
        tag = f"{machine}." if machine else ""
        f = files[name] = tmp_path / f".slide-1.lock.{pid}.{tag}{len(files):08x}.tmp"
        _write_lock(f, payload) if payload else f.write_bytes(b"")
        if aged:
            os.utime(f, (old, old)) if "stale" in name else os.utime(f, (time.time() - 60,) * 2)
    files["zarr.json, dead pid"] = tmp_path / f".zarr.json.{dead}.{here}.0a0b0c0d.tmp"
    files["zarr.json, dead pid"].write_bytes(b'{"zarr_format"')
    user = [tmp_path / ".slide-1.lock.notes.tmp", tmp_path / f".notes.{dead}.{here}.0a0b0c0d.tmp"]
    for f in user:
        f.write_bytes(b"")

    lock = WorkLock(tmp_path / "slide-1.lock", "tiling slide-1")
    assert lock.try_acquire()
    lock.release()
    left = {name for name, f in files.items() if f.exists()}
    assert left == {"live owner", "cut short, live pid, stalled", "cut short, other machine",
                    "cut short, older version"}
    assert all(f.exists() for f in user)

    files["dead owner"].write_text(json.dumps(asdict(replace(LockOwner.me("killed"), pid=dead))))
    assert WorkLock(tmp_path / "slide-2.lock", "tiling slide-2").try_acquire()
    assert files["dead owner"].exists()  # one listing per folder per run, not one per slide
    monkeypatch.setattr(locks, "_SWEPT", set())
    WorkLock(tmp_path / "slide-1.lock", "finished").clear_if_stale()  # the path taken beside finished work
    assert not files["dead owner"].exists()


def test_a_private_file_removed_under_its_creator_is_made_again(tmp_path, monkeypatch):
    link = os.link
    calls = []

    def vanishing_link(src, dst):  # the first private file disappears just before its link
        calls.append(src)
        if len(calls) == 1:
            os.unlink(src)
        return link(src, dst)

    monkeypatch.setattr(locks.os, "link", vanishing_link)
    assert locks.create_exclusive(tmp_path / "x.lock", b"payload")
    assert (tmp_path / "x.lock").read_bytes() == b"payload" and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.lock"]
