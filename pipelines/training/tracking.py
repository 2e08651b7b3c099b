"""Training curves beside every run's JSONL: TensorBoard event files in ``<run_dir>/tb/``, and Weights & Biases
when asked for.

``tensorboard --logdir runs/`` shows every run. Tags are the JSONL columns: each numeric column of an epoch's row
under ``epoch/<column>`` (x = epoch; nested dicts such as ``val_per_class_f1`` become
``epoch/val_per_class_f1/<class>``) and the step-level values under ``step/<column>`` (x = optimizer step). The JSONL
stays the record; the event files are a view of it.

TensorBoard is imported lazily; when it cannot be imported one warning is logged and the run goes on without event
files. W&B is never imported unless asked for (``--wandb``), and then it must be installed (:func:`require_wandb`).
A fresh run starts a fresh ``tb/``; a resumed run passes ``resume_step`` so the events of the interrupted epoch
(optimizer steps >= ``resume_step``) are hidden (TensorBoard's ``purge_step``).

Also here: :class:`EpochClock` (epoch time, throughput, peak GPU memory), used by the training engine
(:mod:`pipelines.training.engine`, which also owns model selection and early stopping).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_HINT = "--wandb needs Weights & Biases, which is not installed: pip install wandb"
#: Row columns that are bookkeeping, not curves.
NOT_CURVES = frozenset({"epoch", "world_size"})


def require_wandb(error: type[Exception] = RuntimeError):
    """The ``wandb`` module, or ``error`` with the install hint."""
    try:
        import wandb
    except ImportError as exc:
        raise error(WANDB_HINT) from exc
    return wandb


@functools.cache
def _summary_writer():
    """torch's SummaryWriter class, or None (warned about once per process) when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("TensorBoard is not importable (%s): runs write metrics.jsonl only (pip install tensorboard)",
                    exc)
        return None
    return SummaryWriter


def scalars(values: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric entries of ``values`` as ``prefix/<key>`` tags (one level of nested dicts flattened; None, text
    and bookkeeping columns left out)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if key in NOT_CURVES or isinstance(value, bool):
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float):
            out[f"{prefix}/{key}"] = float(value)
    return out


class RunLogger:
    """Writes a run's curves to TensorBoard (``<run_dir>/tb``) and, with ``wandb=True``, to W&B.

    Args:
        run_dir: the run directory (the JSONL's folder).
        config: the resolved config (recorded as W&B config and as TensorBoard text).
        wandb: also log to Weights & Biases (``WANDB_PROJECT``, default "histo-bench"); needs ``wandb``.
        resume_step: None for a fresh run (an old ``tb/`` is removed), else the first optimizer step that the
            resumed run will write again.
        enabled: False makes every call a no-op (the non-main ranks of a DDP run).
    """

    def __init__(self, run_dir: str | Path, *, config: dict[str, Any] | None = None, wandb: bool = False,
                 resume_step: int | None = None, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.writer = None
        self.wandb_run = None
        if not enabled:
            return
        if wandb:
            require_wandb()  # before anything is opened or written
        tb_dir = self.run_dir / "tb"
        if resume_step is None:
            shutil.rmtree(tb_dir, ignore_errors=True)
        writer_cls = _summary_writer()
        if writer_cls is not None:
            self.writer = writer_cls(str(tb_dir), purge_step=resume_step)
            if config and resume_step is None:
                self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")
        if wandb:
            self.wandb_run = _start_wandb(self.run_dir, config or {}, resumed=resume_step is not None)

    def log_epoch(self, row: dict[str, Any], epoch: int) -> None:
        """Every numeric column of one epoch's JSONL row, at x = ``epoch``."""
        self._log(scalars(row, "epoch"), epoch, "epoch")

    def log_step(self, values: dict[str, Any], step: int) -> None:
        """Step-level values (e.g. ``train_loss``, ``lr``) at x = ``step`` (optimizer steps done)."""
        self._log(scalars(values, "step"), step, "global_step")

    def _log(self, tags: dict[str, float], step: int, axis: str) -> None:
        if self.writer is not None:
            wall = time.time()
            for tag, value in tags.items():
                self.writer.add_scalar(tag, value, step, walltime=wall)
            if axis == "epoch":
                self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({**tags, axis: step})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_wandb(run_dir: Path, config: dict[str, Any], resumed: bool):
    """A W&B run named after the run directory; a resumed run continues the W&B run whose id is kept there."""
    wandb = require_wandb()
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if resumed and id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "histo-bench"), name=run_dir.name, id=run_id,
                     dir=str(run_dir), config=config, resume="allow")
    run.define_metric("epoch/*", step_metric="epoch")
    run.define_metric("step/*", step_metric="global_step")
    return run


class EpochClock:
    """Wall time and peak device memory of one epoch: create it when the epoch starts, read :meth:`stats` at the
    end. The peak is ``torch.cuda.max_memory_allocated`` (reset here) on CUDA, None elsewhere."""

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith("cuda")
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()

    def stats(self, n: int, unit: str = "images") -> dict[str, float | None]:
        """``epoch_seconds``, ``<unit>_per_s`` for ``n`` items, ``peak_gpu_mb``."""
        seconds = time.perf_counter() - self.t0
        peak = None
        if self.cuda:
            import torch

            peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return {"epoch_seconds": round(seconds, 3), f"{unit}_per_s": round(n / max(seconds, 1e-9), 2),
                "peak_gpu_mb": peak}
