"""The embedded default data: a synthetic BreakHis tree and its store, generated on first use.

Every command that takes data falls back to these, so a newcomer's first command works with no download.
They live under ``$HISTO_BENCH_HOME`` (default ``~/.cache/histo-bench``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from histo_bench.errors import ConfigError
from histo_bench.files import discard_dir
from ingest.breakhis import SYNTHETIC_MARKER, IngestConfig, ingest_breakhis
from ingest.breakhis_names import BENIGN, CLASSES, MAGNIFICATIONS
from ingest.synthetic.breakhis_tree import SyntheticConfig, generate_tree
from ingest.synthetic.demo_size import DEMO_IMAGES_PER_MAGNIFICATION, DEMO_PATIENTS_PER_CLASS
from ingest.synthetic.slide import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig

log = logging.getLogger(__name__)

def data_home() -> Path:
    """Where default data is cached: ``$HISTO_BENCH_HOME`` or ``~/.cache/histo-bench``."""
    return Path(os.environ.get("HISTO_BENCH_HOME", Path.home() / ".cache" / "histo-bench")).expanduser()


def demo_config(seed: int = 0):

    return SyntheticConfig(patients_per_class=DEMO_PATIENTS_PER_CLASS,
                           images_per_magnification=DEMO_IMAGES_PER_MAGNIFICATION,
                           magnifications=MAGNIFICATIONS, seed=seed)


def write_demo_tree(out: str | Path, config=None, progress=None, workers: int = 1) -> Path:
    """Generate the synthetic BreakHis tree under ``out`` (idempotent) and mark it as synthetic."""

    out = Path(out)
    config = config or demo_config()
    settings = _settings(config)
    made = _made_with(out)
    if made is not None and made != settings:
        changed = ", ".join(f"{k} {made.get(k)} != {v}" for k, v in settings.items() if made.get(k) != v)
        raise ConfigError(f"{out}: holds a synthetic tree generated with other settings ({changed}); delete it or "
                         "use another --out")
    paths = generate_tree(out, config, progress=progress, workers=workers)
    marker = {"generator": "histo-bench ingest.synthetic.breakhis_tree", "config": settings, "images": len(paths)}
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1))
    return out


def _settings(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}


def _made_with(root: Path) -> dict | None:
    """The generator settings recorded in ``root``'s synthetic marker (None without one)."""

    try:
        return json.loads((root / SYNTHETIC_MARKER).read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None


def demo_tree(progress=None) -> Path:
    """The default synthetic BreakHis tree, generated on first use."""

    root = data_home() / "demo" / "breakhis"
    made = _made_with(root)
    if made is not None and made != _settings(demo_config()):  # cached by an older histo-bench: ours to replace
        log.info("the cached demo dataset under %s has other settings; generating it again", root)
        discard_dir(root)
        discard_dir(data_home() / "demo" / "breakhis.zarr")
    if not (root / SYNTHETIC_MARKER).exists():
        log.info("generating the embedded demo dataset under %s (first use)", root)
        write_demo_tree(root, progress=progress)
    return root


def demo_store(progress=None) -> Path:
    """The default image store built from :func:`demo_tree`, ingested on first use."""

    out = data_home() / "demo" / "breakhis.zarr"
    root = demo_tree(progress=progress)
    ingest_breakhis(IngestConfig(root=str(root), out=str(out)), progress=progress)
    return out


#: The demo slides: (name, side in pixels, seed, slide label); 40x, 0.25 µm/px synthetic pyramidal TIFFs whose
#: tissue is built from benign or from malignant synthetic H&E fields, so MIL has a slide-level label to learn.
DEMO_SLIDES: tuple[tuple[str, int, int, str], ...] = tuple(
    (f"demo-slide-{i + 1}", 3072, i, "benign" if i % 2 == 0 else "malignant") for i in range(6))
#: The CPU-sized demo slides of ``--quick`` suites: the same generator, 1536 px a side.
QUICK_SLIDES: tuple[tuple[str, int, int, str], ...] = tuple(
    (f"quick-slide-{i + 1}", 1536, i, "benign" if i % 2 == 0 else "malignant") for i in range(6))
#: How each set of demo slides is tiled by :func:`demo_slide_store`: (magnification, tile size).
DEMO_TILING: dict[bool, tuple[float, int]] = {False: (20.0, 224), True: (10.0, 64)}


def write_demo_slides(out: str | Path, slides: tuple[tuple[str, int, int, str], ...] = DEMO_SLIDES) -> list[Path]:
    """Write the synthetic demo slides and their ``labels.csv`` (slide_id,label) into ``out`` (kept when there)."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, side, seed, label in slides:
        path = out / f"{name}.tiff"
        if not path.exists():
            log.info("writing synthetic %s slide %s (%dx%d)", label, path, side, side)
            classes = [c for c in CLASSES if (c in BENIGN) == (label == "benign")]
            write_synthetic_slide(path, width=side, height=side, seed=seed, classes=classes)
        paths.append(path)
    (out / "labels.csv").write_text("slide_id,label\n" + "".join(f"{n},{lab}\n" for n, _, _, lab in slides))
    return paths


def demo_slides() -> Path:
    """The folder of default synthetic slides, generated on first use."""
    root = data_home() / "demo" / "slides"
    write_demo_slides(root)
    return root


def demo_slide_store(quick: bool = False) -> tuple[Path, Path, str]:
    """(slide store, labels CSV, scale) of the demo slides, written and tiled on first use: the 6 demo slides at
    20x in 224 px tiles, or (``quick``) 6 small ones at 10x in 64 px tiles. Tiling is resumable; slides that fail
    raise a RuntimeError naming them."""

    home = data_home() / "demo"
    root = home / ("quick-slides" if quick else "slides")
    paths = write_demo_slides(root, QUICK_SLIDES if quick else DEMO_SLIDES)
    store = home / ("quick-tiles.zarr" if quick else "tiles.zarr")
    magnification, tile_size = DEMO_TILING[quick]
    summary = run_tiling(paths, store, TileConfig(magnifications=(magnification,), tile_size=tile_size))
    failed = [r.line() for r in summary.results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"tiling the demo slides failed: {'; '.join(failed)}")
    return store, root / "labels.csv", f"{magnification:g}x"
