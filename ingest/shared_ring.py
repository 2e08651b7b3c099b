"""Shared memory in which worker processes hand encoded images to the writer, instead of a pipe.

Sending a worker's results through the process pool's pipe costs both processes a pickle, a copy into and out of
a 64 KiB pipe buffer and thousands of system calls: for 432 BreakHis images (328 MB) ~0.45 s of the writer's CPU
and as much again in the workers, on a 2-core machine a tenth of the ingest. Through a :class:`SharedRing` the
worker copies each encoded image into its batch's slot and returns only (offset, size); the writer writes it to
its shard file straight from there (:meth:`SharedRing.view`: no copy, so none of the ~70k page faults a copy into
fresh memory cost, ~0.3 s of the writer's CPU for the same images) and then the slot is given to the next batch.

The segment is reserved in full when made (``posix_fallocate``): a ``/dev/shm`` too small for it (a container's
64 MiB default, say) fails then, in this process, instead of a worker dying of SIGBUS on its first write; the
caller then asks for a ring with fewer batches in flight, and uses the pipe only where even one batch per worker
does not fit. It is unlinked when closed, and on an interrupt or error by multiprocessing's
resource tracker. A whole process group killed outright (SIGKILL, the OOM killer, ``docker kill``) takes the tracker
with it; the segment is named after the writer's pid namespace and pid (``histo-ring-<namespace>-<pid>-<token>``),
so the next ring made on the machine removes every one of its namespace whose writer is gone (:func:`sweep`); a
ring from another pid namespace sharing ``/dev/shm`` (a container with ``--ipc=host``) is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

from histo_bench.files import pid_alive

log = logging.getLogger(__name__)

#: The most shared memory one ring may take; a larger one (huge images, many workers) uses the pipe instead.
MAX_RING_BYTES = 256 * 1024 * 1024
#: Room above an image's raw size for the codec's header (Blosc adds at most 16 bytes to incompressible data).
HEADROOM = 4096
#: Every ring's name starts so, followed by ``<pid namespace>-<pid>-<token>``.
PREFIX = "histo-ring-"
#: Whether shared memory can be reserved up front here (``posix_fallocate``); not on macOS, where no ring is made
#: (see the module doc).
RESERVABLE = hasattr(os, "posix_fallocate")
#: Where Linux keeps POSIX shared memory (elsewhere :func:`sweep` finds nothing to do).
SHM_DIR = Path("/dev/shm")

_ATTACHED: dict[str, shared_memory.SharedMemory] = {}  # in each worker: the rings it has written into


@dataclass(frozen=True)
class Slot:
    """Where one batch's images go: ring ``name``, from byte ``offset``, ``item_bytes`` per image (picklable)."""

    name: str
    offset: int
    item_bytes: int

    def put(self, j: int, blob: bytes) -> tuple[int, int] | None:
        """Copy ``blob`` (the batch's ``j``-th image) into the ring (worker side): its (offset, size), or None when
        it does not fit its place (then it travels through the pipe)."""
        if len(blob) > self.item_bytes:
            return None
        ring = _ATTACHED.get(self.name)
        if ring is None:
            try:
                ring = _ATTACHED[self.name] = shared_memory.SharedMemory(self.name)
            except FileNotFoundError:  # removed under us (by hand, say): this image travels by pipe
                return None
        start = self.offset + j * self.item_bytes
        ring.buf[start:start + len(blob)] = blob
        return start, len(blob)


class SharedRing:
    """``slots`` places of ``items`` images of up to ``item_bytes`` bytes each, in one shared-memory segment."""

    def __init__(self, memory: shared_memory.SharedMemory, slots: int, items: int, item_bytes: int) -> None:
        self._memory = memory
        self.slots, self.items, self.item_bytes = slots, items, item_bytes

    @classmethod
    def create(cls, slots: int, items: int, raw_bytes: int) -> SharedRing | None:
        """A ring for images of ``raw_bytes`` raw bytes, or None (why, in the debug log) when this machine cannot give
        one (then the caller may ask for a smaller one, :meth:`ingest.image_pool.ImagePool.encoded`)."""
        item_bytes = raw_bytes + HEADROOM
        size = slots * items * item_bytes
        if size > MAX_RING_BYTES:
            log.debug("no shared ring: it would take %d MB", size >> 20)
            return None
        if not RESERVABLE:
            log.debug("no shared ring: shared memory cannot be reserved on this platform")
            return None
        sweep()
        try:
            memory = shared_memory.SharedMemory(f"{_owner()}-{secrets.token_hex(4)}", create=True, size=size)
        except OSError as exc:
            log.debug("no shared ring: no shared memory (%s)", exc.strerror or exc)
            return None
        try:
            os.posix_fallocate(memory._fd, 0, size)  # reserve it now: no SIGBUS later (see the module doc)
        except BaseException as exc:  # an interrupt too: the segment goes first
            memory.close()
            memory.unlink()
            if not isinstance(exc, OSError):
                raise
            log.debug("no shared ring: %d MB of shared memory cannot be reserved (%s)", size >> 20,
                      exc.strerror or exc)
            return None
        return cls(memory, slots, items, item_bytes)

    @property
    def name(self) -> str | None:
        """The segment's name (None once closed)."""
        return self._memory.name if self._memory is not None else None

    def slot(self, k: int) -> Slot:
        return Slot(self._memory.name, k * self.items * self.item_bytes, self.item_bytes)

    def view(self, place: tuple[int, int]) -> memoryview:
        """The bytes a worker put at ``place``, read-only and not copied: the caller releases the view before the
        slot is given to another batch (a released view raises on use instead of showing another image)."""
        start, n = place
        return self._memory.buf[start:start + n].toreadonly()

    def close(self) -> None:
        """Unmap and remove the segment (idempotent); only once no worker writes into it any more."""
        memory, self._memory = self._memory, None
        if memory is not None:
            try:
                memory.unlink()
            except FileNotFoundError:  # removed under us: nothing left to remove, nor for the tracker
                with contextlib.suppress(Exception):
                    from multiprocessing import resource_tracker

                    resource_tracker.unregister(memory._name, "shared_memory")
            finally:
                memory.close()  # BufferError while a view of it lives: then unmapped when this process exits


@functools.cache
def _namespace() -> str:
    """This process's pid namespace (its inode; "0" where there is no /proc)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _owner(pid: int | None = None) -> str:
    """The start of the names of this process's rings: prefix, pid namespace, pid."""
    return f"{PREFIX}{_namespace()}-{os.getpid() if pid is None else pid}"


def sweep() -> list[str]:
    """Remove the rings of writers of this pid namespace that are gone (killed with their whole process group);
    returns their names. A live writer's ring, another namespace's (whose pids mean nothing here) or another
    user's is left alone."""
    removed = []
    mine = f"{PREFIX}{_namespace()}-"
    for path in SHM_DIR.glob(f"{mine}*") if SHM_DIR.is_dir() else ():
        pid = path.name[len(mine):].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
                log.info("removed %s: shared memory left by an ingest that was killed", path)
    return removed
