"""Integration on the 12 real BreakHis images beside the repository (skipped when absent)."""

from collections import Counter

import numpy as np
from PIL import Image

from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.store import ImageStore


def test_real_sample_ingests_with_correct_counts(real_breakhis, tmp_path):
    summary = ingest_breakhis(IngestConfig(root=str(real_breakhis), out=str(tmp_path / "real.zarr"), workers=2))
    assert summary.images == 12 and not summary.skipped
    store = ImageStore(tmp_path / "real.zarr")
    assert store.image_shape == (460, 700, 3)
    by_class = Counter(store.classes[i] for i in store.label)
    assert by_class["fibroadenoma"] == 5 and all(by_class[c] == 1 for c in store.classes if c != "fibroadenoma")
    assert Counter(store.magnification.tolist()) == {"40X": 9, "100X": 1, "200X": 1, "400X": 1}
    assert len(set(store.patient.tolist())) == 9
    fa = store.select(magnification="400X")
    assert list(store.patient[fa]) == ["14-25197"]
    original = np.asarray(Image.open(real_breakhis / store.source(fa)[0]).convert("RGB"))
    assert np.array_equal(store.read(fa)[0], original)
    # patients never cross splits; classes with a single patient are reported, not split
    assert any("adenosis has 1 patient(s)" in n for n in store.attrs["split"]["notes"])
