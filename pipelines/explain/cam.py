"""Where a classifier looks: Grad-CAM for CNNs (and Swin), attention rollout for ViT/DeiT, and a heat overlay.

Algorithms only, no files:

- :func:`grad_cam` (Selvaraju et al. 2017): the target layer's activations A (B, K, h, w) weighted by the spatial
  mean of d(score of class c)/dA, summed over channels, ReLU'd, upsampled to the input and scaled to [0, 1].
- :func:`cam_target_layer`: which layer Grad-CAM reads for each timm family (a table keyed by the model's class),
  with the activation layout (Swin stages give NHWC tokens); unknown models fall back to the last module whose
  output is a spatial (B, C, h, w) map.
- :func:`attention_rollout` (Abnar & Zuidema 2020): per layer, heads fused, the identity added for the residual,
  rows renormalised, and the layers multiplied; :func:`capture_attentions` records DeiT's attention maps (timm's
  fused attention is switched off for the call, then restored) and :func:`rollout_map` turns the class token's row
  into a patch grid at the input size.
- :func:`overlay`: a jet-coloured blend of a [0, 1] map over an RGB uint8 image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class CamTarget:
    """The layer Grad-CAM reads: ``name`` (for reports), the module, and its output layout "nchw" or "nhwc"."""

    name: str
    layer: nn.Module
    layout: str


# timm model class -> (description, getter of the target layer, activation layout)
_TARGETS: dict[str, tuple[str, Callable[[nn.Module], nn.Module], str]] = {
    "ResNet": ("layer4", lambda m: m.layer4, "nchw"),
    "DenseNet": ("features (after norm5)", lambda m: m.features, "nchw"),
    "ConvNeXt": ("stages[-1]", lambda m: m.stages[-1], "nchw"),
    "EfficientNet": ("bn2 (conv_head + BN + SiLU)", lambda m: m.bn2, "nchw"),
    "SwinTransformer": ("layers[-1] (last stage, NHWC tokens)", lambda m: m.layers[-1], "nhwc"),
}


def uses_rollout(model: nn.Module) -> bool:
    """True for plain ViTs (DeiT): their maps come from attention rollout rather than Grad-CAM."""
    return hasattr(model, "blocks") and hasattr(model, "patch_embed") and all(
        hasattr(b, "attn") and hasattr(b.attn, "attn_drop") for b in model.blocks)


def explain_method(model: nn.Module) -> str:
    """A line saying how :func:`saliency` explains ``model``."""
    if uses_rollout(model):
        return "attention rollout (Abnar & Zuidema 2020) over all blocks, class-token row, heads averaged"
    return f"Grad-CAM (Selvaraju et al. 2017) on {cam_target_layer(model).name}"


def cam_target_layer(model: nn.Module, example: Tensor | None = None) -> CamTarget:
    """The layer Grad-CAM reads for ``model`` (see the module docstring).

    For a model outside the table, ``example`` (default a (1, 3, 64, 64) zero batch) is run once to find the last
    leaf module with a (B, C, h, w) output larger than 1 x 1; a model with none raises ``ValueError``.
    """
    kind = type(model).__name__
    if kind in _TARGETS:
        name, get, layout = _TARGETS[kind]
        return CamTarget(f"{kind}.{name}", get(model), layout)
    seen: list[tuple[str, nn.Module]] = []
    handles = []
    for mod_name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def hook(mod, inp, out, _name=mod_name):
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                seen.append((_name, mod))

        handles.append(module.register_forward_hook(hook))
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = example if example is not None else torch.zeros(1, 3, 64, 64, device=device)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError(f"{kind}: no layer with a spatial (B, C, h, w) output to compute Grad-CAM on")
    name, layer = seen[-1]
    return CamTarget(f"{kind}.{name}", layer, "nchw")


def _normalise(maps: Tensor) -> Tensor:
    """Scale each (h, w) map of (B, h, w) to [0, 1] by its maximum (all-zero maps stay zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp_(0.0, 1.0)


def grad_cam(model: nn.Module, x: Tensor, target_layer: nn.Module | CamTarget, class_idx: int | Tensor | None = None,
             layout: str = "nchw") -> Tensor:
    """Grad-CAM maps (B, H, W) in [0, 1] of ``model`` on ``x`` (B, 3, H, W) for ``class_idx`` (an int, a (B,)
    tensor, or None = the predicted class). The forward hook is removed before returning; no parameter ``.grad``
    is touched (the gradient is taken with :func:`torch.autograd.grad`)."""
    if isinstance(target_layer, CamTarget):
        layer, layout = target_layer.layer, target_layer.layout
    else:
        layer = target_layer
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    captured: list[Tensor] = []

    def hook(module, inp, out):
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            inp = x.detach().clone().requires_grad_(True)  # activations need grad even for a frozen model
            logits = model(inp)
            if not captured:
                raise ValueError("the target layer did not run in the model's forward")
            act = captured[-1]
            if class_idx is None:
                idx = logits.argmax(1)
            else:
                idx = torch.as_tensor(class_idx, device=logits.device).long().expand(len(logits))
            score = logits.gather(1, idx.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    act, grad = act.detach().float(), grad.float()
    if layout == "nhwc":
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _normalise(cam)


def attention_rollout(attentions: list[Tensor], discard_ratio: float = 0.0, head_fusion: str = "mean") -> Tensor:
    """Attention rollout (B, T, T) of per-layer attention maps [(B, heads, T, T), ...] in layer order.

    Each layer's heads are fused (mean / max / min), the lowest ``discard_ratio`` of each row-set's weights are
    dropped (the class token's own weight is kept), the identity is added for the residual path, rows are
    renormalised to sum to one, and the layers are multiplied (last layer on the left). Every row of the result
    sums to one.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one layer's attention")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, device=attentions[0].device, dtype=torch.float32)
    result = eye.expand(b, t, t).clone()
    for attn in attentions:
        attn = attn.float()
        fused = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}[head_fusion](attn)
        if discard_ratio > 0:
            flat = fused.reshape(b, -1).clone()
            n_drop = int(flat.shape[1] * discard_ratio)
            if n_drop:
                low = flat.topk(n_drop, dim=1, largest=False).indices
                keep_cls = low != 0  # never drop the class token's attention to itself
                flat.scatter_(1, low, torch.where(keep_cls, 0.0, flat.gather(1, low)))
            fused = flat.view(b, t, t)
        a = (fused + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result


def capture_attentions(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(logits, [attention (B, heads, T, T) per block]) of a timm ViT/DeiT on ``x``.

    timm's fused attention (``scaled_dot_product_attention``) never materialises the softmax, so each block's
    ``fused_attn`` is switched off for this call (the explicit path computes the same values) and the softmax is
    read at the input of ``attn_drop``; the flags and hooks are restored afterwards.
    """
    if not uses_rollout(model):
        raise ValueError(f"{type(model).__name__} has no ViT blocks with attention to capture")
    maps: list[Tensor] = []
    saved, handles = [], []
    for block in model.blocks:
        attn = block.attn
        saved.append((attn, getattr(attn, "fused_attn", False)))
        attn.fused_attn = False
        handles.append(attn.attn_drop.register_forward_hook(lambda m, inp, out: maps.append(inp[0].detach())))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
        for attn, flag in saved:
            attn.fused_attn = flag
    return logits, maps


def rollout_map(model: nn.Module, x: Tensor, discard_ratio: float = 0.0, head_fusion: str = "mean") -> Tensor:
    """Attention-rollout maps (B, H, W) in [0, 1]: the class token's rolled-out attention over the patches (the
    mean over tokens for a model without prefix tokens), upsampled to the input size."""
    _, maps = capture_attentions(model, x)
    roll = attention_rollout(maps, discard_ratio, head_fusion)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    rel = roll[:, 0, prefix:] if prefix else roll.mean(1)
    n = rel.shape[1]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    gh, gw = (x.shape[-2] // patch[0], x.shape[-1] // patch[1]) if patch else (0, 0)
    if gh * gw != n:
        gh = gw = int(round(n ** 0.5))
        if gh * gw != n:
            raise ValueError(f"cannot lay {n} patch tokens out on a grid")
    grid = rel.reshape(-1, 1, gh, gw)
    up = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).amin(1).view(-1, 1, 1)
    return _normalise(up - lo)


def saliency(model: nn.Module, x: Tensor, class_idx: int | Tensor | None = None,
             target: CamTarget | None = None) -> Tensor:
    """Maps (B, H, W) in [0, 1]: attention rollout for ViT/DeiT (class-agnostic), Grad-CAM otherwise."""
    if uses_rollout(model):
        return rollout_map(model, x)
    return grad_cam(model, x, target or cam_target_layer(model), class_idx)


def jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colormap: values in [0, 1] (any shape) -> RGB float in [0, 1] (shape + (3,))."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.stack([np.clip(1.5 - np.abs(4 * v - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=-1)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``cam`` (h, w) in [0, 1] coloured with :func:`jet` and blended over ``image`` (H, W, 3) uint8; the map is
    resized (bilinear) to the image when the sizes differ. Returns uint8 (H, W, 3)."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape[:2]:
        t = torch.from_numpy(cam)[None, None]
        cam = F.interpolate(t, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    blended = (1 - alpha) * image.astype(np.float32) + alpha * 255.0 * jet(cam)
    return blended.round().clip(0, 255).astype(np.uint8)
