"""``histo-bench train --model NAME --data STORE``: one command line for every model family.

The model's registered family and the store's kind decide the recipe:

================================  ==============  =========================================================
model                             store           recipe (checkpoint kind)
================================  ==============  =========================================================
a classifier (resnet50, ...)      image store     :func:`pipelines.training.classifier.train` (``classifier``)
``fusion_effnet_b0``              image store     :func:`pipelines.training.classifier.train` (``fusion``)
``fusion_effnet_b0``              slide store     ``training.slide_fusion.train_slide_fusion`` (``slide_fusion``)
``abmil`` / ``abmil_gated``       slide store     :func:`pipelines.training.mil.train_mil` (``mil``)
``mpcs_*``                        image store     :func:`pipelines.training.mpcs.pretrain` (``mpcs``)
================================  ==============  =========================================================

An option means the same thing for every recipe it applies to (:data:`OPTIONS` maps each option to the recipe's
config field); an option given to a recipe it does not apply to is refused with a message naming the options
that recipe takes, rather than silently ignored. Options not given take the recipe config's defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histo_bench.errors import HistoBenchError
from ingest import slide_store, store
from ingest.output_guard import store_format
from models.registry import MODELS
from pipelines.training.mpcs import PretrainConfig

#: The options every recipe shares: command-line name (as a Python identifier) -> config field.
_COMMON = {"epochs": "epochs", "lr": "lr", "weight_decay": "weight_decay", "precision": "precision",
           "device": "device", "seed": "seed", "max_steps": "max_steps_per_epoch", "folds": "folds", "fold": "fold",
           "split_seed": "split_seed", "wandb": "wandb", "out": "out", "data": "store"}
_IMAGE = {**_COMMON, "batch_size": "batch_size", "image_size": "image_size", "task": "task"}
_SLIDES = {**_COMMON, "labels": "labels", "scale": "scale", "patience": "patience"}

#: recipe kind -> {option -> config field}: what ``train`` accepts for each kind of run.
OPTIONS: dict[str, dict[str, str]] = {
    "classifier": {**_IMAGE, "mag": "train_magnification", "patience": "patience", "loader": "loader",
                   "pretrained": "pretrained", "weights": "weights", "unfreeze": "unfreeze",
                   "label_fraction": "label_fraction"},
    "mil": {**_SLIDES, "extractor": "extractor", "extractor_weights": "extractor_weights",
            "max_tiles": "max_patches", "loss": "loss", "focal_gamma": "focal_gamma"},
    "slide_fusion": {**_SLIDES, "batch_size": "batch_size", "max_tiles": "max_tiles"},
    "mpcs": {**_IMAGE, "pair": "pair"},
}
OPTIONS["fusion"] = OPTIONS["classifier"]

#: What each kind is, for messages.
_WHAT = {"classifier": "an image classifier", "fusion": "the multi-magnification fusion model on an image store",
         "slide_fusion": "the fusion model on a slide store", "mil": "attention MIL on a slide store",
         "mpcs": "MPCS self-supervised pretraining"}


class LaunchError(HistoBenchError, ValueError):
    """A ``train`` command line that names no runnable recipe (unknown model, wrong store, an option that does not
    apply); the message says which and what would work."""


def flag(option: str) -> str:
    """``max_steps`` -> ``--max-steps``."""
    return "--" + option.replace("_", "-")


@dataclass(frozen=True)
class TrainingPlan:
    """What ``train`` will run: the recipe kind and its validated config."""

    kind: str
    model: str
    config: Any


@dataclass(frozen=True)
class TrainingOutcome:
    """How a ``train`` run ended: its directory, whether it was already complete or resumed, and one line of
    results."""

    kind: str
    run_dir: Path
    summary: str
    already_complete: bool = False
    resumed: bool = False


def store_kind(path: str | Path) -> str:
    """``image`` or ``slide`` for a histo-bench store at ``path``; anything else is a :class:`LaunchError`."""

    path = Path(path)
    if not path.exists():
        raise LaunchError(f"{path}: no such store")
    fmt = store_format(path)
    if fmt == store.FORMAT:
        return "image"
    if fmt == slide_store.FORMAT:
        return "slide"
    raise LaunchError(f"{path}: not a histo-bench store (make one with `histo-ingest breakhis` or "
                      "`histo-ingest tile`)")


def _kind(model: str, family: str, data: str | None) -> str:
    where = store_kind(data) if data is not None else None
    if family == "mil" or (family == "fusion" and where == "slide"):
        if where != "slide":
            raise LaunchError(f"{model} trains on a slide store (`histo-ingest tile`): give it as --data"
                              + (f"; {data} is an image store" if where else ""))
        return "mil" if family == "mil" else "slide_fusion"
    if family not in ("classifier", "fusion", "mpcs"):
        raise LaunchError(f"{model} is a {family} model, which `histo-bench train` cannot train")
    if where == "slide":
        raise LaunchError(f"{model} trains on an image store (`histo-ingest breakhis`); {data} is a slide store"
                          + " (fusion_effnet_b0 and abmil / abmil_gated train on slide stores)")
    return family


def plan_training(model: str, options: dict[str, Any]) -> TrainingPlan:
    """The recipe and config for ``histo-bench train --model MODEL`` with ``options`` (option -> value, only
    those given on the command line; paths as strings)."""

    if model not in MODELS.names():
        raise LaunchError(f"unknown model {model!r}; registered: {', '.join(MODELS.names())}")
    kind = _kind(model, MODELS.get(model).family, options.get("data"))
    accepted = OPTIONS[kind]
    foreign = [o for o in options if o not in accepted]
    if foreign:
        raise LaunchError(f"{', '.join(map(flag, foreign))} does not apply to {model} ({_WHAT[kind]}); it takes "
                          f"{', '.join(sorted(map(flag, accepted)))}")
    fields = {accepted[o]: v for o, v in options.items()}
    if kind in ("mil", "slide_fusion") and "labels" not in fields:
        raise LaunchError(f"{model} on a slide store needs --labels (a CSV with slide_id,label)")
    if kind in ("mil", "slide_fusion") and fields.get("labels") and not Path(fields["labels"]).is_file():
        raise LaunchError(f"{fields['labels']}: no such labels file")
    return TrainingPlan(kind, model, _config(kind, model, fields))


def _config(kind: str, model: str, fields: dict[str, Any]):
    if kind in ("classifier", "fusion"):
        from pipelines.training.classifier import TrainConfig

        return TrainConfig(model=model, **fields)
    if kind == "mil":
        from pipelines.training.mil import MILConfig

        return MILConfig(model=model, **fields)
    if kind == "slide_fusion":
        from pipelines.training.slide_fusion import SlideFusionConfig

        return SlideFusionConfig(**fields)

    return PretrainConfig(model=model, **fields)


def run_training(plan: TrainingPlan, progress=None) -> TrainingOutcome:
    """Run ``plan`` through its recipe; ``progress(epoch, step, steps, loss)`` is the engine's step callback."""
    config = plan.config
    if plan.kind in ("mil", "slide_fusion"):
        from pipelines.training.slide_runs import settle_slide_config

        config = settle_slide_config(config)  # the run directory may name the store's first scale
    run_dir = Path(config.run_dir)
    if plan.kind in ("classifier", "fusion"):
        from pipelines.training.classifier import train

        result = train(config, progress=progress)
        best = result.best_val
        n_classes = len(best.get("per_class_f1") or {})
        chance = f" (chance {1 / n_classes:.3f})" if n_classes else ""
        line = (f"best epoch {result.best_epoch}, val macro-F1 {best.get('macro_f1', 0):.3f}{chance}, accuracy "
                f"{best.get('accuracy', 0):.3f}, patient accuracy {best.get('patient_accuracy') or 0:.3f} "
                f"({best.get('n_images', 0)} images, {best.get('n_patients', 0)} patients)")
        return TrainingOutcome(plan.kind, result.run_dir, line, result.already_complete, result.resumed)
    complete = (run_dir / "complete").exists()  # before: finished already (a no-op), or trained now
    if plan.kind == "mil":
        from pipelines.training.mil import train_mil

        summary = train_mil(config, progress=progress)
        test = summary.get("test") or {}
        line = _slide_line(summary, test)
    elif plan.kind == "slide_fusion":
        from pipelines.training.slide_fusion import train_slide_fusion

        summary = train_slide_fusion(config, progress=progress)
        line = f"{summary.get('n_inputs', 0)} views per tile, " + _slide_line(summary, summary.get("test_slide"))
    else:
        from pipelines.training.mpcs import pretrain

        weights = pretrain(config, progress=progress)
        backbone = plan.model.removeprefix("mpcs_")
        line = (f"encoder weights {weights}; fine-tune with: histo-bench train --model {backbone} --weights "
                f"{weights}")
    return TrainingOutcome(plan.kind, run_dir, line, complete, not complete and _resumed(run_dir))


def _resumed(run_dir: Path) -> bool:
    """Whether the run that just finished in ``run_dir`` resumed an interrupted one (the engine's ``complete``)."""

    try:
        return json.loads((run_dir / "complete").read_text()).get("resumed_at") is not None
    except (OSError, ValueError):
        return False


def _slide_line(summary: dict[str, Any], test: dict[str, Any] | None) -> str:
    classes = summary.get("classes") or []
    chance = f", chance {1 / len(classes):.3f}" if classes else ""
    slides = ", ".join(f"{k} {v}" for k, v in (summary.get("n_slides") or {}).items())
    if not test:
        return f"slides: {slides}; no test slides"
    return (f"slides: {slides}; test macro-F1 {test['macro_f1']:.3f}{chance}, accuracy {test['accuracy']:.3f} "
            f"({test['n_images']} slides)")
