"""The fusion model on slides: each tile's concentric fields of view (1x/2x/4x/8x, written by
``histo-ingest tile --multiscale``) are its K magnification inputs, and the slide's label (from a CSV) is the tile's.

Slides are split like patients (``ingest.splits``; a ``patient`` column groups slides), tiles are capped per slide,
every view is augmented independently on the device, and model selection uses the slide-level macro-F1 on the
validation slides (a slide's prediction is the mean of its tiles' class probabilities).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ingest.files import atomic_write_json
from pipelines.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
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


def train_slide_fusion(config: SlideFusionConfig) -> dict:
    """Train ``fusion_effnet_b0`` on concentric tile views; writes best.pt, metrics.jsonl, summary.json."""
    import torch

    from ingest.slide_store import SlideStore
    from models.registry import build_model
    from pipelines.augment import GpuAugment, eval_transform
    from pipelines.tracking import EarlyStopping, EpochClock, RunLogger
    from pipelines.train import seed_everything

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
    n_views, tile = data["train"][0].shape[1], data["train"][0].shape[-1]
    model = build_model("fusion_effnet_b0", len(classes), n_inputs=n_views).to(config.device)
    augment = GpuAugment(out_size=tile, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", asdict(config))
    atomic_write_json(out / "splits.json", {**by_split, "notes": notes, "classes": classes})

    def predict(name: str) -> np.ndarray:
        views, _ = data[name]
        model.eval()
        probs = []
        with torch.inference_mode():
            for start in range(0, len(views), config.batch_size):
                v = views[start:start + config.batch_size].to(config.device)
                x = eval_transform(v.flatten(0, 1), tile).view(*v.shape[:2], 3, tile, tile)
                probs.append(torch.softmax(model(x), -1).cpu().numpy())
        return np.concatenate(probs)

    x_train, owner_train = data["train"]
    y_train = torch.tensor([classes.index(labels[s]) for s in owner_train])
    with RunLogger(out, config=asdict(config)) as tracker:
        stopper = EarlyStopping(config.patience, out / "metrics.jsonl", tracker)
        for epoch in range(config.epochs):
            model.train()
            clock = EpochClock(config.device)
            order = torch.from_numpy(rng.permutation(len(x_train)))
            loss_sum = 0.0
            for start in range(0, len(order), config.batch_size):
                pos = order[start:start + config.batch_size]
                v = x_train[pos].to(config.device)
                x = augment(v.flatten(0, 1)).view(*v.shape[:2], 3, tile, tile)
                loss = torch.nn.functional.cross_entropy(model(x), y_train[pos].to(config.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                loss_sum += loss.item() * len(pos)
            perf = clock.stats(len(order), "tiles")
            val_name = "val" if "val" in data else "train"
            val = _slide_metrics(predict(val_name), data[val_name][1], labels, classes)
            row = {"epoch": epoch, "train_loss": loss_sum / len(order), "lr": config.lr, **perf,
                   "val_slide_macro_f1": val.macro_f1, "val_slide_accuracy": val.accuracy}
            if stopper.step(row, {"macro_f1": val.macro_f1, "accuracy": val.accuracy}, lambda e=epoch: save_checkpoint(
                    out / "best.pt", Checkpoint(kind="slide_fusion", model="fusion_effnet_b0",
                                                state={"model": model.state_dict()}, classes=classes,
                                                model_kwargs={"n_inputs": n_views}, task="slide",
                                                config=asdict(config), epoch=e))):
                break
    model.load_state_dict(load_checkpoint(out / "best.pt", ("slide_fusion",), config.device).state["model"])
    summary = {"best_val": stopper.best, "classes": classes, "n_inputs": n_views,
               "n_slides": {k: len(v) for k, v in by_split.items()},
               "n_tiles": {k: int(len(v[0])) for k, v in data.items()}}
    if "test" in data:
        probs = predict("test")
        owner = data["test"][1]
        tile_pred = probs.argmax(1)
        summary["test_slide"] = _slide_metrics(probs, owner, labels, classes).to_dict()
        summary["test_tile"] = classification_metrics([classes.index(labels[s]) for s in owner], tile_pred,
                                                      classes).to_dict()
    atomic_write_json(out / "summary.json", summary)
    return summary
