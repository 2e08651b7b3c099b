"""``cudagraphs``: the eager model captured once per batch size in a CUDA graph and replayed.

Capture removes the per-kernel launch overhead that dominates small batches. Input is copied into the captured
static buffer; the output buffer is cloned so that a later replay cannot overwrite results already handed out.
"""

from __future__ import annotations

import contextlib

import torch

from benchmark.backends.base import (
    Backend,
    dtype_of,
    inference_copy,
    needs_cuda,
    register_backend,
)


@register_backend
class CudaGraphs(Backend):
    name = "cudagraphs"
    description = "eager (+autocast) captured in a CUDA graph per batch size, replayed"
    precisions = ("fp32", "bf16", "fp16")
    default_precisions_cuda = ("bf16",)
    default_precisions_cpu = ()

    def __init__(self) -> None:
        self._nets: dict[int, object] = {}

    def unavailable(self, device, model=None):
        return needs_cuda(device)

    def prepare(self, model, example, precision):


        if id(model) not in self._nets:
            self._nets[id(model)] = inference_copy(model)
        net = self._nets[id(model)]
        dtype = dtype_of(precision)

        def amp():
            # autocast's weight-cast cache must be off while capturing (the cached casts would be graph-private)
            return (torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype is not None
                    else contextlib.nullcontext())

        with torch.cuda.device(example.device):
            static_x = example.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad(), amp():
                for _ in range(3):  # warm-up on a side stream (cuDNN/cuBLAS workspace allocation) before capture
                    net(static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph), amp():
                static_y = net(static_x)

        def run(x: torch.Tensor) -> torch.Tensor:
            static_x.copy_(x)
            graph.replay()
            return static_y.float().clone()

        return run
