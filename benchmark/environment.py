"""What this machine has: versions of the libraries histo-bench can use, found without importing them.

Importing torch, DALI or cuCIM costs seconds and may initialise CUDA, so versions come from package metadata.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

#: distribution name -> what histo-bench uses it for
OPTIONAL_PACKAGES: dict[str, str] = {
    "torch": "models, training, benchmark backends",
    "torchvision": "image transforms",
    "timm": "model backbones",
    "nvidia-dali-cuda130": "DALI decode/augment pipeline",
    "cucim-cu13": "cuCIM whole-slide reader, GPU tissue detection",
    "torch-tensorrt": "TensorRT benchmark backend",
    "onnxruntime": "ONNX Runtime benchmark backend",
    "onnxruntime-gpu": "ONNX Runtime benchmark backend (CUDA)",
    "openslide-python": "OpenSlide whole-slide reader",
    "tifffile": "tifffile whole-slide reader",
}
CORE_PACKAGES: tuple[str, ...] = ("numpy", "zarr", "numcodecs", "pillow", "typer", "rich")


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi (empty without an NVIDIA driver); no CUDA context is created."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def git_sha() -> str | None:
    """HEAD of the checkout this code runs from, with ``-dirty`` when it has uncommitted changes (None outside a
    git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def cpu_name() -> str:
    """The processor model (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    """A JSON-able description of the environment."""
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "gpus": gpu_names(),
        "core": {name: package_version(name) for name in CORE_PACKAGES},
        "optional": {name: package_version(name) for name in OPTIONAL_PACKAGES},
    }
