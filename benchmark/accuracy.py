"""Accuracy through a backend: each magnification's test split run through the prepared callable.

The test images are loaded once per magnification (eval transform, on the benchmark device) and fed in batches of
the size the backend was prepared for, the last batch padded, so static-shape backends (compile, CUDA graphs,
TensorRT engines) answer exactly as they were timed. Each backend's logits are also compared with eager fp32 on the
same images: a fast backend that changes the answer shows up as a large ``max_abs_logit_diff`` or a
``top1_agreement`` below 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines.data.loaders import make_loader
from pipelines.evaluation.metrics import classification_metrics

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One magnification's test images, ready for the model."""

    magnification: str
    images: Any  # float (N, 3, S, S) in host memory (moved to the device a batch at a time)
    labels: np.ndarray
    patients: np.ndarray


def load_eval_sets(store, magnifications: list[str], data_config, device: str,
                   max_images: int | None = None) -> list[EvalSet]:
    """The test split at each magnification (a magnification with no test images is left out, with a warning),
    transformed on ``device`` and kept in host memory so it never counts in a backend's peak device memory."""


    sets = []
    for mag in magnifications:
        try:
            loader = make_loader(store, "test", mag, data_config, device=device, train=False, seed=0)
        except ValueError as exc:
            log.warning("no accuracy at %s: %s", mag, exc)
            continue
        xs, ys, idxs = [], [], []
        for x, y, idx in loader:
            xs.append(x.cpu())
            ys.append(y.cpu())
            idxs.append(idx.cpu())
            if max_images and sum(len(b) for b in ys) >= max_images:
                break
        images = torch.cat(xs)[:max_images]
        labels = torch.cat(ys)[:max_images].numpy()
        idx = torch.cat(idxs)[:max_images].numpy()
        sets.append(EvalSet(mag, images, labels, np.asarray(store.patient)[idx]))
    return sets


def run_logits(fn: Callable, images, batch_size: int, device: str = "cpu"):
    """``fn`` over ``images`` in batches of exactly ``batch_size`` (the last one padded with copies) moved to
    ``device`` one at a time; float32 logits on the CPU."""

    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        n = len(batch)
        if n < batch_size:
            batch = torch.cat([batch, batch[-1:].expand(batch_size - n, *batch.shape[1:])])
        out.append(fn(batch)[:n].float().cpu())
    return torch.cat(out)


def accuracy_fields(fn: Callable, sets: list[EvalSet], batch_size: int, classes: list[str],
                    reference: dict[str, Any] | None, device: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """(row fields, logits per magnification) for one prepared backend.

    Row fields: ``macro_f1``, ``accuracy``, ``n_test_images``, ``n_test_patients`` (dicts by magnification),
    ``eval_batch_size``, and, against ``reference`` (eager fp32 logits per magnification), ``max_abs_logit_diff``
    and ``top1_agreement`` over all magnifications.
    """
    fields: dict[str, Any] = {"macro_f1": {}, "accuracy": {}, "n_test_images": {}, "n_test_patients": {},
                              "eval_batch_size": batch_size}
    logits_by_mag = {}
    diffs, agree, total = [], 0, 0
    for s in sets:
        logits = run_logits(fn, s.images, batch_size, device)
        logits_by_mag[s.magnification] = logits
        pred = logits.argmax(1).numpy()
        metrics = classification_metrics(s.labels, pred, classes)
        fields["macro_f1"][s.magnification] = metrics.macro_f1
        fields["accuracy"][s.magnification] = metrics.accuracy
        fields["n_test_images"][s.magnification] = int(len(s.labels))
        fields["n_test_patients"][s.magnification] = int(len(set(s.patients.tolist())))
        if reference is not None and s.magnification in reference:
            ref = reference[s.magnification]
            diffs.append(float((logits - ref).abs().max()))
            agree += int((logits.argmax(1) == ref.argmax(1)).sum())
            total += len(ref)
    fields["max_abs_logit_diff"] = max(diffs) if diffs else None
    fields["top1_agreement"] = agree / total if total else None
    return fields, logits_by_mag
