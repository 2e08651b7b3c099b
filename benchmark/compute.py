"""The compute side of a result: parameters, FLOPs per image and the machine's measured matmul rate.

``ceiling_ips = matmul_flops_per_s / flops_per_image`` is the throughput the model would reach if all its FLOPs ran
at the rate of one large matrix multiply on this device. It is an optimistic bound (attention softmax, norms and
memory traffic are not matmuls), printed beside each result to show how far from the limit it is.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(model, image_size: int) -> float:
    """Forward FLOPs of one ``image_size`` image (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode on
    the CPU in fp32."""


    net = copy.deepcopy(model).float().cpu().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


def matmul_rate(device: str, precision: str = "bf16", size: int | None = None, repeats: int = 5) -> float:
    """Measured FLOP/s of a square matmul on ``device`` (bf16 on GPU; fp32 on CPU, where bf16 is emulated)."""

    cuda = device.startswith("cuda")
    size = size or (8192 if cuda else 2048)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32) if cuda else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best
