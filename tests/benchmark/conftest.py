"""A tiny learnable store and a tiny trained checkpoint, shared by the benchmark tests (built once per session)."""

from __future__ import annotations

import pytest

from tests.conftest import write_colour_store
from tests.pipelines import tiny_models  # noqa: F401  (registers tiny_cnn_test)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Timing loops and tiny models: one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def bench_store(tmp_path_factory):
    """8 colour-coded classes, 3 patients each, 100X and 400X, 3 images per patient and magnification."""
    return write_colour_store(tmp_path_factory.mktemp("bench-store"), patients=3, images=3, size=(36, 48), noise=20,
                              seed=1, first_patient=200, fractions=(0.34, 0.33, 0.33))


@pytest.fixture(scope="session")
def bench_checkpoint(bench_store, tmp_path_factory):
    from pipelines.training.classifier import TrainConfig, train

    out = tmp_path_factory.mktemp("bench-ckpt") / "run"
    result = train(TrainConfig(model="tiny_cnn_test", store=str(bench_store), train_magnification="mixed", epochs=2,
                               batch_size=8, lr=3e-2, warmup_epochs=0.5, image_size=32, load_size=36,
                               loader="device", device="cpu", out=str(out)))
    return result.run_dir / "best.pt"
