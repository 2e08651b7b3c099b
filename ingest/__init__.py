"""histo-bench ingest: raw BreakHis folders and whole-slide images into zarr tile stores.

Above only the foundation (``histo_bench``): it imports nothing from ``models``, ``pipelines`` or ``benchmark``.
"""

__version__ = "0.1.0"
