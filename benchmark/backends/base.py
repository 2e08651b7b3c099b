"""The backend protocol and registry: how a model is turned into a fast ``x -> logits`` callable.

A backend is a class registered in :data:`BACKENDS`. The harness makes one instance per benchmark run (so a backend
may cache an export or a compiled module across batch sizes) and, for each batch size, calls
:meth:`Backend.prepare` with an example batch of that size; the time ``prepare`` takes is recorded apart from the
timed inference (export, engine build, graph capture), and so is the first call (where torch.compile compiles).

    from benchmark.backends import BACKENDS
    backend = BACKENDS.get("compile")()
    backend.unavailable("cpu", model)     # None when usable here, else the reason (no heavy import)
    fn = backend.prepare(model, example, "bf16")
    logits = fn(x)                        # x: float32 (B, 3, H, W) on the model's device, ImageNet-normalised
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch

from histo_bench.errors import HistoBenchError
from histo_bench.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Every precision a row can carry: fp32 or a 16-bit type (autocast for torch backends, weights for exported ones).
BENCH_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

Infer = Callable[["torch.Tensor"], "torch.Tensor"]


class BackendUnavailable(HistoBenchError, RuntimeError):
    """Raised by ``prepare`` when a backend turns out not to work here; the message is the reason."""


class Backend:
    """Base class: override ``prepare``; narrow ``unavailable`` and the precision sets where needed.

    Class attributes:
        name: registry name, the ``--backends`` value and the ``backend`` result column.
        description: one line for tables and ``--help``.
        precisions: the precisions this backend can run.
        default_precisions: what a plain run measures on CUDA / on CPU (a subset of ``precisions``).
        cpu_default: whether a plain run includes it on CPU (False for backends that are slow to build there; they
            then appear in the results as skipped with that reason, and ``--backends NAME`` runs them anyway; see
            :meth:`default_skip`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precisions_cuda: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precisions_cpu: ClassVar[tuple[str, ...]] = ("fp32",)
    cpu_default: ClassVar[bool] = True

    def default_precisions(self, device: str) -> tuple[str, ...]:
        return self.default_precisions_cuda if device.startswith("cuda") else self.default_precisions_cpu

    def unavailable(self, device: str, model: nn.Module | None = None) -> str | None:
        """None when this backend can run ``model`` on ``device``, else a one-line reason. Imports nothing heavy."""
        return None

    def default_skip(self, device: str, precision: str) -> str | None:
        """Why a plain run (no ``--backends``) leaves this backend x precision out here, or None to run it."""
        if not device.startswith("cuda") and not self.cpu_default:
            return f"not in the CPU default set (slow to build on CPU); ask for it with --backends {self.name}"
        return None

    def prepare(self, model: nn.Module, example: torch.Tensor, precision: str) -> Infer:
        raise NotImplementedError


BACKENDS: Registry[type[Backend]] = Registry("benchmark backend")


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    return BACKENDS.register(cls.name)(cls)


def needs_cuda(device: str) -> str | None:
    return None if device.startswith("cuda") else "needs a CUDA GPU (this run is on the CPU)"


def is_token_model(model: nn.Module | None) -> bool:
    """Vision transformers (a patch embedding feeding attention blocks): channels_last does nothing for them."""
    return model is not None and hasattr(model, "patch_embed") and not hasattr(model, "stages")


def inference_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, so a backend's in-place changes (memory format, dtype) never leak to others."""
    return copy.deepcopy(model).eval()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX); without it autocast emulates bf16, far slower
    than fp32."""

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def dtype_of(precision: str):
    """The torch dtype for a 16-bit precision, None for fp32."""

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def with_autocast(fn: Infer, device: str, precision: str) -> Infer:
    """``fn`` under inference mode and, for bf16 / fp16, autocast; logits come back as float32."""

    dtype = dtype_of(precision)
    device_type = device.split(":")[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if dtype is None:
                return fn(x).float()
            with torch.autocast(device_type=device_type, dtype=dtype):
                return fn(x).float()

    return run
