"""One training engine under every recipe: the epoch loop, its bookkeeping and the run-directory contract.

A recipe (:class:`Recipe`) supplies only what differs between trainers: the model, its batches, a step
(batch -> loss, item count), an evaluation (-> validation metrics) and the checkpoint it writes. :func:`fit` does the
rest, the same way for all of them:

* device precision: bf16 / fp16 autocast (``--precision``; GradScaler for fp16), fp32 on CPUs;
* AdamW with linear warm-up then cosine decay, gradient clipping, a finite-loss guard naming the step;
* a per-step progress callback (the CLI's rich bar), step-level curves every ``log_every`` optimizer steps;
* one row per epoch in ``metrics.jsonl`` with a shared core schema (``epoch``, ``train_loss``, ``lr``,
  ``epoch_seconds``, ``items_per_s``, ``peak_gpu_mb``, then the validation metrics), mirrored to TensorBoard and
  optionally W&B (:mod:`pipelines.training.tracking`);
* early stopping on a named validation metric (``monitor``; None trains a fixed budget, the last epoch being best);
* the run directory: ``config.json`` (resolved), ``metrics.jsonl``, ``tb/``, ``best.pt``, ``last.pt`` (both through
  :mod:`pipelines.training.checkpoint`, written atomically; the final epoch's ``last.pt`` holds the weights without
  the optimizer state, as nothing is left to train) and ``complete``. One rule for every recipe
  (:mod:`pipelines.training.run_directory`): a complete run with the same settings is not retrained; an interrupted
  one resumes from ``last.pt`` (rows of epochs past it are dropped, so every epoch is logged exactly once); a
  finished run with other settings is refused, naming them.

Why a small module of our own rather than Lightning Fabric: the loop is short, the device-resident loader and the
DDP helpers (:mod:`pipelines.training.distributed`) already exist, and our checkpoint format and run contract would
sit on
top of Fabric's own conventions rather than replace them; one more dependency would buy little.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from histo_bench.device import PRECISIONS, autocast, autocast_dtype
from histo_bench.errors import ConfigError
from histo_bench.files import append_line, atomic_write_json
from pipelines.training.checkpoint import Checkpoint, save_checkpoint
from pipelines.training.distributed import DistContext, all_finite, broadcast_flag
from pipelines.training.run_directory import (
    PENDING_BEST,
    FitError,
    finished_run,
    prepare_run_dir,
    resume_point,
    settle_pending_best,
)
from pipelines.training.tracking import EpochClock, RunLogger

log = logging.getLogger(__name__)

#: (epoch, step, steps_per_epoch, running loss) for progress bars.
StepProgress = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains (the recipe-independent settings).

    Attributes:
        epochs: maximum epochs (early stopping may end sooner).
        lr: peak AdamW learning rate; weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length (in epochs, fractions allowed) before the cosine decay to 0.
        grad_clip: max gradient norm (0 disables).
        patience: epochs without a better ``monitor`` value before stopping.
        precision: "auto" (bf16 autocast on CUDA when supported, else fp32), "fp32", "bf16" or "fp16".
        log_every: optimizer steps between step-level curve points (0 = per epoch only).
        wandb: also send the curves to Weights & Biases.
        max_steps_per_epoch: cap on optimizer steps per epoch (demo and tests); None = every batch.
        monitor: the validation metric that selects ``best.pt`` and drives early stopping (higher is better),
            with ``tiebreak`` second; None trains the whole budget and the last epoch is the best.
    """

    epochs: int
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    grad_clip: float = 1.0
    patience: int = 10
    precision: str = "auto"
    log_every: int = 10
    wandb: bool = False
    max_steps_per_epoch: int | None = None
    monitor: str | None = "val_macro_f1"
    tiebreak: str | None = "val_accuracy"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError("epochs must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise ConfigError("lr must be > 0; weight_decay, warmup_epochs and grad_clip >= 0")
        if self.patience < 1:
            raise ConfigError("patience must be >= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("max_steps_per_epoch must be >= 1")


class Recipe:
    """What a trainer supplies to :func:`fit` (override the methods; attributes set by the subclass)."""

    #: checkpoint kind (:data:`pipelines.training.checkpoint.KINDS`) and the unit of ``items_per_s``.
    kind: str = ""
    unit: str = "items"
    #: the network whose state is saved (unwrapped), and the one to call (DDP-wrapped under torchrun).
    model: torch.nn.Module
    train_model: torch.nn.Module | None = None

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterable[Any]:
        """The training batches of ``epoch`` (a pure function of the seed and the epoch, so a resumed run sees
        the batches the uninterrupted one would have)."""
        raise NotImplementedError

    def step(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """(loss, items in the batch) for one training batch (called under autocast)."""
        raise NotImplementedError

    def train_mode(self, model: torch.nn.Module) -> None:
        model.train()

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Validation columns of the epoch's row (``val_*``); {} when the recipe has none."""
        return {}

    def checkpoint(self, state: dict[str, Any], epoch: int, extra: dict[str, Any]) -> Checkpoint:
        """The checkpoint of this recipe holding ``state`` (the engine passes the optimizer states too for
        a last.pt with epochs left, and sets its ``config`` to the run's resolved config)."""
        raise NotImplementedError


@dataclass
class FitResult:
    """Where a run's outputs are and how it went."""

    run_dir: Path
    best_epoch: int
    best: dict[str, Any]
    epochs_run: int
    resumed: bool = False
    already_complete: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_val(self) -> dict[str, Any]:
        """The best epoch's validation metrics without the ``val_`` prefix (``macro_f1``, ``accuracy``...)."""
        return {k.removeprefix("val_"): v for k, v in (self.best or {}).items()}


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _better(row: dict[str, Any], best: dict[str, Any] | None, config: FitConfig) -> bool:
    if best is None or config.monitor is None:
        return True

    def number(value: Any) -> float:  # None (no value) and NaN rank below every value
        return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    def key(r: dict[str, Any]) -> tuple[float, float]:
        return number(r.get(config.monitor)), number(r.get(config.tiebreak)) if config.tiebreak else 0.0

    return key(row) > key(best)


class _Loop:
    """The optimizer, schedule and scaler of one :func:`fit` call, and how they are saved and restored."""

    def __init__(self, recipe: Recipe, config: FitConfig, device: str, steps: int) -> None:
        self.amp = autocast_dtype(config.precision, device)
        self.optimizer = torch.optim.AdamW(list(recipe.parameters()), lr=config.lr, weight_decay=config.weight_decay)
        total, warmup = steps * config.epochs, int(round(config.warmup_epochs * steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, warmup, total))
        self.scaler = torch.amp.GradScaler(device=device.split(":")[0], enabled=self.amp == torch.float16)

    def state(self, model: torch.nn.Module, final: bool = False) -> dict[str, Any]:
        """What ``last.pt`` holds. The ``final`` epoch's leaves out the optimizer, schedule, scaler and RNG states
        (two model sizes more for AdamW): nothing is left to train, as the same settings resume to an empty loop
        and other settings (more epochs) start over."""
        if final:
            return {"model": model.state_dict()}
        state = {"model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def restore(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        if "optimizer" not in state:  # a final epoch's last.pt: the loop that follows trains nothing
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def fit(recipe: Recipe, config: FitConfig, run_dir: str | Path, resolved: dict[str, Any], *, device: str,
        ctx: DistContext | None = None, progress: StepProgress | None = None) -> FitResult:
    """Train ``recipe`` under ``config`` into ``run_dir`` (see the module doc); ``resolved`` is the run's full
    config, written to ``config.json`` and compared on a rerun. Under DDP (``ctx``) only rank 0 evaluates, logs
    and writes files; every rank runs the same number of steps."""
    run_dir = Path(run_dir)
    ctx = ctx or DistContext()
    main = ctx.is_main
    done = finished_run(run_dir, resolved)
    if done is not None:
        log.info("%s is complete; not retraining (delete it or use another --out)", run_dir)
        return FitResult(run_dir, done["best_epoch"], done.get("best") or {}, done["epochs_run"],
                         already_complete=True)
    steps = _steps_per_epoch(recipe, config)
    loop = _Loop(recipe, config, device, steps)
    model = recipe.train_model or recipe.model
    start, best, best_epoch, stale, resumed = 0, None, -1, 0, False
    # "auto" means fp32 on one machine and bf16 or fp16 on another: a run resumes only in the precision it began in
    precision = str(loop.amp or "fp32")
    last = resume_point(run_dir, recipe.kind, resolved, device, precision)
    if last is not None:
        loop.restore(recipe.model, last.state)
        start, best = last.epoch + 1, last.extra.get("best")
        best_epoch, stale, resumed = int(last.extra["best_epoch"]), int(last.extra["stale"]), True
        settle_pending_best(run_dir, best_epoch)
        log.info("resuming %s from epoch %d", run_dir, start)
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        prepare_run_dir(run_dir, resolved, start if resumed else None)
    rows: list[dict[str, Any]] = []
    epoch = start - 1
    with RunLogger(run_dir, config=resolved, wandb=config.wandb, enabled=main,
                   resume_step=start * steps + 1 if resumed else None) as tracker:
        for epoch in range(start, config.epochs):
            if broadcast_flag(_patience_spent(stale, config), ctx):
                epoch -= 1
                break
            row = _train_epoch(recipe, model, loop, config, epoch, steps, device, ctx, tracker, progress)
            if not main:
                continue
            row.update(recipe.evaluate(epoch))
            row = json.loads(json.dumps(row, default=float))  # numpy numbers as plain floats, in the file and best
            if epoch == start and config.monitor is not None and config.monitor not in row:
                raise FitError(f"the recipe's evaluation has no {config.monitor!r} (it gives {', '.join(row)})")
            append_line(metrics_path, json.dumps(row))
            extra_row = {k: v for k, v in row.items() if k.startswith("val_")}
            improved = _better(row, best, config)
            if improved:
                best, best_epoch, stale = extra_row, epoch, 0
                # the new best goes beside best.pt until last.pt (which names it) is written: a kill in between
                # never leaves a best.pt that last.pt and the rerun disagree with
                _save(run_dir / PENDING_BEST, recipe, {"model": recipe.model.state_dict()}, epoch, {}, resolved)
            else:
                stale += 1
            final = epoch == config.epochs - 1 or _patience_spent(stale, config)  # no epoch follows
            _save(run_dir / "last.pt", recipe, loop.state(recipe.model, final), epoch,
                  {"best": best, "best_epoch": best_epoch, "stale": stale, "precision": precision}, resolved)
            if improved:
                os.replace(run_dir / PENDING_BEST, run_dir / "best.pt")
            tracker.log_epoch(row, epoch)  # after last.pt: a resumed run never repeats a logged epoch
            rows.append(row)
            _log_epoch(row, epoch, config, recipe.unit)
    if main:
        atomic_write_json(run_dir / "complete", {"best_epoch": best_epoch, "best": best, "epochs_run": epoch + 1,
                                                 "world_size": ctx.world_size, "resumed_at": resumed and start or None})
    return FitResult(run_dir, best_epoch, best or {}, epoch + 1, resumed=resumed, rows=rows)


def _patience_spent(stale: int, config: FitConfig) -> bool:
    """Whether early stopping ends the run before another epoch (``stale`` epochs without a better ``monitor``)."""
    return config.monitor is not None and stale >= config.patience


def _steps_per_epoch(recipe: Recipe, config: FitConfig) -> int:
    """Optimizer steps per epoch: the recipe's, capped by ``max_steps_per_epoch``; a :class:`FitError` when none."""
    steps = recipe.steps_per_epoch()
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    if steps < 1:
        raise FitError("no training batch: the train split holds fewer items than one batch")
    return steps


def _log_epoch(row: dict[str, Any], epoch: int, config: FitConfig, unit: str) -> None:
    """The one log line of a finished epoch: its loss, the monitored metric (when numeric) and the throughput."""
    value = row.get(config.monitor) if config.monitor else None
    shown = f", {config.monitor} {value:.3f}" if isinstance(value, int | float) else ""
    log.info("epoch %d: loss %.4f%s, %.0f %s/s", epoch, row["train_loss"], shown, row["items_per_s"], unit)


def _save(path: Path, recipe: Recipe, state: dict[str, Any], epoch: int, extra: dict[str, Any],
          resolved: dict[str, Any]) -> None:
    ckpt = recipe.checkpoint(state, epoch, extra)
    ckpt.config = resolved  # what a rerun compares against: always the run's resolved config
    save_checkpoint(path, ckpt)


def _train_epoch(recipe: Recipe, model, loop: _Loop, config: FitConfig, epoch: int, steps: int, device: str,
                 ctx: DistContext, tracker: RunLogger, progress: StepProgress | None) -> dict[str, Any]:
    """One epoch of optimizer steps; returns the row's core columns."""
    recipe.train_mode(model)
    clock = EpochClock(device)
    seen, loss_sum = 0, 0.0
    for step, batch in enumerate(recipe.batches(epoch)):
        if step >= steps:
            break
        with autocast(device, loop.amp):
            loss, n = recipe.step(model, batch)
        if not all_finite(loss, ctx):
            value = loss.item() if not torch.isfinite(loss) else "non-finite on another rank"
            raise FitError(f"loss became {value} at epoch {epoch} step {step}; lower --lr, or use --precision fp32")
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if config.grad_clip > 0:
            loop.scaler.unscale_(loop.optimizer)
            torch.nn.utils.clip_grad_norm_(recipe.model.parameters(), config.grad_clip)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.scheduler.step()
        seen += n
        loss_sum += loss.item() * n
        if progress and ctx.is_main:
            progress(epoch, step + 1, steps, loss_sum / seen)
        if config.log_every and (done := epoch * steps + step + 1) % config.log_every == 0:
            tracker.log_step({"train_loss": loss.item(), "lr": loop.lr}, done)
    perf = clock.stats(seen * ctx.world_size, "items")
    return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": loop.lr, **perf,
            "world_size": ctx.world_size}
