"""Atomic file writes: a reader sees the old file or the new one, never a half-written one (temp name + rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder (pid in its name) and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """``data`` as JSON at ``path``, atomically (values JSON cannot hold are written as ``str``)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str))
