"""The run-directory contract of the training engine (:func:`pipelines.training.engine.fit`), one rule for every recipe.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one row per epoch), ``tb/``,
``best.pt``, ``last.pt`` and ``complete``. A complete run with the same settings is not retrained
(:func:`finished_run`); a finished run with other settings is refused, naming them (:class:`FitError`); an
interrupted one resumes from ``last.pt`` when it was written with the same settings and precision
(:func:`resume_point`), the rows of epochs past it are dropped (:func:`drop_rows_from`), so every epoch is logged
exactly once, and a ``best.pt`` candidate cut off by the interruption is settled (:func:`settle_pending_best`).
Fields that only change how a run is logged (:data:`LOGGING_FIELDS`) never make two runs different.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from histo_bench.errors import HistoBenchError
from histo_bench.files import atomic_write_json, remove_stray_temporaries
from pipelines.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

#: A new best model waits here until ``last.pt`` (which records it as the best) is written.
PENDING_BEST = "best.pt.pending"
#: Config fields that change how a run is logged, not what it computes: they never make two runs different.
LOGGING_FIELDS = frozenset({"log_every", "wandb", "out", "device"})


class FitError(HistoBenchError, RuntimeError):
    """Training cannot go on (diverged loss, a finished run with other settings); the message says why."""


def run_differences(saved: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = LOGGING_FIELDS
                    ) -> list[str]:
    """``"key saved != current"`` for every field (outside ``ignore``) where two resolved configs differ."""
    current = json.loads(json.dumps(current, default=str))

    def shown(value: Any) -> str:  # long values (patient lists) are cut, so the message stays one readable line
        text = str(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{k} {shown(saved.get(k))} != {shown(current.get(k))}" for k in sorted(saved.keys() | current.keys())
            if k not in ignore and saved.get(k) != current.get(k)]


def finished_run(run_dir: Path, resolved: dict[str, Any], ignore: frozenset[str] = LOGGING_FIELDS
                 ) -> dict[str, Any] | None:
    """The ``complete`` summary of ``run_dir`` when it holds a finished run of these settings; None when it holds
    no finished run; a :class:`FitError` naming the differences when it holds one with other settings."""
    if not (run_dir / "complete").exists():
        return None
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "complete").read_text())
    except (OSError, ValueError) as exc:
        raise FitError(f"{run_dir}: a finished run whose config.json / complete cannot be read ({exc}); delete it "
                       "or use another --out") from exc
    if "best" not in summary:
        raise FitError(f"{run_dir}: a run finished by an older histo-bench (before the one checkpoint format); delete "
                       "it or use another --out")
    differences = run_differences(saved, resolved, ignore)
    if differences:
        raise FitError(f"{run_dir} holds a finished run with other settings ({', '.join(differences)}); use another "
                       "--out or delete it")
    return summary


def drop_rows_from(metrics_path: Path, epoch: int) -> None:
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
        from histo_bench.files import atomic_write_text

        atomic_write_text(metrics_path, "".join(line + "\n" for line in kept))


def resume_point(run_dir: Path, kind: str, resolved: dict[str, Any], device: str, precision: str
                 ) -> Checkpoint | None:
    """``last.pt`` when it can be resumed (checkpoint ``kind``, same settings and effective precision), else None
    (said in one line)."""
    path = run_dir / "last.pt"
    if not path.exists():
        return None
    try:
        last = load_checkpoint(path, (kind,), device, "resuming this run")
    except CheckpointError as exc:
        log.warning("%s; starting over", exc)
        return None
    differences = run_differences(last.config, resolved)
    if differences:
        log.warning("%s was written with other settings (%s); starting over", path, ", ".join(differences))
        return None
    if last.extra.get("precision") != precision:
        log.warning("%s was trained in %s, this machine would continue in %s; starting over", path,
                    last.extra.get("precision"), precision)
        return None
    return last


def settle_pending_best(run_dir: Path, best_epoch: int) -> None:
    """A ``best.pt`` candidate left by a kill between it and ``last.pt``: promoted when ``last.pt`` names its epoch
    as the best, else dropped (that epoch is trained again)."""
    pending = run_dir / PENDING_BEST
    if not pending.exists():
        return
    try:
        epoch = load_checkpoint(pending).epoch
    except CheckpointError:
        epoch = None
    if epoch == best_epoch:
        os.replace(pending, run_dir / "best.pt")
    else:
        pending.unlink(missing_ok=True)


def prepare_run_dir(run_dir: Path, resolved: dict[str, Any], resumed_at: int | None) -> None:
    """Ready ``run_dir`` for training: a resumed run (``resumed_at``, its first epoch) loses the rows of the epochs
    it trains again; a fresh one loses every output of an earlier attempt. Both get ``config.json`` (``resolved``),
    and lose the temporary files of a checkpoint write that a kill cut off."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stray_temporaries(run_dir):
        log.info("removed %s, left by a write that was killed", tmp)
    if resumed_at is not None:
        drop_rows_from(run_dir / "metrics.jsonl", resumed_at)
    else:
        for stale_file in ("metrics.jsonl", "best.pt", "last.pt", PENDING_BEST):
            (run_dir / stale_file).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
    atomic_write_json(run_dir / "config.json", resolved)
