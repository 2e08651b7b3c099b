"""Fixed seeds: one call seeds Python's, numpy's and torch's generators (every recipe calls it before building its
model, so one seed gives the same initial weights)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (all devices) from ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
