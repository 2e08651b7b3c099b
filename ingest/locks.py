"""Atomic work locks: at most one process at a time works on a unit of work (a slide, an image store, a slide's
MIL features), even when several jobs (two SLURM jobs on one cohort, say) share a store folder.

A lock is a small JSON file (pid, host, process start time, creation time, a random token, what it guards). It is
taken by writing that file under a private name and hard-linking it to the lock's name: ``link`` fails when the
name exists, so exactly one of several racing processes wins, and the lock file is whole from its first moment
(``open(lock, "w")``, as some tools do it, lets two processes both believe they hold it). Filesystems without hard
links fall back to ``O_CREAT | O_EXCL``. The private files of creators killed in between are removed by a later
run (:func:`remove_dead_temporaries`).

A held lock is refreshed (its mtime touched) every :data:`HEARTBEAT_SECONDS` by a daemon thread. A lock is
**stale**, and may be broken by anyone, when its process is gone: a dead or zombie pid (or a pid reused by another
process, told apart by its start time) on this machine, or, for a holder elsewhere (another host, or the same
hostname in another pid namespace or boot: :func:`_machine_id`), a heartbeat older than :data:`STALE_SECONDS`.
A holder checks :meth:`WorkLock.still_mine` just before it publishes its work. Breaking is itself serialised by a
short-lived breaker lock, so two processes that both find a lock stale cannot both break it and then both take
it. A lock is released on every exit path of its ``with`` block; release removes the file only while it still
carries this holder's token.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from histo_bench.errors import HistoBenchError
from histo_bench.files import pid_alive

log = logging.getLogger(__name__)

#: A lock whose holder lives on another host is stale once its heartbeat is older than this (seconds).
STALE_SECONDS = 600.0
#: How often a holder refreshes its lock's mtime.
HEARTBEAT_SECONDS = 30.0
#: A breaker lock (held for milliseconds while a stale lock is removed) older than this is itself stale.
BREAKER_STALE_SECONDS = 30.0
#: A lock file that cannot be parsed (written by a filesystem without hard links and cut short) is stale after this.
UNREADABLE_GRACE_SECONDS = 10.0


class LockBusy(HistoBenchError, RuntimeError):
    """The lock is held by a live process; ``owner`` says which."""

    def __init__(self, path: Path, owner: LockOwner | None) -> None:
        self.path, self.owner = path, owner
        who = owner.describe() if owner else "another process"
        super().__init__(f"{path}: held by {who}")


def _process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _machine_id() -> str:
    """This host and pid namespace: hostname, boot id and pid-namespace inode. Two containers that share a hostname
    but not their pids (Kubernetes sidecars, ``docker --network=host``) are told apart, and a reboot is noticed."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock."""

    pid: int
    host: str
    created: float
    token: str
    what: str
    start_ticks: int | None = None
    machine: str = ""

    @classmethod
    def me(cls, what: str) -> LockOwner:
        pid = os.getpid()
        return cls(pid=pid, host=socket.gethostname(), created=time.time(), token=secrets.token_hex(8), what=what,
                   start_ticks=_process_start(pid), machine=_machine_id())

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))
        return f"pid {self.pid} on {self.host} ({self.what}, since {since})"

    def is_alive(self, heartbeat_age: float) -> bool:
        """Whether the holder may still be working (see the module doc for the rule)."""
        if self.host != socket.gethostname() or (self.machine and self.machine != _machine_id()):
            return heartbeat_age <= STALE_SECONDS
        if not pid_alive(self.pid):
            return False
        ticks = _process_start(self.pid)
        return self.start_ticks is None or ticks is None or ticks == self.start_ticks


def read_owner(path: str | Path) -> LockOwner | None:
    """The holder recorded in the lock file at ``path``; None when there is no file or it cannot be parsed."""
    try:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(LockOwner)}
        return LockOwner(**{k: v for k, v in data.items() if k in known})  # fields of a newer version are ignored
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _mtime_age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


@functools.cache
def _machine_tag() -> str:
    """8 hex digits naming this host and pid namespace (:func:`_machine_id`), put in private file names."""
    return hashlib.sha256(_machine_id().encode()).hexdigest()[:8]


def _private_name(path: Path) -> Path:
    """Where :func:`create_exclusive` writes the payload before linking it to ``path``: ``.NAME.PID.MACHINE.TOKEN
    .tmp``, so that the pid is only ever judged on the machine it belongs to."""
    return path.with_name(f".{path.name}.{os.getpid()}.{_machine_tag()}.{secrets.token_hex(4)}.tmp")


#: A private file of :func:`create_exclusive` for a lock (``*.lock``) or a store root's ``zarr.json``; the machine
#: tag is missing in those of older versions.
_PRIVATE = re.compile(r"\.(?P<name>.+\.lock|zarr\.json)\.(?P<pid>\d+)\.(?:(?P<machine>[0-9a-f]{8})\.)?[0-9a-f]{8}\.tmp")

_SWEPT: set[str] = set()  # the folders this process has swept (sweep_once)


def _creator_gone(tmp: Path, match: re.Match, age: float) -> bool:
    """Whether the process that made the private file ``tmp`` is certainly gone (see remove_dead_temporaries)."""
    owner = read_owner(tmp)
    if owner is not None:
        return not owner.is_alive(age)
    return age > STALE_SECONDS or (match["machine"] == _machine_tag() and not pid_alive(int(match["pid"])))


def remove_dead_temporaries(folder: Path) -> int:
    """Delete the private files (:func:`_private_name`) that processes killed inside :func:`create_exclusive` left
    in ``folder``; returns how many. One is removed when the holder its payload names is gone (the rule of
    :meth:`LockOwner.is_alive`, its mtime as heartbeat); one cut short before its payload (or not a lock's: a store
    root's ``zarr.json``) when the pid in its name is dead and was of this machine, or it is older than
    :data:`STALE_SECONDS`. So a creator on another host (NFS shows its file empty until its ``fsync``), or one
    stalled here, is never touched; nor is anything but such a file."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _PRIVATE.fullmatch(entry.name) if entry.name.endswith(".tmp") else None
            tmp = Path(entry.path)
            age = _mtime_age(tmp) if match is not None else None
            if age is None or not _creator_gone(tmp, match, age):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError as exc:  # gone meanwhile, or another user's in a shared folder
                log.debug("cannot remove %s: %s", entry.path, exc)
    return removed


def sweep_once(folder: Path) -> None:
    """:func:`remove_dead_temporaries` the first time this process takes a lock (or creates a store) in
    ``folder``: one listing per folder per run, not one per slide."""
    if (key := os.path.abspath(folder)) not in _SWEPT:
        _SWEPT.add(key)
        remove_dead_temporaries(Path(key))


def create_exclusive(path: Path, payload: bytes, *, retry: bool = True) -> bool:
    """Create ``path`` holding ``payload`` iff it does not exist; True when this call created it."""
    tmp = _private_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        return _link_private(tmp, path, payload)
    except FileNotFoundError:
        if not retry or tmp.exists() or path.exists():
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return create_exclusive(path, payload, retry=False)  # the private file vanished before the link: once more


def _link_private(tmp: Path, path: Path, payload: bytes) -> bool:
    """The second half of :func:`create_exclusive`: link the written private file ``tmp`` to ``path``."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        # NFS may answer a retransmitted LINK with EEXIST although the first one made the link (open(2))
        return os.stat(tmp).st_nlink == 2
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        try:  # no hard links here: O_EXCL creation, then the payload
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True


class WorkLock:
    """An atomic, stale-aware lock file at ``path`` guarding ``what`` (see the module doc).

    Example::

        lock = WorkLock(store / "slide-1.lock", "tiling slide-1")
        if lock.try_acquire():
            with lock:
                ...                       # released on every exit path
        else:
            print("busy:", lock.holder().describe())
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.owner: LockOwner | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.owner is not None

    def holder(self) -> LockOwner | None:
        """Who holds the lock now (None when free or unreadable)."""
        return read_owner(self.path)

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False when a live process holds it."""
        if self.held:
            return True
        sweep_once(self.path.parent)
        for _ in range(3):  # free -> take; stale -> break, then take (another process may win the retake)
            owner = LockOwner.me(self.what)
            if create_exclusive(self.path, json.dumps(asdict(owner)).encode()):
                self.owner = owner
                self._start_heartbeat()
                return True
            if not self._break_if_stale():
                return False
        return False

    def acquire(self, *, poll: float = 0.5, on_wait: Callable[[LockOwner | None], None] | None = None,
                timeout: float | None = None) -> None:
        """Wait until the lock is taken; ``on_wait(holder)`` is called once when the first try finds it held.
        Raises :class:`LockBusy` after ``timeout`` seconds (None waits as long as the holder is alive)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while not self.try_acquire():
            if not told and on_wait is not None:
                on_wait(self.holder())
                told = True
            if deadline is not None and time.monotonic() > deadline:
                raise LockBusy(self.path, self.holder())
            time.sleep(poll)

    def still_mine(self) -> bool:
        """Whether this process still holds the lock (checked just before a commit: a holder that stalled past
        the stale age may have been taken over, and must then not publish its work)."""
        current = read_owner(self.path)
        return self.owner is not None and current is not None and current.token == self.owner.token

    def clear_if_stale(self) -> None:
        """Remove the lock file when its holder is gone (e.g. a run killed between finishing and releasing), and
        what killed creators left beside it (:func:`sweep_once`)."""
        if self.held:
            return
        sweep_once(self.path.parent)
        if self.path.exists():
            self._break_if_stale()

    def release(self) -> None:
        """Give the lock up (a no-op when not held; never removes a lock another process has taken since)."""
        if self.owner is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1.0)
        current = read_owner(self.path)
        if current is not None and current.token == self.owner.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.owner = None

    def __enter__(self) -> WorkLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _start_heartbeat(self) -> None:
        stop = self._stop = threading.Event()
        token = self.owner.token if self.owner else ""

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                current = read_owner(self.path)
                if current is None or current.token != token:
                    log.warning("%s: this process's lock was taken over by %s", self.path,
                                current.describe() if current else "nobody (removed)")
                    return
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._heartbeat = threading.Thread(target=beat, name=f"lock-heartbeat-{self.path.name}", daemon=True)
        self._heartbeat.start()

    def _is_stale(self) -> tuple[bool, LockOwner | None]:
        age = _mtime_age(self.path)
        if age is None:
            return True, None  # gone meanwhile: free
        owner = read_owner(self.path)
        if owner is None:
            return age > UNREADABLE_GRACE_SECONDS, None
        return not owner.is_alive(age), owner

    def _break_if_stale(self) -> bool:
        """Remove the lock when its holder is gone; True when the lock is (now) free."""
        stale, owner = self._is_stale()
        if not stale:
            return False
        if owner is None and _mtime_age(self.path) is None:
            return True
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            age = _mtime_age(breaker)
            if age is not None and age > BREAKER_STALE_SECONDS:
                _remove_stale_breaker(breaker)
            return False  # someone else is breaking it; try again later
        os.close(fd)
        try:
            stale_now, owner_now = self._is_stale()  # re-read under the breaker: the lock may have changed hands
            same = (owner_now is None and owner is None) or (
                owner_now is not None and owner is not None and owner_now.token == owner.token)
            if stale_now and same:
                log.info("%s: removing a stale lock (%s)", self.path,
                         owner.describe() + " is gone" if owner else "unreadable")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return True
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(breaker)


def _remove_stale_breaker(breaker: Path) -> None:
    """Remove a breaker left by a process that died while breaking a lock. It is moved aside first and looked at
    there: if a fresh breaker was moved (another process replaced the stale one meanwhile), it is put back."""
    aside = breaker.with_name(f".{breaker.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.rename(breaker, aside)
    except FileNotFoundError:
        return
    age = _mtime_age(aside)
    if age is not None and age <= BREAKER_STALE_SECONDS:
        with contextlib.suppress(FileExistsError):
            os.link(aside, breaker)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)
