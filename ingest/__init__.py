"""histo-bench ingest: raw BreakHis folders and whole-slide images into zarr tile stores.

The lowest layer of the project: it imports nothing from ``models``, ``pipelines`` or ``benchmark``.
"""

__version__ = "0.1.0"
