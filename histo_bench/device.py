"""Device and precision choices shared by training, evaluation and benchmarks."""

from __future__ import annotations

import contextlib
import re

import torch

from histo_bench.errors import HistoBenchError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceError(HistoBenchError, RuntimeError):
    """A device that was asked for but is not here."""


#: The device names every ``--device`` option takes.
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str) -> str:
    """``device`` checked against this machine: "auto" becomes "cuda" where CUDA is available, else "cpu"; a name
    that is not one of :data:`DEVICE_CHOICES`, or CUDA where there is none, is a :class:`DeviceError`."""

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device or ""):
        raise DeviceError(f"--device {device!r}: not a device; use {DEVICE_CHOICES}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA device is available here")
    if device.startswith("cuda:"):
        index, count = device.split(":", 1)[1], torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def autocast_dtype(precision: str, device: str):
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""

    if precision == "fp32" or (precision == "auto" and not device.startswith("cuda")):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: str, dtype):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for plain fp32 (dtype None)."""

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


