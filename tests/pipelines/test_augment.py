"""GpuAugment / eval_transform: shapes, determinism, identity at zero strength, real flips/rotations, jitter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipelines.data.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, GpuAugment, eval_transform, normalize


def _batch(n: int = 8, h: int = 48, w: int = 72, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _denorm(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x * std + mean


def test_config_validation():
    with pytest.raises(ValueError):
        AugmentConfig(scale=(0.5, 1.5))
    with pytest.raises(ValueError):
        AugmentConfig(ratio=(2.0, 1.0))
    with pytest.raises(ValueError):
        AugmentConfig(hflip=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(hue=0.6)
    with pytest.raises(ValueError):
        GpuAugment(out_size=0)


def test_shapes_dtypes_ranges():
    x = _batch()
    out = GpuAugment(AugmentConfig(), out_size=32, seed=0)(x)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    raw = _denorm(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    ev = eval_transform(x, 32)
    assert ev.shape == (8, 3, 32, 32) and ev.dtype == torch.float32
    with pytest.raises(ValueError):
        GpuAugment()(x.float())
    with pytest.raises(ValueError):
        eval_transform(x.permute(0, 2, 3, 1))


def test_deterministic_with_seed():
    x = _batch()
    a = GpuAugment(out_size=32, seed=3)(x)
    b = GpuAugment(out_size=32, seed=3)(x)
    c = GpuAugment(out_size=32, seed=4)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    aug = GpuAugment(out_size=32, seed=0)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(aug(x, generator=g1), aug(x, generator=g2))


def test_zero_strength_is_plain_resize():
    x = _batch(h=48, w=72)
    out = GpuAugment(AugmentConfig.none(aspect=72 / 48), out_size=40, seed=0)(x)
    ref = normalize(F.interpolate(x.float(), size=(40, 40), mode="bilinear", align_corners=False) / 255)
    assert (out - ref).abs().max() < 1e-3


def _asym(n: int, side: int = 32) -> torch.Tensor:
    """A square image bright only in its top-left quadrant."""
    img = torch.zeros(n, 3, side, side, dtype=torch.uint8)
    img[:, :, : side // 2, : side // 2] = 255
    return img


def test_flips_and_rotations_happen():
    n, side = 64, 32
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0)
    out = _denorm(GpuAugment(cfg, out_size=side, seed=0)(_asym(n, side)))
    h = side // 2
    quads = torch.stack([out[:, 0, :h, :h].mean((1, 2)), out[:, 0, :h, h:].mean((1, 2)),
                         out[:, 0, h:, :h].mean((1, 2)), out[:, 0, h:, h:].mean((1, 2))], 1)
    where = quads.argmax(1)
    assert (quads.max(1).values > 0.9).all()  # the bright square stays a whole quadrant (exact 90-degree turns)
    assert set(where.tolist()) == {0, 1, 2, 3}  # every orientation of the quadrant occurs across the batch


def test_no_geometry_keeps_orientation():
    side = 32
    out = _denorm(GpuAugment(AugmentConfig.none(), out_size=side, seed=0)(_asym(4, side)))
    assert torch.allclose(out, _asym(4, side).float() / 255, atol=1e-4)


def test_colour_jitter_changes_statistics_within_bounds():
    x = _batch(n=32, h=32, w=32)
    geo = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, vflip=0.0, rot90=False)
    plain = _denorm(GpuAugment(AugmentConfig.none(), out_size=32, seed=0)(x))
    bright = _denorm(GpuAugment(AugmentConfig(**geo, brightness=0.3, contrast=0, saturation=0, hue=0),
                                out_size=32, seed=0)(x))
    ratio = bright.mean((1, 2, 3)) / plain.mean((1, 2, 3))
    assert (ratio > 0.65).all() and (ratio < 1.35).all() and ratio.std() > 0.02
    contrast = _denorm(GpuAugment(AugmentConfig(**geo, brightness=0, contrast=0.3, saturation=0, hue=0),
                                  out_size=32, seed=0)(x))
    # contrast keeps the mean grey level and scales the spread by the drawn factor
    assert torch.allclose(contrast.mean((1, 2, 3)), plain.mean((1, 2, 3)), atol=0.02)
    std_ratio = contrast.std((1, 2, 3)) / plain.std((1, 2, 3))
    assert (std_ratio > 0.65).all() and (std_ratio < 1.35).all() and std_ratio.std() > 0.02
    grey = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    hue_sat = _denorm(GpuAugment(AugmentConfig(**geo, brightness=0, contrast=0, saturation=0.5, hue=0.1),
                                 out_size=16, seed=0)(grey))
    assert torch.allclose(hue_sat, torch.full_like(hue_sat, 128 / 255), atol=1e-4)  # grey is a fixed point


def test_eval_transform_is_centre_crop_resize():
    x = _batch(n=2, h=40, w=60)
    out = eval_transform(x, 40)
    assert torch.allclose(_denorm(out), x[:, :, :, 10:50].float() / 255, atol=1e-4)
