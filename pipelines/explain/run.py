"""``histo-bench explain``: what a trained checkpoint looks at, where it errs, and how its features arrange.

For an image classifier (a ``best.pt`` from ``histo-bench train`` / ``suite``) on a split of an image store, per
magnification:

- ``cam_<magnification>.png``: images with their saliency overlay (Grad-CAM for the CNNs and Swin, attention
  rollout for DeiT; :mod:`pipelines.explain.cam`), true and predicted class over each pair;
- ``errors_<class>.png``: true positives, false positives and false negatives of each class, with overlays;
- ``tsne.png``: t-SNE of the backbone's pooled features (the classifier head's input), coloured by class and by
  magnification, with silhouette scores that put a number on how much the features separate by magnification
  (the shift the cross-magnification suite measures);
- ``explain.json``: the figures with captions, the method, accuracy per magnification and which data it ran on.

For an attention-MIL checkpoint (``histo-bench train --model abmil*``) the attention heatmaps of ``histo-bench
predict`` are the explanation: existing ones beside the checkpoint are listed, else
:func:`pipelines.training.mil.infer_mil` makes them.

Images are shown exactly as the model saw them (the evaluation transform, un-normalised). Saliency maps are for
the predicted class.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histo_bench.device import DeviceError, resolve_device
from histo_bench.errors import HistoBenchError
from histo_bench.files import atomic_write_json
from histo_bench.provenance import data_sentence, is_synthetic
from ingest.slide_store import SlideStore
from ingest.store import StoreError
from pipelines.data.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from pipelines.data.base import load_images
from pipelines.data.tasks import align_classes, task_labels
from pipelines.explain.cam import cam_target_layer, explain_method, saliency, uses_rollout
from pipelines.explain.classifier_figures import (
    Predictions,
    outcome_figures,
    pick_examples,
    saliency_figures,
    tsne_figures,
)
from pipelines.explain.figures import Example
from pipelines.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from pipelines.training.cv import store_for_run
from pipelines.training.mil import infer_mil

log = logging.getLogger(__name__)

FORMAT = "histo-bench/explain"
#: ``progress(done, total)`` over the explain stages.
Progress = Callable[[int, int], None]


class ExplainError(HistoBenchError, ValueError):
    """The checkpoint or data cannot be explained (missing, another family, mismatched classes)."""


@dataclass(frozen=True)
class ExplainConfig:
    """One explanation run.

    Attributes:
        checkpoint: a ``best.pt`` of an image classifier or of attention MIL.
        store: the image store (slide store for MIL); None = the one recorded in the checkpoint.
        out: output folder (default ``<checkpoint folder>/explain``).
        split: the split whose images are explained ("train", "val" or "test").
        magnifications: magnifications to explain (empty = every one present in the split).
        n_examples: images in each ``cam_<magnification>.png`` (spread over the classes).
        n_per_outcome: images per row (TP / FP / FN) of each ``errors_<class>.png``.
        max_images: at most this many images per magnification are predicted and embedded (random, seeded).
        batch_size: images per forward pass.
        device: "auto", "cpu", "cuda" or "cuda:N".
        seed: picks the examples and seeds t-SNE.
        scale: MIL only: tile scale of the slide store (None = the checkpoint's).
    """

    checkpoint: str
    store: str | None = None
    out: str | None = None
    split: str = "test"
    magnifications: tuple[str, ...] = ()
    n_examples: int = 8
    n_per_outcome: int = 4
    max_images: int = 400
    batch_size: int = 32
    device: str = "auto"
    seed: int = 0
    scale: str | None = None

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test"):
            raise ExplainError(f"split must be train, val or test, got {self.split!r}")
        if min(self.n_examples, self.n_per_outcome, self.max_images, self.batch_size) < 1:
            raise ExplainError("n_examples, n_per_outcome, max_images and batch_size must be >= 1")
        object.__setattr__(self, "magnifications", tuple(self.magnifications))

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.checkpoint).parent / "explain"


def explain(config: ExplainConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Write the figures and ``explain.json`` (see the module docstring) and return the JSON's content, with
    ``path`` set to the ``explain.json`` written."""

    try:
        ckpt = load_checkpoint(config.checkpoint, ("classifier", "mil"), "cpu", "explain")
    except CheckpointError as exc:
        raise ExplainError(str(exc)) from exc
    if ckpt.kind == "mil":
        return _explain_mil(config, ckpt)
    return _explain_classifier(config, ckpt, progress)


def _data_line(store, n_images: int, n_patients: int, split: str, mags: list[str]) -> tuple[bool, str]:

    origin = store.attrs.get("origin", {})
    line = data_sentence(origin, store=str(store.path), images=n_images, patients=n_patients)
    return is_synthetic(origin), f"{line}; {split} split at {', '.join(mags)}"


def _store_labels(store, classes: list[str], task: str) -> np.ndarray:
    """Labels of every store image for the checkpoint's task (:mod:`pipelines.data.tasks`); the store is aligned to
    the checkpoint's classes first (:func:`~pipelines.data.tasks.align_classes`)."""

    return task_labels(store, task)[0]


def _classifier_head(model):
    """The final linear layer, whose input is the pooled backbone feature."""

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ExplainError(f"{type(model).__name__} has no linear classifier head to take features from")
        head = linears[-1]
    return head


def _views(store, indices: np.ndarray, cfg: dict[str, Any], device: str):
    """The evaluation view of ``indices``: (normalised input on ``device``, uint8 (n, H, W, 3) for display)."""


    x = eval_transform(load_images(store, indices, cfg["load_size"]).to(device), cfg["image_size"])
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    shown = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return x, shown


def _predict(model, store, indices: np.ndarray, cfg: dict[str, Any], device: str, batch_size: int):
    """(logits (n, C), pooled features (n, D)) of the images at ``indices``."""

    feats: list[torch.Tensor] = []
    handle = _classifier_head(model).register_forward_pre_hook(
        lambda m, inp: feats.append(inp[0].detach().float().flatten(1).cpu()))
    logits = []
    try:
        with torch.inference_mode():
            for start in range(0, len(indices), batch_size):
                x, _ = _views(store, indices[start:start + batch_size], cfg, device)
                logits.append(model(x).float().cpu())
    finally:
        handle.remove()
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def _saliency(model, store, indices: list[int], preds: dict[int, int], cfg, device, batch_size) -> dict[int, tuple]:
    """store index -> (uint8 image, map) for ``indices``, maps for the predicted class."""


    target = None if uses_rollout(model) else cam_target_layer(model)
    out: dict[int, tuple] = {}
    order = np.array(sorted(set(indices)), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        x, shown = _views(store, chunk, cfg, device)
        cls = torch.tensor([preds[int(i)] for i in chunk], device=x.device)
        maps = saliency(model, x, cls, target).cpu().numpy()
        for i, img, m in zip(chunk.tolist(), shown, maps, strict=True):
            out[i] = (img, m)
    return out


def _device(name: str) -> str:
    """The resolved device; an :class:`ExplainError` saying why when there is no such device."""

    try:
        return resolve_device(name)
    except DeviceError as exc:
        raise ExplainError(str(exc)) from exc


def _run_store(cfg: dict[str, Any], store: str | None):
    """The run's own view of the store (its cross-validation fold, if any); ``store`` overrides the recorded one."""

    try:
        return store_for_run(cfg, store)
    except StoreError as exc:
        raise ExplainError(str(exc)) from exc


def _magnifications(store, config: ExplainConfig) -> list[str]:
    """The magnifications to explain: the configured ones, else every one present in the split (store order)."""
    in_split = store.select(split=config.split)
    return list(config.magnifications) or [m for m in store.attrs.get("magnifications", [])
                                           if m in set(store.magnification[in_split].tolist())]


def _sample(store, config: ExplainConfig, mags: list[str], rng: np.random.Generator) -> np.ndarray:
    """Store indices of the images to predict: at most ``max_images`` per magnification (random, sorted)."""
    chosen: list[np.ndarray] = []
    for mag in mags:
        idx = store.select(split=config.split, magnification=mag)
        if len(idx) > config.max_images:
            idx = np.sort(rng.choice(idx, config.max_images, replace=False))
        chosen.append(idx)
    indices = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    if len(indices) == 0:
        raise ExplainError(f"{store.path}: no {config.split} images at {', '.join(mags) or 'any magnification'}")
    return indices


def _explain_classifier(config: ExplainConfig, ckpt: Checkpoint, progress: Progress | None) -> dict[str, Any]:
    """Saliency grids, outcome grids and t-SNE of an image classifier on ``config.split`` (the module docstring)."""

    t0 = time.perf_counter()
    device = _device(config.device)
    model, cfg, classes = ckpt.build(device), ckpt.config, list(ckpt.classes)
    task = cfg.get("task", "subtype")  # runs from before tasks were subtype runs
    store = align_classes(_run_store(cfg, config.store), classes, task)
    labels = _store_labels(store, classes, task)
    mags = _magnifications(store, config)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    stages, done = len(mags) + 3, 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, stages)

    indices = _sample(store, config, mags, rng)
    logits, feats = _predict(model, store, indices, cfg, device, config.batch_size)
    seen = Predictions(indices, labels[indices], logits.argmax(1), store.magnification[indices],
                       store.patient[indices], feats)
    preds = dict(zip(indices.tolist(), seen.pred.tolist(), strict=True))
    step()

    # every image any figure shows, explained in one batched pass
    grid_idx, groups = pick_examples(seen, labels, classes, mags, config.n_examples, config.n_per_outcome, rng)
    wanted = [i for g in grid_idx.values() for i in g] + [i for p in groups.values() for g in p.values() for i in g]
    maps = _saliency(model, store, wanted, preds, cfg, device, config.batch_size)

    def example(i: int) -> Example:
        img, cam = maps[i]
        return Example(img, cam, classes[labels[i]], classes[preds[i]], str(store.magnification[i]))

    method = explain_method(model)
    model_label = f"{cfg['model']} (trained on {cfg['train_magnification']})"
    figures, accuracy = saliency_figures(seen, grid_idx, example, model_label, config.split, method, out, step)
    figures += outcome_figures(groups, example, config.n_per_outcome, out)
    step()
    tsne_info, tsne = tsne_figures(seen, classes, cfg["model"], config.split, config.seed, out)
    figures += tsne
    step()

    n_patients = len(set(seen.patient.tolist()))
    synthetic, line = _data_line(store, len(indices), n_patients, config.split, mags)
    result = {"format": FORMAT, "kind": "classifier", "checkpoint": str(config.checkpoint), "model": cfg["model"],
              "train_magnification": cfg.get("train_magnification"), "task": task, "method": method,
              "classes": classes,
              "data": {"store": str(store.path), "synthetic": synthetic, "line": line, "split": config.split,
                       "magnifications": mags, "n_images": int(len(indices)), "n_patients": n_patients},
              "accuracy": accuracy, "tsne": tsne_info, "figures": figures,
              "seconds": round(time.perf_counter() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return _write_json(result, out)


def _write_json(result: dict[str, Any], out: Path) -> dict[str, Any]:
    path = atomic_write_json(out / "explain.json", result)
    log.info("explain: %d figures in %s (%.1fs)", len(result["figures"]), out, result.get("seconds", 0))
    return {**result, "path": str(path)}


def _explain_mil(config: ExplainConfig, ckpt: Checkpoint) -> dict[str, Any]:
    """List (or make, through ``infer_mil``) the attention heatmaps of a MIL checkpoint."""

    t0 = time.perf_counter()
    cfg = ckpt.config
    store_path = config.store or cfg["store"]
    scale = config.scale or cfg.get("scale", "20x")
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    existing = Path(config.checkpoint).parent / "predictions"
    if config.store is None and (existing / "predictions.csv").exists() and any(existing.glob("attention/*.png")):
        pred_dir = existing
        log.info("using the attention heatmaps of %s", existing)
    else:
        pred_dir = out / "mil-predictions"
        try:
            infer_mil([config.checkpoint], store_path, pred_dir, scale=scale, extractor=cfg["extractor"],
                      device=resolve_device(config.device))
        except Exception as exc:  # unreadable slide store, missing tiles: say what
            raise ExplainError(f"{config.checkpoint}: MIL inference on {store_path} failed: {exc}") from exc
    heatmaps = sorted(pred_dir.glob("attention/*.png"))
    figures = [{"file": os.path.relpath(p, out), "kind": "mil_attention", "slide": p.stem,
                "caption": f"{p.stem}: attention over the slide thumbnail ({cfg['model']}, {scale} tiles; red = "
                           "most attended)"} for p in heatmaps]
    n_slides = len(SlideStore(store_path).slide_ids()) if Path(store_path).exists() else 0
    line = (f"slide store {store_path}: {n_slides} slides at {scale} (slide stores do not record whether their "
            "slides are synthetic)")
    result = {"format": FORMAT, "kind": "mil", "checkpoint": str(config.checkpoint), "model": cfg["model"],
              "method": "attention-MIL weights (Ilse et al. 2018) per tile, over the slide thumbnail",
              "classes": list(ckpt.classes), "predictions": os.path.relpath(pred_dir / "predictions.csv", out),
              "data": {"store": str(store_path), "synthetic": None, "line": line, "n_slides": n_slides},
              "figures": figures, "seconds": round(time.perf_counter() - t0, 2),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return _write_json(result, out)
