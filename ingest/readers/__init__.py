"""Slide-reader backends; importing this package registers them in :data:`ingest.readers.base.READERS`.

The backend modules import their heavy libraries (cuCIM, OpenSlide, tifffile) only when a slide is opened.
"""

from ingest.readers import cucim_reader, openslide_reader, tifffile_reader  # noqa: F401 - registration
from ingest.readers.base import READERS, Level, ReaderError, SlideReader, available_readers, open_slide

__all__ = ["READERS", "Level", "ReaderError", "SlideReader", "available_readers", "open_slide"]
