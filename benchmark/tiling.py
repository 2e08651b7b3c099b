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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.environment import describe
from histo_bench.errors import ConfigError
from histo_bench.markdown import markdown_table
from ingest.readers.base import available_readers
from ingest.slide_store import SlideStore
from ingest.synthetic.slide import write_synthetic_slide
from ingest.tile_runner import run_tiling
from ingest.tiling import TileConfig

log = logging.getLogger(__name__)


#: The real 20x scan the ``real`` benchmark slide is made of (beside the repository, as CI has it).
REAL_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi" / "cmu-1-small-region.svs"
#: slide kind -> (default side, magnification, tile size)
SLIDE_DEFAULTS = {"synthetic": (20000, 40.0, 224), "real": (24000, 20.0, 256)}


@dataclass
class TilingRow:
    """One measured configuration (``seconds`` is the fastest of ``runs``)."""

    method: str
    reader: str
    tiles: int
    seconds: float
    stages: dict[str, float]
    codec: str = ""
    cpu_seconds: float = 0.0
    store_mb: float = 0.0
    runs: list[float] = field(default_factory=list)

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0


def benchmark_slide(path: Path, size: int, seed: int = 0) -> Path:
    """The synthetic 40x slide used for the benchmark (generated once, then reused)."""

    if not path.exists():
        log.info("writing a %dx%d synthetic slide to %s", size, size, path)
        write_synthetic_slide(path, width=size, height=size, seed=seed)
    return path


def real_slide(workdir: Path, size: int, source: Path = REAL_SOURCE) -> Path:
    """A ``size`` x ``size`` 20x JPEG pyramid of real tissue: the real scan ``source`` mirrored to fill it
    (:mod:`ingest.synthetic.tissue_mosaic`); generated once into ``workdir``, then reused."""
    from ingest.synthetic.tissue_mosaic import write_tissue_mosaic

    if not source.is_file():
        raise ConfigError(f"{source}: the real slide the 'real' benchmark slide is made of is not here "
                                "(pass --slide synthetic or a slide path)")
    path = workdir / f"real_mosaic_{size}.tiff"
    if not path.exists():
        write_tissue_mosaic(source, path, width=size, height=size)
    return path


def _store_mb(store: Path) -> float:
    return sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6


def naive_openslide_png(slide: Path, coords: np.ndarray, tile_size: int, out_dir: Path) -> TilingRow:
    """One ``read_region`` + one PNG per tile, level 0 (the tiles are at the slide's native magnification)."""
    import openslide

    out_dir.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    osr = openslide.OpenSlide(str(slide))
    for k, (x, y) in enumerate(coords):
        region = osr.read_region((int(x), int(y)), 0, (tile_size, tile_size)).convert("RGB")
        Image.fromarray(np.asarray(region)).save(out_dir / f"tile_{k:06d}.png")
    osr.close()
    seconds = time.perf_counter() - t0
    return TilingRow("naive openslide loop + PNG", "openslide", len(coords), seconds, {}, "png",
                     time.process_time() - c0, _store_mb(out_dir), [seconds])


def pipeline(slide: Path, store: Path, reader: str, magnification: float, tile_size: int,
             read_workers: int, codec: str = "auto") -> tuple[TilingRow, np.ndarray]:
    """``histo-ingest tile`` on one slide with one reader and store codec, in this process; returns the row (CPU
    time of every thread included) and the kept level-0 coordinates."""

    config = TileConfig(magnifications=(magnification,), tile_size=tile_size, reader=reader,
                        read_workers=read_workers, codec=codec)
    c0 = time.process_time()
    summary = run_tiling([slide], store, config, workers=1)
    cpu = time.process_time() - c0
    (res,) = summary.results
    if res.status != "done":
        raise RuntimeError(f"{reader}: {res.line()}")
    label = f"{magnification:g}x"
    coords = SlideStore(store).coords(res.slide_id, label)
    used = SlideStore(store).slide(res.slide_id).attrs["scales"][label]
    name = codec if codec != "auto" else f"auto ({'jpeg, slide tiles copied' if used.get('copied') else used['codec']})"
    return TilingRow("histo-ingest tile", reader, summary.tiles, summary.seconds, res.timings, name, cpu,
                     _store_mb(store), [summary.seconds]), coords


def _best(rows: list[TilingRow]) -> TilingRow:
    """The fastest of repeated runs of one configuration, with every run's seconds in ``runs``."""
    best = min(rows, key=lambda r: r.seconds)
    return replace(best, runs=[round(r.seconds, 3) for r in rows])


def run_tiling_benchmark(workdir: Path, *, slide: str = "synthetic", size: int | None = None,
                         magnification: float | None = None, tile_size: int | None = None,
                         readers: tuple[str, ...] | None = None, codecs: tuple[str, ...] = ("auto",),
                         read_workers: int = 2, naive_limit: int = 600, repeat: int = 1) -> dict:
    """Measure every reader x codec end to end and the naive baseline (on the first ``naive_limit`` kept tiles,
    plenty for a rate), ``repeat`` times, alternating pipeline and naive runs so that a busy spell of the
    machine hits both; returns a JSON-able result with ratios against the naive loop of the same run.

    ``slide``: ``synthetic`` (40x, synthetic H&E), ``real`` (20x real tissue, :func:`real_slide`) or a path."""

    workdir.mkdir(parents=True, exist_ok=True)
    kind = slide if slide in SLIDE_DEFAULTS else "file"
    side, mag0, tile0 = SLIDE_DEFAULTS.get(kind, (0, 20.0, 256))
    size, magnification, tile_size = size or side, magnification or mag0, tile_size or tile0
    if kind == "synthetic":
        path, data = benchmark_slide(workdir / f"synthetic_{size}.tiff", size), (
            f"synthetic pyramidal TIFF {size}x{size}, 40x, 0.25 um/px, JPEG tiles, levels 1/4/16")
    elif kind == "real":
        path, data = real_slide(workdir, size), (
            f"real tissue (CMU-1 small region, 20x, 0.499 um/px) mirrored to {size}x{size}, JPEG q80 tiles of "
            "256 px, levels 1/4/16")
    else:
        path, data = Path(slide), f"slide {Path(slide).name}"
    configs = [(r, c) for r in (readers or tuple(available_readers())) for c in codecs]
    runs: dict[tuple[str, str], list[TilingRow]] = {cfg: [] for cfg in configs}
    naive_runs: list[TilingRow] = []
    coords = None
    for _ in range(max(1, repeat)):
        for reader, codec in configs:
            store = workdir / f"store_{reader}_{codec}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            row, kept = pipeline(path, store, reader, magnification, tile_size, read_workers, codec)
            coords = kept if coords is None else coords
            runs[(reader, codec)].append(row)
            log.info("%s %s: %d tiles in %.2f s (%.0f tiles/s)", reader, codec, row.tiles, row.seconds,
                     row.tiles_per_s)
            shutil.rmtree(store, ignore_errors=True)
        assert coords is not None
        naive_dir = workdir / "naive_png"
        shutil.rmtree(naive_dir, ignore_errors=True)
        naive_runs.append(naive_openslide_png(path, coords[:naive_limit], tile_size, naive_dir))
        shutil.rmtree(naive_dir, ignore_errors=True)
    naive = _best(naive_runs)
    rows = [_best(v) for v in runs.values()] + [naive]
    cpus = _cpus()
    return {
        "benchmark": "tiling end to end (read + tissue filter + resize + write)",
        "data": data, "magnification": magnification, "tile_size": tile_size, "read_workers": read_workers,
        "repeat": max(1, repeat), "machine": {"cpus": cpus, "platform": platform.platform(),
                                              "load_before": _load(), **describe()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": [{**asdict(r), "tiles_per_s": round(r.tiles_per_s, 1),
                  "tiles_per_cpu_s": round(r.tiles / r.cpu_seconds, 1) if r.cpu_seconds else None,
                  "tiles_per_s_per_core": round(r.tiles_per_s / cpus, 1),
                  "vs_naive": round(r.tiles_per_s / naive.tiles_per_s, 2) if naive.tiles_per_s else None,
                  "vs_naive_runs": [round((r.tiles / a) / (naive.tiles / b), 1)
                                    for a, b in zip(r.runs, naive.runs, strict=False) if a and b]}
                 for r in rows],
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _cpus() -> int:

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def to_markdown(result: dict) -> str:
    """A table of the result, for the README and bench_results/."""
    rows = result["rows"]
    lines = [f"Tiling, {result['data']}; {result['magnification']:g}x, {result['tile_size']} px tiles, "
             f"{result['machine']['cpus']} CPU cores, GPU: {', '.join(result['machine']['gpus']) or 'none'}; "
             f"best of {result.get('repeat', 1)} alternating runs (load average before: "
             f"{result['machine'].get('load_before')}).",
             "", markdown_table(
                 ["method", "reader", "codec", "tiles", "seconds", "tiles/s", "tiles/CPU-s", "store MB", "vs naive",
                  "vs naive per run"],
                 [[r["method"], r["reader"], r.get("codec", ""), r["tiles"], f"{r['seconds']:.2f}",
                   f"{r['tiles_per_s']:.0f}", f"{r['tiles_per_cpu_s']:.0f}" if r.get("tiles_per_cpu_s") else "",
                   f"{r.get('store_mb', 0):.0f}", f"{r['vs_naive']:.1f}x",
                   " / ".join(f"{v:.1f}" for v in r.get("vs_naive_runs", []))] for r in rows],
                 "lllrrrrrrl")]
    stages = [r for r in rows if r["stages"]]
    if stages:
        lines += ["", "Seconds per stage (summed over threads): " + "; ".join(
            f"{r['reader']} {r.get('codec', '')}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
            for r in stages)]
    return "\n".join(lines) + "\n"


def save(result: dict, out_dir: Path, name: str | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or f"tiling_{result['machine']['cpus']}cpu_{'gpu' if result['machine']['gpus'] else 'nogpu'}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.md").write_text(to_markdown(result))
    return out_dir / f"{stem}.md"
