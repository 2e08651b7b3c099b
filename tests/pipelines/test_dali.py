"""The DALI pipeline in CPU-only mode (skipped when DALI is not importable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.data.augment import IMAGENET_MEAN, IMAGENET_STD
from pipelines.data.dali import dali_available
from tests.pipelines import make_store

pytestmark = pytest.mark.skipif(dali_available() is not None, reason=str(dali_available()))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from ingest.store import ImageStore

    return ImageStore(make_store(tmp_path_factory.mktemp("pipelines-dali")))


def _loader(store, idx, **kw):
    from pipelines.data.dali import DaliLoader

    kw = {"batch_size": 8, "image_size": 32, "seed": 0, "device_id": None, "num_threads": 2, **kw}
    return DaliLoader(store, idx, **kw)


def test_cpu_train_epoch_shapes_and_labels(store):
    idx = store.select(split="train")
    loader = _loader(store, idx, train=True)
    assert len(loader) == len(idx) // 8
    for _epoch in range(2):
        batches = list(loader)
        assert len(batches) == len(loader)
        for x, y, i in batches:
            assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
            assert y.dtype == torch.long and i.dtype == torch.long
            assert np.array_equal(y.numpy(), store.label[i.numpy()])
        seen = torch.cat([b[2] for b in batches]).tolist()
        assert len(set(seen)) == len(seen) and set(seen) <= set(idx.tolist())
    x = torch.cat([b[0] for b in batches])
    raw = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert raw.min() >= -1e-3 and raw.max() <= 1 + 1e-3
    assert abs(float(x.mean())) < 0.5  # random uniform pixels: roughly zero-mean after ImageNet normalisation


def test_cpu_eval_covers_selection_in_order(store):
    idx = store.select(split="val")
    loader = _loader(store, idx, train=False)
    batches = list(loader)
    assert len(batches) == -(-len(idx) // 8)
    assert np.array_equal(torch.cat([b[2] for b in batches]).numpy(), idx)
    assert np.array_equal(torch.cat([b[1] for b in batches]).numpy(), store.label[idx])
    # eval: resize shorter side to 32 and centre-crop, normalised
    img = torch.from_numpy(store.read(idx[:1])).permute(0, 3, 1, 2)
    from pipelines.data.augment import eval_transform

    assert (batches[0][0][:1] - eval_transform(img, 32)).abs().mean() < 0.1


def test_seeded_reproducible_and_epochs_differ(store):
    idx = store.select(split="train")
    a, b = _loader(store, idx, train=True, seed=5), _loader(store, idx, train=True, seed=5)
    a0, a1 = list(a), list(a)
    b0 = list(b)
    assert torch.equal(torch.cat([t[2] for t in a0]), torch.cat([t[2] for t in b0]))
    assert torch.equal(torch.cat([t[0] for t in a0]), torch.cat([t[0] for t in b0]))
    assert not torch.equal(torch.cat([t[2] for t in a0]), torch.cat([t[2] for t in a1]))


def test_abandoned_epoch_then_next(store):
    idx = store.select(split="train")
    loader = _loader(store, idx, train=True)
    next(iter(loader))  # leave the epoch early
    assert len(list(loader)) == len(loader)


def test_rank_sharding(store):
    idx = store.select(split="val")
    seen = [torch.cat([b[2] for b in _loader(store, idx, train=False, rank=r, world_size=2)]).tolist()
            for r in range(2)]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == sorted(idx.tolist())
