"""MPCS: magnification-prior contrastive self-supervised pretraining (Chhipa et al.) on an image store.

A positive pair is two images of the *same patient* at two magnifications chosen by the pair strategy (ordered:
adjacent magnifications; fixed: always the same pair; random: any two), each augmented independently on the
device; the other pairs in the batch are the negatives (NT-Xent). Labels are never read. The encoder is saved as
``encoder.safetensors`` in the run directory (the whole model, projection head included, as an ``mpcs`` checkpoint in
``best.pt``: :mod:`pipelines.checkpoint`), ready for ``histo-bench train --model <backbone> --weights ...``
(fine-tuning, on either ``--task``) or a linear evaluation. The per-epoch ``pretrain.jsonl`` has its TensorBoard view
in ``tb/`` (:mod:`pipelines.tracking`).
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ingest.files import atomic_write_json
from pipelines.checkpoint import Checkpoint, save_checkpoint

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
        folds, fold, split_seed: patient-level k-fold cross-validation as in ``TrainConfig`` (:mod:`pipelines.cv`):
            with ``folds`` >= 2, ``split`` is taken from fold ``fold``'s splits, so pretraining never sees the
            patients the fine-tuned model of that fold is tested on; 0 = the store's own split.
        task: the task whose classes stratify the folds (the same as the fine-tuning runs'); labels are not used
            for anything else.
        max_steps_per_epoch: cap on steps per epoch (quick runs); None = every anchor image once per epoch.
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

    def __post_init__(self) -> None:
        from models.mpcs import PAIR_STRATEGIES
        from pipelines.tasks import check_task

        if self.pair not in PAIR_STRATEGIES:
            raise ValueError(f"pair must be one of {', '.join(PAIR_STRATEGIES)}, got {self.pair!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (negatives come from the batch)")
        if not self.model.startswith("mpcs_"):
            raise ValueError(f"pretraining needs an mpcs_* model, got {self.model!r}")
        if self.log_every < 0:
            raise ValueError("log_every must be >= 0")
        if self.folds == 1 or self.folds < 0 or not 0 <= self.fold < max(self.folds, 1):
            raise ValueError(f"folds must be 0 (the store's split) or >= 2, and fold in 0..folds-1; got folds "
                             f"{self.folds}, fold {self.fold}")
        check_task(self.task)
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError("max_steps_per_epoch must be >= 1 (or None)")

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
    from models.mpcs import sample_pair

    first, second = [], []
    for a in anchors.tolist():
        by_mag = index[patients[a]]
        mag_a, mag_b = sample_pair(list(by_mag), strategy, rng)
        first.append(rng.choice(by_mag[mag_a]))
        second.append(rng.choice(by_mag[mag_b]))
    return np.array(first), np.array(second)


def pretrain(config: PretrainConfig, progress=None) -> Path:
    """Run MPCS pretraining; returns the path of the saved encoder weights."""
    import torch
    from safetensors.torch import save_file

    from ingest.store import ImageStore
    from models.mpcs import FIXED_PAIR, nt_xent
    from models.registry import build_model
    from pipelines.augment import GpuAugment
    from pipelines.cv import split_view
    from pipelines.data import load_images
    from pipelines.device import resolve_device
    from pipelines.tracking import EpochClock, RunLogger
    from pipelines.train import default_store, seed_everything

    store_path = Path(config.store) if config.store else default_store()
    weights = config.run_dir / "encoder.safetensors"
    if weights.exists() and _finished_same(config, store_path):
        log.info("%s is complete; not pretraining again (delete it or use another --out)", config.run_dir)
        return weights
    store = split_view(ImageStore(store_path), config.folds, config.fold, config.split_seed, config.task)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    idx = store.select(split=config.split)
    patients, mags = store.patient[idx], store.magnification[idx]
    index = pair_index(patients, mags)
    usable = {p for p, by_mag in index.items() if len(by_mag) >= 2
              and (config.pair != "fixed" or set(FIXED_PAIR) <= set(by_mag))}
    anchors_all = np.array([i for i, p in enumerate(patients.tolist()) if p in usable])
    if len(anchors_all) < config.batch_size:
        raise ValueError(f"{store_path}: only {len(anchors_all)} {config.split} images have a partner at another "
                         f"magnification for the {config.pair!r} strategy; need at least one batch")
    images = load_images(store, idx, round(config.image_size * 8 / 7)).to(device)
    model = build_model(config.model, 0).to(device)
    augment = GpuAugment(out_size=config.image_size, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = len(anchors_all) // config.batch_size
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps * config.epochs)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {**asdict(config), "store": str(store_path), "origin": store.attrs.get("origin", {}),
                "split_description": store.attrs.get("split", {}).get("description"),
                "patients": sorted(set(patients.tolist()))}
    weights.unlink(missing_ok=True)  # another config's encoder: never to pass as this run's if it is interrupted
    atomic_write_json(run_dir / "config.json", resolved)
    history = run_dir / "pretrain.jsonl"
    history.unlink(missing_ok=True)
    with RunLogger(run_dir, config=resolved) as tracker:
        for epoch in range(config.epochs):
            model.train()
            order = np.array(anchors_all)[np.random.default_rng(config.seed + epoch).permutation(len(anchors_all))]
            clock, loss_sum = EpochClock(device), 0.0
            for step in range(steps):
                a, b = sample_pairs(order[step * config.batch_size:(step + 1) * config.batch_size], patients, index,
                                    config.pair, rng)
                z1 = model(augment(images[torch.as_tensor(a, device=device)]))
                z2 = model(augment(images[torch.as_tensor(b, device=device)]))
                loss = nt_xent(z1, z2, config.temperature)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"MPCS loss became {loss.item()} at epoch {epoch} step {step}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item()
                done = epoch * steps + step + 1
                if config.log_every and done % config.log_every == 0:
                    tracker.log_step({"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}, done)
                if progress:
                    progress(done, config.epochs * steps)
            row = {"epoch": epoch, "loss": loss_sum / steps, "lr": optimizer.param_groups[0]["lr"],
                   **clock.stats(steps * config.batch_size, "pairs")}
            with history.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            tracker.log_epoch(row, epoch)
            log.info("MPCS epoch %d: NT-Xent %.4f", epoch, row["loss"])
    save_checkpoint(run_dir / "best.pt", Checkpoint(kind="mpcs", model=config.model, task="mpcs", config=resolved,
                                                    state={"model": model.state_dict()}, epoch=config.epochs - 1))
    partial = weights.with_name(weights.name + ".partial")  # written, then renamed: a crash leaves no encoder
    save_file({k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()}, str(partial))
    partial.replace(weights)
    return weights


def _finished_same(config: PretrainConfig, store_path: Path) -> bool:
    """True when ``config.run_dir`` holds a finished run of the same config (logging settings aside)."""
    try:
        saved = json.loads((config.run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    current = json.loads(json.dumps({**asdict(config), "store": str(store_path)}))
    return all(saved.get(k) == v for k, v in current.items() if k != "log_every")
