import os
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ingest.breakhis import IngestConfig, IngestError, discover, ingest_breakhis
from ingest.breakhis_names import CLASSES, parse_name, relative_path
from ingest.splits import SPLIT_CODES, SplitConfig
from ingest.store import ImageStore, StoreError, is_complete, partial_path
from tests.conftest import write_tree
from tests.ingest.bad_files import write_truncated_png


def _ingest(root, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("shard_size", 4)
    return ingest_breakhis(IngestConfig(root=str(root), out=str(out), **kw))


def test_ingest_counts_labels_and_pixels(tiny_tree, tmp_path):
    out = tmp_path / "s.zarr"
    summary = _ingest(tiny_tree, out)
    assert summary.images == 8 * 3 * 2 * 2 and not summary.skipped
    store = ImageStore(out)
    assert len(store) == 96 and store.image_shape == (46, 70, 3)
    # every image is where its name says, with the right label and the exact pixels
    sources = store.source()
    for i in [0, 17, 95]:
        name = parse_name(sources[i])
        assert store.classes[store.label[i]] == name.class_name
        assert store.patient[i] == name.patient and store.magnification[i] == name.magnification
        assert np.array_equal(store.read([i])[0], np.asarray(Image.open(tiny_tree / sources[i])))
    # counts per class x magnification x patient
    per = Counter(zip(store.label.tolist(), store.magnification.tolist(), store.patient.tolist(), strict=True))
    assert set(per.values()) == {2} and len(per) == 8 * 2 * 3
    assert store.malignant.sum() == 48
    assert store.attrs["origin"]["kind"] == "user-provided"


def test_splits_are_patient_disjoint_and_selectable(tiny_tree, tmp_path):
    out = tmp_path / "s.zarr"
    _ingest(tiny_tree, out, split=SplitConfig(fractions=(0.34, 0.33, 0.33)))
    store = ImageStore(out)
    sets = {s: set(store.patient[store.split == c]) for s, c in SPLIT_CODES.items() if s != "unused"}
    assert all(len(v) == 8 for v in sets.values())  # one patient per class per split
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    idx = store.select(split="test", magnification="100X")
    assert len(idx) == 16 and set(store.magnification[idx]) == {"100X"}
    assert len(store.select(magnification="mixed")) == 48  # 100X + 400X, and this tree has no 400X
    assert len(store.select(split="train", classes=["adenosis"])) == 4
    batch = store.read(idx[[3, 0, 3]])
    assert batch.shape == (3, 46, 70, 3) and np.array_equal(batch[0], batch[2])
    with pytest.raises(ValueError, match="unknown split"):
        store.select(split="holdout")


def test_bad_files_are_named_skipped_and_counted(tiny_tree, tmp_path, caplog):
    adenosis = tiny_tree / relative_path("adenosis", "14-1000", "40X", 1).parent
    write_truncated_png(adenosis / "SOB_B_A-14-1000-40-009.png")
    (adenosis / "SOB_B_A-14-1000-40-010.png").write_bytes(b"")
    (adenosis / "notes.txt").write_text("pathologist notes")
    (adenosis / "IMG_0001.png").write_bytes((adenosis / "SOB_B_A-14-1000-40-001.png").read_bytes())
    Image.fromarray(np.zeros((46, 70), np.uint8)).save(adenosis / "SOB_B_A-14-1000-40-011.png")
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(adenosis / "SOB_B_A-14-1000-40-012.png")
    # a ductal carcinoma image misfiled under lobular carcinoma, and an unknown class folder
    lc = tiny_tree / relative_path("lobular_carcinoma", "14-1050", "40X", 1).parent
    shutil.copy(lc / "SOB_M_LC-14-1050-40-001.png", lc / "SOB_M_DC-14-1050-40-001.png")
    odd = tiny_tree / "BreaKHis_v1/histology_slides/breast/benign/SOB/lipoma/SOB_B_A_14-9/40X"
    odd.mkdir(parents=True)
    shutil.copy(lc / "SOB_M_LC-14-1050-40-001.png", odd / "SOB_B_A-14-9-40-001.png")

    summary = _ingest(tiny_tree, tmp_path / "s.zarr")
    reasons = {os.path.basename(p.path): p.reason for p in summary.skipped}
    assert reasons == {
        "SOB_B_A-14-1000-40-009.png": reasons["SOB_B_A-14-1000-40-009.png"],
        "SOB_B_A-14-1000-40-010.png": "empty file (0 bytes)",
        "notes.txt": "not an image file (extension '.txt')",
        "IMG_0001.png": reasons["IMG_0001.png"],
        "SOB_B_A-14-1000-40-011.png": "grayscale image (mode L); expected RGB",
        "SOB_B_A-14-1000-40-012.png": reasons["SOB_B_A-14-1000-40-012.png"],
        "SOB_M_DC-14-1050-40-001.png": "file name says ductal_carcinoma but it sits in folder 'lobular_carcinoma'",
        "SOB_B_A-14-9-40-001.png": reasons["SOB_B_A-14-9-40-001.png"],
    }
    assert reasons["SOB_B_A-14-1000-40-009.png"].startswith("corrupt or truncated image")
    assert "does not follow the BreakHis pattern" in reasons["IMG_0001.png"]
    assert reasons["SOB_B_A-14-1000-40-012.png"].startswith("unexpected image size 300x300")
    assert reasons["SOB_B_A-14-9-40-001.png"].startswith("unknown class folder 'lipoma'")
    assert all("\n" not in r for r in reasons.values())
    assert summary.images == 96  # every good image still made it
    store = ImageStore(tmp_path / "s.zarr")
    assert len(store) == 96 and len(store.attrs["summary"]["skipped"]) == 8
    for name in reasons:  # every skipped file was logged by name
        assert name in caplog.text


def test_flat_folder_of_breakhis_names(tiny_tree, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list(tiny_tree.rglob("*.png"))[:20]:
        shutil.copy(p, flat / p.name)
    summary = _ingest(flat, tmp_path / "f.zarr")
    assert summary.images == 20
    assert len(set(ImageStore(tmp_path / "f.zarr").label.tolist())) >= 2


def test_magnification_filter_and_resize(tmp_path):
    root = tmp_path / "t"
    write_tree(root, classes=CLASSES[:2], patients=2, mags=("40X", "100X", "400X"), images=1)
    _ingest(root, tmp_path / "s.zarr", magnifications=("mixed",), size=(23, 35))
    store = ImageStore(tmp_path / "s.zarr")
    assert sorted(set(store.magnification)) == ["100X", "400X"] and store.image_shape == (23, 35, 3)
    assert store.attrs["magnifications"] == ["100X", "400X"]


def test_rerun_is_noop_and_overwrite_rebuilds(tiny_tree, tmp_path):
    out = tmp_path / "s.zarr"
    _ingest(tiny_tree, out)
    mtime = (out / "zarr.json").stat().st_mtime_ns
    assert _ingest(tiny_tree, out).already_complete
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    summary = _ingest(tiny_tree, out, overwrite=True)
    assert summary.images == 96 and not summary.already_complete and is_complete(out)


def test_interrupted_ingest_leaves_no_complete_store_and_resumes(tiny_tree, tmp_path):
    out = tmp_path / "s.zarr"

    def interrupt(done, total):
        if done == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(out), workers=1, shard_size=8), progress=interrupt)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(StoreError, match="no such store .*interrupted ingest"):
        ImageStore(out)
    seen = []
    summary = ingest_breakhis(IngestConfig(root=str(tiny_tree), out=str(out), workers=1, shard_size=8),
                              progress=lambda d, t: seen.append(d))
    assert summary.resumed and seen[0] == 24  # three whole shards of 8 had been checkpointed
    assert not partial_path(out).exists()
    _ingest(tiny_tree, tmp_path / "clean.zarr", shard_size=8)
    a, b = ImageStore(out), ImageStore(tmp_path / "clean.zarr")
    assert np.array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b))))
    assert np.array_equal(a.split, b.split) and list(a.source()) == list(b.source())


def test_parallel_workers_give_the_same_store(tiny_tree, tmp_path):
    _ingest(tiny_tree, tmp_path / "a.zarr", workers=1)
    _ingest(tiny_tree, tmp_path / "b.zarr", workers=2)
    a, b = ImageStore(tmp_path / "a.zarr"), ImageStore(tmp_path / "b.zarr")
    assert np.array_equal(a.read(np.arange(96)), b.read(np.arange(96)))


def test_whole_run_errors(tmp_path):
    with pytest.raises(IngestError, match="no such directory"):
        _ingest(tmp_path / "missing", tmp_path / "s.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no BreakHis images found"):
        _ingest(tmp_path / "empty", tmp_path / "s.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(IngestError, match=r"no BreakHis images found .*1 file\(s\) were not usable"):
        _ingest(tmp_path / "junk", tmp_path / "s.zarr")


def test_unwritable_output(tiny_tree, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(IngestError, match="cannot write"):
            _ingest(tiny_tree, locked / "s.zarr")
    finally:
        locked.chmod(0o700)


def test_output_under_a_file_is_a_clear_error(tiny_tree, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(IngestError, match="cannot write"):
        _ingest(tiny_tree, tmp_path / "afile" / "s.zarr")


def test_discover_orders_by_magnification_then_class(tiny_tree):
    cands, problems = discover(tiny_tree)
    assert not problems
    keys = [(c.name.magnification, c.name.class_name) for c in cands]
    assert keys[0] == ("40X", "adenosis") and keys[-1] == ("100X", "papillary_carcinoma")
