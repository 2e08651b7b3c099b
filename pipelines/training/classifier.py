"""The paper-protocol trainer for image classifiers on an image store.

Protocol: 224x224 inputs, ImageNet normalisation, AdamW (lr 3e-4, weight decay 0.05), linear warm-up then cosine
decay, automatic mixed precision where the device supports it, gradient clipping at 1.0, class-weighted loss for
imbalance, early stopping on validation macro-F1 (ties broken by accuracy), fixed seeds. The task (8 subtypes or
benign vs malignant, :mod:`pipelines.data.tasks`) sets the labels, the head and the metrics. A run directory holds the
resolved config, the split ids, a metrics JSONL (one row per epoch) with its TensorBoard view in ``tb/``
(:mod:`pipelines.training.tracking`), ``best.pt`` and ``last.pt``; an interrupted run resumes from ``last.pt``; a
finished one
is not retrained (a finished one with other settings is a :class:`TrainingError`, never reported as the new run).
The loop and that contract are the one engine's (:mod:`pipelines.training.engine`); this module is its image recipe
(:class:`ClassifierRecipe`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo_bench.device import PRECISIONS, DeviceError, autocast_dtype, resolve_device
from histo_bench.errors import ConfigError
from histo_bench.files import atomic_write_json
from histo_bench.seeding import seed_everything
from ingest.breakhis_names import resolve_magnifications
from ingest.store import ImageStore
from ingest.synthetic.demo import demo_store
from models.registry import MODELS, build_model
from pipelines.data.augment import AugmentConfig
from pipelines.data.base import DataConfig
from pipelines.data.loaders import make_loader
from pipelines.data.tasks import check_scorable, check_task, map_predictions, task_classes, task_labels
from pipelines.evaluation.metrics import Metrics, full_metrics, predict
from pipelines.training.checkpoint import Checkpoint
from pipelines.training.cv import split_view
from pipelines.training.distributed import barrier, init_distributed, shutdown, wrap
from pipelines.training.engine import FitConfig, FitResult, Recipe, StepProgress, fit
from pipelines.training.label_fraction import label_fraction_view
from pipelines.training.run_directory import FitError, finished_run
from pipelines.training.tracking import require_wandb
from pipelines.training.unfreeze import apply_frozen_eval, apply_unfreeze, check_unfreeze

log = logging.getLogger(__name__)

#: (epoch, step, steps_per_epoch, running loss) for progress bars: the engine's.
TrainProgress = StepProgress


#: Training cannot go on (diverged loss, empty split, bad config, a finished run with other settings); the message
#: says why and what to do. The engine's error, under the name the classifier trainer has always used.
TrainingError = FitError


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
        loader: "auto", "device", "dali" or "torch" (see pipelines.data.loaders).
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
        folds: patient-level k-fold cross-validation (:mod:`pipelines.training.cv`): 0 = the store's own split, else the
            number of folds (>= 2); ``fold`` is then the test fold.
        fold: the test fold, 0..folds-1 (0 when ``folds`` is 0).
        split_seed: seeds the fold assignment (the same seed and data give the same folds).
        unfreeze: which parameters train: "full" (all), "last_block" (the last stage + the head) or "head"
            (the classifier head only); see :func:`pipelines.training.unfreeze.apply_unfreeze`.
        label_fraction: train on this fraction of the train split's patients (class-stratified, seeded by
            ``seed``; val and test untouched; :mod:`pipelines.training.label_fraction`); 1.0 = all of them.
        augment: overrides of :class:`~pipelines.data.augment.AugmentConfig` fields, e.g. ``{"blur": 0.5,
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
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise ConfigError("lr must be > 0; weight_decay, warmup_epochs and grad_clip >= 0")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.class_weighting not in ("loss", "none"):
            raise ConfigError("class_weighting must be 'loss' or 'none'")
        if self.patience < 1:
            raise ConfigError("patience must be >= 1")
        check_task(self.task)
        if self.log_every < 0:
            raise ConfigError("log_every must be >= 0")
        if self.load_size is None:
            object.__setattr__(self, "load_size", round(self.image_size * 8 / 7))
        if self.load_size < self.image_size:
            raise ConfigError(f"load_size ({self.load_size}) must be >= image_size ({self.image_size})")
        if self.folds == 1 or self.folds < 0 or not 0 <= self.fold < max(self.folds, 1):
            raise ConfigError(f"folds must be 0 (the store's split) or >= 2, and fold in 0..folds-1; got folds "
                             f"{self.folds}, fold {self.fold}")

        check_unfreeze(self.unfreeze)
        if self.sampler not in ("shuffle", "weighted"):
            raise ConfigError(f"sampler must be 'shuffle' or 'weighted', got {self.sampler!r}")
        if self.augment:
            AugmentConfig(**self.augment)  # unknown fields / bad values fail here
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")

    @property
    def run_dir(self) -> Path:
        suffix = "" if self.task == "subtype" else f"-{self.task}"
        return Path(self.out or f"runs/{self.model}-{self.train_magnification}{suffix}")


#: What :func:`train` returns: the engine's result (``best_val`` holds the validation metrics).
TrainResult = FitResult


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights n / (C * count); classes absent from training get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.divide(len(labels), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return weights.astype(np.float32)


def _config_json(config: TrainConfig, store_path: Path) -> dict[str, Any]:
    return {**asdict(config), "store": str(store_path)}


def loader_factory(family: str):
    """``make_loader`` for image classifiers, ``make_fusion_loader`` (same-patient K-magnification samples) for
    the fusion model."""
    if family == "fusion":
        from pipelines.data.fusion import make_fusion_loader

        return make_fusion_loader

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


class ClassifierRecipe(Recipe):
    """Image classifiers and the multi-input fusion model for :func:`pipelines.training.engine.fit`: batches from the
    chosen loader (device-resident, DALI or DataLoader; sharded by rank under DDP), class-weighted cross-entropy,
    validation on the val split at the training magnification(s)."""

    unit = "images"

    def __init__(self, config: TrainConfig, family: str, net, model, store, mags, data_config, loader, loss_fn,
                 classes, model_kwargs: dict, device: str) -> None:
        self.kind, self.config, self.family, self.model, self.train_model = family, config, family, net, model
        self.store, self.mags, self.data_config, self.loader, self.loss_fn = store, mags, data_config, loader, loss_fn
        self.classes, self.model_kwargs, self.device = classes, model_kwargs, device
        self.amp = autocast_dtype(config.precision, device)

    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def train_mode(self, model) -> None:

        model.train()
        apply_frozen_eval(model, self.config.unfreeze)  # a frozen encoder's BatchNorm statistics stay fixed

    def batches(self, epoch: int):
        self.loader.set_epoch(epoch)
        for x, y, _ in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def step(self, model, batch):
        x, y = batch
        return self.loss_fn(model(x).float(), y), len(y)

    def evaluate(self, epoch: int) -> dict[str, Any]:
        val = evaluate_split(self.model, self.store, "val", self.mags, self.data_config, self.device, self.amp,
                             self.family)
        return {"val_accuracy": val.accuracy, "val_balanced_accuracy": val.balanced_accuracy,
                "val_macro_f1": val.macro_f1, "val_patient_accuracy": val.patient_accuracy,
                "val_per_class_f1": {k: v["f1"] for k, v in val.per_class.items()},
                "val_n_images": val.n_images, "val_n_patients": val.n_patients}

    def checkpoint(self, state, epoch, extra) -> Checkpoint:
        return Checkpoint(kind=self.family, model=self.config.model, state=state, classes=list(self.classes),
                          model_kwargs=self.model_kwargs, task=self.config.task, epoch=epoch, extra=extra)


def train(config: TrainConfig, progress: TrainProgress | None = None) -> TrainResult:
    """Train ``config.model`` on the train split through the one engine (:func:`pipelines.training.engine.fit`),
    select on
    val macro-F1, write everything to ``config.run_dir``."""


    run_dir = config.run_dir
    store_path = Path(config.store) if config.store else default_store()
    resolved = _config_json(config, store_path)
    done = finished_run(run_dir, resolved)
    if done is not None:
        log.info("%s is complete; not retraining (delete it or use another --out)", run_dir)
        return FitResult(run_dir, done["best_epoch"], done.get("best") or {}, done["epochs_run"],
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
    family = MODELS.get(config.model).family
    if family not in ("classifier", "fusion"):
        trainable = [n for n in MODELS.names() if MODELS.get(n).family in ("classifier", "fusion")]
        raise TrainingError(f"{config.model} is a {family} model (train it through `histo-bench train`, which "
                            f"picks its recipe); this trainer takes {', '.join(trainable)}")
    model_kwargs = dict(config.model_kwargs)
    if family == "fusion":
        model_kwargs.setdefault("n_inputs", len(mags))
    net = build_model(config.model, len(classes), pretrained=config.pretrained, weights=config.weights,
                      **model_kwargs).to(device)
    apply_unfreeze(net, config.model, config.unfreeze)
    train_loader = loader_factory(family)(store, "train", mags, data_config, device=device, train=True,
                                          seed=config.seed, rank=ctx.rank, world_size=ctx.world_size)
    if len(train_loader) == 0:
        raise TrainingError(f"the train split has {len(train_idx)} images, fewer than one batch of "
                            f"{config.batch_size}; lower --batch-size")
    weights = class_weights(labels[train_idx], len(classes)) if config.class_weighting == "loss" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weights, device=device) if weights is not None
                                        else None, label_smoothing=config.label_smoothing)
    recipe = ClassifierRecipe(config, family, net, wrap(net, ctx, device), store, mags, data_config, train_loader,
                              loss_fn, classes, model_kwargs, device)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_splits(run_dir, config, store, store_path, mags, classes)
    fit_config = FitConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                           warmup_epochs=config.warmup_epochs, grad_clip=config.grad_clip, patience=config.patience,
                           precision=config.precision, log_every=config.log_every, wandb=config.wandb,
                           max_steps_per_epoch=config.max_steps_per_epoch)
    result = fit(recipe, fit_config, run_dir, resolved, device=device, ctx=ctx, progress=progress)
    barrier(ctx)
    shutdown(ctx)
    return result


def _write_splits(run_dir: Path, config: TrainConfig, store, store_path: Path, mags, classes) -> None:
    """The split ids beside the checkpoints (store indices and patients per split, and the data origin)."""
    atomic_write_json(run_dir / "splits.json", indent=None, data={
        "store": str(store_path), "origin": store.attrs.get("origin", {}),
        "magnifications": list(mags), "task": config.task, "classes": list(classes),
        "split": store.attrs.get("split", {}).get("description"), "folds": config.folds, "fold": config.fold,
        "split_seed": config.split_seed, "label_fraction": config.label_fraction,
        **{s: {"indices": store.select(split=s).tolist(),
               "patients": sorted(set(store.patient[store.select(split=s)].tolist()))}
           for s in ("train", "val", "test")}})


def default_store() -> Path:
    """The embedded demo store (generated and ingested on first use)."""

    return demo_store()
