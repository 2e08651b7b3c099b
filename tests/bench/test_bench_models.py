"""pytest-benchmark cases for the model-side hot paths on CPU: on-device augmentation of a batch, the evaluation
transform, and an eager forward of a small network at batch 8.

The workload is fixed (seeded inputs, one torch thread, so the 2-core CI machine's other core cannot make the
numbers swing); ``make bench`` compares the medians with the committed baseline.
"""

from __future__ import annotations

import pytest
import torch

from pipelines.data.augment import GpuAugment, eval_transform

pytestmark = pytest.mark.bench


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """A fixed workload: one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """32 uint8 images of 256x390 (the training loader's resident size for 224 px inputs)."""
    return torch.randint(0, 256, (32, 3, 256, 390), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_bench_augment_batch(benchmark, batch):
    augment = GpuAugment(out_size=224, seed=0)
    out = benchmark(augment, batch)
    assert out.shape == (32, 3, 224, 224) and out.dtype == torch.float32


def test_bench_eval_transform(benchmark, batch):
    out = benchmark(eval_transform, batch, 224)
    assert out.shape == (32, 3, 224, 224)


def test_bench_eager_forward_resnet18_batch8(benchmark):
    from models.classifiers import backbone

    model, _ = backbone("resnet18", num_classes=8)
    model.eval()
    x = torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.inference_mode():
            return model(x)

    out = benchmark(forward)
    assert out.shape == (8, 8) and torch.isfinite(out).all()
