"""The parallel ingest path: workers decode *and* compress, the writer only moves bytes. The store it makes is the
one the in-process path makes (byte for byte), zarr reads it, the fast PNG decoder gives Pillow's pixels, and no
process is left running once ``ingest_breakhis`` (the library call, not only the CLI) has returned."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import zarr
from PIL import Image

from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.decode import _fast_png, decode_file, read_size
from ingest.store import ImageStore
from tests.ingest import procs


def test_workers_write_the_store_the_single_process_path_writes(tiny_tree, tmp_path):
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(one), workers=1, shard_size=8))
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(two), workers=2, shard_size=8))
    a, b = procs.store_digest(one), procs.store_digest(two)
    a = {k: v for k, v in a.items() if k != "zarr.json"}  # the root attrs hold the config (workers differ)
    b = {k: v for k, v in b.items() if k != "zarr.json"}
    assert procs.diff(a, b) == []
    store = ImageStore(two)
    images = zarr.open_group(str(two), mode="r")["images"][:]  # zarr's own reader agrees with the direct one
    assert np.array_equal(images, store.read(np.arange(len(store))))
    src = np.stack([np.asarray(Image.open(tiny_tree / s).convert("RGB")) for s in store.source()])
    assert np.array_equal(images, src)


def test_fast_png_path_gives_pillows_pixels(real_breakhis, tmp_path):
    path = sorted(real_breakhis.rglob("*.png"))[0]
    data = path.read_bytes()
    fast = _fast_png(data)
    assert fast is not None
    assert np.array_equal(fast, np.asarray(Image.open(path).convert("RGB")))
    assert read_size(str(path)) == fast.shape[:2]
    interlaced = tmp_path / "i.png"  # Adam7: decoded by libspng too, same pixels
    Image.fromarray(fast[:40, :60]).save(interlaced, interlace=1)
    assert np.array_equal(decode_file(str(interlaced), (40, 60), False).image, fast[:40, :60])


def test_library_ingest_leaves_no_process_behind(tiny_tree, tmp_path):
    """After ``ingest_breakhis`` returns inside a long-lived process, that process has no children left (no pool
    worker, no forkserver, no resource tracker)."""
    script = textwrap.dedent(f"""
        import psutil
        from ingest.breakhis import IngestConfig, ingest_breakhis
        ingest_breakhis(IngestConfig(root={str(tiny_tree)!r}, out={str(tmp_path / 's.zarr')!r}, workers=2))
        import gc, time
        gc.collect()  # the finished pool's queues are finalised: that must not restart a helper either
        time.sleep(0.3)
        kids = psutil.Process().children(recursive=True)
        print("CHILDREN", [(p.pid, " ".join(p.cmdline())[:120]) for p in kids if p.status() != "zombie"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CHILDREN []" in proc.stdout, proc.stdout


def test_only_the_command_imports_zarr_with_cupy_hidden(monkeypatch, tiny_tree, tmp_path):
    """``histo-ingest`` (``command=True``) imports the store modules with cupy hidden (zarr would import it for GPU
    buffers the ingest never uses); a library call never hides it from the rest of the process."""
    import contextlib
    import gc

    import ingest.breakhis as breakhis

    entered = []

    @contextlib.contextmanager
    def recorder(*names):
        entered.append(names)
        yield

    monkeypatch.setattr(breakhis, "hidden", recorder)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # what the command does next: not in the test process
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "library.zarr"), workers=2))
    assert entered == []
    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "command.zarr"), workers=2), command=True)
    assert entered == [("cupy",)]


def test_a_failed_store_import_is_raised_and_cupy_is_hidden_only_meanwhile(monkeypatch):
    from ingest.breakhis import _import_store_modules

    monkeypatch.delitem(sys.modules, "cupy", raising=False)  # not imported yet: hidden() hides it
    monkeypatch.setitem(sys.modules, "ingest.store_writer", None)  # as if it could not be imported
    try:
        _import_store_modules(command=True)
    except ImportError as exc:
        assert "ingest.store_writer" in str(exc)
    else:
        raise AssertionError("the ImportError was not raised")
    assert sys.modules.get("cupy", "absent") is not None  # hidden only while the import ran


def test_a_released_pool_is_joined_on_close_with_its_helpers(tmp_path):
    script = textwrap.dedent("""
        import time
        import psutil
        from ingest.image_pool import ImagePool
        pool = ImagePool(2)
        time.sleep(0.5)  # its processes are up
        pool.release()
        pool.close()
        kids = psutil.Process().children(recursive=True)
        print("CHILDREN", [p.pid for p in kids if p.status() != "zombie"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CHILDREN []" in proc.stdout, proc.stdout


def test_a_stopped_forkserver_ends_without_the_teardown_of_what_it_preloaded(tmp_path):
    """A forkserver of ours skips the interpreter's teardown when stopped (ingest.forkserver_exit): an object of a
    module it preloaded is never finalised there, while that module's exit handler still runs. The control: a
    forkserver started without it finalises the object too. And a plain import of the module registers nothing."""
    (tmp_path / "teardown_marker.py").write_text(textwrap.dedent("""
        import atexit, os
        atexit.register(lambda: os.write(2, b"HANDLER RAN\\n"))
        class Marker:
            def __del__(self, write=os.write):
                write(2, b"TEARDOWN RAN\\n")
        marker = Marker()
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    script = textwrap.dedent("""
        import atexit, sys
        from multiprocessing import forkserver
        from ingest.workers import mp_context, process_pool, start_forkserver, stop_helpers

        if __name__ == "__main__":
            before = atexit._ncallbacks()
            import ingest.forkserver_exit  # noqa: F401
            assert atexit._ncallbacks() == before, "registered outside the forkserver"
            if sys.argv[1] == "ours":
                start_forkserver(("teardown_marker",))
            else:
                mp_context().set_forkserver_preload(["teardown_marker"])
                forkserver.ensure_running()
            pool = process_pool(2)
            assert sorted(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
            pool.shutdown(wait=True)
            stop_helpers()
            print("STOPPED", forkserver._forkserver._forkserver_pid)
    """)
    runs = {}
    for kind in ("ours", "control"):
        proc = subprocess.run([sys.executable, "-c", script, kind], capture_output=True, text=True, timeout=120,
                              env=env)  # the module is found there (Python 3.11's forkserver ignores sys.path)
        assert proc.returncode == 0, proc.stderr
        assert "STOPPED None" in proc.stdout, proc.stdout  # stopped (and waited for) by stop_helpers
        assert "HANDLER RAN" in proc.stderr, (kind, proc.stderr)
        runs[kind] = proc.stderr
    assert "TEARDOWN RAN" in runs["control"], runs["control"]
    assert "TEARDOWN RAN" not in runs["ours"], runs["ours"]
