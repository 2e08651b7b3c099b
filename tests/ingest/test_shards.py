import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from ingest.shards import ShardedImageReader, ShardWriter
from ingest.store import ImageStore


def _array(path, n=10, shard=4):
    arr = zarr.create_array(store=str(path), shape=(n, 5, 7, 3), dtype="uint8", chunks=(1, 5, 7, 3),
                            shards=(shard, 5, 7, 3), fill_value=0,
                            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"))
    data = np.random.default_rng(0).integers(0, 256, (n, 5, 7, 3), dtype=np.uint8)
    arr[:] = data
    return arr, data


def test_reads_match_zarr_including_partial_last_shard(tmp_path):
    _, data = _array(tmp_path / "a.zarr")
    reader = ShardedImageReader.open(tmp_path / "a.zarr")
    assert reader is not None
    for i in range(10):
        assert np.array_equal(reader.read(i), data[i])


def test_store_read_uses_it_and_matches_zarr(tiny_tree, tmp_path):
    from ingest.breakhis import IngestConfig, ingest_breakhis

    ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(tmp_path / "s.zarr"), workers=1, shard_size=8))
    store = ImageStore(tmp_path / "s.zarr")
    assert store._fast is not None
    idx = np.random.default_rng(0).integers(0, len(store), 50)
    assert np.array_equal(store.read(idx), np.stack([store.images[int(i)] for i in idx]))
    with pytest.raises(IndexError):
        store.read([len(store)])


def test_unsupported_layouts_fall_back_to_zarr(tmp_path):
    zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=(4, 5, 7, 3), dtype="uint8", chunks=(1, 5, 7, 3))
    assert ShardedImageReader.open(tmp_path / "plain.zarr") is None  # not sharded
    zarr.create_array(store=str(tmp_path / "zstd.zarr"), shape=(4, 5, 7, 3), dtype="uint8", chunks=(1, 5, 7, 3),
                      shards=(2, 5, 7, 3))
    assert ShardedImageReader.open(tmp_path / "zstd.zarr") is None  # another codec chain
    assert ShardedImageReader.open(tmp_path / "missing.zarr") is None


def test_corrupt_index_is_an_error_naming_the_file(tmp_path):
    _array(tmp_path / "a.zarr")
    shard = tmp_path / "a.zarr" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(OSError, match="c/0/0/0/0: shard index checksum mismatch"):
        ShardedImageReader.open(tmp_path / "a.zarr").read(0)


def test_writer_output_is_read_back_by_zarr_and_the_reader(tmp_path):
    arr, _ = _array(tmp_path / "a.zarr", n=10, shard=4)
    new = np.random.default_rng(5).integers(0, 256, (10, 5, 7, 3), dtype=np.uint8)
    writer = ShardWriter.open(tmp_path / "a.zarr")
    writer.write_shard(0, new[0:4])
    writer.write_shard(1, new[4:8])
    writer.write_shard(2, new[8:10])  # the last, partial shard
    reopened = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert np.array_equal(reopened[:], new)
    reader = ShardedImageReader.open(tmp_path / "a.zarr")
    assert all(np.array_equal(reader.read(i), new[i]) for i in range(10))
    writer.write_shard(1, new[4:6])  # a shard with absent chunks: zarr fills them
    assert np.array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[6:8], np.zeros((2, 5, 7, 3)))
    with pytest.raises(ValueError, match="expected 1..4 items"):
        writer.write_shard(0, new[:5])


def test_a_stream_writes_the_shard_write_encoded_writes_and_an_aborted_one_leaves_nothing(tmp_path):
    _array(tmp_path / "a.zarr", n=10, shard=4)
    writer = ShardWriter.open(tmp_path / "a.zarr")
    new = np.random.default_rng(7).integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    blobs = [writer.codec.encode(np.ascontiguousarray(item)) for item in new]
    writer.write_encoded(0, blobs)
    whole = writer.layout.shard_file(0).read_bytes()
    index = np.array([[sum(map(len, blobs[:j])), len(b)] for j, b in enumerate(blobs)], dtype="<u8").tobytes()
    assert whole == b"".join(blobs) + index + google_crc32c.value(index).to_bytes(4, "little")  # zarr's layout
    stream = writer.stream(0)
    for blob in blobs:
        stream.append(memoryview(blob).toreadonly())  # as from a worker's shared memory
    with pytest.raises(ValueError, match="at most 4 items"):
        stream.append(blobs[0])
    stream.commit()
    assert writer.layout.shard_file(0).read_bytes() == whole
    assert np.array_equal(zarr.open_array(str(tmp_path / "a.zarr"))[:4], new)

    shard_dir = writer.layout.shard_file(1).parent
    before = sorted(p.name for p in shard_dir.iterdir())
    stream = writer.stream(1)
    stream.append(blobs[0])
    assert len(sorted(shard_dir.iterdir())) == len(before) + 1  # its temporary file
    stream.abort()
    assert sorted(p.name for p in shard_dir.iterdir()) == before
    last = writer.layout.shard_file(2).read_bytes()
    empty = writer.stream(2)
    with pytest.raises(ValueError, match="at least one item"):
        empty.commit()
    assert not empty._tmp.exists() and writer.layout.shard_file(2).read_bytes() == last
