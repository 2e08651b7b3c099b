"""Peak memory on a gigapixel slide: generation, ``histo-ingest tile`` and MIL feature caching, each measured.

A real 40x resection is ~100k x 100k pixels (30 GB as RGB). Every stage must stream: the synthetic slide is
written tile row by tile row (:func:`ingest.synthetic.slide.write_synthetic_slide`), tiling holds a batch of
tiles per slide, and feature caching reads a batch of tiles at a time. Each stage runs in a fresh child process
(``python -m benchmark.gigapixel STAGE ...``) and its peak RSS is the kernel's ``ru_maxrss`` of that child
(:func:`os.wait4`), so one stage's memory never hides another's.

Feature caching is measured twice: over **every** tile through :func:`pipelines.data.features.extract_slide_features`
with a cheap stand-in encoder (8x8 average pooling + a fixed linear map to 512-d; the caching machinery's
memory, not a CNN's time: a resnet34 on 2 CPU cores would take hours over ~60k tiles), and with the real
``resnet34`` extractor over the first ``feature_tiles`` tiles (the encoder's own memory and tiles/s).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmark.environment import describe

log = logging.getLogger(__name__)

#: The limit the issue sets for every stage.
RSS_LIMIT_MB = 1500.0


def measure(argv: list[str]) -> dict:
    """Run ``argv`` as a child; its wall seconds, CPU seconds and peak RSS (MB), from ``wait4``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:5])}: exited with {proc.returncode}")
    return {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _stage(name: str, *args: object) -> list[str]:
    return [sys.executable, "-m", "benchmark.gigapixel", name, *map(str, args)]


def run_gigapixel_benchmark(workdir: Path, *, size: int = 100_000, feature_tiles: int = 256,
                            tile_size: int = 256) -> dict:
    """Generate (once, cached in ``workdir``), tile and cache features of a ``size`` x ``size`` synthetic 40x slide;
    returns every stage's seconds and peak RSS."""
    workdir.mkdir(parents=True, exist_ok=True)
    slide = workdir / f"gigapixel_{size}.tiff"
    gen_record = slide.with_suffix(".generation.json")
    if not slide.exists():
        log.info("writing a %dx%d synthetic slide to %s (streamed; minutes)", size, size, slide)
        gen_record.write_text(json.dumps(measure(_stage("generate", slide, size))))
    stages = {"generate": json.loads(gen_record.read_text()) if gen_record.exists() else None}
    store = workdir / f"gigapixel_{size}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(store.with_name(store.name + ".overlays"), ignore_errors=True)
    (workdir / "gigapixel_counts.json").unlink(missing_ok=True)
    stages["tile"] = measure(_stage("tile", slide, store, tile_size, 40, "auto"))
    decoded = store.with_name(store.name + ".20x.zarr")  # the decode route: 2x reduced, re-encoded as JPEG
    stages["tile_decoded_20x_jpeg"] = measure(_stage("tile", slide, decoded, tile_size, 20, "jpeg"))
    shutil.rmtree(decoded, ignore_errors=True)
    stages["features_all_tiles_standin"] = measure(_stage("features", store, 0))
    stages["features_resnet34_subset"] = measure(_stage("features", store, feature_tiles))
    counts = json.loads((workdir / "gigapixel_counts.json").read_text())
    shutil.rmtree(store, ignore_errors=True)  # a few GB: the figures are what is kept
    return {
        "benchmark": "gigapixel slide: peak RSS per stage (each a fresh child process, ru_maxrss)",
        "data": f"synthetic 40x slide {size}x{size} (0.25 um/px, JPEG tiles of 256 px, levels 1/4/16), "
                f"{os.path.getsize(slide) / 1e9:.2f} GB on disk",
        "tile_size": tile_size, "magnification": 40, "rss_limit_mb": RSS_LIMIT_MB, "stages": stages, **counts,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(), **describe()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def to_markdown(result: dict) -> str:
    lines = [f"Gigapixel: {result['data']}; {result['tiles']} tissue tiles of {result['tile_size']} px at 40x; "
             f"{result['machine']['cpus']} CPU cores. Peak RSS limit {result['rss_limit_mb']:.0f} MB.", "",
             "| stage | seconds | CPU s | peak RSS MB | note |", "| --- | ---: | ---: | ---: | --- |"]
    notes = {"generate": "streamed synthetic slide, written once and cached",
             "tile": f"--mag 40 --tile-size {result['tile_size']}: slide tiles copied (codec auto), "
                     f"{result['tiles_per_s']:.0f} tiles/s",
             "tile_decoded_20x_jpeg": f"--mag 20 --codec jpeg: {result.get('tiles_20x')} tiles decoded, 2x reduced, "
                                      f"re-encoded, {result.get('tiles_20x_per_s', 0):.0f} tiles/s",
             "features_all_tiles_standin": f"all {result['tiles']} tiles, stand-in encoder "
                                           "(pool + linear, 512-d) through the feature cache",
             "features_resnet34_subset": f"resnet34 (random init, batch 32 on the CPU) through the feature cache, "
                                         f"first {result.get('resnet34_tiles')} tiles: "
                                         f"{result.get('resnet34_tiles_per_s')} tiles/s"}
    for name, st in result["stages"].items():
        if st:
            lines.append(f"| {name} | {st['seconds']:.1f} | {st['cpu_seconds']:.1f} | {st['peak_rss_mb']:.0f} | "
                         f"{notes.get(name, '')} |")
    return "\n".join(lines) + "\n"


def save(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gigapixel_{result['machine']['cpus']}cpu"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{stem}.md").write_text(to_markdown(result))
    return out_dir / f"{stem}.md"


def _update_counts(workdir: Path, **values) -> None:
    path = workdir / "gigapixel_counts.json"
    counts = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**counts, **values}))


def _tile_stage(slide: Path, store: Path, tile_size: int, mag: float, codec: str) -> None:
    from ingest.tile_runner import run_tiling
    from ingest.tiling import TileConfig

    config = TileConfig(magnifications=(mag,), tile_size=tile_size, codec=codec)
    summary = run_tiling([slide], store, config, workers=1)
    (res,) = summary.results
    if res.status != "done":
        raise SystemExit(f"tiling failed: {res.line()}")
    key = "tiles" if mag == 40 else f"tiles_{mag:g}x"
    _update_counts(store.parent, **{key: summary.tiles, f"{key}_per_s": round(summary.tiles_per_s, 1)})


def _standin_encoder():
    """(B, 3, H, W) -> (B, 512): 8x8 average pooling then a fixed linear map (cheap; the cache's memory)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 512))


def _features_stage(store: Path, n: int) -> None:
    import torch

    from ingest.slide_store import SlideStore
    from pipelines.data.features import extract_slide_features

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    (sid,) = SlideStore(store).slide_ids()
    if n == 0:  # every tile, through the feature cache
        feats = extract_slide_features(store, sid, "40x", "standin", model=_standin_encoder(), batch_size=64)
        _update_counts(store.parent, standin_features=list(feats.shape))
        return
    subset = _subset_store(store, sid, n)  # the first n tiles as a slide of their own: resnet34 through the cache
    t0 = time.perf_counter()
    feats = extract_slide_features(subset, sid, "40x", "resnet34")
    seconds = time.perf_counter() - t0
    shutil.rmtree(subset, ignore_errors=True)
    _update_counts(store.parent, resnet34_tiles=len(feats), resnet34_tiles_per_s=round(len(feats) / seconds, 1))


def _subset_store(store: Path, sid: str, n: int) -> Path:
    """A slide store holding slide ``sid`` of ``store`` cut to its first ``n`` tiles (scale 40x)."""
    from ingest.slide_store import SlideStore, SlideWriter, init_store

    src = SlideStore(store)
    info = src.slide(sid).attrs
    out = store.with_name(store.name + f".first{n}.zarr")
    shutil.rmtree(out, ignore_errors=True)
    init_store(out)
    tiles = src.tiles(sid, "40x", slice(0, n))
    writer = SlideWriter(out, sid, tiles.shape[1])
    writer.write_thumbnail(src.group[f"{sid}/thumbnail"][:], src.group[f"{sid}/tissue_mask"][:])
    writer.create_scale("40x", len(tiles))
    writer.write_meta("40x", src.coords(sid, "40x")[:n], src.tissue(sid, "40x")[:n])
    writer.write_tiles("40x", 0, tiles)
    scales = {"40x": {**info["scales"]["40x"], "tiles": len(tiles)}}
    writer.finalize({**info, "scales": scales})
    return out


def main(argv: list[str]) -> None:
    """``python -m benchmark.gigapixel generate SLIDE SIZE | tile SLIDE STORE TILE MAG CODEC | features STORE N``."""
    stage, *args = argv
    if stage == "generate":
        from ingest.synthetic.slide import write_synthetic_slide

        write_synthetic_slide(Path(args[0]), width=int(args[1]), height=int(args[1]), seed=0)
    elif stage == "tile":
        _tile_stage(Path(args[0]), Path(args[1]), int(args[2]), float(args[3]), args[4])
    elif stage == "features":
        _features_stage(Path(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown stage {stage!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
