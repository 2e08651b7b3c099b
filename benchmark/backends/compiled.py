"""``torch.compile`` backends: ``compile`` (inductor, default mode) and ``compile_max_autotune``.

Shapes are static (``dynamic=False``): each batch size compiles once, on its first call, and the harness records that
call apart from the timed ones. On CUDA, max-autotune also benchmarks GEMM/conv kernel choices and replays CUDA graphs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch._dynamo

from benchmark.backends.base import Backend, inference_copy, register_backend, with_autocast

#: static-shape graphs dynamo may keep per frame: every batch size of a sweep (plus OOM backoff sizes) and the
#: precisions; past its default limit (8) dynamo silently falls back to eager in rows labelled ``compile``
RECOMPILE_LIMIT = 64


def raise_recompile_limit() -> None:

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older alias
        if hasattr(cfg, name) and getattr(cfg, name) < RECOMPILE_LIMIT:
            setattr(cfg, name, RECOMPILE_LIMIT)


class _Compiled(Backend):
    mode: ClassVar[str] = "default"
    precisions = ("fp32", "bf16", "fp16")
    default_precisions_cuda = ("bf16",)
    default_precisions_cpu = ("fp32",)

    def __init__(self) -> None:
        self._compiled: dict[tuple[int, str], object] = {}

    def prepare(self, model, example, precision):

        raise_recompile_limit()
        key = (id(model), precision)
        if key not in self._compiled:  # one compiled module per model and precision; batch sizes recompile inside
            net = inference_copy(model)
            self._compiled[key] = torch.compile(net, mode=None if self.mode == "default" else self.mode,
                                                dynamic=False)
        return with_autocast(self._compiled[key], str(example.device), precision)


@register_backend
class Compile(_Compiled):
    name = "compile"
    description = "torch.compile (inductor, default mode), one static-shape graph per batch size"


@register_backend
class CompileMaxAutotune(_Compiled):
    name = "compile_max_autotune"
    description = "torch.compile mode='max-autotune' (kernel autotuning; CUDA graphs on GPU)"
    mode = "max-autotune"
    cpu_default = False  # autotuning on 2 CPU cores takes minutes per batch size
