"""Every backend that can run on this CPU answers like eager fp32; the others say why they cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.backends import BACKENDS
from benchmark.backends.base import cpu_has_native_bf16, is_token_model
from tests.pipelines.tiny_models import TinyCNN

#: backend -> (precision, tolerance) checked on CPU; bf16 keeps 8 mantissa bits, so ~1e-2 relative
CPU_CASES = {
    "eager": ("fp32", 1e-6),
    "amp": ("bf16", 5e-2),
    "channels_last": ("fp32", 1e-5),
    "compile": ("fp32", 1e-4),
    "onnxruntime": ("fp32", 1e-4),
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyCNN(8).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    return model, x, ref


def test_registry_lists_every_backend_with_eager_first():
    assert BACKENDS.names()[0] == "eager"
    assert set(BACKENDS.names()) == {"eager", "amp", "channels_last", "compile", "compile_max_autotune",
                                     "cudagraphs", "tensorrt", "onnxruntime"}
    with pytest.raises(KeyError, match="valid names: eager"):
        BACKENDS.get("tensorrt_llm")


@pytest.mark.parametrize("name", sorted(CPU_CASES))
def test_cpu_backend_matches_eager(name, tiny):
    model, x, ref = tiny
    precision, tol = CPU_CASES[name]
    backend = BACKENDS.get(name)()
    assert backend.unavailable("cpu", model) is None
    fn = backend.prepare(model, x, precision)
    out = fn(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    # a second batch size through the same backend instance (onnx: the same export; compile: a recompile)
    x2 = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backend.prepare(model, x2, precision)(x2), model(x2), atol=tol, rtol=tol)


def test_backends_leave_the_model_untouched(tiny):
    model, x, ref = tiny
    BACKENDS.get("channels_last")().prepare(model, x, "fp32")(x)
    assert next(model.parameters()).is_contiguous()  # the backend converted a copy, not the caller's model
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)


def test_gpu_only_backends_say_why_on_cpu(tiny):
    model = tiny[0]
    assert "CUDA" in BACKENDS.get("cudagraphs")().unavailable("cpu", model)
    reason = BACKENDS.get("tensorrt")().unavailable("cpu", model)
    assert reason and ("tensorrt" in reason.lower())


class _Vit(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 4, 8, 8)


def test_channels_last_skips_transformers_with_a_reason(tiny):
    assert is_token_model(_Vit()) and not is_token_model(tiny[0])
    assert "transformer" in BACKENDS.get("channels_last")().unavailable("cpu", _Vit())


def test_default_skips_on_cpu_are_explained():
    autotune = BACKENDS.get("compile_max_autotune")()
    assert "--backends compile_max_autotune" in autotune.default_skip("cpu", "fp32")
    assert autotune.default_skip("cuda", "bf16") is None
    amp_reason = BACKENDS.get("amp")().default_skip("cpu", "bf16")
    assert (amp_reason is None) == cpu_has_native_bf16()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,precision,tol", [("cudagraphs", "fp32", 1e-4), ("cudagraphs", "bf16", 5e-2),
                                                ("amp", "fp16", 1e-2), ("compile", "bf16", 5e-2),
                                                ("onnxruntime", "fp32", 1e-4), ("onnxruntime", "fp16", 1e-2)])
def test_gpu_backend_matches_eager(name, precision, tol, tiny):
    import copy

    from benchmark.backends import BackendUnavailable

    model, x = copy.deepcopy(tiny[0]).cuda(), tiny[1].cuda()  # the module-scoped fixture stays on the CPU
    with torch.no_grad():
        ref = model(x)
    try:
        out = BACKENDS.get(name)().prepare(model, x, precision)(x)
    except BackendUnavailable as exc:  # e.g. onnxruntime without its CUDA provider
        pytest.skip(str(exc))
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
