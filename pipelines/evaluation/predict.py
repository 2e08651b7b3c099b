"""``histo-bench predict --checkpoint CKPT [--checkpoint MORE ...] --data STORE --out DIR`` for every checkpoint kind.

- ``classifier`` / ``fusion`` on an image store: ``predictions.csv``, one row per image (the fusion model: per
  image of its first input magnification, fused with the same patient's images at its other inputs), with the
  store index, patient, magnification, split, true label, predicted class and one ``p_<class>`` column each.
- ``mil`` on a slide store: one row per slide and the attention heatmaps (:func:`pipelines.training.mil.infer_mil`).
- ``slide_fusion`` on a slide store: one row per slide, the mean of its tiles' class probabilities.
- ``mpcs``: no classes to predict; ``embeddings.npy`` (the encoder's features, one row per image) and
  ``embeddings.csv`` naming the rows.

Several checkpoints of one kind make an ensemble: their softmax probabilities are averaged (they must share
classes and task; for slides, scale and features). Rows are written whole, to a file renamed into place.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo_bench.errors import HistoBenchError
from histo_bench.files import atomic_write_text
from ingest.slide_store import SlideStore
from ingest.splits import SPLIT_CODES
from pipelines.data.augment import eval_transform
from pipelines.data.base import DataConfig, load_images
from pipelines.data.tasks import align_classes, task_labels
from pipelines.evaluation.metrics import predict
from pipelines.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from pipelines.training.classifier import loader_factory
from pipelines.training.cv import store_for_run
from pipelines.training.mil import infer_mil
from pipelines.training.slide_runs import read_labels

log = logging.getLogger(__name__)


class PredictError(HistoBenchError, ValueError):
    """Checkpoints that cannot be used together, or a store they cannot read; the message names which."""


#: kind -> the training settings every member of an ensemble must share (they decide what its inputs are).
SAME_INPUTS: dict[str, tuple[str, ...]] = {
    "classifier": ("image_size", "load_size"), "fusion": ("image_size", "load_size", "train_magnification"),
    "slide_fusion": ("scale",), "mil": ("scale", "extractor", "extractor_weights"), "mpcs": ("image_size",)}


def load_ensemble(paths: list[str | Path], device: str) -> list[Checkpoint]:
    """The checkpoints at ``paths``, all of one kind, with the same classes and task, trained on the same inputs."""
    if not paths:
        raise PredictError("give at least one checkpoint")
    ckpts = [load_checkpoint(p, None, device, "predict") for p in paths]
    first = ckpts[0]
    for other in ckpts[1:]:
        for what in ("kind", "classes", "task", "model_kwargs"):
            if getattr(other, what) != getattr(first, what):
                raise PredictError(f"{other.path}: {what} {getattr(other, what)!r} differs from {first.path}'s "
                                   f"{getattr(first, what)!r}; an ensemble needs checkpoints of one kind")
        for key in SAME_INPUTS[first.kind]:
            if other.config.get(key) != first.config.get(key):
                raise PredictError(f"{other.path}: trained with {key} {other.config.get(key)!r}, {first.path} with "
                                   f"{first.config.get(key)!r}; an ensemble's members must see the same inputs")
    return ckpts


def _csv_text(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def predict_images(ckpts: list[Checkpoint], store_path: str | Path, out: Path, split: str | None, device: str,
                   batch_size: int = 32) -> Path:
    """predictions.csv of classifier / fusion checkpoints over the images of ``split`` (None: all)."""

    config, first = ckpts[0].config, ckpts[0]
    store = store_for_run(config, str(store_path))  # the run's split (its fold under --folds) in the split column
    store = align_classes(store, first.classes, first.task)
    labels, classes = task_labels(store, first.task)
    mags = config["train_magnification"] if first.kind == "fusion" else None
    data_config = DataConfig(image_size=config["image_size"], load_size=config["load_size"], batch_size=batch_size,
                             loader="auto", task=first.task)
    probs, index = None, None
    for ckpt in ckpts:
        model = ckpt.build(device)
        loader = loader_factory(ckpt.kind)(store, split, mags, data_config, device=device, train=False, seed=0)
        logits, _, idx = predict(model, loader, device)
        p = torch.softmax(logits, 1).numpy() if len(logits) else np.zeros((0, len(classes)))
        if index is not None and not np.array_equal(index, idx.numpy()):
            raise PredictError(f"{ckpt.path}: its inputs select other images than {first.path}'s")
        probs = p if probs is None else probs + p
        index = idx.numpy() if index is None else index
    if index is None or len(index) == 0:
        raise PredictError(f"{store_path}: no images{f' in the {split} split' if split else ''} to predict")
    probs = probs / len(ckpts)
    split_names = {code: name for name, code in SPLIT_CODES.items()}
    rows = [{"index": int(i), "patient": store.patient[i], "magnification": store.magnification[i],
             "split": split_names.get(int(store.split[i]), ""),
             "label": classes[int(labels[i])], "predicted": classes[int(np.argmax(p))],
             **{f"p_{c}": round(float(v), 6) for c, v in zip(classes, p, strict=True)}}
            for i, p in zip(index.tolist(), probs, strict=True)]
    path = out / "predictions.csv"
    fields = ["index", "patient", "magnification", "split", "label", "predicted", *[f"p_{c}" for c in classes]]
    atomic_write_text(path, _csv_text(rows, fields))
    return path


def predict_slide_fusion(ckpts: list[Checkpoint], store_path: str | Path, out: Path, scale: str | None,
                         labels: str | Path | None, device: str, batch_size: int = 32) -> Path:
    """predictions.csv of slide-fusion checkpoints: each slide's mean tile probabilities (all its tiles)."""

    store = SlideStore(store_path)
    scale = scale or ckpts[0].config.get("scale") or store.default_scale()
    truth = read_labels(labels, store.slide_ids())[0] if labels is not None else {}
    classes = ckpts[0].classes
    models = [c.build(device) for c in ckpts]
    rows = []
    for sid in store.slide_ids():
        p = slide_fusion_probs(models, store, sid, scale, device, batch_size)
        if p is None:
            log.warning("%s has no concentric views at %s; left out", sid, scale)
            continue
        rows.append({"slide_id": sid, **({"label": truth.get(sid, "")} if truth else {}),
                     "predicted": classes[int(np.argmax(p))],
                     **{f"p_{c}": round(float(v), 6) for c, v in zip(classes, p, strict=True)}})
    if not rows:
        raise PredictError(f"{store_path}: no slide with concentric views at {scale} (tile with --multiscale)")
    path = out / "predictions.csv"
    fields = ["slide_id", *(["label"] if truth else []), "predicted", *[f"p_{c}" for c in classes]]
    atomic_write_text(path, _csv_text(rows, fields))
    return path


def slide_fusion_probs(models: list, store, slide_id: str, scale: str, device: str, batch_size: int = 32
                       ) -> np.ndarray | None:
    """A slide's class probabilities from slide-fusion models: the mean over its tiles and the models (None when
    the slide has no concentric views at ``scale``)."""

    key = f"{slide_id}/multiscale/{scale}"
    if key not in store.group or store.group[key].shape[0] == 0:
        return None
    views = store.group[key]  # read batch by batch: a real slide's views do not fit in memory at once
    tile, total = views.shape[-2], np.zeros(0)
    with torch.inference_mode():
        for start in range(0, views.shape[0], batch_size):
            v = torch.from_numpy(views[start:start + batch_size]).permute(0, 1, 4, 2, 3).to(device)
            x = eval_transform(v.flatten(0, 1), tile).view(*v.shape[:2], 3, tile, tile)
            part = sum(torch.softmax(m(x).float(), -1).sum(0).cpu().numpy() for m in models)
            total = part if not len(total) else total + part
    return total / (views.shape[0] * len(models))


def encoder_features(model, store, indices: np.ndarray, image_size: int, device: str, batch_size: int = 64
                     ) -> np.ndarray:
    """(N, D) features of an MPCS model's encoder for the store images at ``indices`` (centre crops)."""

    feats = []
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            x = load_images(store, indices[start:start + batch_size], round(image_size * 8 / 7)).to(device)
            feats.append(model.encoder(eval_transform(x, image_size)).float().cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def embed_images(ckpt: Checkpoint, store_path: str | Path, out: Path, split: str | None, device: str) -> Path:
    """embeddings.npy + embeddings.csv: an MPCS encoder's features of the images of ``split`` (None: all)."""

    store = store_for_run(ckpt.config, str(store_path))  # the run's split (its fold under --folds)
    idx = store.select(split=split) if split else np.arange(len(store.patient))
    if len(idx) == 0:
        raise PredictError(f"{store_path}: no images{f' in the {split} split' if split else ''} to embed")
    feats = encoder_features(ckpt.build(device), store, idx, int(ckpt.config.get("image_size", 224)), device)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "embeddings.partial.npy"
    np.save(partial, feats)
    partial.replace(out / "embeddings.npy")
    rows = [{"row": r, "index": int(i), "patient": store.patient[i], "magnification": store.magnification[i]}
            for r, i in enumerate(idx.tolist())]
    path = out / "embeddings.csv"
    atomic_write_text(path, _csv_text(rows, ["row", "index", "patient", "magnification"]))
    return path


def run_predict(paths: list[str | Path], data: str | Path | None, out: str | Path, *, split: str | None = None,
                scale: str | None = None, labels: str | Path | None = None, device: str = "cpu") -> Path:
    """Dispatch on the checkpoints' kind (see the module doc); returns the main output file."""
    try:
        ckpts = load_ensemble(list(paths), device)
    except CheckpointError as exc:
        raise PredictError(str(exc)) from exc
    kind, out, config = ckpts[0].kind, Path(out), ckpts[0].config
    slides = kind in ("mil", "slide_fusion")
    foreign = [name for name, value, applies in (("--split", split, not slides), ("--scale", scale, slides),
                                                 ("--labels", labels, slides)) if value is not None and not applies]
    if foreign:
        raise PredictError(f"{', '.join(foreign)} does not apply to a {kind} checkpoint"
                           + ("; slide checkpoints predict every slide of the store" if slides else ""))
    store = data or config.get("store")
    if not store:
        raise PredictError("give --data: the checkpoint does not name the store it was trained on")
    own_store = config.get("store") and Path(store).resolve() == Path(config["store"]).resolve()
    if slides and labels is None and own_store and Path(config.get("labels") or "").is_file():
        labels = config["labels"]  # the run's labels CSV on the run's store: a label column beside the predictions
    out.mkdir(parents=True, exist_ok=True)
    if kind in ("classifier", "fusion"):
        return predict_images(ckpts, store, out, split, device)
    if kind == "mpcs":
        if len(ckpts) > 1:
            raise PredictError("MPCS checkpoints give embeddings, which are not averaged: give one")
        return embed_images(ckpts[0], store, out, split, device)
    if kind == "slide_fusion":
        return predict_slide_fusion(ckpts, store, out, scale, labels, device)

    return infer_mil([c.path for c in ckpts], store, out, scale=scale, device=device, labels=labels)
