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


def test_private_files_of_killed_creators_are_removed_and_live_ones_kept(tmp_path):
    """A kill inside :func:`locks.create_exclusive` leaves its private file beside the lock (a flaky SIGKILL test
    found one in a resumed store); the next taker removes those whose creator is gone, and nothing else."""
    dead, live = _dead_pid(), os.getpid()
    path = tmp_path / "slide-1.lock"
    files = {name: tmp_path / f".slide-1.lock.{pid}.{token}.tmp"
             for name, pid, token in [("dead owner", dead, "0a0a0a0a"), ("live owner", live, "1b1b1b1b"),
                                      ("cut short, dead pid", dead, "2c2c2c2c"), ("cut short, live", live, "3d3d3d3d"),
                                      ("cut short, old", live, "4e4e4e4e")]}
    _write_lock(files["dead owner"], replace(LockOwner.me("killed"), pid=dead))
    _write_lock(files["live owner"], LockOwner.me("creating now"))
    for name in ("cut short, dead pid", "cut short, live", "cut short, old"):
        files[name].write_bytes(b"")
    old = time.time() - locks.UNREADABLE_GRACE_SECONDS - 1
    os.utime(files["cut short, old"], (old, old))
    other = tmp_path / ".slide-10.lock.123.5f5f5f5f.tmp"  # another lock's file, and a user's file
    other.write_bytes(b"")
    user = tmp_path / ".slide-1.lock.notes.tmp"
    user.write_bytes(b"")

    lock = WorkLock(path, "tiling slide-1")
    assert lock.try_acquire()
    lock.release()
    left = {name for name, f in files.items() if f.exists()}
    assert left == {"live owner", "cut short, live"}
    assert other.exists() and user.exists()
    files["live owner"].unlink()
    _write_lock(files["dead owner"], replace(LockOwner.me("killed"), pid=dead))
    WorkLock(path, "finished").clear_if_stale()  # the path taken beside finished work
    assert not files["dead owner"].exists() and files["cut short, live"].exists()
