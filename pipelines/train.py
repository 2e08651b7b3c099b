"""The paper-protocol trainer for image classifiers on an image store.

Protocol: 224x224 inputs, ImageNet normalisation, AdamW (lr 3e-4, weight decay 0.05), linear warm-up then cosine
decay, automatic mixed precision where the device supports it, gradient clipping at 1.0, class-weighted loss for
imbalance, early stopping on validation macro-F1 (ties broken by accuracy), fixed seeds. The task (8 subtypes or
benign vs malignant, :mod:`pipelines.tasks`) sets the labels, the head and the metrics. A run directory holds the
resolved config, the split ids, a metrics JSONL (one row per epoch) with its TensorBoard view in ``tb/``
(:mod:`pipelines.tracking`), ``best.pt`` and ``last.pt``; an interrupted run resumes from ``last.pt``; a finished one
is not retrained (a finished one with other settings is a :class:`TrainingError`, never reported as the new run).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.breakhis_names import resolve_magnifications
from ingest.files import atomic_write_json
from pipelines.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from pipelines.device import PRECISIONS, DeviceError, autocast, autocast_dtype, resolve_device
from pipelines.distributed import barrier, broadcast_flag, init_distributed, shutdown, wrap
from pipelines.evaluate import Metrics, full_metrics, predict
from pipelines.tasks import check_scorable, check_task, map_predictions, task_classes, task_labels
from pipelines.tracking import EpochClock, RunLogger, better, require_wandb

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
        task: "subtype" (the store's classes; BreakHis: 8 tumour types) or "binary" (benign vs malignant).
        log_every: optimizer steps between step-level TensorBoard points (train loss, lr); 0 = per epoch only.
        wandb: also send the curves to Weights & Biases (needs ``pip install wandb``).
        model_kwargs: extra keyword arguments for the model builder (e.g. ``img_size`` for DeiT / Swin).
        folds: patient-level k-fold cross-validation (:mod:`pipelines.cv`): 0 = the store's own split, else the
            number of folds (>= 2); ``fold`` is then the test fold.
        fold: the test fold, 0..folds-1 (0 when ``folds`` is 0).
        split_seed: seeds the fold assignment (the same seed and data give the same folds).
        unfreeze: which parameters train: "full" (all), "last_block" (the last stage + the head) or "head"
            (the classifier head only); see :func:`pipelines.unfreeze.apply_unfreeze`.
        label_fraction: train on this fraction of the train split's patients (class-stratified, seeded by
            ``seed``; val and test untouched; :mod:`pipelines.label_fraction`); 1.0 = all of them.
        augment: overrides of :class:`~pipelines.augment.AugmentConfig` fields, e.g. ``{"blur": 0.5,
            "erasing": 0.25}`` (every input of the fusion model is augmented independently).
        sampler: "shuffle" (a permutation per epoch) or "weighted" (class-balanced draws with replacement).
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
    task: str = "subtype"
    log_every: int = 10
    wandb: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    folds: int = 0
    fold: int = 0
    split_seed: int = 0
    unfreeze: str = "full"
    label_fraction: float = 1.0
    augment: dict[str, Any] = field(default_factory=dict)
    sampler: str = "shuffle"

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
        check_task(self.task)
        if self.log_every < 0:
            raise ValueError("log_every must be >= 0")
        if self.load_size is None:
            object.__setattr__(self, "load_size", round(self.image_size * 8 / 7))
        if self.load_size < self.image_size:
            raise ValueError(f"load_size ({self.load_size}) must be >= image_size ({self.image_size})")
        if self.folds == 1 or self.folds < 0 or not 0 <= self.fold < max(self.folds, 1):
            raise ValueError(f"folds must be 0 (the store's split) or >= 2, and fold in 0..folds-1; got folds "
                             f"{self.folds}, fold {self.fold}")
        from pipelines.unfreeze import check_unfreeze

        check_unfreeze(self.unfreeze)
        if self.sampler not in ("shuffle", "weighted"):
            raise ValueError(f"sampler must be 'shuffle' or 'weighted', got {self.sampler!r}")
        if self.augment:
            from pipelines.augment import AugmentConfig

            AugmentConfig(**self.augment)  # unknown fields / bad values fail here
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")

    @property
    def run_dir(self) -> Path:
        suffix = "" if self.task == "subtype" else f"-{self.task}"
        return Path(self.out or f"runs/{self.model}-{self.train_magnification}{suffix}")


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


def _config_json(config: TrainConfig, store_path: Path) -> dict[str, Any]:
    return {**asdict(config), "store": str(store_path)}


#: Fields that change how a run is logged, not what it computes: resuming ignores them.
LOGGING_FIELDS = frozenset({"log_every", "wandb"})


def _run_differences(saved: dict[str, Any], current: dict[str, Any],
                     ignore: frozenset[str] = LOGGING_FIELDS) -> list[str]:
    """``"key saved != current"`` for every field (outside ``ignore``) where two resolved configs differ."""
    # runs from before tasks / folds / unfreeze were subtype runs on the store's split, fully trained
    saved = {"task": "subtype", "folds": 0, "fold": 0, "split_seed": 0, "unfreeze": "full", "label_fraction": 1.0,
             "augment": {}, "sampler": "shuffle", **saved}
    return [f"{k} {saved.get(k)} != {current.get(k)}" for k in sorted(saved.keys() | current.keys())
            if k not in ignore and saved.get(k) != current.get(k)]


def _same_run(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    return not _run_differences(saved, current)


def loader_factory(family: str):
    """``make_loader`` for image classifiers, ``make_fusion_loader`` (same-patient K-magnification samples) for
    the fusion model."""
    if family == "fusion":
        from pipelines.fusion_data import make_fusion_loader

        return make_fusion_loader
    from pipelines.data import make_loader

    return make_loader


def evaluate_split(model, store, split: str, magnification, data_config, device: str, amp,
                   family: str = "classifier", model_task: str | None = None) -> Metrics:
    """Metrics of ``model`` on a split of ``store`` at ``magnification`` (image and patient level) for the task
    ``data_config.task``; for the fusion model ``magnification`` lists its inputs. ``model_task`` is the task the
    model was trained for when it differs (a subtype model scored on ``binary``: see ``map_predictions``)."""
    check_scorable(model_task or data_config.task, data_config.task)  # before any image is loaded
    loader = loader_factory(family)(store, split, magnification, data_config, device=device, train=False, seed=0)
    logits, y, idx = predict(model, loader, device, amp)
    pred = logits.argmax(1).numpy() if len(logits) else np.zeros(0, dtype=np.int64)
    pred = map_predictions(store, pred, model_task or data_config.task, data_config.task)
    return full_metrics(y.numpy(), pred, store.patient[idx.numpy()], list(task_classes(store, data_config.task)))


def train(config: TrainConfig, progress: TrainProgress | None = None) -> TrainResult:
    """Train ``config.model`` on the train split, select on val, write everything to ``config.run_dir``."""
    import torch

    from ingest.store import ImageStore
    from models.registry import MODELS, build_model
    from pipelines.augment import AugmentConfig
    from pipelines.cv import split_view
    from pipelines.data import DataConfig
    from pipelines.label_fraction import label_fraction_view
    from pipelines.unfreeze import apply_frozen_eval, apply_unfreeze

    run_dir = config.run_dir
    store_path = Path(config.store) if config.store else default_store()
    if (run_dir / "complete").exists():
        saved = json.loads((run_dir / "config.json").read_text())
        done = saved.get("task", "subtype")
        if done != config.task:
            raise TrainingError(f"{run_dir} holds a finished {done} run, not {config.task}; use another --out")
        # ``out`` names this very directory (None or a spelling of it): not a setting
        differences = _run_differences(saved, _config_json(config, store_path), LOGGING_FIELDS | {"out"})
        if differences:
            raise TrainingError(f"{run_dir} holds a finished run with other settings ({', '.join(differences)}); "
                                "use another --out or delete it")
        log.info("%s is complete; not retraining (delete it or use another --out)", run_dir)
        summary = json.loads((run_dir / "complete").read_text())
        return TrainResult(run_dir, summary["best_epoch"], summary["best_val"], summary["epochs_run"],
                           already_complete=True)
    if config.wandb:
        require_wandb(TrainingError)
    store = split_view(ImageStore(store_path), config.folds, config.fold, config.split_seed, config.task)
    store = label_fraction_view(store, config.label_fraction, config.seed, config.task)
    try:
        device = resolve_device(config.device)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from exc
    ctx, device = init_distributed(device)
    amp = autocast_dtype(config.precision, device)
    seed_everything(config.seed)
    data_config = DataConfig(image_size=config.image_size, load_size=config.load_size,
                             batch_size=config.batch_size, loader=config.loader, task=config.task,
                             augment=AugmentConfig(**config.augment), sampler=config.sampler)
    mags = resolve_magnifications(config.train_magnification)
    train_idx = store.select(split="train", magnification=mags)
    val_idx = store.select(split="val", magnification=mags)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainingError(f"{store_path}: no {'train' if len(train_idx) == 0 else 'val'} images at "
                            f"{'+'.join(mags)}; ingest with a split that has them")
    labels, classes = task_labels(store, config.task)
    n_classes = len(classes)
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
    apply_unfreeze(net, config.model, config.unfreeze)
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
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device=device.split(":")[0], enabled=amp == torch.float16)
    weights = class_weights(labels[train_idx], n_classes) if config.class_weighting == "loss" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weights, device=device) if weights is not None
                                        else None, label_smoothing=config.label_smoothing)

    main = ctx.is_main  # only rank 0 evaluates, logs and writes files
    run_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, best, best_epoch, stale = 0, None, -1, 0
    resumed = False
    last = _resumable(run_dir / "last.pt", family, device)
    if last is not None:
        if _same_run(last.config, _config_json(config, store_path)):
            state = last.state
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"].cpu())
            start_epoch = last.epoch + 1
            best = last.extra.get("best")
            best_epoch, stale = int(last.extra["best_epoch"]), int(last.extra["stale"])
            resumed = True
            log.info("resuming %s from epoch %d", run_dir, start_epoch)
        else:
            log.warning("%s/last.pt was written with another config; starting over", run_dir)
    if main:
        _write_run_files(run_dir, config, store, store_path, mags, resumed, classes)
    metrics_path = run_dir / "metrics.jsonl"
    if main and resumed:
        _drop_rows_from(metrics_path, start_epoch)

    # a resumed run hides the interrupted epoch's step-level points (optimizer steps after the last finished epoch)
    with RunLogger(run_dir, config=_config_json(config, store_path), wandb=config.wandb, enabled=main,
                   resume_step=start_epoch * steps_per_epoch + 1 if resumed else None) as tracker:
        epoch = start_epoch - 1
        for epoch in range(start_epoch, config.epochs):
            if broadcast_flag(stale >= config.patience, ctx):
                break
            train_loader.set_epoch(epoch)
            model.train()
            apply_frozen_eval(model, config.unfreeze)  # a frozen encoder's BatchNorm statistics stay fixed
            clock = EpochClock(device)
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
                if config.log_every and (done := epoch * steps_per_epoch + step + 1) % config.log_every == 0:
                    tracker.log_step({"train_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}, done)
            perf = clock.stats(seen * ctx.world_size)
            if not main:
                continue
            val = evaluate_split(net, store, "val", mags, data_config, device, amp, family)
            row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
                   **perf, "world_size": ctx.world_size,
                   "val_accuracy": val.accuracy, "val_balanced_accuracy": val.balanced_accuracy,
                   "val_macro_f1": val.macro_f1, "val_patient_accuracy": val.patient_accuracy,
                   "val_per_class_f1": {k: v["f1"] for k, v in val.per_class.items()}}
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            current = val.to_dict()
            resolved = _config_json(config, store_path)
            if better(current, best):
                best, best_epoch, stale = current, epoch, 0
                save_checkpoint(run_dir / "best.pt", Checkpoint(
                    kind=family, model=config.model, state={"model": net.state_dict()}, classes=list(classes),
                    model_kwargs=model_kwargs, task=config.task, config=resolved, epoch=epoch))
            else:
                stale += 1
            log.info("epoch %d: loss %.4f, val macro-F1 %.3f, acc %.3f (best %.3f at %d), %.0f images/s", epoch,
                     row["train_loss"], val.macro_f1, val.accuracy, best["macro_f1"], best_epoch, row["images_per_s"])
            save_checkpoint(run_dir / "last.pt", Checkpoint(
                kind=family, model=config.model, classes=list(classes), model_kwargs=model_kwargs, task=config.task,
                config=resolved, epoch=epoch, extra={"best": best, "best_epoch": best_epoch, "stale": stale},
                state={"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                       "torch_rng": torch.get_rng_state()}))
            tracker.log_epoch(row, epoch)  # after last.pt: a resumed run never repeats a logged epoch
    summary = {"best_epoch": best_epoch, "best_val": best, "epochs_run": epoch + 1, "world_size": ctx.world_size}
    if main:
        atomic_write_json(run_dir / "complete", summary)
    barrier(ctx)
    shutdown(ctx)
    return TrainResult(run_dir, best_epoch, best or {}, epoch + 1, resumed=resumed)


def _write_run_files(run_dir: Path, config: TrainConfig, store, store_path: Path, mags, resumed: bool,
                     classes) -> None:
    """The resolved config and the split ids beside the checkpoints; a fresh run starts a fresh metrics file."""
    atomic_write_json(run_dir / "config.json", _config_json(config, store_path))
    atomic_write_json(run_dir / "splits.json", indent=None, data={
        "store": str(store_path), "origin": store.attrs.get("origin", {}),
        "magnifications": list(mags), "task": config.task, "classes": list(classes),
        "split": store.attrs.get("split", {}).get("description"), "folds": config.folds, "fold": config.fold,
        "split_seed": config.split_seed, "label_fraction": config.label_fraction,
        **{s: {"indices": store.select(split=s).tolist(),
               "patients": sorted(set(store.patient[store.select(split=s)].tolist()))}
           for s in ("train", "val", "test")}})
    metrics_path = run_dir / "metrics.jsonl"
    if not resumed and metrics_path.exists():
        metrics_path.unlink()


def _drop_rows_from(metrics_path: Path, epoch: int) -> None:
    """Drop the JSONL rows of epochs >= ``epoch`` (rewritten atomically): an epoch's row is appended before its
    ``last.pt``, so a run interrupted in between would otherwise log that epoch twice once resumed."""
    if not metrics_path.exists():
        return
    def before(line: str) -> bool:
        try:
            return json.loads(line)["epoch"] < epoch
        except (ValueError, KeyError, TypeError):  # a row cut short by the interruption
            return False

    lines = metrics_path.read_text().splitlines()
    kept = [line for line in lines if before(line)]
    if len(kept) != len(lines):
        tmp = metrics_path.with_name(metrics_path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(metrics_path)


def default_store() -> Path:
    """The embedded demo store (generated and ingested on first use)."""
    from ingest.demo import demo_store

    return demo_store()


def _resumable(path: Path, family: str, device: str):
    """The :class:`~pipelines.checkpoint.Checkpoint` at ``path`` to resume from, or None: no file, or one that
    cannot be used (an older format, another kind), which is said in one line and trained over."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path, (family,), device, "resuming this run")
    except CheckpointError as exc:
        log.warning("%s; starting over", exc)
        return None
