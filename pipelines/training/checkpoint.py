"""One checkpoint format for every recipe: written atomically, loaded with ``weights_only=True``, told apart by
``kind``, never by sniffing keys.

A checkpoint file is a dict::

    format        "histo-bench/checkpoint"
    version       1 (an integer; a newer file than this code understands is refused)
    kind          classifier | fusion | slide_fusion | mil | mpcs
    model         registered model name;  model_kwargs (JSON): what else ``build_model`` needs (in_dim, n_inputs...)
    classes       class names (empty for MPCS, which has no head)
    task          "subtype", "binary" or the slide-label task
    config        the run's resolved config (JSON)
    epoch         the epoch the state is from
    extra         recipe bookkeeping (JSON: best validation result, patience counter...)
    state         {"model": state dict, and in ``last.pt`` while epochs are left "optimizer", "scheduler", "scaler",
                  "torch_rng" (the final epoch's ``last.pt`` holds "model" only)}

``best.pt`` and ``last.pt`` of every run directory have this form. Every consumer (``evaluate``, ``explain``,
``run``, ``predict``, suites, the resume of an interrupted run) goes through :func:`load_checkpoint` and checks
the kind it accepts. A file from before this format, a truncated, empty or foreign file, and a kind the consumer
cannot use are each a :class:`CheckpointError` with one line naming the file and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from histo_bench.errors import HistoBenchError
from histo_bench.files import atomic_write
from models.registry import build_model

FORMAT = "histo-bench/checkpoint"
VERSION = 1
#: The kinds ``evaluate``, ``explain`` and ``run`` score on an image store.
IMAGE_KINDS = ("classifier", "fusion")
#: kind -> how a user makes one (for the messages).
KINDS = {
    "classifier": "histo-bench train --model <classifier>",
    "fusion": "histo-bench train --model fusion_effnet_b0",
    "slide_fusion": "histo-bench train --model fusion_effnet_b0 --data SLIDE_STORE --labels CSV",
    "mil": "histo-bench train --model abmil_gated --data SLIDE_STORE --labels CSV",
    "mpcs": "histo-bench train --model mpcs_resnet50",
}


class CheckpointError(HistoBenchError, ValueError):
    """A checkpoint that cannot be used: missing, unreadable, of an older format, or of another kind."""


@dataclass
class Checkpoint:
    """A checkpoint in memory (see the module doc for the fields)."""

    kind: str
    model: str
    state: dict[str, Any]
    classes: list[str] = field(default_factory=list)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "subtype"
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if "model" not in self.state:
            raise ValueError("a checkpoint's state must hold the model's state dict under 'model'")

    def build(self, device: str = "cpu"):
        """The model with this checkpoint's weights, on ``device``, in eval mode."""

        model = build_model(self.model, len(self.classes), **self.model_kwargs)
        try:
            model.load_state_dict(self.state["model"])
        except RuntimeError as exc:  # weights of another architecture or head: the user's checkpoint, not a bug
            why = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:2])[:300]
            raise CheckpointError(f"the checkpoint's weights do not fit {self.model!r}: {why}") from exc
        return model.to(device).eval()


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder, flush + fsync, rename): a crash or kill
    during the write leaves the previous file whole."""

    payload = {"format": FORMAT, "version": VERSION, "kind": ckpt.kind, "model": ckpt.model,
               "model_kwargs": json.dumps(ckpt.model_kwargs), "classes": list(ckpt.classes), "task": ckpt.task,
               "config": json.dumps(ckpt.config, default=str), "epoch": int(ckpt.epoch),
               "extra": json.dumps(ckpt.extra, default=str), "state": ckpt.state}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def _retrain_hint(raw: dict[str, Any]) -> str:
    if "in_dim" in raw:
        return KINDS["mil"]
    if "n_inputs" in raw:
        return KINDS["slide_fusion"]
    return "histo-bench train"


def load_checkpoint(path: str | Path, kinds: tuple[str, ...] | None = None, device: str = "cpu",
                    purpose: str = "this command") -> Checkpoint:
    """Read the checkpoint at ``path`` (``weights_only=True``, tensors mapped to ``device``); with ``kinds``, only
    those kinds are accepted (``purpose`` names the consumer in the error). Raises :class:`CheckpointError`."""

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # an arbitrary file: torch's unpickler fails in many ways (IndexError, EOFError...)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated, corrupt or another kind of "
                              f"file: {reason})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a histo-bench checkpoint (holds a {type(raw).__name__})")
    if raw.get("format") != FORMAT:
        if "model" in raw and ("config" in raw or "in_dim" in raw):
            raise CheckpointError(f"{path}: written before the versioned checkpoint format (no 'format' field); "
                                  f"retrain it with `{_retrain_hint(raw)}` into a new --out (or delete its run "
                                  "directory first)")
        raise CheckpointError(f"{path}: not a histo-bench checkpoint (no format {FORMAT!r})")
    version = raw.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is newer than this histo-bench "
                              f"understands ({VERSION}); upgrade histo-bench")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")
    if kinds is not None and kind not in kinds:
        raise CheckpointError(f"{path}: a {kind} checkpoint; {purpose} takes {' or '.join(kinds)} checkpoints")
    try:
        return Checkpoint(kind=kind, model=raw["model"], state=raw["state"], classes=list(raw["classes"]),
                          model_kwargs=json.loads(raw["model_kwargs"]), task=raw["task"],
                          config=json.loads(raw["config"]), epoch=int(raw["epoch"]),
                          extra=json.loads(raw["extra"]), path=path)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: a damaged checkpoint ({type(exc).__name__}: {exc})") from exc


def load_model(path: str | Path, kinds: tuple[str, ...] = IMAGE_KINDS, device: str = "cpu",
               purpose: str = "this command"):
    """(model in eval mode on ``device``, the run's resolved config, class names) of a checkpoint of ``kinds``."""
    ckpt = load_checkpoint(path, kinds, device, purpose)
    return ckpt.build(device), ckpt.config, list(ckpt.classes)
