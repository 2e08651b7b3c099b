"""Training / evaluation loaders over an image store: device-resident (fast path), DALI, and torch fallback.

Every loader yields ``(x, y, idx)`` per batch: ``x`` float32 (B, 3, S, S) ImageNet-normalised on the target device,
``y`` int64 (B,) labels of ``DataConfig.task`` (:func:`~pipelines.data.tasks.task_labels`), ``idx`` int64 (B,) store
indices (for patient-level evaluation). Every loader has ``__len__`` (batches per epoch), ``n_images``,
``set_epoch(epoch)`` and shards by ``rank`` / ``world_size``.

- :class:`DeviceLoader`: every selected image is resized once (shorter side ``load_size``) and kept on the device as
  uint8; batches are gathered, augmented (:class:`~pipelines.data.augment.GpuAugment`) or centre-cropped
  (:func:`~pipelines.data.augment.eval_transform`) on the device. No host work per batch.
- :class:`~pipelines.data.dali.DaliLoader` (``pipelines/data/dali.py``): images streamed from the store through DALI.
- :class:`TorchLoader`: a ``torch.utils.data.DataLoader`` with worker processes that read and resize single images;
  uint8 batches are collated, moved to the device and augmented there *after* collation (one batched
  :class:`GpuAugment` call per batch instead of one per image). Workers start through the forkserver (spawn where
  there is none), never by forking a training process that by then runs DALI, cuCIM, ONNX Runtime, inductor,
  OpenMP and zarr threads, and exit when that process dies (:mod:`ingest.workers`).

Ordering (all loaders): epoch ``e`` of rank ``r`` is a pure function of ``(seed, e)``: one permutation of the whole
selection (identical on all ranks), of which rank ``r`` takes positions ``r, r + world_size, ...``. For training
(``drop_last``) the permutation is first truncated to a multiple of ``world_size`` so every rank runs the same number
of steps; for evaluation the ranks' slices are disjoint and cover the selection exactly. Iterating a loader
without calling :meth:`set_epoch` advances the epoch by one each time.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from histo_bench.errors import ConfigError
from ingest.workers import mp_context, watch_parent
from pipelines.data.augment import AugmentConfig, eval_transform, resize_uint8
from pipelines.data.base import (
    Batch,
    DataConfig,
    Progress,
    _EpochMixin,
    _n_batches,
    _open,
    balanced_weights,
    epoch_order,
    epoch_seed,
    fits_on_device,
    load_images,
    load_shape,
)
from pipelines.data.dali import DaliLoader, dali_available
from pipelines.data.tasks import task_labels

log = logging.getLogger(__name__)


class DeviceLoader(_EpochMixin):
    """All selected images resident on ``device`` as uint8, augmented there batch by batch (the fast path).

    Args:
        images: uint8 (N, 3, h, w) tensor (moved to ``device`` once).
        labels: (N,) class labels.
        indices: (N,) store indices of the images (yielded as ``idx``).
        batch_size: images per batch.
        train: random augmentation + shuffling + ``drop_last`` (defaults); else :func:`eval_transform`, in order.
        augment: augmentation strengths (train only).
        image_size: side of the output.
        seed: seeds the shuffling and the augmentation (epoch e is a function of (seed, e, rank)).
        device: where the images live and batches are produced.
        drop_last / shuffle: override the ``train`` defaults.
        rank / world_size: DDP sharding (see the module docstring).
    """

    def __init__(self, images: torch.Tensor, labels: np.ndarray | torch.Tensor, indices: np.ndarray | torch.Tensor,
                 *, batch_size: int = 32, train: bool = True, augment: AugmentConfig | None = None,
                 image_size: int = 224, seed: int = 0, device: torch.device | str = "cpu",
                 drop_last: bool | None = None, shuffle: bool | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (N, 3, h, w), got {tuple(images.shape)} {images.dtype}")
        if not (len(images) == len(labels) == len(indices)):
            raise ValueError("images, labels and indices must have the same length")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(self.device)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long).to(self.device)
        self._setup(batch_size=batch_size, train=train, seed=seed, drop_last=drop_last, shuffle=shuffle, rank=rank,
                    world_size=world_size, image_size=image_size, augment=augment)

    @classmethod
    def from_store(cls, store: Any, indices: np.ndarray, config: DataConfig, *, device: torch.device | str,
                   train: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                   progress: Progress | None = None) -> DeviceLoader:
        """Load ``indices`` of ``store`` (resized to ``config.load_size``) onto ``device``."""
        store = _open(store)
        t0 = time.perf_counter()
        images = load_images(store, indices, config.load_size, progress=progress)
        log.debug("DeviceLoader: %d images %s (%.1f MiB) loaded in %.1fs onto %s", len(images),
                  tuple(images.shape[1:]), images.numel() / 2**20, time.perf_counter() - t0, device)
        labels = task_labels(store, config.task)[0][indices]
        loader = cls(images, labels, indices, batch_size=config.batch_size, train=train, augment=config.augment,
                     image_size=config.image_size, seed=seed, device=device, rank=rank, world_size=world_size)
        if train and config.sampler == "weighted":
            loader.sample_weights = balanced_weights(labels)
        return loader

    @property
    def n_images(self) -> int:
        """Images held (the whole selection, on every rank)."""
        return int(self.images.shape[0])

    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.n_images, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                           drop_last=self.drop_last, rank=self.rank, world_size=self.world_size,
                           weights=self.sample_weights)

    def __len__(self) -> int:
        per_rank = len(self._order(0)) if self.world_size > 1 else self.n_images
        return _n_batches(per_rank, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._take_epoch()
        order = torch.from_numpy(self._order(epoch)).to(self.device)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank, 1))
        for b in range(len(self)):
            pos = order[b * self.batch_size:(b + 1) * self.batch_size]
            batch = self.images.index_select(0, pos)
            x = self.augment(batch, generator=gen) if self.train else eval_transform(batch, self.image_size)
            yield x, self.labels.index_select(0, pos), self.indices.index_select(0, pos)


class StoreDataset(torch.utils.data.Dataset):
    """Single images of a store, resized to ``load_size``: item -> (uint8 (3, h, w), ``task`` label, store index).

    Holds only the store's path; each worker process opens its own :class:`~ingest.store.ImageStore`.
    """

    def __init__(self, store: Any, indices: np.ndarray, load_size: int | None, task: str = "subtype") -> None:
        store = _open(store)
        self.path = str(store.path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = task_labels(store, task)[0][self.indices]
        self.shape = load_shape(*store.image_shape[:2], load_size)
        self._store = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self._store is None:
            self._store = _open(self.path)
        idx = int(self.indices[i])
        image = torch.from_numpy(self._store.read([idx])).permute(0, 3, 1, 2)
        return resize_uint8(image, self.shape)[0], int(self.labels[i]), idx


class _OrderSampler(torch.utils.data.Sampler):
    """Yields the positions of the current epoch (set by :class:`TorchLoader` before each iteration)."""

    def __init__(self) -> None:
        self.order = np.arange(0)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def _worker_init(_worker_id: int, parent_pid: int) -> None:
    torch.set_num_threads(1)
    watch_parent(parent_pid)  # a worker never outlives the training process, even one killed by SIGKILL


class TorchLoader(_EpochMixin):
    """The portable fallback: a ``DataLoader`` reads and resizes single images in worker processes; the uint8 batch
    is collated, moved to ``device`` and augmented there (:class:`GpuAugment`) or centre-cropped
    (:func:`eval_transform`). Arguments as :class:`DeviceLoader`, plus ``load_size``, ``num_workers`` and ``task``."""

    def __init__(self, store: Any, indices: np.ndarray, *, batch_size: int = 32, train: bool = True,
                 augment: AugmentConfig | None = None, image_size: int = 224, load_size: int | None = 256,
                 num_workers: int = 2, seed: int = 0, device: torch.device | str = "cpu",
                 drop_last: bool | None = None, shuffle: bool | None = None, rank: int = 0,
                 world_size: int = 1, task: str = "subtype") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.dataset = StoreDataset(store, indices, load_size, task)
        self.device = torch.device(device)
        self._setup(batch_size=batch_size, train=train, seed=seed, drop_last=drop_last, shuffle=shuffle, rank=rank,
                    world_size=world_size, image_size=image_size, augment=augment)
        self._sampler = _OrderSampler()
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self._sampler, drop_last=self.drop_last,
            num_workers=num_workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=functools.partial(_worker_init, parent_pid=os.getpid()),
            multiprocessing_context=mp_context() if num_workers > 0 else None,
            persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)

    @classmethod
    def from_store(cls, store: Any, indices: np.ndarray, config: DataConfig, *, device: torch.device | str,
                   train: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> TorchLoader:
        loader = cls(store, indices, batch_size=config.batch_size, train=train, augment=config.augment,
                     image_size=config.image_size, load_size=config.load_size, num_workers=config.num_workers,
                     seed=seed, device=device, rank=rank, world_size=world_size, task=config.task)
        if train and config.sampler == "weighted":
            loader.sample_weights = balanced_weights(loader.dataset.labels)
        return loader

    @property
    def n_images(self) -> int:
        return len(self.dataset)

    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.n_images, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                           drop_last=self.drop_last, rank=self.rank, world_size=self.world_size,
                           weights=self.sample_weights)

    def __len__(self) -> int:
        return _n_batches(len(self._order(0)), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._take_epoch()
        self._sampler.order = self._order(epoch)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, self.rank, 1))
        for images, labels, idx in self._loader:
            batch = images.to(self.device, non_blocking=True)
            x = self.augment(batch, generator=gen) if self.train else eval_transform(batch, self.image_size)
            yield x, labels.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)


def make_loader(store: Any, split: str | None, magnification: str | list[str] | None, config: DataConfig, *,
                device: torch.device | str, train: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                progress: Progress | None = None):
    """The loader for ``split`` x ``magnification`` of ``store`` chosen by ``config.loader`` (see
    :class:`DataConfig`); the choice and its reason are logged."""

    store = _open(store)
    indices = store.select(split=split, magnification=magnification)
    if len(indices) == 0:
        raise ConfigError(f"{store.path}: no images for split={split!r}, magnification={magnification!r}")
    device = torch.device(device)
    h, w = load_shape(*store.image_shape[:2], config.load_size)
    n_bytes = len(indices) * 3 * h * w
    choice, why = config.loader, "asked for"
    if choice == "auto":
        dali_missing = dali_available()
        if fits_on_device(n_bytes, device, config.device_fraction):
            choice, why = "device", f"{n_bytes / 2**20:.0f} MiB of images fit on {device}"
        elif device.type == "cuda" and dali_missing is None and train and config.sampler == "weighted":
            choice, why = "torch", (f"{n_bytes / 2**20:.0f} MiB of images do not fit on {device}; the weighted "
                                    "sampler is not implemented by the DALI loader")
        elif device.type == "cuda" and dali_missing is None:
            choice, why = "dali", f"{n_bytes / 2**20:.0f} MiB of images do not fit on {device}"
        else:
            reason = "device is not CUDA" if device.type != "cuda" else f"DALI unusable: {dali_missing}"
            choice, why = "torch", f"{n_bytes / 2**20:.0f} MiB of images do not fit on {device}; {reason}"
    log.debug("loader %s for %s/%s (%d images, train=%s, rank %d/%d): %s", choice, split, magnification,
              len(indices), train, rank, world_size, why)
    if choice == "device":
        return DeviceLoader.from_store(store, indices, config, device=device, train=train, seed=seed, rank=rank,
                                       world_size=world_size, progress=progress)
    if choice == "dali" and train and config.sampler == "weighted":
        raise ConfigError("the weighted sampler is implemented by the device and torch loaders; use --loader device "
                         "or --loader torch")
    if choice == "dali":
        return DaliLoader.from_store(store, indices, config, device=device, train=train, seed=seed, rank=rank,
                                     world_size=world_size)
    return TorchLoader.from_store(store, indices, config, device=device, train=train, seed=seed, rank=rank,
                                  world_size=world_size)


# -- input-pipeline efficiency ---------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_efficiency(loader, model_step: Callable[[torch.Tensor, torch.Tensor], Any], n_batches: int = 20,
                     warmup: int = 2) -> dict[str, float]:
    """How much of the step rate the loader sustains.

    Times ``n_batches`` calls of ``model_step(x, y)`` fed by ``loader`` (cycling epochs as needed), then the same
    number on one synthetic batch of the same shape already on the device. Returns images/s of both and their ratio
    ``efficiency`` (1.0 = the loader is never the bottleneck).
    """
    if n_batches < 1:
        raise ValueError("n_batches must be >= 1")

    def batches() -> Iterator[Batch]:
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise ValueError("the loader yields no batches")

    stream = batches()
    x, y, _ = next(stream)
    device = x.device
    for _ in range(warmup):
        model_step(x, y)
    _sync(device)
    images, t0 = 0, time.perf_counter()
    for _ in range(n_batches):
        x, y, _ = next(stream)
        model_step(x, y)
        images += len(x)
    _sync(device)
    loader_s = time.perf_counter() - t0
    sx, sy = torch.randn_like(x), y.clone()
    for _ in range(warmup):
        model_step(sx, sy)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model_step(sx, sy)
    _sync(device)
    synth_s = time.perf_counter() - t0
    loader_rate, synth_rate = images / loader_s, n_batches * len(sx) / synth_s
    return {"loader_images_per_s": loader_rate, "synthetic_images_per_s": synth_rate,
            "efficiency": loader_rate / synth_rate, "n_batches": float(n_batches), "batch_size": float(len(sx))}
