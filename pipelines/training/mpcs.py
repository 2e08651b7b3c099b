"""MPCS: magnification-prior contrastive self-supervised pretraining (Chhipa et al.) on an image store.

A positive pair is two images of the *same patient* at two magnifications chosen by the pair strategy (ordered:
adjacent magnifications; fixed: always the same pair; random: any two), each augmented independently on the
device; the other pairs in the batch are the negatives (NT-Xent). Labels are never read. The encoder is saved as
``encoder.safetensors`` in the run directory (the whole model, projection head included, as an ``mpcs`` checkpoint in
``best.pt``: :mod:`pipelines.training.checkpoint`), ready for ``histo-bench train --model <backbone> --weights ...``
(fine-tuning, on either ``--task``) or a linear evaluation. Training runs through the one engine
(:mod:`pipelines.training.engine`: precision, schedule, clipping, resume, ``metrics.jsonl`` + ``tb/``) for a fixed
budget
of epochs: there is no validation signal, so the last epoch's model is the one kept.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from histo_bench.device import resolve_device
from histo_bench.errors import ConfigError
from histo_bench.seeding import seed_everything
from ingest.store import ImageStore
from models.mpcs import FIXED_PAIR, PAIR_STRATEGIES, nt_xent, sample_pair
from models.registry import build_model
from pipelines.data.augment import GpuAugment
from pipelines.data.base import load_images
from pipelines.data.tasks import check_task
from pipelines.training.checkpoint import Checkpoint, load_checkpoint
from pipelines.training.classifier import default_store
from pipelines.training.cv import split_view
from pipelines.training.distributed import DistContext, barrier, init_distributed, shard, shutdown, wrap
from pipelines.training.engine import FitConfig, Recipe, fit
from pipelines.training.run_directory import finished_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """One MPCS pretraining run.

    Attributes:
        model: an ``mpcs_*`` model (``mpcs_resnet50``, ``mpcs_efficientnet_b0``).
        store: image store (None: the embedded demo store).
        split: which split's images to learn from (labels are not used).
        pair: magnification-pair strategy: ordered, fixed or random.
        epochs: passes over the anchor images.
        batch_size: positive pairs per step.
        lr, weight_decay: AdamW settings.
        temperature: NT-Xent temperature.
        image_size: network input side; images are kept at 8/7 of it.
        seed: seeds sampling, augmentation and initialisation.
        device: auto, cpu or cuda.
        out: run directory (default ``runs/<model>-<pair>``).
        log_every: optimizer steps between step-level TensorBoard points (loss, lr); 0 = per epoch only.
        folds, fold, split_seed: patient-level k-fold cross-validation as in ``TrainConfig``
        (:mod:`pipelines.training.cv`):
            with ``folds`` >= 2, ``split`` is taken from fold ``fold``'s splits, so pretraining never sees the
            patients the fine-tuned model of that fold is tested on; 0 = the store's own split.
        task: the task whose classes stratify the folds (the same as the fine-tuning runs'); labels are not used
            for anything else.
        max_steps_per_epoch: cap on steps per epoch (quick runs); None = every anchor image once per epoch.
        precision: "auto" (bf16 autocast on CUDA when supported), "fp32", "bf16" or "fp16" (the engine's).
        wandb: also send the curves to Weights & Biases.
    """

    model: str = "mpcs_resnet50"
    store: str | None = None
    split: str = "train"
    pair: str = "ordered"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    temperature: float = 0.1
    image_size: int = 224
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    log_every: int = 10
    folds: int = 0
    fold: int = 0
    split_seed: int = 0
    task: str = "subtype"
    max_steps_per_epoch: int | None = None
    precision: str = "auto"
    wandb: bool = False

    def __post_init__(self) -> None:

        if self.pair not in PAIR_STRATEGIES:
            raise ConfigError(f"pair must be one of {', '.join(PAIR_STRATEGIES)}, got {self.pair!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2 (negatives come from the batch)")
        if not self.model.startswith("mpcs_"):
            raise ConfigError(f"pretraining needs an mpcs_* model, got {self.model!r}")
        if self.log_every < 0:
            raise ConfigError("log_every must be >= 0")
        if self.folds == 1 or self.folds < 0 or not 0 <= self.fold < max(self.folds, 1):
            raise ConfigError(f"folds must be 0 (the store's split) or >= 2, and fold in 0..folds-1; got folds "
                             f"{self.folds}, fold {self.fold}")
        check_task(self.task)
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("max_steps_per_epoch must be >= 1 (or None)")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.pair}")


def pair_index(patients: np.ndarray, mags: np.ndarray) -> dict[str, dict[str, list[int]]]:
    """patient -> magnification -> positions (into the selected images) of that patient's images."""
    index: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for pos, (p, m) in enumerate(zip(patients.tolist(), mags.tolist(), strict=True)):
        index[p][m].append(pos)
    return index


def sample_pairs(anchors: np.ndarray, patients: np.ndarray, index, strategy: str, rng: random.Random
                 ) -> tuple[np.ndarray, np.ndarray]:
    """For each anchor position, two positions of the same patient at a strategy-chosen pair of magnifications."""

    first, second = [], []
    for a in anchors.tolist():
        by_mag = index[patients[a]]
        mag_a, mag_b = sample_pair(list(by_mag), strategy, rng)
        first.append(rng.choice(by_mag[mag_a]))
        second.append(rng.choice(by_mag[mag_b]))
    return np.array(first), np.array(second)


class MPCSRecipe(Recipe):
    """MPCS for :func:`pipelines.training.engine.fit`: a batch is anchor positions; the step draws a same-patient
    image at
    another magnification for each (the pair strategy), augments both views independently and takes NT-Xent."""

    kind, unit = "mpcs", "pairs"

    def __init__(self, config: PretrainConfig, resolved: dict, model, images, anchors: np.ndarray,
                 patients: np.ndarray, index, device: str, ctx: DistContext | None = None) -> None:

        self.config, self.resolved, self.model, self.images, self.device = config, resolved, model, images, device
        self.anchors, self.patients, self.index = anchors, patients, index
        self.augment = GpuAugment(out_size=config.image_size, seed=config.seed)
        self.ctx = ctx or DistContext()
        self.train_model = wrap(model, self.ctx, device)

    def steps_per_epoch(self) -> int:
        return len(self.anchors) // self.ctx.world_size // self.config.batch_size

    def batches(self, epoch: int):
        bs = self.config.batch_size
        order = self.anchors[np.random.default_rng(self.config.seed + epoch).permutation(len(self.anchors))]
        # under DDP each rank takes its own anchors; a batch's negatives are that rank's batch (no all-gather)
        order = shard(order, self.ctx)

        rng = random.Random(self.config.seed * 1_000_003 + epoch)  # per epoch: a resumed run draws the same pairs
        self.gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)  # and the same views
        for step in range(self.steps_per_epoch()):
            yield sample_pairs(order[step * bs:(step + 1) * bs], self.patients, self.index, self.config.pair, rng)

    def step(self, model, batch):


        a, b = (torch.as_tensor(x, device=self.device) for x in batch)
        z1 = model(self.augment(self.images[a], generator=self.gen))
        z2 = model(self.augment(self.images[b], generator=self.gen))
        return nt_xent(z1.float(), z2.float(), self.config.temperature), len(a)

    def checkpoint(self, state, epoch, extra) -> Checkpoint:
        return Checkpoint(kind="mpcs", model=self.config.model, state=state, task="mpcs", config=self.resolved,
                          epoch=epoch, extra=extra)


def pretrain(config: PretrainConfig, progress=None) -> Path:
    """Run MPCS pretraining through the one engine (:func:`pipelines.training.engine.fit`: a fixed budget of
    ``epochs``, the last epoch's model in ``best.pt``); returns the path of the exported encoder weights.
    ``progress(epoch, step, steps, loss)`` is the engine's; under ``torchrun`` each rank trains on its own anchors."""


    store_path = Path(config.store) if config.store else default_store()
    store = split_view(ImageStore(store_path), config.folds, config.fold, config.split_seed, config.task)
    ctx, device = init_distributed(resolve_device(config.device))
    seed_everything(config.seed)
    idx = store.select(split=config.split)
    patients, mags = store.patient[idx], store.magnification[idx]
    index = pair_index(patients, mags)
    usable = {p for p, by_mag in index.items() if len(by_mag) >= 2
              and (config.pair != "fixed" or set(FIXED_PAIR) <= set(by_mag))}
    anchors = np.array([i for i, p in enumerate(patients.tolist()) if p in usable])
    if len(anchors) < config.batch_size:
        raise ConfigError(f"{store_path}: only {len(anchors)} {config.split} images have a partner at another "
                         f"magnification for the {config.pair!r} strategy; need at least one batch")
    resolved = {**asdict(config), "store": str(store_path), "origin": store.attrs.get("origin", {}),
                "split_description": store.attrs.get("split", {}).get("description"),
                "patients": sorted(set(patients.tolist()))}
    run_dir, weights = config.run_dir, config.run_dir / "encoder.safetensors"
    if finished_run(run_dir, resolved) is not None and weights.exists():
        log.info("%s is complete; not pretraining again (delete it or use another --out)", run_dir)
        return weights
    images = load_images(store, idx, round(config.image_size * 8 / 7)).to(device)
    model = build_model(config.model, 0).to(device)
    recipe = MPCSRecipe(config, resolved, model, images, anchors, patients, index, device, ctx)
    fit_config = FitConfig(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay, grad_clip=1.0,
                           precision=config.precision, log_every=config.log_every,
                           max_steps_per_epoch=config.max_steps_per_epoch, monitor=None, wandb=config.wandb)
    weights.unlink(missing_ok=True)  # exported again from this run's best.pt below
    fit(recipe, fit_config, run_dir, resolved, device=device, ctx=ctx, progress=progress)
    barrier(ctx)
    shutdown(ctx)
    if not ctx.is_main:
        return weights
    best = load_checkpoint(run_dir / "best.pt", ("mpcs",), "cpu")
    model.load_state_dict(best.state["model"])
    partial = weights.with_name(weights.name + ".partial")  # written, then renamed: a crash leaves no encoder
    save_file({k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}, str(partial))
    partial.replace(weights)
    return weights
