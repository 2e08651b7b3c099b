"""``histo-bench`` as a subprocess for the CLI tests: the real command line, plus the test-only tiny models, and,
with ``HISTO_TEST_PAUSE_S`` set, a pause after each epoch's row is logged (so a test can SIGKILL the run between
its first and second epoch without racing it; with ``HISTO_TEST_PAUSED`` set it also writes the epoch into that
file when the pause begins); with ``HISTO_TEST_STALL_WRITE=NAME:N``, the Nth checkpoint write to a
file named NAME writes half its bytes, touches the file ``HISTO_TEST_MARKER`` and hangs (a slow disk, so a test can
SIGKILL the run in the middle of that write)."""

import io
import os
import sys
import time
from pathlib import Path

import tests.pipelines.tiny_models  # noqa: F401 - registers tiny_cnn_test
from benchmark.cli.app import main
from pipelines.training import checkpoint, tracking


def stall_checkpoint_writes(spec: str, marker: Path) -> None:
    """Make the Nth write of a checkpoint named NAME (``spec`` = ``NAME:N``) stall half-way (module docstring)."""
    name, nth = spec.rsplit(":", 1)
    seen = []
    real = checkpoint.atomic_write

    def stalling(path, write):
        if Path(path).name == name:
            seen.append(path)
        if Path(path).name != name or len(seen) != int(nth):
            return real(path, write)

        def half_then_hang(fh):
            whole = io.BytesIO()
            write(whole)
            fh.write(whole.getvalue()[: len(whole.getvalue()) // 2])
            fh.flush()
            marker.write_text(str(path))
            time.sleep(600)

        return real(path, half_then_hang)

    checkpoint.atomic_write = stalling


if __name__ == "__main__":
    pause = float(os.environ.get("HISTO_TEST_PAUSE_S", "0"))
    if pause:
        logged = tracking.RunLogger.log_epoch

        def log_then_pause(self, row, epoch):
            logged(self, row, epoch)
            if os.environ.get("HISTO_TEST_PAUSED"):  # tell the test the epoch is whole (row, last.pt, best.pt)
                Path(os.environ["HISTO_TEST_PAUSED"]).write_text(str(epoch))
            time.sleep(pause)

        tracking.RunLogger.log_epoch = log_then_pause
    if os.environ.get("HISTO_TEST_STALL_WRITE"):
        stall_checkpoint_writes(os.environ["HISTO_TEST_STALL_WRITE"], Path(os.environ["HISTO_TEST_MARKER"]))
    sys.argv[0] = "histo-bench"
    main()
