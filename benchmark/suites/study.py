"""What one suite invocation is (:class:`StudyConfig`): the data, tasks, models, folds x seeds and the overrides.

A :class:`StudyConfig` says which runs a suite makes (:meth:`~StudyConfig.runs`, :meth:`~StudyConfig.run_dir`), the
training config of each (TrainConfig defaults < :data:`QUICK` in quick mode < the study's overrides < the suite's
fields, :meth:`~StudyConfig.train_config`), and how to put the study in words for the report
(:meth:`~StudyConfig.protocol`) and the command line (:meth:`~StudyConfig.command`). The suites that run it live
beside it (:mod:`benchmark.suites.base`, one module per suite); local weights files are found by :func:`weights_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histo_bench.errors import ConfigError
from models.registry import MODELS
from pipelines.data.tasks import check_task
from pipelines.training.classifier import TrainConfig, default_store

#: The CPU-sized training settings of ``--quick`` (explicit overrides win): a few steps of one epoch at 64 px.
QUICK: dict[str, Any] = {"epochs": 1, "batch_size": 8, "image_size": 64, "max_steps_per_epoch": 3,
                         "warmup_epochs": 0.0}


@dataclass(frozen=True)
class StudyConfig:
    """One suite invocation.

    Attributes:
        suite: registered suite name (``histo-bench suite --list``).
        store: image store (None: the embedded synthetic demo store).
        tasks: tasks to run, "subtype" and/or "binary"; empty = the suite's default.
        models: models to run; empty = the suite's default.
        folds: patient-level k-fold cross-validation (0 = the store's own split; the papers use 5).
        seeds: training seeds per fold (``seed``, ``seed + 1``, ...).
        seed: the first training seed.
        split_seed: seeds the fold assignment.
        quick: CPU-sized runs (:data:`QUICK`): checks the pipeline end to end, says nothing about the models.
        device: "auto", "cpu", "cuda" or "cuda:N".
        out: suite directory (None: ``runs/suites/<suite>``).
        epochs, batch_size, image_size, lr, max_steps_per_epoch: override the suite's / quick mode's settings.
        precision: "auto", "fp32", "bf16" or "fp16".
        loader: "auto", "device", "dali" or "torch".
        pretrained: start every model from ImageNet weights through timm (needs the hub or its cache).
        weights_dir: a folder of local weights files named after the models (``resnet50.safetensors``, ``.pth``,
            ``.pt`` or ``.bin``), used to initialise each model (wins over ``pretrained``).
        keep_last: keep each finished run's ``last.pt`` (the final epoch's weights, which ``best.pt`` also holds
            when that epoch was the best); off, it is deleted once the run is complete (``best.pt`` stays), which
            saves one model size of disk per run.
    """

    suite: str
    store: str | None = None
    tasks: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    folds: int = 0
    seeds: int = 1
    seed: int = 0
    split_seed: int = 0
    quick: bool = False
    device: str = "auto"
    out: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    lr: float | None = None
    max_steps_per_epoch: int | None = None
    precision: str = "auto"
    loader: str = "auto"
    pretrained: bool = False
    weights_dir: str | None = None
    keep_last: bool = False

    def __post_init__(self) -> None:

        object.__setattr__(self, "tasks", tuple(dict.fromkeys(self.tasks)))
        object.__setattr__(self, "models", tuple(dict.fromkeys(self.models)))
        for task in self.tasks:
            check_task(task)
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"folds must be 0 (the store's own split) or >= 2, got {self.folds}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        for name in ("epochs", "batch_size", "image_size", "max_steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weights_dir is not None and not Path(self.weights_dir).is_dir():
            raise ConfigError(f"weights_dir {self.weights_dir}: no such folder")

    @property
    def suite_dir(self) -> Path:
        return Path(self.out or f"runs/suites/{self.suite}")

    @property
    def store_path(self) -> Path:
        """The store (the demo store is generated and ingested on first use)."""
        if self.store:
            return Path(self.store)

        return default_store()

    @property
    def single_run(self) -> bool:
        """One run per cell (the store's split, one seed): run directories get no fold/seed level."""
        return self.folds == 0 and self.seeds == 1

    def runs(self) -> list[tuple[int, int]]:
        """(fold, seed) of every repetition: folds x seeds (fold 0 only with the store's own split)."""
        return [(f, self.seed + s) for f in range(max(self.folds, 1)) for s in range(self.seeds)]

    def run_dir(self, *parts: str, fold: int, seed: int) -> str:
        """``<suite dir>/<parts...>[/fold<k>-seed<s>]`` (the last level only when there are several runs)."""
        path = self.suite_dir.joinpath(*map(str, parts))
        if not self.single_run:
            path = path / (f"fold{fold}-seed{seed}" if self.folds else f"seed{seed}")
        return str(path)

    def tasks_or(self, default: Sequence[str]) -> tuple[str, ...]:
        return self.tasks or tuple(default)

    def models_or(self, default: Sequence[str]) -> tuple[str, ...]:
        return self.models or tuple(default)

    def settings(self) -> dict[str, Any]:
        """The training fields this study sets (quick defaults, then explicit overrides)."""
        fields: dict[str, Any] = dict(QUICK) if self.quick else {}
        for name in ("epochs", "batch_size", "image_size", "lr", "max_steps_per_epoch"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        return fields

    def train_config(self, *, model: str, fold: int, seed: int, out: str, **fields: Any):
        """The :class:`~pipelines.training.classifier.TrainConfig` of one run: TrainConfig defaults < quick mode <
        the study's
        overrides < ``fields``. Fixed-size transformers (DeiT, Swin) get ``img_size`` at a size other than 224."""

        merged: dict[str, Any] = {"store": str(self.store) if self.store else None, "device": self.device,
                                  "precision": self.precision, "loader": self.loader, "folds": self.folds,
                                  "split_seed": self.split_seed, **self.settings(), **fields}
        if self.pretrained:
            merged.setdefault("pretrained", True)
        if self.weights_dir:
            merged.setdefault("weights", str(weights_file(self.weights_dir, model)))
        size = merged.get("image_size", 224)
        kwargs = dict(merged.pop("model_kwargs", {}) or {})
        if size != 224 and MODELS.get(model).input_spec.startswith("(B, 3, 224, 224)"):
            kwargs.setdefault("img_size", size)
        return TrainConfig(model=model, fold=fold if self.folds else 0, seed=seed, out=out, model_kwargs=kwargs,
                           **merged)

    def protocol(self) -> str:
        """The evaluation protocol in words, for report headers."""
        split = (f"patient-level {self.folds}-fold cross-validation (grouped by patient, stratified by class, "
                 f"split seed {self.split_seed}; val = a stratified share of the other folds' patients)"
                 if self.folds else "the store's own patient-level train/val/test split")
        listed = ", ".join(str(self.seed + s) for s in range(self.seeds))
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''} ({listed})"
        return f"{split} x {seeds} = {len(self.runs())} run(s) per cell"

    def command(self) -> str:
        """The CLI line that reproduces this study."""
        parts = [f"histo-bench suite {self.suite}"]
        if self.store:
            parts.append(f"--data {self.store}")
        parts += [f"--task {t}" for t in self.tasks] + [f"--model {m}" for m in self.models]
        for name, default in (("folds", 0), ("seeds", 1), ("seed", 0), ("split_seed", 0), ("epochs", None),
                              ("batch_size", None), ("image_size", None), ("lr", None),
                              ("max_steps_per_epoch", None)):
            value = getattr(self, name)
            if value != default:
                flag = "max-steps" if name == "max_steps_per_epoch" else name.replace("_", "-")
                parts.append(f"--{flag} {value}")
        if self.pretrained:
            parts.append("--pretrained")
        if self.weights_dir:
            parts.append(f"--weights-dir {self.weights_dir}")
        if self.quick:
            parts.append("--quick")
        return " ".join(parts)


def weights_file(folder: str | Path, model: str) -> Path:
    """``<folder>/<model>.<safetensors|pth|pt|bin>``; a ValueError naming what was looked for when missing."""
    for ext in (".safetensors", ".pth", ".pt", ".bin"):
        path = Path(folder) / f"{model}{ext}"
        if path.is_file():
            return path
    raise ConfigError(f"no weights for {model} in {folder} (looked for {model}.safetensors / .pth / .pt / .bin)")
