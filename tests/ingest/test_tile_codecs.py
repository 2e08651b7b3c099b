"""Tile codecs of the slide store: the slide's own JPEG tiles copied without decoding, JPEG / Blosc-lz4
re-encoding, stores readable by zarr and the loaders, damage loud; and the real-tissue mosaic slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from ingest.readers.base import open_slide
from ingest.shards import ShardedImageReader, ShardError
from ingest.slide_store import SlideStore
from ingest.synthetic.slide import write_synthetic_slide
from ingest.tiling import TileConfig, tile_slide

REAL_SVS = Path(__file__).resolve().parents[3] / "shared/data/wsi/cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_synthetic_slide(tmp_path_factory.mktemp("wsi") / "s.tiff", width=2048, height=2048, seed=3)


def _tile(slide: Path, store: Path, **kw):
    cfg = {"magnifications": (40.0,), "tile_size": 256, "reader": "tifffile", "tissue_threshold": 0.3, **kw}
    res = tile_slide(slide, store, TileConfig(**cfg))
    assert res.status == "done", res.line()
    return SlideStore(store), res.slide_id


def _reference(slide: Path, coords: np.ndarray, size: int, level: int = 0) -> np.ndarray:
    with open_slide(slide, "tifffile") as reader:
        return np.stack([reader.read_region((int(x), int(y)), (size, size), level) for x, y in coords])


def test_aligned_jpeg_tiles_are_copied_and_read_back_exactly(slide, tmp_path):
    store, sid = _tile(slide, tmp_path / "t.zarr")
    scale = store.slide(sid).attrs["scales"]["40x"]
    assert scale["codec"] == "jpeg" and scale["copied"] is True and scale["tiles"] > 4
    coords = store.coords(sid, "40x")
    tiles = store.tiles(sid, "40x")
    assert np.array_equal(tiles, _reference(slide, coords, 256))  # the slide's bytes: same pixels as a read
    plain = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")[f"{sid}/tiles/40x"]
    assert np.array_equal(plain[1], tiles[1])
    fast = ShardedImageReader.open(tmp_path / "t.zarr" / sid / "tiles" / "40x")
    assert fast is not None and fast.layout.codec == "jpeg" and np.array_equal(fast.read(2), tiles[2])
    assert store.verify() == (1, -(-len(tiles) // 64))


@pytest.mark.parametrize("codec", ["blosc-lz4", "jpeg"])
def test_reencoding_codecs_when_tiles_do_not_align(slide, tmp_path, codec):
    store, sid = _tile(slide, tmp_path / f"{codec}.zarr", tile_size=224, codec=codec, quality=92)
    scale = store.slide(sid).attrs["scales"]["40x"]
    assert scale["codec"] == codec and scale["copied"] is False
    tiles = store.tiles(sid, "40x")
    ref = _reference(slide, store.coords(sid, "40x"), 224)
    err = np.abs(tiles.astype(np.int16) - ref).mean()
    assert err == 0 if codec == "blosc-lz4" else 0 < err < 3


def test_auto_falls_back_to_lossless_blosc(slide, tmp_path):
    store, sid = _tile(slide, tmp_path / "a.zarr", tile_size=224)
    assert store.slide(sid).attrs["scales"]["40x"]["codec"] == "blosc-zstd"
    meta = json.loads((tmp_path / "a.zarr" / sid / "tiles" / "40x" / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["codecs"][1]["configuration"]["cname"] == "zstd"


def test_a_damaged_jpeg_store_is_loud(slide, tmp_path):
    store, sid = _tile(slide, tmp_path / "d.zarr")
    shard = tmp_path / "d.zarr" / sid / "tiles" / "40x" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10:400] = bytes(390)  # inside the first tile's JPEG stream, index intact
    shard.write_bytes(bytes(data))
    fast = ShardedImageReader.open(shard.parents[4])
    with pytest.raises(ShardError, match="chunk 0 cannot be decoded"):
        fast.read(0)
    shard.write_bytes(bytes(data[:100]))  # cut short: the index is gone
    with pytest.raises(ShardError, match="truncated shard file"):
        SlideStore(tmp_path / "d.zarr").tiles(sid, "40x", slice(0, 2))


def test_unknown_codec_is_a_config_error():
    from histo_bench.errors import ConfigError

    with pytest.raises(ConfigError, match="--codec webp: unknown"):
        TileConfig(codec="webp")


@pytest.mark.skipif(not REAL_SVS.exists(), reason=f"real SVS not present at {REAL_SVS}")
def test_aperio_rgb_jpeg_tiles_with_shared_tables_are_copied(tmp_path):
    """CMU-1's tiles are abbreviated JPEG streams (shared JPEGTables) without a colour transform (RGB)."""
    res = tile_slide(REAL_SVS, tmp_path / "r.zarr", TileConfig(magnifications=(20.0,), tile_size=240,
                                                             reader="tifffile", tissue_threshold=0.5))
    store = SlideStore(tmp_path / "r.zarr")
    assert store.slide(res.slide_id).attrs["scales"]["20x"]["copied"] is True
    coords = store.coords(res.slide_id, "20x")[:6]
    assert np.array_equal(store.tiles(res.slide_id, "20x", slice(0, 6)), _reference(REAL_SVS, coords, 240))


@pytest.mark.skipif(not REAL_SVS.exists(), reason=f"real SVS not present at {REAL_SVS}")
def test_real_tissue_mosaic_is_a_readable_20x_pyramid(tmp_path):
    from ingest.synthetic.tissue_mosaic import source_pixels, write_tissue_mosaic

    path = write_tissue_mosaic(REAL_SVS, tmp_path / "m.tiff", width=4608, height=1024, quality=90)
    src = source_pixels(REAL_SVS)
    with open_slide(path, "tifffile") as reader:
        assert reader.dimensions == (4608, 1024) and [lv.downsample for lv in reader.levels] == [1, 4, 16]
        assert reader.objective_power == 20 and abs(reader.mpp - 0.499) < 1e-6
        first = reader.read_region((0, 0), (256, 256), 0)
        mirrored = reader.read_region((2208 * 2 - 256, 0), (256, 256), 0)  # reflected: the same tile flipped
    assert np.abs(first.astype(int) - src[:256, :256]).mean() < 4
    assert np.abs(mirrored.astype(int) - src[:256, :256][:, ::-1]).mean() < 4
