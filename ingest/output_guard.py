"""What ``--out`` may point at: a new path, an empty folder, or a histo-bench store of the right kind.

Anything else (a user's folder with files in it, a store of the other kind, a plain file) is refused before a
single byte is written or removed, with or without ``--overwrite``: replacing means replacing a *store*, never
whatever happens to sit at that path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def store_attributes(path: str | Path) -> dict:
    """The attributes of the zarr v3 group at ``path``, read from its ``zarr.json`` ({} when it has none, is not a
    zarr group or cannot be read)."""
    try:
        attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


def store_format(path: str | Path) -> str | None:
    """The ``format`` attribute of the zarr group at ``path`` (None when it has none or is not a zarr group)."""
    return store_attributes(path).get("format")


#: Names histo-bench itself leaves for a moment in a store it is creating (the root's metadata written aside, a
#: write probe), so a second process arriving then does not take the new store for a user's folder.
_SCRATCH = (re.compile(r"\.zarr\.json\.\d+(\.[0-9a-f]+)+\.tmp"), re.compile(r"\.write-test-\d+"))


def _own_scratch(name: str) -> bool:
    return any(p.fullmatch(name) for p in _SCRATCH)


def refusal(path: str | Path, fmt: str, kind: str) -> str | None:
    """None when ``path`` may be created, resumed or replaced as a store of format ``fmt``; else the one-line reason
    it may not (``kind`` names the store in the message, e.g. "image store")."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path}: exists and is a file, not a histo-bench {kind}; nothing was touched (choose another --out)"
    found = store_format(path)
    if found == fmt:
        return None
    if found is not None and str(found).startswith("histo-bench/"):
        return (f"{path}: is a {found} store, not a histo-bench {kind}; nothing in it was touched "
                "(choose another --out)")
    entries = sorted(p.name for p in path.iterdir() if not _own_scratch(p.name))
    if not entries or store_format(path) == fmt:  # read again: another process may have just created the store
        return None
    example = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return (f"{path}: exists and is not a histo-bench {kind} (it holds {len(entries)} entries: {example}); "
            "nothing in it was touched, with or without --overwrite (choose another --out)")
