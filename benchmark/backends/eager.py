"""The PyTorch baselines: ``eager`` (fp32), ``amp`` (bf16 / fp16 autocast) and ``channels_last`` (NHWC for CNNs)."""

from __future__ import annotations

import torch

from benchmark.backends.base import (
    Backend,
    cpu_has_native_bf16,
    inference_copy,
    is_token_model,
    register_backend,
    with_autocast,
)


@register_backend
class Eager(Backend):
    name = "eager"
    description = "PyTorch eager, fp32: the reference every other backend is compared with"

    def prepare(self, model, example, precision):
        return with_autocast(inference_copy(model), str(example.device), precision)


@register_backend
class Amp(Backend):
    name = "amp"
    description = "PyTorch eager under autocast (bf16 or fp16)"
    precisions = ("bf16", "fp16")
    default_precisions_cuda = ("bf16", "fp16")
    default_precisions_cpu = ("bf16",)

    def default_skip(self, device, precision):
        if not device.startswith("cuda") and not cpu_has_native_bf16():
            return ("this CPU has no native bf16 (AVX512-BF16 / AMX): autocast would emulate it, ~25x slower than "
                    "fp32 here; ask for it with --backends amp")
        return super().default_skip(device, precision)

    def prepare(self, model, example, precision):
        return with_autocast(inference_copy(model), str(example.device), precision)


@register_backend
class ChannelsLast(Backend):
    name = "channels_last"
    description = "eager with NHWC (channels_last) weights and inputs; helps convolutions on tensor cores"
    precisions = ("fp32", "bf16", "fp16")
    default_precisions_cuda = ("bf16",)
    default_precisions_cpu = ("fp32",)

    def unavailable(self, device, model=None):
        if is_token_model(model):
            return "a vision transformer: channels_last only changes convolutions (it would be eager again)"
        return None

    def prepare(self, model, example, precision):

        net = inference_copy(model).to(memory_format=torch.channels_last)
        return with_autocast(lambda x: net(x.contiguous(memory_format=torch.channels_last)), str(example.device),
                             precision)
