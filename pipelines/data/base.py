"""What every image loader shares: its config, the epoch order (a pure function of seed and epoch, sharded by rank),
the reads of a selection from the store, and the fit-on-device check. The loaders: :mod:`pipelines.data.loaders`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from histo_bench.errors import ConfigError
from ingest.store import ImageStore
from pipelines.data.augment import AugmentConfig, GpuAugment, resize_uint8
from pipelines.data.tasks import check_task

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
LOADERS = ("auto", "device", "dali", "torch")
SAMPLERS = ("shuffle", "weighted")


@dataclass(frozen=True)
class DataConfig:
    """How images reach the model.

    Attributes:
        image_size: side S of the square model input.
        load_size: images are resized once, when loaded, so their shorter side is ``load_size`` (aspect kept: the
            store's 700x460 becomes 390x256); >= ``image_size``.
        batch_size: images per batch (per rank).
        loader: "device" (whole selection resident on the device), "dali", "torch", or "auto" (device when it fits,
            else DALI when installed and the device is CUDA, else torch).
        num_workers: worker processes of the torch loader (0 = read in the main process).
        augment: training augmentation strengths.
        device_fraction: at most this fraction of the free device memory may hold the resident images.
        task: which label the batches carry: "subtype" (the store's classes) or "binary" (benign vs malignant).
        sampler: training order: "shuffle" (a permutation per epoch) or "weighted" (as many draws, with
            replacement, with probability inversely proportional to the class frequency: balanced classes).
    """

    image_size: int = 224
    load_size: int = 256
    batch_size: int = 32
    loader: str = "auto"
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device_fraction: float = 0.5
    task: str = "subtype"
    sampler: str = "shuffle"

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}")
        if self.load_size < self.image_size:
            raise ConfigError(f"load_size ({self.load_size}) must be >= image_size ({self.image_size})")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.loader not in LOADERS:
            raise ConfigError(f"unknown loader {self.loader!r}: use one of {', '.join(LOADERS)}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if not 0 < self.device_fraction <= 1:
            raise ConfigError(f"device_fraction must be in (0, 1], got {self.device_fraction}")
        if not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"augment must be an AugmentConfig, got {type(self.augment).__name__}")


# -- ordering ------------------------------------------------------------------------------------------------------

def epoch_seed(seed: int, epoch: int, *extra: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch, *extra)`` (SeedSequence: stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), *map(int, extra)]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool, drop_last: bool, rank: int = 0,
                world_size: int = 1, weights: np.ndarray | None = None) -> np.ndarray:
    """Positions (into the selection of ``n`` images) that ``rank`` visits in ``epoch`` (see the module docstring).
    With ``weights`` (and ``shuffle``), ``n`` positions drawn with replacement with probability ``weights``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    if shuffle and weights is not None:
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(n) if shuffle else np.arange(n)
    if drop_last:
        order = order[: n - n % world_size]
    return order[rank::world_size]


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


# -- loading -------------------------------------------------------------------------------------------------------

def load_shape(height: int, width: int, load_size: int | None) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``load_size`` keeping the aspect (None: unchanged)."""
    if load_size is None:
        return height, width
    short = min(height, width)
    return (round(height * load_size / short), round(width * load_size / short))


def _open(store: Any):

    return store if isinstance(store, ImageStore) else ImageStore(store)


def load_images(store: Any, indices: np.ndarray | list[int], load_size: int | None,
                progress: Progress | None = None, chunk: int = 32) -> torch.Tensor:
    """Images at ``indices`` as one uint8 (N, 3, h, w) CPU tensor, shorter side resized to ``load_size``.

    Read ``chunk`` images at a time from the store and resized (bilinear, antialiased) before the next chunk, so
    memory beyond the output is bounded by one chunk. ``progress(done, total)`` is called after each chunk.
    """
    store = _open(store)
    idx = np.asarray(indices, dtype=np.int64)
    height, width = store.image_shape[:2]
    h, w = load_shape(height, width, load_size)
    out = torch.empty((len(idx), 3, h, w), dtype=torch.uint8)
    for start in range(0, len(idx), chunk):
        part = torch.from_numpy(store.read(idx[start:start + chunk])).permute(0, 3, 1, 2)
        out[start:start + len(part)] = resize_uint8(part, (h, w))
        if progress is not None:
            progress(min(start + chunk, len(idx)), len(idx))
    return out


def available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable from /proc/meminfo, else free pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def fits_on_device(n_bytes: int, device: torch.device | str, fraction: float = 0.5) -> bool:
    """True when ``n_bytes`` fit in ``fraction`` of the free memory of ``device`` (CUDA) or of available RAM (CPU).

    The rest is headroom for the model, activations and (on CPU) the process's other allocations.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    elif device.type == "cpu":
        free = available_ram()
    else:  # mps & co: no portable query; stay on the safe side
        return False
    return n_bytes <= fraction * free


# -- loaders -------------------------------------------------------------------------------------------------------

def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample draw weights 1 / (count of the sample's class): every class is drawn equally often."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


class _EpochMixin:
    """Epoch bookkeeping shared by the loaders: ``set_epoch`` and the auto-advance when it is not called;
    ``sample_weights`` (set for ``DataConfig.sampler == "weighted"`` training loaders) makes the order weighted."""

    _next_epoch: int = 0
    sample_weights: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (afterwards the epoch keeps advancing by one per iteration)."""
        self._next_epoch = int(epoch)

    def _take_epoch(self) -> int:
        epoch = self._next_epoch
        self._next_epoch = epoch + 1
        return epoch

    def _setup(self, *, batch_size: int, train: bool, seed: int, drop_last: bool | None, shuffle: bool | None,
               rank: int, world_size: int, image_size: int, augment: AugmentConfig | None) -> None:
        """The settings every loader shares: ``train`` sets the shuffle / drop_last defaults."""
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.image_size = int(image_size)
        self.augment = GpuAugment(augment or AugmentConfig(), image_size, seed=self.seed)
