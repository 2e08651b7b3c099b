"""The fusion model on slides: each tile's concentric fields of view (1x/2x/4x/8x, written by
``histo-ingest tile --multiscale``) are its K magnification inputs, and the slide's label (from a CSV) is the tile's.

Slides are split like patients (``ingest.splits``; a ``patient`` column groups slides), tiles are capped per slide,
every view is augmented independently on the device, and model selection uses the slide-level macro-F1 on the
validation slides (a slide's prediction is the mean of its tiles' class probabilities).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from histo_bench.errors import ConfigError
from histo_bench.files import atomic_write_json
from histo_bench.seeding import seed_everything
from ingest.slide_store import SlideStore
from models.registry import build_model
from pipelines.data.augment import GpuAugment, eval_transform
from pipelines.evaluation.metrics import classification_metrics
from pipelines.training.checkpoint import Checkpoint, load_checkpoint
from pipelines.training.distributed import DistContext, barrier, init_distributed, shard, shutdown, wrap
from pipelines.training.engine import FitConfig, Recipe, fit
from pipelines.training.run_directory import finished_run
from pipelines.training.slide_runs import (
    MILError,
    check_slide_run,
    fold_slides,
    read_labels,
    settle_slide_config,
    split_slides,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideFusionConfig:
    """One slide-fusion run.

    Attributes:
        store: slide store written with ``--multiscale``.
        labels: CSV with ``slide_id,label`` (optional ``patient``).
        scale: the scale whose tiles carry the concentric views (None: the store's first, which is the one
            ``--multiscale`` writes them at).
        max_tiles: at most this many tiles per slide (a seeded random subset).
        epochs, batch_size, lr, weight_decay, patience, seed: training settings.
        warmup_epochs, grad_clip, precision: the engine's (:class:`pipelines.training.engine.FitConfig`).
        split: slide-level split fractions (seeded by ``seed``), used when ``folds`` is 0.
        folds, fold, split_seed: slide-level k-fold cross-validation as in :class:`pipelines.training.mil.MILConfig`.
        device: auto, cpu, cuda or cuda:N.
        out: run directory (default ``runs/fusion_effnet_b0-slides-<scale>``).
        max_steps_per_epoch: cap on steps per epoch (quick runs); None = every selected tile once.
        wandb: also send the curves to Weights & Biases.
    """

    store: str
    labels: str
    scale: str | None = None
    max_tiles: int = 256
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.05
    patience: int = 5
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
        if min(self.max_tiles, self.epochs, self.batch_size, self.patience) < 1:
            raise ConfigError("max_tiles, epochs, batch_size and patience must be >= 1")
        check_slide_run(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/fusion_effnet_b0-slides-{self.scale or 'scale'}")


def _load(config: SlideFusionConfig, slides: list[str], rng: np.random.Generator):
    """uint8 views (N, K, 3, T, T) of the selected tiles, and the slide of each tile."""


    store = SlideStore(config.store)
    views, owner = [], []
    for sid in slides:
        key = f"{sid}/multiscale/{config.scale}"
        if key not in store.group:
            raise MILError(f"{config.store}: slide {sid} has no concentric views at {config.scale}; tile with "
                           "`histo-ingest tile --multiscale`")
        arr = store.group[key]
        keep = np.sort(rng.permutation(arr.shape[0])[: config.max_tiles])
        if len(keep):
            views.append(torch.from_numpy(arr[keep]).permute(0, 1, 4, 2, 3).contiguous())
            owner += [sid] * len(keep)
    if not views:
        raise MILError("no tiles with concentric views in the selected slides")
    return torch.cat(views), np.array(owner)


def _slide_metrics(probs: np.ndarray, owner: np.ndarray, labels: dict[str, str], classes: list[str]):
    slides = sorted(set(owner.tolist()))
    pred = [int(np.argmax(probs[owner == s].mean(axis=0))) for s in slides]
    return classification_metrics([classes.index(labels[s]) for s in slides], pred, classes)


class SlideFusionRecipe(Recipe):
    """The fusion model on concentric tile views for :func:`pipelines.training.engine.fit`: batches of tiles with their
    slide's label, each view augmented independently; validation is slide-level (mean tile probabilities)."""

    kind, unit = "slide_fusion", "tiles"

    def __init__(self, config: SlideFusionConfig, model, data: dict, labels: dict, classes: list, n_views: int,
                 ctx: DistContext | None = None) -> None:


        self.config, self.model, self.data, self.labels, self.classes = config, model, data, labels, classes
        self.ctx = ctx or DistContext()
        self.train_model = wrap(model, self.ctx, config.device)
        self.n_views, self.tile = n_views, data["train"][0].shape[-1]
        self.augment = GpuAugment(out_size=self.tile, seed=config.seed)
        self.y_train = torch.tensor([classes.index(labels[s]) for s in data["train"][1]])

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y_train) // self.ctx.world_size / self.config.batch_size)

    def batches(self, epoch: int):

        order = np.random.default_rng(self.config.seed + epoch).permutation(len(self.y_train))
        order = torch.from_numpy(shard(order, self.ctx))  # under DDP each rank trains on its own tiles
        self.gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)  # resumable augmentation
        for start in range(0, len(order), self.config.batch_size):
            yield order[start:start + self.config.batch_size]

    def step(self, model, pos):

        v = self.data["train"][0][pos].to(self.config.device)
        x = self.augment(v.flatten(0, 1), generator=self.gen).view(*v.shape[:2], 3, self.tile, self.tile)
        return torch.nn.functional.cross_entropy(model(x).float(), self.y_train[pos].to(self.config.device)), len(pos)

    def predict(self, name: str) -> np.ndarray:


        views, _ = self.data[name]
        self.model.eval()
        probs = []
        with torch.inference_mode():
            for start in range(0, len(views), self.config.batch_size):
                v = views[start:start + self.config.batch_size].to(self.config.device)
                x = eval_transform(v.flatten(0, 1), self.tile).view(*v.shape[:2], 3, self.tile, self.tile)
                probs.append(torch.softmax(self.model(x).float(), -1).cpu().numpy())
        return np.concatenate(probs)

    def evaluate(self, epoch: int) -> dict:
        name = "val" if "val" in self.data else "train"
        val = _slide_metrics(self.predict(name), self.data[name][1], self.labels, self.classes)
        return {"val_slide_macro_f1": val.macro_f1, "val_slide_accuracy": val.accuracy}

    def checkpoint(self, state, epoch, extra) -> Checkpoint:
        return Checkpoint(kind="slide_fusion", model="fusion_effnet_b0", state=state, classes=self.classes,
                          model_kwargs={"n_inputs": self.n_views}, task="slide", epoch=epoch, extra=extra)


def train_slide_fusion(config: SlideFusionConfig, progress=None) -> dict:
    """Train ``fusion_effnet_b0`` on concentric tile views through the one engine
    (:func:`pipelines.training.engine.fit`,
    selecting on slide-level validation macro-F1; under ``torchrun`` each rank trains on its own share of the
    tiles); writes splits.json, the run contract's files and, last, summary.json."""

    config = settle_slide_config(config)
    out = config.run_dir
    resolved = asdict(config)
    if finished_run(out, resolved) is not None and (out / "summary.json").exists():
        log.info("%s is complete; not retraining (delete it or use another --out)", out)
        return json.loads((out / "summary.json").read_text())
    ctx, device = init_distributed(config.device)
    config = replace(config, device=device)
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    labels, patients = read_labels(config.labels, SlideStore(config.store).slide_ids())
    classes = sorted(set(labels.values()))
    slides = sorted(labels)
    if len(slides) < 3:
        raise MILError(f"only {len(slides)} labelled slide(s); need at least 3 (train, val, test)")
    if config.folds:
        by_split, notes = fold_slides(slides, labels, patients, classes, config.folds, config.fold, config.split_seed)
    else:
        by_split, notes = split_slides(slides, labels, patients, classes, config.split, config.seed)
    data = {name: _load(config, ids, rng) for name, ids in by_split.items() if ids}
    if "train" not in data:
        raise MILError("no training slides after the split")
    n_views = data["train"][0].shape[1]
    model = build_model("fusion_effnet_b0", len(classes), n_inputs=n_views).to(config.device)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").unlink(missing_ok=True)  # written again below, once this run is finished
        atomic_write_json(out / "splits.json", {**by_split, "notes": notes, "classes": classes})
    recipe = SlideFusionRecipe(config, model, data, labels, classes, n_views, ctx)
    fit(recipe, FitConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                          warmup_epochs=config.warmup_epochs, grad_clip=config.grad_clip, patience=config.patience,
                          precision=config.precision, log_every=0, monitor="val_slide_macro_f1",
                          tiebreak="val_slide_accuracy", wandb=config.wandb,
                          max_steps_per_epoch=config.max_steps_per_epoch),
        out, resolved, device=config.device, ctx=ctx, progress=progress)
    barrier(ctx)
    shutdown(ctx)
    if not ctx.is_main:
        return {}
    model.load_state_dict(load_checkpoint(out / "best.pt", ("slide_fusion",), config.device).state["model"])
    best = json.loads((out / "complete").read_text()).get("best") or {}
    summary = {"best_val": {"macro_f1": best.get("val_slide_macro_f1"), "accuracy": best.get("val_slide_accuracy")},
               "classes": classes, "n_inputs": n_views, "n_slides": {k: len(v) for k, v in by_split.items()},
               "n_tiles": {k: int(len(v[0])) for k, v in data.items()}}
    if "test" in data:
        probs = recipe.predict("test")
        owner = data["test"][1]
        summary["test_slide"] = _slide_metrics(probs, owner, labels, classes).to_dict()
        summary["test_tile"] = classification_metrics([classes.index(labels[s]) for s in owner], probs.argmax(1),
                                                      classes).to_dict()
    atomic_write_json(out / "summary.json", summary)  # written last: its presence marks a finished run
    return summary
