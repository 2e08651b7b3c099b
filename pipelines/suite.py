"""The cross-magnification suite of the DeiT-Small / Swin-Tiny study: for each model, train on 100X, 400X and mixed
(100X+400X) and test every checkpoint on every magnification's test split.

Each training run is an ordinary resumable run directory under ``<out>/<model>/<train magnification>``, so an
interrupted suite picks up where it stopped; ``results.json`` gathers one cell per (model, train, test) and the
report (``pipelines.report``) is written from it. The task (``train.task``: subtype or binary) applies to every run
and is recorded in ``results.json``; its default suite directory is ``runs/suite`` (subtype) or
``runs/suite-<task>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.train import TrainConfig, evaluate_split, load_checkpoint, train

log = logging.getLogger(__name__)

MAGS = ("100X", "400X", "mixed")


@dataclass(frozen=True)
class SuiteConfig:
    """The suite: which models, train x test magnifications, and the training settings shared by every run.

    Attributes:
        models: registered model names.
        train_magnifications: what each model is trained on.
        test_magnifications: what each checkpoint is tested on.
        train: the training config every run starts from (its model/magnification/out are set per run); its
            ``task`` is the suite's task.
        out: suite directory (None: ``runs/suite``, or ``runs/suite-<task>`` for a task other than subtype).
    """

    models: tuple[str, ...] = ("deit_small", "swin_tiny")
    train_magnifications: tuple[str, ...] = MAGS
    test_magnifications: tuple[str, ...] = MAGS
    train: TrainConfig = TrainConfig()
    out: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("give at least one --model")

    @property
    def suite_dir(self) -> Path:
        task = self.train.task
        return Path(self.out or ("runs/suite" if task == "subtype" else f"runs/suite-{task}"))


def run_suite(config: SuiteConfig, on_run: Callable[[str, str], None] | None = None,
              progress=None) -> dict[str, Any]:
    """Train and test every (model, train magnification); return and save the results table."""
    from ingest.store import ImageStore
    from pipelines.data import DataConfig
    from pipelines.device import resolve_device
    from pipelines.tasks import task_classes

    out = config.suite_dir
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    store_path = None
    for model in config.models:
        for train_mag in config.train_magnifications:
            if on_run:
                on_run(model, train_mag)
            run_config = replace(config.train, model=model, train_magnification=train_mag,
                                 out=str(out / model / train_mag))
            result = train(run_config, progress=progress)
            device = resolve_device(run_config.device)
            net, saved, _ = load_checkpoint(result.run_dir / "best.pt", device)
            store_path = saved["store"]
            store = ImageStore(store_path)
            data_config = DataConfig(image_size=run_config.image_size, load_size=run_config.load_size,
                                     batch_size=run_config.batch_size, loader=run_config.loader,
                                     task=run_config.task)
            for test_mag in config.test_magnifications:
                m = evaluate_split(net, store, "test", test_mag, data_config, device, None)
                cells.append({"model": model, "train": train_mag, "test": test_mag, "macro_f1": m.macro_f1,
                              "accuracy": m.accuracy, "balanced_accuracy": m.balanced_accuracy,
                              "patient_accuracy": m.patient_accuracy, "n_images": m.n_images,
                              "n_patients": m.n_patients, "per_class": m.per_class, "confusion": m.confusion,
                              "best_epoch": result.best_epoch, "run_dir": str(result.run_dir)})
                log.info("%s %s -> %s: macro-F1 %.3f (%d images, %d patients)", model, train_mag, test_mag,
                         m.macro_f1, m.n_images, m.n_patients)
    store = ImageStore(store_path)
    task = config.train.task
    results = {"config": json.loads(json.dumps(asdict(config), default=str)), "store": str(store_path),
               "origin": store.attrs.get("origin", {}), "task": task, "classes": list(task_classes(store, task)),
               "cells": cells}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results
