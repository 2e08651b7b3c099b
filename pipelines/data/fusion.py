"""Multi-magnification inputs for the fusion model from an image store: same-patient images at K magnifications.

BreakHis images of one patient at different magnifications are not the same field of view, so (as in the
multi-input study) a sample is an anchor image at the first magnification plus, for every other magnification, an
image of the *same patient* drawn at random (training) or in a fixed rotation (evaluation); the label is the
anchor's (for ``DataConfig.task``). Every view is augmented independently on the device. Patients lacking one of
the magnifications are left out (logged).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from histo_bench.errors import ConfigError
from ingest.breakhis_names import resolve_magnifications
from pipelines.data.augment import GpuAugment, eval_transform
from pipelines.data.base import (
    DataConfig,
    _EpochMixin,
    _n_batches,
    _open,
    balanced_weights,
    epoch_order,
    epoch_seed,
    load_images,
)
from pipelines.data.tasks import task_labels

log = logging.getLogger(__name__)


class FusionLoader(_EpochMixin):
    """Yields ``(x (B, K, 3, S, S), y (B,), idx (B,))``: idx are the anchors' store indices."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, indices: np.ndarray, anchors: np.ndarray,
                 partners: list[list[np.ndarray]], *, config: DataConfig, train: bool, seed: int, device,
                 rank: int = 0, world_size: int = 1) -> None:
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.anchors, self.partners = anchors, partners
        self.batch_size, self.train, self.seed = config.batch_size, train, seed
        self.image_size = config.image_size
        self.rank, self.world_size = rank, world_size
        self.augment = GpuAugment(config.augment, config.image_size, seed=seed)

    @property
    def n_images(self) -> int:
        return len(self.anchors)

    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(len(self.anchors), seed=self.seed, epoch=epoch, shuffle=self.train, drop_last=self.train,
                           rank=self.rank, world_size=self.world_size, weights=self.sample_weights)

    def __len__(self) -> int:
        return _n_batches(len(self._order(0)), self.batch_size, self.train)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = self._take_epoch()
        order = self._order(epoch)
        rng = np.random.default_rng(epoch_seed(self.seed, epoch, self.rank, 7))
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank, 8))
        for b in range(len(self)):
            pos = order[b * self.batch_size:(b + 1) * self.batch_size]
            views = [self.anchors[pos]]
            for choices in self.partners:
                if self.train:
                    views.append(np.array([c[rng.integers(len(c))] for c in (choices[p] for p in pos)]))
                else:
                    views.append(np.array([choices[p][p % len(choices[p])] for p in pos]))
            flat = torch.from_numpy(np.stack(views, axis=1).reshape(-1)).to(self.device)
            batch = self.images.index_select(0, flat)
            x = self.augment(batch, generator=gen) if self.train else eval_transform(batch, self.image_size)
            anchor = torch.from_numpy(self.anchors[pos])
            yield (x.view(len(pos), len(views), *x.shape[1:]), self.labels[anchor], self.indices[anchor])


def make_fusion_loader(store: Any, split: str | None, magnification, config: DataConfig, *, device, train: bool,
                       seed: int = 0, rank: int = 0, world_size: int = 1, progress=None) -> FusionLoader:
    """A :class:`FusionLoader` over ``split`` whose inputs are the magnifications in ``magnification``, in order."""
    store = _open(store)
    mags = resolve_magnifications(magnification)
    if len(mags) < 1 or len(mags) > 4:
        raise ConfigError(f"the fusion model takes 1 to 4 magnifications, got {mags}")
    idx = store.select(split=split, magnification=mags)
    patients, mag_of = store.patient[idx], store.magnification[idx]
    by_patient: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for pos, (p, m) in enumerate(zip(patients.tolist(), mag_of.tolist(), strict=True)):
        by_patient[p][m].append(pos)
    complete = {p for p, d in by_patient.items() if all(m in d for m in mags)}
    dropped = sorted(set(by_patient) - complete)
    if dropped:
        log.warning("fusion %s: %d patient(s) lack one of %s and are left out: %s", split, len(dropped),
                    "+".join(mags), ", ".join(dropped[:5]))
    anchors = np.array([pos for pos in range(len(idx)) if mag_of[pos] == mags[0] and patients[pos] in complete],
                       dtype=np.int64)
    if len(anchors) == 0:
        raise ConfigError(f"{store.path}: no {split} patient has images at every one of {', '.join(mags)}")
    # partners[k][j]: positions (into ``idx``) of the images of anchor j's patient at magnification k + 1
    partners = [[np.array(by_patient[patients[a]][m]) for a in anchors] for m in mags[1:]]
    images = load_images(store, idx, config.load_size, progress=progress)
    labels = task_labels(store, config.task)[0][idx]
    loader = FusionLoader(images, labels, idx, anchors, partners, config=config, train=train, seed=seed,
                          device=device, rank=rank, world_size=world_size)
    if train and config.sampler == "weighted":  # balanced over the anchors' classes
        loader.sample_weights = balanced_weights(labels[anchors])
    return loader
