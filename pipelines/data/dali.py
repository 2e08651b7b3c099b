"""NVIDIA DALI input pipeline over an image store (optional: ``pip install 'histo-bench[gpu]'``).

The store's uint8 HWC images are fed to DALI by an ``external_source`` callback that reads each batch with
:meth:`ingest.store.ImageStore.read` in the order of the epoch (the same seeded, rank-sharded order as the other
loaders, :func:`pipelines.data.base.epoch_order`). Training graph::

    random_resized_crop (area 0.35..1, aspect 3/4..4/3) -> vertical flip -> rotate k*90 -> color_twist
    -> crop_mirror_normalize (horizontal flip, ImageNet mean/std, float CHW)

Evaluation graph: resize (shorter side = image_size) -> centre crop -> normalise. The graph runs on the GPU when
``device_id`` is an int and entirely on the CPU when ``device_id`` is None (DALI's CPU-only mode).

Reproducibility: the image order is a function of ``(seed, epoch)``; DALI's random operators are seeded from the
pipeline seed (derived from ``seed`` and ``rank``) and their state continues across epochs, so two loaders built
with the same seed give the same batches epoch by epoch, but epoch ``e`` of a resumed run (``set_epoch(e)`` on a
fresh loader) sees the same images in the same order with different random crops/flips than the original run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from histo_bench.errors import MissingDependencyError
from histo_bench.optional import has_module
from pipelines.data.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from pipelines.data.base import Batch, DataConfig, _EpochMixin, _n_batches, _open, epoch_order, epoch_seed
from pipelines.data.tasks import task_labels

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'histo-bench[gpu]'"


def dali_available() -> str | None:
    """None when DALI can be imported, else why not (with the install hint)."""
    if not has_module("nvidia.dali"):
        return f"NVIDIA DALI is not installed ({INSTALL_HINT})"
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:  # a broken install: say why
        return f"NVIDIA DALI cannot be imported: {exc} ({INSTALL_HINT})"
    return None


def _dali():
    why = dali_available()
    if why is not None:
        raise MissingDependencyError(why)
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    return dali, fn, types


class DaliLoader(_EpochMixin):
    """Batches ``(x, y, idx)`` from a DALI pipeline fed by the store (see the module docstring).

    Args:
        store: an :class:`~ingest.store.ImageStore` or its path.
        indices: store indices of the selection.
        batch_size, train, augment, image_size, seed, drop_last, shuffle, rank, world_size: as
            :class:`pipelines.data.loaders.DeviceLoader`.
        device_id: CUDA device of the pipeline, or None for a CPU-only pipeline (outputs on the CPU).
        num_threads: DALI CPU worker threads.
        prefetch: DALI prefetch queue depth.
        task: which label the batches carry (:func:`pipelines.data.tasks.task_labels`).
    """

    def __init__(self, store: Any, indices: np.ndarray, *, batch_size: int = 32, train: bool = True,
                 augment: AugmentConfig | None = None, image_size: int = 224, seed: int = 0,
                 device_id: int | None = None, num_threads: int = 2, prefetch: int = 2,
                 drop_last: bool | None = None, shuffle: bool | None = None, rank: int = 0,
                 world_size: int = 1, task: str = "subtype") -> None:
        _dali()  # fail early with the install hint
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.store = _open(store)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = task_labels(self.store, task)[0][self.indices]
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.augment = augment or AugmentConfig()
        self.image_size = int(image_size)
        self.device_id = device_id
        self.device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)
        self._pipe = None
        self._order = np.arange(0)

    @classmethod
    def from_store(cls, store: Any, indices: np.ndarray, config: DataConfig, *, device: torch.device | str,
                   train: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> DaliLoader:
        device = torch.device(device)
        device_id = None if device.type == "cpu" else (device.index if device.index is not None
                                                       else torch.cuda.current_device())
        return cls(store, indices, batch_size=config.batch_size, train=train, augment=config.augment,
                   image_size=config.image_size, seed=seed, device_id=device_id,
                   num_threads=max(1, config.num_workers), rank=rank, world_size=world_size, task=config.task)

    @property
    def n_images(self) -> int:
        return len(self.indices)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.n_images, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                           drop_last=self.drop_last, rank=self.rank, world_size=self.world_size)

    def __len__(self) -> int:
        return _n_batches(len(self._epoch_order(0)), self.batch_size, self.drop_last)

    # -- the pipeline ----------------------------------------------------------------------------------------
    def _source(self, info) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """One batch of the current epoch: images HWC uint8, labels, store indices; StopIteration at the end."""
        if info.iteration >= len(self):
            raise StopIteration
        pos = self._order[info.iteration * self.batch_size:(info.iteration + 1) * self.batch_size]
        idx = self.indices[pos]
        return list(self.store.read(idx)), self.labels[pos], idx

    def _build(self):
        dali, fn, types = _dali()
        cfg, size = self.augment, self.image_size
        gpu = self.device_id is not None
        mean = [m * 255 for m in IMAGENET_MEAN]
        std = [s * 255 for s in IMAGENET_STD]

        @dali.pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                           seed=epoch_seed(self.seed, 0, self.rank, 2) % 2**31, prefetch_queue_depth=self.prefetch)
        def pipeline():
            images, labels, idx = fn.external_source(source=self._source, num_outputs=3, batch=True,
                                                     batch_info=True, layout=["HWC", "", ""])
            if gpu:
                images = images.gpu()
            if self.train:
                x = fn.random_resized_crop(images, size=(size, size), random_area=list(cfg.scale),
                                           random_aspect_ratio=list(cfg.ratio), antialias=True)
                if cfg.vflip > 0:
                    x = fn.flip(x, horizontal=0, vertical=fn.random.coin_flip(probability=cfg.vflip))
                if cfg.rot90:
                    angle = fn.random.choice([0.0, 90.0, 180.0, 270.0])
                    x = fn.rotate(x, angle=angle, keep_size=True, interp_type=types.INTERP_NN)
                if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
                    x = fn.color_twist(
                        x, brightness=fn.random.uniform(range=(1 - cfg.brightness, 1 + cfg.brightness)),
                        contrast=fn.random.uniform(range=(1 - cfg.contrast, 1 + cfg.contrast)),
                        saturation=fn.random.uniform(range=(1 - cfg.saturation, 1 + cfg.saturation)),
                        hue=fn.random.uniform(range=(-cfg.hue * 360, cfg.hue * 360)))
                mirror = fn.random.coin_flip(probability=cfg.hflip) if cfg.hflip > 0 else 0
                x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std,
                                             mirror=mirror)
            else:
                x = fn.resize(images, resize_shorter=size, antialias=True)
                x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                             crop_pos_x=0.5, crop_pos_y=0.5, mean=mean, std=std)
            return x, labels, idx

        pipe = pipeline()
        pipe.build()
        return pipe

    def _to_torch(self, out) -> torch.Tensor:
        if self.device_id is None:
            return torch.from_numpy(np.array(out.as_array()))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = out.as_tensor()
        result = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(tensor, result, cuda_stream=torch.cuda.current_stream(self.device))
        return result

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._take_epoch()
        self._order = self._epoch_order(epoch)
        if self._pipe is None:
            self._pipe = self._build()
        else:
            self._pipe.reset()
        finished = False
        try:
            for _ in range(len(self)):
                x, labels, idx = self._pipe.run()
                y = torch.from_numpy(np.array(labels.as_array(), dtype=np.int64).reshape(-1))
                i = torch.from_numpy(np.array(idx.as_array(), dtype=np.int64).reshape(-1))
                yield self._to_torch(x), y.to(self.device), i.to(self.device)
            try:  # consume the StopIteration that ends the DALI epoch, so reset() can start the next one
                self._pipe.run()
            except StopIteration:
                finished = True
        finally:
            if not finished:  # abandoned mid-epoch: batches of this epoch are still queued; start afresh next time
                self._pipe = None
