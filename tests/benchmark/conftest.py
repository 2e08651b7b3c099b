"""A tiny learnable store and a tiny trained checkpoint, shared by the benchmark tests (built once per session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ingest.breakhis import IngestConfig, ingest_breakhis
from ingest.breakhis_names import CLASSES, relative_path
from ingest.splits import SplitConfig
from tests.pipelines import tiny_models  # noqa: F401  (registers tiny_cnn_test)


@pytest.fixture(autouse=True)
def _one_thread():
    """Timing loops on a shared 2-core machine: one torch thread keeps tiny ops from fighting over cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bench_store(tmp_path_factory):
    """8 colour-coded classes, 3 patients each, 100X and 400X, 3 images per patient and magnification."""
    root = tmp_path_factory.mktemp("bench-store")
    rng = np.random.default_rng(1)
    palette = rng.integers(40, 220, (len(CLASSES), 3))
    for c, cls in enumerate(CLASSES):
        for p in range(3):
            for mag in ("100X", "400X"):
                for k in range(1, 4):
                    path = root / "tree" / relative_path(cls, f"14-{200 + 10 * c + p}", mag, k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    img = np.clip(palette[c] + rng.normal(0, 20, (36, 48, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(img).save(path)
    ingest_breakhis(IngestConfig(root=str(root / "tree"), out=str(root / "s.zarr"), workers=1,
                                 split=SplitConfig(fractions=(0.34, 0.33, 0.33))))
    return root / "s.zarr"


@pytest.fixture(scope="session")
def bench_checkpoint(bench_store, tmp_path_factory):
    from pipelines.train import TrainConfig, train

    out = tmp_path_factory.mktemp("bench-ckpt") / "run"
    result = train(TrainConfig(model="tiny_cnn_test", store=str(bench_store), train_magnification="mixed", epochs=2,
                               batch_size=8, lr=3e-2, warmup_epochs=0.5, image_size=32, load_size=36,
                               loader="device", device="cpu", out=str(out)))
    return result.run_dir / "best.pt"
