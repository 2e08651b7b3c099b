"""Tiling throughput: ``histo-ingest tile`` end to end with each reader, against a naive OpenSlide loop.

The naive baseline is what a first script does: one ``OpenSlide.read_region`` per tile, RGBA -> RGB, one PNG file
per tile, over the same tissue tiles the pipeline keeps (so it is given the tissue detection for free). Both run
on the same synthetic slide in the same process, one after the other, and the result is their ratio.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.environment import describe
from histo_bench.markdown import markdown_table
from ingest.readers.base import available_readers
from ingest.slide_store import SlideStore
from ingest.synthetic.slide import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig

log = logging.getLogger(__name__)


@dataclass
class TilingRow:
    """One measured configuration."""

    method: str
    reader: str
    tiles: int
    seconds: float
    stages: dict[str, float]

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0


def benchmark_slide(path: Path, size: int, seed: int = 0) -> Path:
    """The synthetic 40x slide used for the benchmark (generated once, then reused)."""

    if not path.exists():
        log.info("writing a %dx%d synthetic slide to %s", size, size, path)
        write_synthetic_slide(path, width=size, height=size, seed=seed)
    return path


def naive_openslide_png(slide: Path, coords: np.ndarray, tile_size: int, out_dir: Path) -> TilingRow:
    """One ``read_region`` + one PNG per tile, level 0 (the tiles are at the slide's native magnification)."""
    import openslide

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide))
    for k, (x, y) in enumerate(coords):
        region = osr.read_region((int(x), int(y)), 0, (tile_size, tile_size)).convert("RGB")
        Image.fromarray(np.asarray(region)).save(out_dir / f"tile_{k:06d}.png")
    osr.close()
    return TilingRow("naive openslide loop + PNG", "openslide", len(coords), time.perf_counter() - t0, {})


def pipeline(slide: Path, store: Path, reader: str, magnification: float, tile_size: int,
             read_workers: int) -> tuple[TilingRow, np.ndarray]:
    """``histo-ingest tile`` on one slide with one reader; returns the row and the kept level-0 coordinates."""

    config = TileConfig(magnifications=(magnification,), tile_size=tile_size, reader=reader,
                        read_workers=read_workers)
    summary = run_tiling([slide], store, config, workers=1)
    (res,) = summary.results
    if res.status != "done":
        raise RuntimeError(f"{reader}: {res.line()}")
    coords = SlideStore(store).coords(res.slide_id, f"{magnification:g}x")
    return TilingRow("histo-ingest tile", reader, summary.tiles, summary.seconds, res.timings), coords


def run_tiling_benchmark(workdir: Path, *, size: int = 20000, magnification: float = 40, tile_size: int = 224,
                         readers: tuple[str, ...] | None = None, read_workers: int = 2,
                         naive_limit: int = 600) -> dict:
    """Measure every available reader end to end and the naive baseline (on the first ``naive_limit`` kept tiles,
    which is plenty for a rate); returns a JSON-able result with ratios against the baseline."""

    workdir.mkdir(parents=True, exist_ok=True)
    slide = benchmark_slide(workdir / f"synthetic_{size}.tiff", size)
    rows: list[TilingRow] = []
    coords = None
    for reader in readers or tuple(available_readers()):
        store = workdir / f"store_{reader}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        row, kept = pipeline(slide, store, reader, magnification, tile_size, read_workers)
        coords = kept if coords is None else coords
        rows.append(row)
        log.info("%s: %d tiles in %.1f s (%.0f tiles/s)", reader, row.tiles, row.seconds, row.tiles_per_s)
        shutil.rmtree(store, ignore_errors=True)
    assert coords is not None
    naive_dir = workdir / "naive_png"
    shutil.rmtree(naive_dir, ignore_errors=True)
    naive = naive_openslide_png(slide, coords[:naive_limit], tile_size, naive_dir)
    shutil.rmtree(naive_dir, ignore_errors=True)
    rows.append(naive)
    return {
        "benchmark": "tiling end to end (read + tissue filter + resize + write)",
        "data": f"synthetic pyramidal TIFF {size}x{size}, 40x, 0.25 um/px, JPEG tiles, levels 1/4/16",
        "magnification": magnification, "tile_size": tile_size, "read_workers": read_workers,
        "machine": {"cpus": _cpus(), "platform": platform.platform(), **describe()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": [{**asdict(r), "tiles_per_s": round(r.tiles_per_s, 1),
                  "vs_naive": round(r.tiles_per_s / naive.tiles_per_s, 2) if naive.tiles_per_s else None}
                 for r in rows],
    }


def _cpus() -> int:

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def to_markdown(result: dict) -> str:
    """A table of the result, for the README and bench_results/."""
    lines = [f"Tiling, {result['data']}; {result['magnification']:g}x, {result['tile_size']} px tiles, "
             f"{result['machine']['cpus']} CPU cores, GPU: {', '.join(result['machine']['gpus']) or 'none'}.",
             "", markdown_table(["method", "reader", "tiles", "seconds", "tiles/s", "vs naive"],
                                [[r["method"], r["reader"], r["tiles"], f"{r['seconds']:.1f}",
                                  f"{r['tiles_per_s']:.0f}", f"{r['vs_naive']:.1f}x"] for r in result["rows"]],
                                "llrrrr")]
    stages = [r for r in result["rows"] if r["stages"]]
    if stages:
        lines += ["", "Seconds per stage: " + "; ".join(
            f"{r['reader']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()) for r in stages)]
    return "\n".join(lines) + "\n"


def save(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"tiling_{result['machine']['cpus']}cpu_{'gpu' if result['machine']['gpus'] else 'nogpu'}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.md").write_text(to_markdown(result))
    return out_dir / f"{stem}.md"
