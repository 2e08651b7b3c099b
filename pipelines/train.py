"""The paper-protocol trainer for image classifiers on an image store.

Protocol: 224x224 inputs, ImageNet normalisation, AdamW (lr 3e-4, weight decay 0.05), linear warm-up then cosine
decay, automatic mixed precision where the device supports it, gradient clipping at 1.0, class-weighted loss for
imbalance, early stopping on validation macro-F1 (ties broken by accuracy), fixed seeds. A run directory holds
the resolved config, the split ids, a metrics JSONL (one row per epoch), ``best.pt`` and ``last.pt``; an
interrupted run resumes from ``last.pt``; a finished one is not retrained.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.breakhis_names import resolve_magnifications
from pipelines.device import PRECISIONS, DeviceError, autocast, autocast_dtype, resolve_device
from pipelines.distributed import barrier, broadcast_flag, init_distributed, shutdown, wrap
from pipelines.evaluate import Metrics, full_metrics, predict

log = logging.getLogger(__name__)

#: (epoch, step, steps_per_epoch, running loss) for progress bars.
TrainProgress = Callable[[int, int, int, float], None]


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, empty split, bad config); the message says why and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        model: registered model name (``histo-bench models``).
        store: image store to train on (None: the embedded demo store).
        train_magnification: "100X", "400X", "mixed" (100X+400X) or any magnification list.
        epochs: maximum epochs (early stopping may end sooner).
        batch_size: images per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length before the cosine decay.
        grad_clip: max gradient norm (0 disables).
        patience: epochs without a better validation macro-F1 before stopping.
        precision: "auto" (bf16 autocast on CUDA when supported, else fp32), "fp32", "bf16" or "fp16".
        class_weighting: "loss" (inverse-frequency weights in the cross-entropy) or "none".
        seed: seeds Python, numpy and torch.
        image_size: network input side.
        load_size: shorter image side kept in memory (random crops are taken from it); None = 8/7 of
            ``image_size`` (256 for 224), so the crops never downscale by much more than that.
        loader: "auto", "device", "dali" or "torch" (see pipelines.data).
        pretrained: start from ImageNet weights through timm (needs the hub or its cache).
        weights: a local weights file to start from.
        device: "auto", "cpu", "cuda" or "cuda:N".
        out: run directory (default ``runs/<model>-<train_magnification>``).
        max_steps_per_epoch: cap on training steps per epoch (demo and tests); None = the whole split.
        label_smoothing: cross-entropy label smoothing.
    """

    model: str = "deit_small"
    store: str | None = None
    train_magnification: str = "100X"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    grad_clip: float = 1.0
    patience: int = 10
    precision: str = "auto"
    class_weighting: str = "loss"
    seed: int = 0
    image_size: int = 224
    load_size: int | None = None
    loader: str = "auto"
    pretrained: bool = False
    weights: str | None = None
    device: str = "auto"
    out: str | None = None
    max_steps_per_epoch: int | None = None
    label_smoothing: float = 0.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        resolve_magnifications(self.train_magnification)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; weight_decay, warmup_epochs and grad_clip >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.class_weighting not in ("loss", "none"):
            raise ValueError("class_weighting must be 'loss' or 'none'")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if self.load_size is None:
            object.__setattr__(self, "load_size", round(self.image_size * 8 / 7))
        if self.load_size < self.image_size:
            raise ValueError(f"load_size ({self.load_size}) must be >= image_size ({self.image_size})")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.train_magnification}")


@dataclass
class TrainResult:
    """Where a run's outputs are and its best validation numbers."""

    run_dir: Path
    best_epoch: int
    best_val: dict[str, Any]
    epochs_run: int
    resumed: bool = False
    already_complete: bool = False


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights n / (C * count); classes absent from training get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return weights.astype(np.float32)


def better(candidate: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Early-stopping order: higher validation macro-F1, then higher accuracy."""
    if best is None:
        return True
    return (candidate["macro_f1"], candidate["accuracy"]) > (best["macro_f1"], best["accuracy"])


class EarlyStopping:
    """Per-epoch bookkeeping for the smaller trainers (MIL, slide fusion): append the epoch's row to a JSONL, keep
    the best validation result by :func:`better` (saving through ``save``), and say when ``patience`` epochs have
    passed without one."""

    def __init__(self, patience: int, metrics_path: Path) -> None:
        self.patience = patience
        self.metrics_path = metrics_path
        self.best: dict[str, Any] | None = None
        self.stale = 0
        metrics_path.unlink(missing_ok=True)

    def step(self, row: dict[str, Any], current: dict[str, Any], save: Callable[[], None]) -> bool:
        """Record one epoch; True when training should stop."""
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if better(current, self.best):
            self.best, self.stale = current, 0
            save()
        else:
            self.stale += 1
        return self.stale >= self.patience


def _config_json(config: TrainConfig, store_path: Path) -> dict[str, Any]:
    return {**asdict(config), "store": str(store_path)}


def loader_factory(family: str):
    """``make_loader`` for image classifiers, ``make_fusion_loader`` (same-patient K-magnification samples) for
    the fusion model."""
    if family == "fusion":
        from pipelines.fusion_data import make_fusion_loader

        return make_fusion_loader
    from pipelines.data import make_loader

    return make_loader


def evaluate_split(model, store, split: str, magnification, data_config, device: str, amp,
                   family: str = "classifier") -> Metrics:
    """Metrics of ``model`` on a split of ``store`` at ``magnification`` (image and patient level); for the fusion
    model ``magnification`` lists its inputs."""
    loader = loader_factory(family)(store, split, magnification, data_config, device=device, train=False, seed=0)
    logits, y, idx = predict(model, loader, device, amp)
    pred = logits.argmax(1).numpy() if len(logits) else np.zeros(0, dtype=np.int64)
    return full_metrics(y.numpy(), pred, store.patient[idx.numpy()], list(store.classes))


def train(config: TrainConfig, progress: TrainProgress | None = None) -> TrainResult:
    """Train ``config.model`` on the train split, select on val, write everything to ``config.run_dir``."""
    import torch

    from ingest.store import ImageStore
    from models.registry import MODELS, build_model
    from pipelines.data import DataConfig

    run_dir = config.run_dir
    if (run_dir / "complete").exists():
        log.info("%s is complete; not retraining (delete it or use another --out)", run_dir)
        summary = json.loads((run_dir / "complete").read_text())
        return TrainResult(run_dir, summary["best_epoch"], summary["best_val"], summary["epochs_run"],
                           already_complete=True)
    store_path = Path(config.store) if config.store else default_store()
    store = ImageStore(store_path)
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from exc
    ctx, device = init_distributed(device)
    amp = autocast_dtype(config.precision, device)
    seed_everything(config.seed)
    data_config = DataConfig(image_size=config.image_size, load_size=config.load_size,
                             batch_size=config.batch_size, loader=config.loader)
    mags = resolve_magnifications(config.train_magnification)
    train_idx = store.select(split="train", magnification=mags)
    val_idx = store.select(split="val", magnification=mags)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainingError(f"{store_path}: no {'train' if len(train_idx) == 0 else 'val'} images at "
                            f"{'+'.join(mags)}; ingest with a split that has them")
    n_classes = len(store.classes)
    family = MODELS.get(config.model).family
    if family not in ("classifier", "fusion"):
        trainable = [n for n in MODELS.names() if MODELS.get(n).family in ("classifier", "fusion")]
        hint = {"mil": "use `histo-bench mil-train`", "mpcs": "use `histo-bench pretrain`"}.get(family, "")
        raise TrainingError(f"{config.model} is a {family} model ({hint}); `histo-bench train` trains "
                            f"{', '.join(trainable)}")
    model_kwargs = dict(config.model_kwargs)
    if family == "fusion":
        model_kwargs.setdefault("n_inputs", len(mags))
    net = build_model(config.model, n_classes, pretrained=config.pretrained, weights=config.weights,
                      **model_kwargs).to(device)
    model = wrap(net, ctx, device)
    train_loader = loader_factory(family)(store, "train", mags, data_config, device=device, train=True,
                                          seed=config.seed, rank=ctx.rank, world_size=ctx.world_size)
    steps_per_epoch = len(train_loader) if config.max_steps_per_epoch is None else min(
        len(train_loader), config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise TrainingError(f"the train split has {len(train_idx)} images, fewer than one batch of "
                            f"{config.batch_size}; lower --batch-size")
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device=device.split(":")[0], enabled=amp == torch.float16)
    weights = class_weights(store.label[train_idx], n_classes) if config.class_weighting == "loss" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weights, device=device) if weights is not None
                                        else None, label_smoothing=config.label_smoothing)

    main = ctx.is_main  # only rank 0 evaluates, logs and writes files
    run_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, best, best_epoch, stale = 0, None, -1, 0
    resumed = False
    if (run_dir / "last.pt").exists():
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=True)
        if json.loads(state["config"]) == _config_json(config, store_path):
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch = int(state["epoch"]) + 1
            best = json.loads(state["best"]) if state["best"] else None
            best_epoch, stale = int(state["best_epoch"]), int(state["stale"])
            resumed = True
            log.info("resuming %s from epoch %d", run_dir, start_epoch)
        else:
            log.warning("%s/last.pt was written with another config; starting over", run_dir)
    if main:
        _write_run_files(run_dir, config, store, store_path, mags, resumed)
    metrics_path = run_dir / "metrics.jsonl"

    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        if broadcast_flag(stale >= config.patience, ctx):
            break
        train_loader.set_epoch(epoch)
        model.train()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        seen, loss_sum = 0, 0.0
        for step, (x, y, _) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp):
                loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch} step {step}; lower --lr, or use "
                                    "--precision fp32")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            if progress and main:
                progress(epoch, step + 1, steps_per_epoch, loss_sum / seen)
        train_seconds = time.perf_counter() - t0
        if not main:
            continue
        val = evaluate_split(net, store, "val", mags, data_config, device, amp, family)
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
               "epoch_seconds": round(train_seconds, 3),
               "images_per_s": round(seen * ctx.world_size / train_seconds, 2), "world_size": ctx.world_size,
               "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda")
               else None,
               "val_accuracy": val.accuracy, "val_balanced_accuracy": val.balanced_accuracy,
               "val_macro_f1": val.macro_f1, "val_patient_accuracy": val.patient_accuracy,
               "val_per_class_f1": {k: v["f1"] for k, v in val.per_class.items()}}
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        current = val.to_dict()
        if better(current, best):
            best, best_epoch, stale = current, epoch, 0
            torch.save({"model": net.state_dict(), "config": json.dumps(_config_json(config, store_path)),
                        "model_kwargs": json.dumps(model_kwargs), "family": family,
                        "classes": list(store.classes), "epoch": epoch}, run_dir / "best.pt")
        else:
            stale += 1
        log.info("epoch %d: loss %.4f, val macro-F1 %.3f, acc %.3f (best %.3f at %d), %.0f images/s", epoch,
                 row["train_loss"], val.macro_f1, val.accuracy, best["macro_f1"], best_epoch, row["images_per_s"])
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": json.dumps(best),
                    "best_epoch": best_epoch, "stale": stale,
                    "config": json.dumps(_config_json(config, store_path))}, run_dir / "last.pt")
    summary = {"best_epoch": best_epoch, "best_val": best, "epochs_run": epoch + 1, "world_size": ctx.world_size}
    if main:
        (run_dir / "complete").write_text(json.dumps(summary, indent=1))
    barrier(ctx)
    shutdown(ctx)
    return TrainResult(run_dir, best_epoch, best or {}, epoch + 1, resumed=resumed)


def _write_run_files(run_dir: Path, config: TrainConfig, store, store_path: Path, mags, resumed: bool) -> None:
    """The resolved config and the split ids beside the checkpoints; a fresh run starts a fresh metrics file."""
    (run_dir / "config.json").write_text(json.dumps(_config_json(config, store_path), indent=1))
    (run_dir / "splits.json").write_text(json.dumps({
        "store": str(store_path), "origin": store.attrs.get("origin", {}),
        "magnifications": list(mags), "classes": list(store.classes),
        **{s: {"indices": store.select(split=s).tolist(),
               "patients": sorted(set(store.patient[store.select(split=s)].tolist()))}
           for s in ("train", "val", "test")}}))
    metrics_path = run_dir / "metrics.jsonl"
    if not resumed and metrics_path.exists():
        metrics_path.unlink()


def default_store() -> Path:
    """The embedded demo store (generated and ingested on first use)."""
    from ingest.demo import demo_store

    return demo_store()


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """(model, config dict, class names) from a ``best.pt``, loaded with ``weights_only=True``."""
    import torch

    from models.registry import build_model

    state = torch.load(path, map_location=device, weights_only=True)
    config = json.loads(state["config"])
    kwargs = json.loads(state["model_kwargs"]) if "model_kwargs" in state else config.get("model_kwargs", {})
    model = build_model(config["model"], len(state["classes"]), **kwargs)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, list(state["classes"])
