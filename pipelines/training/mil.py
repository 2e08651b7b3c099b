"""Slide-level attention MIL on a slide store: labels from a CSV, bags of cached tile features, training with
early stopping on validation macro-F1, a predictions CSV and attention heatmaps over the slide thumbnails.

Slides are split like patients (``ingest.splits``, stratified by label; a ``patient`` column in the CSV groups
several slides of one patient), so no patient's slides sit in two splits.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from histo_bench.errors import ConfigError
from histo_bench.files import atomic_write_json
from histo_bench.seeding import seed_everything
from ingest.slide_store import SlideStore
from models.mil import feature_extractor
from models.registry import build_model
from pipelines.data.features import extract_slide_features
from pipelines.evaluation.metrics import classification_metrics
from pipelines.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from pipelines.training.distributed import DistContext, barrier, init_distributed, shard, shutdown, wrap
from pipelines.training.engine import FitConfig, Recipe, fit
from pipelines.training.losses import check_loss, classification_loss
from pipelines.training.run_directory import finished_run
from pipelines.training.slide_runs import (
    MILError,
    check_slide_run,
    fold_slides,
    read_labels,
    settle_slide_config,
    split_slides,
)

#: The tile feature extractors (``models.mil.FEATURE_DIMS``; listed here so configs validate without torch).
FEATURE_EXTRACTORS: tuple[str, ...] = ("resnet50", "resnet34", "vit_small")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MILConfig:
    """One MIL run.

    Attributes:
        store: slide store (from ``histo-ingest tile``).
        labels: CSV with ``slide_id,label`` (and optionally ``patient``).
        scale: tile scale in the store, e.g. "20x" (None: the store's first scale).
        model: ``abmil`` or ``abmil_gated``.
        extractor: tile feature extractor: resnet50, resnet34 or vit_small.
        extractor_weights: local weights for the extractor (none: random init, fine for the pipeline only).
        max_patches: at most this many random tiles per bag in training (all tiles at evaluation).
        loss: ``ce`` (cross-entropy) or ``focal`` (focal loss, :mod:`pipelines.training.losses`).
        focal_gamma: the focal loss's gamma (0 = cross-entropy); used with ``loss="focal"``.
        epochs, lr, weight_decay, patience, seed: training settings.
        warmup_epochs, grad_clip, precision: the engine's (:class:`pipelines.training.engine.FitConfig`).
        split: slide-level split fractions (seeded by ``seed``), used when ``folds`` is 0.
        folds: slide-level k-fold cross-validation (:mod:`pipelines.training.cv`, grouped by patient, stratified by
        label):
            0 = one split by ``split`` fractions, else the number of folds (>= 2); ``fold`` is the test fold.
        fold: the test fold, 0..folds-1.
        split_seed: seeds the fold assignment.
        device: auto, cpu, cuda or cuda:N.
        out: run directory (default ``runs/<model>-<extractor>-<scale>``).
        max_steps_per_epoch: cap on slides per epoch (quick runs); None = every training slide.
        wandb: also send the curves to Weights & Biases.
    """

    store: str
    labels: str
    scale: str | None = None
    model: str = "abmil_gated"
    extractor: str = "resnet50"
    extractor_weights: str | None = None
    max_patches: int = 512
    loss: str = "ce"
    focal_gamma: float = 2.0
    epochs: int = 50
    lr: float = 2e-4
    weight_decay: float = 1e-4
    patience: int = 10
    seed: int = 0
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    folds: int = 0
    fold: int = 0
    split_seed: int = 0
    device: str = "auto"
    out: str | None = None
    warmup_epochs: float = 0.0
    grad_clip: float = 1.0
    precision: str = "auto"
    max_steps_per_epoch: int | None = None
    wandb: bool = False

    def __post_init__(self) -> None:
        if self.model not in ("abmil", "abmil_gated"):
            raise ConfigError(f"model must be abmil or abmil_gated, got {self.model!r}")
        if self.max_patches < 1 or self.epochs < 1 or self.patience < 1:
            raise ConfigError("max_patches, epochs and patience must be >= 1")
        check_loss(self.loss)
        if self.focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.extractor not in FEATURE_EXTRACTORS:
            raise ConfigError(f"extractor must be one of {', '.join(FEATURE_EXTRACTORS)}, got {self.extractor!r}")
        check_slide_run(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.extractor}-{self.scale or 'scale'}")


def sample_bag(bag: np.ndarray, max_patches: int, rng: random.Random) -> np.ndarray:
    """At most ``max_patches`` rows of ``bag``, drawn at random without replacement (kept in tile order)."""
    if len(bag) <= max_patches:
        return bag
    return bag[sorted(rng.sample(range(len(bag)), max_patches))]


def slide_bags(store: str | Path, slide_ids: list[str], scale: str, extractor: str,
               extractor_weights: str | None = None, device: str = "cpu") -> dict[str, np.ndarray]:
    """slide -> (N, D) tile features (cached in the store); slides without tiles at ``scale`` are left out."""

    built: list = []

    def encoder():  # built once, and only when a slide's features are not cached yet
        if not built:
            built.append(feature_extractor(extractor, weights=extractor_weights)[0])
        return built[0]


    opened, bags = SlideStore(store), {}
    for sid in slide_ids:
        if scale not in opened.slide(sid).attrs.get("scales", {}):
            log.warning("%s was not tiled at %s; left out", sid, scale)
            continue
        feats = extract_slide_features(store, sid, scale, extractor, weights=extractor_weights, device=device,
                                       model=encoder)
        if len(feats) == 0:
            log.warning("%s has no tiles at %s; left out", sid, scale)
            continue
        bags[sid] = feats
    return bags


def _predict(model, bag: np.ndarray, device: str):

    with torch.inference_mode():
        logits, attention = model(torch.from_numpy(bag).to(device))
    return torch.softmax(logits[0], -1).cpu().numpy(), attention[0].cpu().numpy()


class MILRecipe(Recipe):
    """Attention MIL for :func:`pipelines.training.engine.fit`: one slide per step, a bag of at most ``max_patches``
    random
    tiles (drawn per epoch from the seed, so a resumed run sees the same bags); validation on whole bags."""

    kind, unit = "mil", "slides"

    def __init__(self, config: MILConfig, model, bags: dict, by_split: dict, labels: dict, classes: list,
                 dim: int, ctx: DistContext | None = None) -> None:
        self.config, self.model, self.bags, self.by_split = config, model, bags, by_split
        self.labels, self.classes, self.dim = labels, classes, dim
        self.ctx = ctx or DistContext()
        self.train_model = wrap(model, self.ctx, config.device)

    def steps_per_epoch(self) -> int:
        return len(self.by_split["train"]) // self.ctx.world_size

    def batches(self, epoch: int):
        rng = random.Random(self.config.seed * 1_000_003 + epoch)  # the same order on every rank, then the bags
        order = list(self.by_split["train"])
        rng.shuffle(order)
        for sid in shard(order, self.ctx):  # under DDP each rank trains on its own slides
            yield sid, sample_bag(self.bags[sid], self.config.max_patches, rng)

    def step(self, model, batch):


        sid, bag = batch
        logits, _ = model(torch.from_numpy(bag).to(self.config.device))
        target = torch.tensor([self.classes.index(self.labels[sid])], device=self.config.device)
        return classification_loss(self.config.loss, logits.float(), target, gamma=self.config.focal_gamma), 1

    def evaluate(self, epoch: int) -> dict:
        self.model.eval()
        val = _evaluate(self.model, self.bags, self.by_split["val"] or self.by_split["train"], self.labels,
                        self.classes, self.config.device)
        return {"val_macro_f1": val.macro_f1, "val_accuracy": val.accuracy,
                "val_balanced_accuracy": val.balanced_accuracy}

    def checkpoint(self, state, epoch, extra) -> Checkpoint:
        return Checkpoint(kind="mil", model=self.config.model, state=state, classes=self.classes,
                          model_kwargs={"in_dim": self.dim}, task="slide", epoch=epoch, extra=extra)


def train_mil(config: MILConfig, progress=None) -> dict:
    """Train through the one engine (:func:`pipelines.training.engine.fit`: select on validation macro-F1, resume,
    refuse
    other settings; under ``torchrun`` each rank trains on its own share of the slides), then evaluate on test;
    writes splits.json and, last, summary.json. ``progress(epoch, step, steps, loss)`` is the engine's."""

    config = settle_slide_config(config)
    out = config.run_dir
    resolved = asdict(config)
    if finished_run(out, resolved) is not None and (out / "summary.json").exists():
        log.info("%s is complete; not retraining (delete it or use another --out)", out)
        return json.loads((out / "summary.json").read_text())
    ctx, device = init_distributed(config.device)
    config = replace(config, device=device)
    store = SlideStore(config.store)
    labels, patients = read_labels(config.labels, store.slide_ids())
    classes = sorted(set(labels.values()))
    bags = slide_bags(config.store, sorted(labels), config.scale, config.extractor, config.extractor_weights,
                      config.device)
    slides = sorted(bags)
    if len(slides) < 3:
        raise MILError(f"only {len(slides)} labelled slide(s) with tiles; need at least 3 (train, val, test)")
    if config.folds:
        by_split, notes = fold_slides(slides, labels, patients, classes, config.folds, config.fold, config.split_seed)
    else:
        by_split, notes = split_slides(slides, labels, patients, classes, config.split, config.seed)
    if len(by_split["train"]) < ctx.world_size:
        raise MILError(f"{len(by_split['train'])} training slide(s) for {ctx.world_size} processes; use fewer")
    seed_everything(config.seed)
    dim = next(iter(bags.values())).shape[1]
    model = build_model(config.model, len(classes), in_dim=dim).to(config.device)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").unlink(missing_ok=True)  # written again below, once this run is finished
        atomic_write_json(out / "splits.json", {**by_split, "notes": notes, "classes": classes})
    recipe = MILRecipe(config, model, bags, by_split, labels, classes, dim, ctx)
    fit(recipe, FitConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                          warmup_epochs=config.warmup_epochs, grad_clip=config.grad_clip, patience=config.patience,
                          precision=config.precision, log_every=0, wandb=config.wandb,
                          max_steps_per_epoch=config.max_steps_per_epoch), out, resolved, device=config.device,
        ctx=ctx, progress=progress)
    barrier(ctx)
    shutdown(ctx)
    if not ctx.is_main:
        return {}
    model = load_checkpoint(out / "best.pt", ("mil",), config.device).build(config.device)
    best_val = json.loads((out / "complete").read_text()).get("best") or {}
    test = _evaluate(model, bags, by_split["test"], labels, classes, config.device)
    test.n_patients = len({patients[s] for s in by_split["test"]})
    summary = {"best_val": {k.removeprefix("val_"): v for k, v in best_val.items()}, "test": test.to_dict(),
               "n_slides": {k: len(v) for k, v in by_split.items()}, "classes": classes, "test_predictions": {
                   s: [round(float(p), 6) for p in _predict(model, bags[s], config.device)[0]]
                   for s in by_split["test"]}}
    atomic_write_json(out / "summary.json", summary)  # written last: its presence marks a finished run
    return summary


def _evaluate(model, bags, slides, labels, classes, device):
    preds = [int(np.argmax(_predict(model, bags[s], device)[0])) for s in slides]
    return classification_metrics([classes.index(labels[s]) for s in slides], preds, classes)


def _resolved(name: str, given: str | None, configs: list[dict], paths: list) -> str | None:
    """``given`` or the value every checkpoint was trained with; a disagreement is a MILError naming them."""
    values = {c.get(name) for c in configs}
    if given is not None:
        if len(values) == 1 and None not in values and given != next(iter(values)):
            raise MILError(f"--{name.replace('_', '-')} {given!r}: the checkpoints were trained with "
                           f"{next(iter(values))!r}; their features would not match")
        return given
    if len(values) > 1:
        raise MILError(f"the checkpoints were trained with different {name} values ({sorted(map(str, values))}): "
                       f"{', '.join(map(str, paths))}")
    return next(iter(values))


def load_mil_checkpoints(checkpoints: list[str | Path], device: str = "cpu") -> tuple[list, list[str], list[dict]]:
    """(models in eval mode, class names, training configs) of MIL ``best.pt`` files; all must share classes."""
    if not checkpoints:
        raise MILError("give at least one checkpoint")
    models, classes, configs = [], None, []
    for path in checkpoints:
        try:
            ckpt = load_checkpoint(path, ("mil",), device, "MIL inference")
        except CheckpointError as exc:
            raise MILError(str(exc)) from exc
        models.append(ckpt.build(device))
        if classes is not None and classes != ckpt.classes:
            raise MILError(f"{path}: classes {ckpt.classes} differ from the other checkpoints' {classes}")
        classes = list(ckpt.classes)
        configs.append(ckpt.config)
    return models, classes or [], configs


def infer_mil(checkpoints: list[str | Path], store_path: str | Path, out: str | Path, scale: str | None = None,
              extractor: str | None = None, device: str = "cpu", *, extractor_weights: str | None = None,
              labels: str | Path | None = None, slides: list[str] | None = None) -> Path:
    """Predictions CSV and, per slide, the attention as ``.npy`` and a heatmap PNG over the thumbnail.

    Several checkpoints make an ensemble: a slide's class probabilities (``p_<class>`` columns) are the mean of
    the checkpoints' softmax probabilities, its attention the mean of their attention. ``scale``, ``extractor``
    and ``extractor_weights`` default to what the checkpoints were trained with. ``labels`` (the training CSV)
    adds a ``label`` column; ``slides`` limits the slides (default: every slide of the store).
    """

    models, classes, configs = load_mil_checkpoints(checkpoints, device)
    scale = _resolved("scale", scale, configs, checkpoints)
    extractor = _resolved("extractor", extractor, configs, checkpoints)
    extractor_weights = _resolved("extractor_weights", extractor_weights, configs, checkpoints)
    store = SlideStore(store_path)
    truth = read_labels(labels, store.slide_ids())[0] if labels is not None else {}
    out = Path(out)
    (out / "attention").mkdir(parents=True, exist_ok=True)
    wanted = store.slide_ids() if slides is None else list(slides)
    bags = slide_bags(store_path, wanted, scale, extractor, extractor_weights, device)
    rows = []
    for sid in wanted:
        if sid not in bags:
            continue
        probs, attn = zip(*(_predict(m, bags[sid], device) for m in models), strict=True)
        p, a = np.mean(probs, axis=0), np.mean(attn, axis=0)
        rows.append({"slide_id": sid, **({"label": truth.get(sid, "")} if truth else {}),
                     "predicted": classes[int(np.argmax(p))],
                     **{f"p_{c}": round(float(v), 6) for c, v in zip(classes, p, strict=True)}})
        np.save(out / "attention" / f"{sid}.npy", a)
        heatmap_png(store, sid, scale, a, out / "attention" / f"{sid}.png")
    path = out / "predictions.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide_id", *(["label"] if truth else []), "predicted",
                                                *[f"p_{c}" for c in classes]])
        writer.writeheader()
        writer.writerows(rows)
    log.info("predictions of %d checkpoint(s) on %d slide(s) written to %s", len(models), len(rows), path)
    return path


def heatmap_png(store, slide_id: str, scale: str, attention: np.ndarray, path: Path) -> Path:
    """Attention over the slide thumbnail: each tile's square tinted by its attention (red = most attended)."""

    thumb = np.asarray(store.group[f"{slide_id}/thumbnail"][:]).astype(np.float32)
    attrs = store.slide(slide_id).attrs
    ds = attrs["thumbnail_downsample"]
    size0 = attrs["scales"][scale]["tile_size0"]
    heat = np.zeros(thumb.shape[:2], np.float32)
    covered = np.zeros(thumb.shape[:2], bool)
    weight = (attention - attention.min()) / max(float(np.ptp(attention)), 1e-12)
    for (x, y), w in zip(store.coords(slide_id, scale), weight, strict=True):
        x0, y0 = int(x / ds), int(y / ds)
        x1, y1 = max(x0 + 1, int((x + size0) / ds)), max(y0 + 1, int((y + size0) / ds))
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], w)
        covered[y0:y1, x0:x1] = True
    colour = np.stack([255 * heat, 60 * (1 - heat), 255 * (1 - heat)], axis=-1)  # blue (low) .. red (high)
    alpha = np.where(covered, 0.55, 0.0)[..., None]
    img = (thumb * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path
