"""``onnxruntime``: the model exported once to ONNX (dynamic batch), run by ONNX Runtime.

The CPU execution provider on CPU runs; the CUDA provider (``onnxruntime-gpu``) on GPU, with the input and output
bound to torch's CUDA buffers (IO binding, no host copies). fp16 exports a half-precision copy of the model.
Export uses the TorchScript-based exporter (``dynamo=False``): seconds for Swin-T where the dynamo exporter takes
minutes, and it matches eager to about 1e-6 (tested).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmark.backends.base import Backend, BackendUnavailable, inference_copy, register_backend
from histo_bench.optional import has_module


@register_backend
class OnnxRuntime(Backend):
    name = "onnxruntime"
    description = "ONNX export (dynamic batch) run by ONNX Runtime (CPU or CUDA execution provider)"
    precisions = ("fp32", "fp16")
    default_precisions_cuda = ("fp32", "fp16")
    default_precisions_cpu = ("fp32",)

    def __init__(self) -> None:
        self._sessions: dict[tuple[int, str], object] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="histo-bench-onnx-")

    def unavailable(self, device, model=None):
        if not (has_module("onnxruntime") and has_module("onnx")):
            return "onnxruntime / onnx not installed (pip install 'histo-bench[onnx]')"
        return None

    def _session(self, model, example, precision: str):
        import onnxruntime as ort

        key = (id(model), precision)
        if key in self._sessions:
            return self._sessions[key]
        device = str(example.device)
        net = inference_copy(model).float()
        x = example[:1].float()
        if precision == "fp16":
            net, x = net.half(), x.half()
        path = Path(self._tmp.name) / f"model-{len(self._sessions)}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose (above)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # timm's shape asserts, traced as constants
            torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._sessions[key] = ort.InferenceSession(str(path), options, providers=providers)
        return self._sessions[key]

    def prepare(self, model, example, precision):

        session = self._session(model, example, precision)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        np_dtype = np.float16 if precision == "fp16" else np.float32
        if example.device.type == "cpu":
            def run_cpu(x: torch.Tensor) -> torch.Tensor:
                out = session.run(["logits"], {"input": x.to(dtype).numpy()})[0]
                return torch.from_numpy(out).float()

            return run_cpu

        n_classes = session.get_outputs()[0].shape[1]
        binding = session.io_binding()
        index = example.device.index or 0

        def run_cuda(x: torch.Tensor) -> torch.Tensor:
            x = x.to(dtype).contiguous()
            out = torch.empty((x.shape[0], n_classes), dtype=dtype, device=x.device)
            binding.bind_input("input", "cuda", index, np_dtype, tuple(x.shape), x.data_ptr())
            binding.bind_output("logits", "cuda", index, np_dtype, tuple(out.shape), out.data_ptr())
            # ONNX Runtime's CUDA provider runs on its own stream: the input written on torch's stream must be
            # complete before it reads it, and its output before torch reads that
            torch.cuda.current_stream(x.device).synchronize()
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return out.float()

        return run_cuda
