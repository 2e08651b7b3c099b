"""``tensorrt``: torch-tensorrt's dynamo path, fp16 (or fp32) engines, one engine per batch size.

UNVERIFIED here: TensorRT's libraries cannot be installed on the machines this project is developed and tested on,
so this backend is reported as skipped with that reason. It is written against torch-tensorrt 2.x
(``torch_tensorrt.compile(module, ir="dynamo", inputs=[torch_tensorrt.Input(...)], enabled_precisions={...})``) and
runs where ``pip install 'histo-bench[tensorrt]'`` works. Engine build time is the ``prepare_s`` column.
"""

from __future__ import annotations

import torch

from benchmark.backends.base import Backend, BackendUnavailable, inference_copy, needs_cuda, register_backend
from histo_bench.optional import has_module


@register_backend
class TensorRT(Backend):
    name = "tensorrt"
    description = "torch-tensorrt (dynamo IR), TensorRT engine per batch size"
    precisions = ("fp32", "fp16")
    default_precisions_cuda = ("fp16",)
    default_precisions_cpu = ()

    def unavailable(self, device, model=None):
        if not (has_module("torch_tensorrt") and has_module("tensorrt")):
            return ("torch-tensorrt / TensorRT not installed (pip install 'histo-bench[tensorrt]'; TensorRT's "
                    "libraries are not obtainable on this machine)")
        return needs_cuda(device)

    def prepare(self, model, example, precision):

        try:
            import torch_tensorrt
        except ImportError as exc:  # installed but broken (e.g. a TensorRT / CUDA mismatch)
            raise BackendUnavailable(f"torch_tensorrt does not import: {exc}") from exc
        net = inference_copy(model)
        enabled = {torch.float16, torch.float32} if precision == "fp16" else {torch.float32}
        engine = torch_tensorrt.compile(
            net, ir="dynamo", inputs=[torch_tensorrt.Input(shape=tuple(example.shape), dtype=torch.float32)],
            enabled_precisions=enabled, truncate_double=True)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return engine(x).float()

        return run
