"""Loaders: right images and labels, seeded shuffling, drop_last, rank sharding, fallback choice, efficiency."""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch

from pipelines.data import loaders as data_mod
from pipelines.data.augment import AugmentConfig, resize_uint8
from pipelines.data.base import DataConfig, epoch_order, fits_on_device, load_images, load_shape
from pipelines.data.loaders import DeviceLoader, TorchLoader, input_efficiency, make_loader
from tests.pipelines import make_store

# stored images are 64x96; loaded with shorter side 40 -> 40x60; model input 32
CFG = DataConfig(image_size=32, load_size=40, batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from ingest.store import ImageStore

    return ImageStore(make_store(tmp_path_factory.mktemp("pipelines-data")))


def test_config_validation():
    with pytest.raises(ValueError):
        DataConfig(loader="magic")
    with pytest.raises(ValueError):
        DataConfig(image_size=224, load_size=200)
    with pytest.raises(ValueError):
        DataConfig(batch_size=0)
    assert load_shape(460, 700, 256) == (256, 390)


def test_load_images_matches_store(store):
    idx = store.select(split="train", magnification="40X")
    seen = []
    images = load_images(store, idx, 40, progress=lambda d, t: seen.append((d, t)), chunk=5)
    assert images.shape == (len(idx), 3, 40, 60) and images.dtype == torch.uint8
    ref = resize_uint8(torch.from_numpy(store.read(idx)).permute(0, 3, 1, 2), (40, 60))
    assert torch.equal(images, ref)
    assert seen[-1] == (len(idx), len(idx))
    assert torch.equal(load_images(store, idx[:3], None), torch.from_numpy(store.read(idx[:3])).permute(0, 3, 1, 2))


def test_device_loader_eval_yields_selection_in_order(store):
    idx = store.select(split="val", magnification="100X")
    loader = DeviceLoader.from_store(store, idx, CFG, device="cpu", train=False)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(idx) // 8)
    got_idx = torch.cat([b[2] for b in batches]).numpy()
    got_y = torch.cat([b[1] for b in batches]).numpy()
    assert np.array_equal(got_idx, idx) and np.array_equal(got_y, store.label[idx])
    assert all(b[0].shape[1:] == (3, 32, 32) and b[0].dtype == torch.float32 for b in batches)
    assert all(b[1].dtype == torch.long and b[2].dtype == torch.long for b in batches)
    assert loader.n_images == len(idx)


def _epoch_idx(loader) -> list[int]:
    return torch.cat([b[2] for b in loader]).tolist()


def test_shuffling_seeded_and_epoch_dependent(store):
    idx = store.select(split="train")
    a = DeviceLoader.from_store(store, idx, CFG, device="cpu", train=True, seed=1)
    b = DeviceLoader.from_store(store, idx, CFG, device="cpu", train=True, seed=1)
    e0, e1 = _epoch_idx(a), _epoch_idx(a)
    assert e0 != e1  # a new order every epoch
    assert e0 == _epoch_idx(b) and e1 == _epoch_idx(b)  # ... reproducible from the seed
    b.set_epoch(1)
    assert _epoch_idx(b) == e1
    # the augmented pixels are reproducible too
    a.set_epoch(5)
    b.set_epoch(5)
    xa, xb = next(iter(a))[0], next(iter(b))[0]
    assert torch.equal(xa, xb)
    c = DeviceLoader.from_store(store, idx, CFG, device="cpu", train=True, seed=2)
    assert _epoch_idx(c) != e0


def test_drop_last(store):
    idx = store.select(split="train")
    n, bs = len(idx), 5
    assert n % bs  # a partial last batch exists
    images = load_images(store, idx, 40)
    train = DeviceLoader(images, store.label[idx], idx, batch_size=bs, train=True, image_size=32)
    assert train.drop_last and len(train) == n // bs
    assert [len(b[0]) for b in train] == [bs] * (n // bs)
    keep = DeviceLoader(images, store.label[idx], idx, batch_size=bs, train=True, image_size=32, drop_last=False)
    assert len(keep) == -(-n // bs) and sum(len(b[0]) for b in keep) == n
    evaluation = DeviceLoader(images, store.label[idx], idx, batch_size=bs, train=False, image_size=32)
    assert not evaluation.drop_last and len(evaluation) == -(-n // bs)


def test_rank_sharding_disjoint_and_covering(store):
    idx = store.select(split=None)
    images = load_images(store, idx, 40)
    for drop_last in (False, True):
        parts = []
        for rank in range(3):
            loader = DeviceLoader(images, store.label[idx], idx, batch_size=8, train=True, image_size=32, seed=0,
                                  drop_last=drop_last, rank=rank, world_size=3)
            loader.set_epoch(4)
            parts.append(torch.cat([b[2] for b in loader]).tolist() if len(loader) else [])
        flat = [i for p in parts for i in p]
        assert len(flat) == len(set(flat))  # disjoint
        if not drop_last:
            assert sorted(flat) == sorted(idx.tolist())  # covering
            assert {len(p) for p in parts} <= {len(idx) // 3, len(idx) // 3 + 1}
        else:
            assert len({len(p) for p in parts}) == 1  # equal steps on every rank
    for rank in range(2):
        order = epoch_order(10, seed=0, epoch=0, shuffle=True, drop_last=False, rank=rank, world_size=2)
        assert len(order) == 5
    with pytest.raises(ValueError):
        epoch_order(10, seed=0, epoch=0, shuffle=True, drop_last=False, rank=2, world_size=2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_torch_loader_matches_device_loader(store, num_workers):
    idx = store.select(split="train", magnification="100X")
    cfg = DataConfig(image_size=32, load_size=40, batch_size=8, num_workers=num_workers)
    dev = DeviceLoader.from_store(store, idx, cfg, device="cpu", train=True, seed=0)
    tl = TorchLoader.from_store(store, idx, cfg, device="cpu", train=True, seed=0)
    assert len(tl) == len(dev) and tl.n_images == dev.n_images
    for _ in range(2):
        bd, bt = list(dev), list(tl)
        yd, yt = torch.cat([b[1] for b in bd]), torch.cat([b[1] for b in bt])
        assert Counter(yd.tolist()) == Counter(yt.tolist())
        assert torch.equal(torch.cat([b[2] for b in bd]), torch.cat([b[2] for b in bt]))  # same order, same seed
        # same uint8 source pixels and same augmentation stream -> the same batches
        assert torch.allclose(torch.cat([b[0] for b in bd]), torch.cat([b[0] for b in bt]), atol=1e-5)
    ev = TorchLoader.from_store(store, idx, cfg, device="cpu", train=False)
    assert np.array_equal(torch.cat([b[2] for b in ev]).numpy(), idx)


def test_fits_on_device():
    assert fits_on_device(1, "cpu")
    assert not fits_on_device(1 << 62, "cpu")


def test_make_loader_choice(store, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="pipelines.data.loaders")  # the choice is a DEBUG line
    loader = make_loader(store, "train", "40X", CFG, device="cpu", train=True)
    assert isinstance(loader, DeviceLoader)
    assert "loader device" in caplog.text
    monkeypatch.setattr(data_mod, "fits_on_device", lambda *a, **k: False)
    caplog.clear()
    loader = make_loader(store, "train", "40X", CFG, device="cpu", train=True)
    assert isinstance(loader, TorchLoader)  # CPU device: DALI is not chosen automatically
    assert "not CUDA" in caplog.text
    explicit = make_loader(store, "test", None, DataConfig(image_size=32, load_size=40, loader="device"),
                           device="cpu", train=False)
    assert isinstance(explicit, DeviceLoader)
    torch_loader = make_loader(store, "val", "mixed", DataConfig(image_size=32, load_size=40, loader="torch",
                                                                 num_workers=0), device="cpu", train=False)
    assert isinstance(torch_loader, TorchLoader)
    with pytest.raises(ValueError):
        make_loader(store, "train", "200X", CFG, device="cpu", train=True)


def test_make_loader_prefers_dali_on_cuda_when_too_big(store, monkeypatch):
    import pipelines.data.dali as dali_mod

    monkeypatch.setattr(data_mod, "fits_on_device", lambda *a, **k: False)
    monkeypatch.setattr(data_mod, "dali_available", lambda: None)
    built = {}

    def fake(cls, store, indices, config, **kw):
        built.update(kw, n=len(indices))
        return "dali-loader"

    monkeypatch.setattr(dali_mod.DaliLoader, "from_store", classmethod(fake))
    assert make_loader(store, "train", "40X", CFG, device="cuda:0", train=True, seed=3) == "dali-loader"
    assert built["seed"] == 3 and built["train"] is True
    # DALI has no weighted sampler: auto takes the torch loader for weighted training, DALI for evaluation
    monkeypatch.setattr(data_mod.TorchLoader, "from_store", classmethod(lambda cls, *a, **kw: "torch-loader"))
    weighted = DataConfig(image_size=32, load_size=40, batch_size=8, sampler="weighted")
    assert make_loader(store, "train", "40X", weighted, device="cuda:0", train=True) == "torch-loader"
    assert make_loader(store, "val", None, weighted, device="cuda:0", train=False) == "dali-loader"
    monkeypatch.undo()
    monkeypatch.setattr(data_mod, "fits_on_device", lambda *a, **k: False)
    monkeypatch.setattr(data_mod, "dali_available", lambda: "not installed")
    assert isinstance(make_loader(store, "train", "40X", CFG, device="cpu", train=True), TorchLoader)


def test_input_efficiency_on_cpu(store):
    idx = store.select(split="train")
    loader = DeviceLoader.from_store(store, idx, DataConfig(image_size=32, load_size=40, batch_size=8,
                                                            augment=AugmentConfig()), device="cpu", train=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x, y):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    result = input_efficiency(loader, step, n_batches=len(loader) + 2)  # crosses an epoch boundary
    assert result["loader_images_per_s"] > 0 and result["synthetic_images_per_s"] > 0
    assert 0 < result["efficiency"] < 5
    assert result["batch_size"] == 8


def _start_library_threads(tmp_path) -> list[str]:
    """Start the thread pools a training process holds by the time it builds a loader (OpenMP / intra-op, zarr and
    store-read threads, ONNX Runtime, cuCIM, DALI where installed); returns the names of those started."""
    started = ["torch intra-op"]
    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones(4, np.float32)})
        started.append("onnxruntime")
    except ImportError:
        pass
    try:
        import tifffile

        from ingest.readers.cucim_reader import keep_cufile_log_out_of_cwd

        keep_cufile_log_out_of_cwd()  # torch is loaded: importing cucim would leave a cufile.log in the cwd
        from cucim import CuImage

        path = tmp_path / "threads.tif"
        tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint8), tile=(128, 128))
        np.asarray(CuImage(str(path)).read_region((0, 0), (64, 64), 0))
        started.append("cucim")
    except ImportError:
        pass
    try:
        from nvidia.dali import fn, pipeline_def

        @pipeline_def(batch_size=2, num_threads=2, device_id=None)
        def noise():
            return fn.random.uniform(range=(0.0, 1.0), shape=(4,))

        pipe = noise()
        pipe.build()
        pipe.run()
        started.append("dali")
    except ImportError:
        pass
    return started


def test_multi_worker_loader_is_fork_safe_after_library_threads(store, tmp_path):
    """The class of the clean-clone segfault: a DataLoader whose workers were forked from a process running many
    threads. Workers must start through the forkserver / spawn, and a 2-worker loader must give the in-process
    loader's batches, epoch after epoch, after those libraries' threads are running."""
    started = _start_library_threads(tmp_path)
    store.read(np.arange(8))  # the store's read pool
    if os.path.isdir("/proc/self/task"):  # native threads too (threading only counts Python's)
        assert len(os.listdir("/proc/self/task")) >= 4, started
    idx = store.select(split="train")
    cfg = DataConfig(image_size=32, load_size=40, batch_size=8, num_workers=2)
    loader = TorchLoader.from_store(store, idx, cfg, device="cpu", train=True, seed=3)
    assert loader._loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
    reference = TorchLoader.from_store(store, idx, DataConfig(image_size=32, load_size=40, batch_size=8,
                                                              num_workers=0), device="cpu", train=True, seed=3)
    for epoch in range(3):
        got, want = list(loader), list(reference)
        assert len(got) == len(want) > 0, started
        for (xg, yg, ig), (xw, yw, iw) in zip(got, want, strict=True):
            assert torch.equal(ig, iw) and torch.equal(yg, yw), f"epoch {epoch}"
            assert torch.allclose(xg, xw, atol=1e-5), f"epoch {epoch}"
