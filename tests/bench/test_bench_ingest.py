"""pytest-benchmark cases for ingest: generation, ingest throughput, and random reads from the store against
the same images read from the PNG folder and from an HDF5 file.

Run with ``make bench`` (compares against the committed baseline) or ``make bench-save`` (writes a new one).
The workload is the same in CI and locally: 64 synthetic 700x460 images (8 classes x 2 patients x 4 mags x 1).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.store import ImageStore
from ingest.synthetic.breakhis_tree import SyntheticConfig, generate_tree, render_image

pytestmark = pytest.mark.bench

BATCH = 32
CONFIG = SyntheticConfig(patients_per_class=2, images_per_magnification=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """The synthetic tree, its store and an HDF5 copy of the same pixels (lzf, one chunk per image)."""
    import h5py

    base = tmp_path_factory.mktemp("bench")
    paths = sorted(generate_tree(base / "tree", CONFIG, workers=2))
    ingest_breakhis(IngestConfig(root=str(base / "tree"), out=str(base / "store.zarr"), workers=2))
    store = ImageStore(base / "store.zarr")
    pngs = [base / "tree" / s for s in store.source()]
    with h5py.File(base / "images.h5", "w") as fh:
        fh.create_dataset("images", data=store.read(np.arange(len(store))), chunks=(1, *store.image_shape),
                          compression="lzf")
    return {"base": base, "paths": paths, "store": store, "pngs": pngs, "h5": base / "images.h5"}


def _random_batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=BATCH, replace=False)


def read_store(store: ImageStore, idx: np.ndarray) -> np.ndarray:
    return store.read(idx)


def read_pngs(pngs: list[Path], idx: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(Image.open(pngs[i]).convert("RGB")) for i in idx])


def read_h5(fh, idx: np.ndarray) -> np.ndarray:
    images = fh["images"]  # one read per image: h5py's fancy indexing is far slower for random batches
    return np.stack([images[int(i)] for i in idx])


def test_bench_render_image(benchmark):
    counter = iter(range(10**6))
    benchmark(lambda: render_image("ductal_carcinoma", "100X", "14-10001", next(counter)))
    benchmark.extra_info["images_per_s"] = 1.0 / benchmark.stats.stats.median


def test_bench_ingest_throughput(benchmark, dataset):
    base = dataset["base"]
    runs = iter(range(10**6))

    def run():
        out = base / f"ingest-{next(runs)}.zarr"
        return ingest_breakhis(IngestConfig(root=str(base / "tree"), out=str(out), workers=2))

    summary = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["images"] = summary.images
    benchmark.extra_info["images_per_s"] = summary.images / benchmark.stats.stats.median


@pytest.mark.benchmark(group="random-read-32")
def test_bench_read_store(benchmark, dataset):
    seeds = iter(range(10**6))
    benchmark(lambda: read_store(dataset["store"], _random_batch(len(dataset["store"]), next(seeds))))


@pytest.mark.benchmark(group="random-read-32")
def test_bench_read_png_folder(benchmark, dataset):
    seeds = iter(range(10**6))
    benchmark(lambda: read_pngs(dataset["pngs"], _random_batch(len(dataset["pngs"]), next(seeds))))


@pytest.mark.benchmark(group="random-read-32")
def test_bench_read_hdf5(benchmark, dataset):
    import h5py

    seeds = iter(range(10**6))
    with h5py.File(dataset["h5"], "r") as fh:
        benchmark(lambda: read_h5(fh, _random_batch(len(dataset["pngs"]), next(seeds))))


def _median_seconds(fn, repeats: int = 7) -> float:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def test_store_random_reads_beat_png_folder(dataset, record_property):
    """Same run, same images, same random batches: the store must beat decoding the PNG folder widely."""
    store, pngs = dataset["store"], dataset["pngs"]
    for r in range(2):  # warm the page cache for both
        read_store(store, _random_batch(len(store), r))
        read_pngs(pngs, _random_batch(len(pngs), r))
    t_store = _median_seconds(lambda r: read_store(store, _random_batch(len(store), 100 + r)))
    t_png = _median_seconds(lambda r: read_pngs(pngs, _random_batch(len(pngs), 100 + r)))
    ratio = t_png / t_store
    record_property("store_vs_png_speedup", round(ratio, 2))
    assert np.array_equal(read_store(store, np.arange(4)), read_pngs(pngs, np.arange(4)))
    assert ratio >= 3.0, f"store random reads only {ratio:.1f}x faster than the PNG folder"


def test_bench_ingest_against_pure_decode(benchmark, tmp_path, record_property):
    """``histo-ingest breakhis`` wall time over a Pillow-only decode of the same files with the same two processes
    (the faster of a fork and a spawn pool), alternating in one run (:mod:`benchmark.ingest_speed`), on real BreakHis
    pixels when the sample is present (its 12 images copied 24 times under new patients: 288 images), else on the
    synthetic tree. The README's figure is from ``histo-bench ingest-bench`` on 432 real images (the 1.2x goal is met
    there). The guard (2.5x) is loose because a small tree shows the fixed start-up cost and CI machines are noisy;
    it catches a return to the old serial path (3.4x in the same run on the same machine)."""
    from benchmark.ingest_speed import IngestBenchConfig, measure, replicate_breakhis
    from tests.conftest import REAL_BREAKHIS

    if REAL_BREAKHIS.exists():
        root = tmp_path / "tree"
        replicate_breakhis(REAL_BREAKHIS, root, 24)
    else:
        root = tmp_path / "tree"
        generate_tree(root, SyntheticConfig(patients_per_class=3, images_per_magnification=3), workers=2)
    config = IngestBenchConfig(root=str(root), workdir=str(tmp_path / "work"), workers=2, repeats=2)
    result = benchmark.pedantic(measure, args=(config,), rounds=1, iterations=1)
    benchmark.extra_info.update(result.to_dict())
    record_property("ingest_over_decode", round(result.ratio, 3))
    print(f"\ningest/decode wall {result.ratio:.2f}x (CPU {result.cpu_ratio:.2f}x) on {result.images} images")
    assert result.ratio <= 2.5, f"ingest takes {result.ratio:.2f}x the time of decoding the same files"
