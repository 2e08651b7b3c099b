"""``python -m benchmark.cli``: the ``histo-bench`` command (as ``torchrun -m benchmark.cli`` needs it)."""

from benchmark.cli.app import main

main()
