"""Benchmark backends, one file each, all in :data:`BACKENDS` (imports torch: the CLI imports it inside commands).

The import order below is the registry order, which is the order of the report's rows: the eager reference first.
"""
# isort: skip_file

from benchmark.backends import eager  # noqa: F401  (registration)
from benchmark.backends import compiled, cudagraphs, tensorrt, onnxruntime  # noqa: F401
from benchmark.backends.base import BACKENDS, BENCH_PRECISIONS, Backend, BackendUnavailable, register_backend

__all__ = ["BACKENDS", "BENCH_PRECISIONS", "Backend", "BackendUnavailable", "register_backend"]
