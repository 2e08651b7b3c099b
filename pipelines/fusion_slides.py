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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ingest.files import atomic_write_json
from pipelines.checkpoint import Checkpoint, load_checkpoint
from pipelines.engine import FitConfig, Recipe, finished_run, fit
from pipelines.evaluate import classification_metrics
from pipelines.mil import MILError, read_labels, split_slides

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideFusionConfig:
    """One slide-fusion run.

    Attributes:
        store: slide store written with ``--multiscale``.
        labels: CSV with ``slide_id,label`` (optional ``patient``).
        scale: the scale whose tiles carry the concentric views (the first ``--mag`` of the tiling).
        max_tiles: at most this many tiles per slide (a seeded random subset).
        epochs, batch_size, lr, weight_decay, patience, seed: training settings.
        warmup_epochs, grad_clip, precision: the engine's (:class:`pipelines.engine.FitConfig`).
        split: slide-level split fractions.
        device: cpu or cuda.
        out: run directory.
    """

    store: str
    labels: str
    scale: str = "20x"
    max_tiles: int = 256
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.05
    patience: int = 5
    seed: int = 0
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    device: str = "cpu"
    out: str = "runs/fusion-slides"
    warmup_epochs: float = 0.0
    grad_clip: float = 1.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if min(self.max_tiles, self.epochs, self.batch_size, self.patience) < 1:
            raise ValueError("max_tiles, epochs, batch_size and patience must be >= 1")


def _load(config: SlideFusionConfig, slides: list[str], rng: np.random.Generator):
    """uint8 views (N, K, 3, T, T) of the selected tiles, and the slide of each tile."""
    import torch

    from ingest.slide_store import SlideStore

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
    """The fusion model on concentric tile views for :func:`pipelines.engine.fit`: batches of tiles with their
    slide's label, each view augmented independently; validation is slide-level (mean tile probabilities)."""

    kind, unit = "slide_fusion", "tiles"

    def __init__(self, config: SlideFusionConfig, model, data: dict, labels: dict, classes: list, n_views: int
                 ) -> None:
        import torch

        from pipelines.augment import GpuAugment

        self.config, self.model, self.data, self.labels, self.classes = config, model, data, labels, classes
        self.n_views, self.tile = n_views, data["train"][0].shape[-1]
        self.augment = GpuAugment(out_size=self.tile, seed=config.seed)
        self.y_train = torch.tensor([classes.index(labels[s]) for s in data["train"][1]])

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y_train) / self.config.batch_size)

    def batches(self, epoch: int):
        import torch

        order = torch.from_numpy(np.random.default_rng(self.config.seed + epoch).permutation(len(self.y_train)))
        self.gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)  # resumable augmentation
        for start in range(0, len(order), self.config.batch_size):
            yield order[start:start + self.config.batch_size]

    def step(self, model, pos):
        import torch

        v = self.data["train"][0][pos].to(self.config.device)
        x = self.augment(v.flatten(0, 1), generator=self.gen).view(*v.shape[:2], 3, self.tile, self.tile)
        return torch.nn.functional.cross_entropy(model(x).float(), self.y_train[pos].to(self.config.device)), len(pos)

    def predict(self, name: str) -> np.ndarray:
        import torch

        from pipelines.augment import eval_transform

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


def train_slide_fusion(config: SlideFusionConfig) -> dict:
    """Train ``fusion_effnet_b0`` on concentric tile views through the one engine (:func:`pipelines.engine.fit`,
    selecting on slide-level validation macro-F1); writes splits.json, the run contract's files and, last,
    summary.json."""
    from ingest.slide_store import SlideStore
    from models.registry import build_model
    from pipelines.train import seed_everything

    out = Path(config.out)
    resolved = asdict(config)
    if finished_run(out, resolved) is not None and (out / "summary.json").exists():
        log.info("%s is complete; not retraining (delete it or use another --out)", out)
        return json.loads((out / "summary.json").read_text())
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    labels, patients = read_labels(config.labels, SlideStore(config.store).slide_ids())
    classes = sorted(set(labels.values()))
    slides = sorted(labels)
    if len(slides) < 3:
        raise MILError(f"only {len(slides)} labelled slide(s); need at least 3 (train, val, test)")
    by_split, notes = split_slides(slides, labels, patients, classes, config.split, config.seed)
    data = {name: _load(config, ids, rng) for name, ids in by_split.items() if ids}
    if "train" not in data:
        raise MILError("no training slides after the split")
    n_views = data["train"][0].shape[1]
    model = build_model("fusion_effnet_b0", len(classes), n_inputs=n_views).to(config.device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # written again below, once this run is finished
    atomic_write_json(out / "splits.json", {**by_split, "notes": notes, "classes": classes})
    recipe = SlideFusionRecipe(config, model, data, labels, classes, n_views)
    fit(recipe, FitConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                          warmup_epochs=config.warmup_epochs, grad_clip=config.grad_clip, patience=config.patience,
                          precision=config.precision, log_every=0, monitor="val_slide_macro_f1",
                          tiebreak="val_slide_accuracy"), out, resolved, device=config.device)
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
