"""Batched, on-device training augmentation and the deterministic evaluation transform (torch only).

Convention: every function here takes a **uint8 batch in NCHW layout** ``(B, 3, H, W)`` on any device and returns
a **float32, ImageNet-normalised batch** ``(B, 3, S, S)`` on the same device.

:class:`GpuAugment` draws per-sample parameters and applies, for the whole batch at once:

1. random resized crop + horizontal flip + vertical flip + rotation by a multiple of 90 degrees, all composed into
   one 2x3 affine matrix per sample and executed by a single :func:`torch.nn.functional.affine_grid` +
   :func:`torch.nn.functional.grid_sample` (bilinear) call;
2. colour jitter (brightness, contrast, saturation, hue): each is linear in RGB, so the four compose into one 3x3
   matrix + offset per sample, applied with one batched matmul (clamped to [0, 1] once at the end, unlike
   torchvision which clamps after every step and randomises the order; here the order is fixed:
   brightness, contrast, saturation, hue);
3. Gaussian blur (probability ``blur``, sigma drawn per sample, one grouped separable convolution for the batch);
4. ImageNet normalisation;
5. random erasing (probability ``erasing``: one rectangle per sample set to 0 = the ImageNet mean colour).

Blur and erasing are off by default (the fusion-inputs study turns them on); their random draws happen only when
they are on, so a seed gives the same augmentation as before they existed.

The bilinear ``grid_sample`` does no antialiasing; the loaders resize images once at load time so the shorter side
is ``load_size`` (256), which keeps the downscale of a crop to 224 px below ~1.8x, where aliasing is mild.

Random parameters are drawn on the CPU from a :class:`torch.Generator` and moved to the batch's device, so a seed
gives the same augmentation on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: ITU-R BT.601 luma weights (the grey used by contrast and saturation, as in torchvision).
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation strengths; all zero / (1, 1) turns :class:`GpuAugment` into a plain resize.

    Attributes:
        scale: range of the crop's area as a fraction of the image area (random resized crop), 0 < lo <= hi <= 1.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly, 0 < lo <= hi.
        hflip: probability of a horizontal flip, 0..1.
        vflip: probability of a vertical flip, 0..1.
        rot90: rotate by a uniformly drawn multiple of 90 degrees (0, 90, 180, 270).
        brightness: brightness factor drawn from [1 - brightness, 1 + brightness], 0..1.
        contrast: contrast factor drawn from [1 - contrast, 1 + contrast], 0..1.
        saturation: saturation factor drawn from [1 - saturation, 1 + saturation], 0..1.
        hue: hue rotation drawn from [-hue, hue] in fractions of a full turn, 0..0.5 (histology: keep it small).
        blur: probability of a Gaussian blur, 0..1.
        blur_sigma: range of the blur's sigma in output pixels, 0 < lo <= hi.
        erasing: probability of erasing one random rectangle, 0..1.
        erasing_scale: range of the erased area as a fraction of the image, 0 < lo <= hi < 1.
    """

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    erasing: float = 0.0
    erasing_scale: tuple[float, float] = (0.02, 0.2)

    def __post_init__(self) -> None:
        for name in ("scale", "ratio", "blur_sigma", "erasing_scale"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(f"AugmentConfig.{name} must be (lo, hi) with 0 < lo <= hi, got {value}")
            object.__setattr__(self, name, value)
        if self.scale[1] > 1:
            raise ValueError(f"AugmentConfig.scale must lie in (0, 1], got {self.scale}")
        if self.erasing_scale[1] >= 1:
            raise ValueError(f"AugmentConfig.erasing_scale must lie in (0, 1), got {self.erasing_scale}")
        for name in ("hflip", "vflip", "brightness", "contrast", "saturation", "blur", "erasing"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {value}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentConfig.hue must be in [0, 0.5], got {self.hue}")

    @classmethod
    def none(cls, aspect: float = 1.0) -> AugmentConfig:
        """No augmentation: the full image (whose width / height is ``aspect``) resized, no flips, no jitter."""
        return cls(scale=(1.0, 1.0), ratio=(aspect, aspect), hflip=0.0, vflip=0.0, rot90=False,
                   brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def _check_batch(batch: torch.Tensor) -> None:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
    if batch.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch, got {batch.dtype}")


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise a float (B, 3, H, W) batch in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


def resize_uint8(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 (B, 3, H, W) batch to ``size`` = (h, w), returned as uint8."""
    _check_batch(batch)
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    out = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def eval_transform(batch: torch.Tensor, out_size: int = 224) -> torch.Tensor:
    """Deterministic evaluation view: centre crop + resize + normalise, batched.

    Equivalent to "resize the shorter side to ``out_size`` keeping the aspect, then centre-crop ``out_size``": the
    centre square of side min(H, W) is cropped first and resized (bilinear, antialiased) to ``out_size``, which
    touches fewer pixels. uint8 (B, 3, H, W) in, float32 (B, 3, out_size, out_size) out.
    """
    _check_batch(batch)
    h, w = batch.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = batch[:, :, top:top + side, left:left + side].float()
    if side != out_size:
        square = F.interpolate(square, size=(out_size, out_size), mode="bilinear", align_corners=False,
                               antialias=True)
    return normalize(square.div_(255.0).clamp_(0.0, 1.0))


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


class GpuAugment(torch.nn.Module):
    """Per-sample random augmentation of a whole batch on the batch's device (see the module docstring).

    Args:
        config: augmentation strengths.
        out_size: side S of the square output.
        seed: seed of the module's own CPU generator, used when :meth:`forward` gets no generator.

    ``forward(batch, generator=None)``: uint8 (B, 3, H, W) -> float32 (B, 3, S, S), ImageNet-normalised.
    """

    def __init__(self, config: AugmentConfig | None = None, out_size: int = 224, seed: int | None = None) -> None:
        super().__init__()
        if out_size < 1:
            raise ValueError(f"out_size must be >= 1, got {out_size}")
        self.config = config or AugmentConfig()
        self.out_size = int(out_size)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    # -- parameters ------------------------------------------------------------------------------------------
    def geometry(self, n: int, height: int, width: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """The (n, 2, 3) ``affine_grid`` matrices (float64, CPU): output coords -> input coords, normalised."""
        cfg = self.config
        area = _uniform(n, *cfg.scale, gen) * (height * width)
        log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), gen)
        aspect = torch.exp(log_ratio)
        crop_w = torch.sqrt(area * aspect).clamp(max=width)
        crop_h = torch.sqrt(area / aspect).clamp(max=height)
        # centre of the crop, uniformly placed inside the image
        cx = crop_w / 2 + torch.rand(n, generator=gen, dtype=torch.float64) * (width - crop_w)
        cy = crop_h / 2 + torch.rand(n, generator=gen, dtype=torch.float64) * (height - crop_h)
        # orientation: flips then rotation by k * 90 degrees, acting on the output coordinates
        sx = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < cfg.hflip, -1.0, 1.0)
        sy = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < cfg.vflip, -1.0, 1.0)
        k = (torch.randint(0, 4, (n,), generator=gen) if cfg.rot90 else torch.zeros(n, dtype=torch.long)).double()
        cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
        orient = rot * torch.stack([sx, sy], -1).unsqueeze(-2)  # rot @ diag(sx, sy)
        scale = torch.stack([crop_w / width, crop_h / height], -1)  # half extents in normalised coords
        theta = torch.empty(n, 2, 3, dtype=torch.float64)
        theta[:, :, :2] = scale.unsqueeze(-1) * orient
        theta[:, 0, 2] = 2 * cx / width - 1
        theta[:, 1, 2] = 2 * cy / height - 1
        return theta

    def colour(self, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                          torch.Tensor, torch.Tensor]:
        """Per-sample jitter factors (brightness, contrast, saturation, hue in turns), each (n,) float64 on CPU."""
        cfg = self.config
        b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen)
        c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen)
        s = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen)
        h = _uniform(n, -cfg.hue, cfg.hue, gen)
        return b, c, s, h

    @staticmethod
    def colour_matrix(b: torch.Tensor, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(n, 3, 3) matrix doing brightness ``b``, saturation ``s`` and hue rotation ``h`` (turns) on RGB."""
        n = b.shape[0]
        luma = torch.tensor(_LUMA, dtype=torch.float64)
        eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
        grey = luma.expand(3, 3)  # every row = luma weights: RGB -> (g, g, g)
        sat = s.view(n, 1, 1) * eye + (1 - s).view(n, 1, 1) * grey
        # hue: rotation about the grey axis (1, 1, 1) by angle 2*pi*h (Rodrigues on the unit axis)
        angle = 2 * math.pi * h
        cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
        axis = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
        outer = torch.outer(axis, axis)
        cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                             dtype=torch.float64)
        hue = cos * eye + sin * cross + (1 - cos) * outer
        return hue @ sat * b.view(n, 1, 1)

    # -- application -----------------------------------------------------------------------------------------
    def forward(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(batch)
        gen = generator if generator is not None else self.generator
        n, _, height, width = batch.shape
        device = batch.device
        theta = self.geometry(n, height, width, gen)
        b, c, s, h = self.colour(n, gen)
        size = (n, 3, self.out_size, self.out_size)
        grid = F.affine_grid(theta.to(device=device, dtype=torch.float32), list(size), align_corners=False)
        x = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = x.div_(255.0)
        cfg = self.config
        if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
            # contrast blends with the mean grey of the (brightness-scaled) crop: x' = c * x + (1 - c) * b * m
            luma = torch.tensor(_LUMA, device=device, dtype=x.dtype).view(1, 3, 1, 1)
            mean_grey = (x * luma).sum(1).mean((1, 2))  # (n,), stays on the device (no sync)
            matrix = self.colour_matrix(b * c, s, h).to(device=device, dtype=x.dtype)
            # the grey offset (1 - c) * b * m is the same on all channels; saturation and hue keep grey fixed
            offset = ((1 - c) * b).to(device=device, dtype=x.dtype) * mean_grey
            x = torch.einsum("nij,njhw->nihw", matrix, x)
            x = x.add_(offset.view(n, 1, 1, 1)).clamp_(0.0, 1.0)
        if cfg.blur > 0:
            x = self._blur(x, gen)
        x = normalize(x)
        if cfg.erasing > 0:
            x = x.masked_fill(self._erase_mask(n, gen).to(device), 0.0)
        return x

    def _blur(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Gaussian blur of a random subset of the batch (per-sample sigma), one grouped conv per axis."""
        cfg = self.config
        n, c, h, w = x.shape
        apply = torch.rand(n, generator=gen, dtype=torch.float64) < cfg.blur
        sigma = _uniform(n, *cfg.blur_sigma, gen)
        if not apply.any():
            return x
        radius = max(1, math.ceil(3 * cfg.blur_sigma[1]))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).to(device=x.device, dtype=x.dtype)  # (n, k)
        k = kernel.repeat_interleave(c, 0)  # one kernel per (sample, channel)
        flat = x.reshape(1, n * c, h, w)
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
        mask = apply.to(x.device).view(n, 1, 1, 1)
        return torch.where(mask, flat.view(n, c, h, w), x)

    def _erase_mask(self, n: int, gen: torch.Generator | None) -> torch.Tensor:
        """(n, 1, S, S) bool: one random rectangle per erased sample (area ``erasing_scale``, aspect 0.3..3.3)."""
        cfg, side = self.config, self.out_size
        apply = torch.rand(n, generator=gen, dtype=torch.float64) < cfg.erasing
        area = _uniform(n, *cfg.erasing_scale, gen) * side * side
        aspect = torch.exp(_uniform(n, math.log(0.3), math.log(1 / 0.3), gen))
        eh = torch.sqrt(area / aspect).clamp(1, side)
        ew = torch.sqrt(area * aspect).clamp(1, side)
        top = torch.rand(n, generator=gen, dtype=torch.float64) * (side - eh)
        left = torch.rand(n, generator=gen, dtype=torch.float64) * (side - ew)
        coords = torch.arange(side, dtype=torch.float64)
        rows = (coords.view(1, -1) >= top.view(-1, 1)) & (coords.view(1, -1) < (top + eh).view(-1, 1))
        cols = (coords.view(1, -1) >= left.view(-1, 1)) & (coords.view(1, -1) < (left + ew).view(-1, 1))
        return (rows.view(n, 1, side, 1) & cols.view(n, 1, 1, side)) & apply.view(n, 1, 1, 1)
