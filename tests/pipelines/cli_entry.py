"""``histo-bench`` as a subprocess for the CLI tests: the real command line, plus the test-only tiny models, and,
with ``HISTO_TEST_PAUSE_S`` set, a pause after each epoch's row is logged (so a test can SIGKILL the run between
its first and second epoch without racing it)."""

import os
import sys
import time

import tests.pipelines.tiny_models  # noqa: F401 - registers tiny_cnn_test
from benchmark.cli.app import main
from pipelines.training import tracking

if __name__ == "__main__":
    pause = float(os.environ.get("HISTO_TEST_PAUSE_S", "0"))
    if pause:
        logged = tracking.RunLogger.log_epoch

        def log_then_pause(self, row, epoch):
            logged(self, row, epoch)
            time.sleep(pause)

        tracking.RunLogger.log_epoch = log_then_pause
    sys.argv[0] = "histo-bench"
    main()
