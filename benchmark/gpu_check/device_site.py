"""The GPU machine's Python package set, and a folder that shows only those packages (plus the carried ones) to the
rehearsal's interpreter, so that a stray import fails on the CPU, not on the GPU.

The rehearsal runs ``python -S`` (no site-packages) with ``PYTHONPATH=<that folder>:<repo>``; the folder holds a
symbolic link to each top-level module or package of an allowed distribution in this venv (and to its
``.dist-info``, so versions can be read). A namespace folder shared with a distribution that is not allowed
(``nvidia/`` holds cuDNN, which the GPU machine has, and DALI, which it lacks) is made a real folder holding links
to the allowed distributions' entries only. Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

#: Distributions on the lent H200 (the device tool's KINDS.md, "Python packages already there", read 2026-11-17).
#: It has no imagecodecs, OpenSlide, DALI, dask/distributed, zarr stack, cuCIM or nvImageCodec.
DEVICE_DISTRIBUTIONS: frozenset[str] = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())

#: What the GPU check carries as wheels (``.whl/zarr``, ``.whl/cucim``; ``make gpu-wheels``).
CARRIED_DISTRIBUTIONS: frozenset[str] = frozenset(
    {"zarr", "numcodecs", "donfig", "msgspec", "crc32c", "google-crc32c", "cucim-cu13", "nvidia-nvimgcodec-cu13",
     "lazy-loader"})


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries(dist: metadata.Distribution) -> set[tuple[str, ...]]:
    """Paths (as parts) of a distribution's files inside site-packages; scripts and data outside are left out."""
    out = set()
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth") and parts[0] != "__pycache__":
            out.add(parts)
    return out


def build_site(venv_site: Path, target: Path, allowed: frozenset[str] = DEVICE_DISTRIBUTIONS | CARRIED_DISTRIBUTIONS
               ) -> dict[str, list[str]]:
    """Fill ``target`` with links to the ``allowed`` distributions found in ``venv_site``; returns
    ``{"linked": [...], "absent": [...]}`` (allowed distributions this venv does not have)."""

    target.mkdir(parents=True, exist_ok=True)
    owners: dict[str, set[str]] = defaultdict(set)  # top-level entry -> distributions owning something in it
    files: dict[str, set[tuple[str, ...]]] = {}
    for dist in metadata.distributions(path=[str(venv_site)]):
        name = normalize(dist.metadata["Name"] or "")
        if name in files:  # two copies of one distribution: the first on the path wins, as for the importer
            continue
        files[name] = _entries(dist)
        for parts in files[name]:
            owners[parts[0]].add(name)
    wanted = _with_requirements({normalize(a) for a in allowed}, venv_site)
    linked = sorted(n for n in files if n in wanted)
    for top, names in owners.items():
        if not names & wanted or not (venv_site / top).exists():
            continue
        if names <= wanted or not (venv_site / top).is_dir():
            _link(venv_site / top, target / top)
            continue
        # a folder shared with a distribution that is not allowed: link the allowed ones' entries one level down
        (target / top).mkdir(exist_ok=True)
        for name in names & wanted:
            for parts in files[name]:
                if parts[0] == top and len(parts) > 1 and (venv_site / top / parts[1]).exists():
                    _link(venv_site / top / parts[1], target / top / parts[1])
    absent = sorted(wanted - set(files))
    log.info("device-like site %s: %d of the GPU machine's and the carried distributions linked from %s", target,
             len(linked), venv_site)
    log.debug("not in this venv: %s", ", ".join(absent) or "none")
    return {"linked": linked, "absent": absent}


def _with_requirements(names: set[str], venv_site: Path) -> set[str]:
    """``names`` and, transitively, what this venv's copies of them require (extras left out): this venv's versions
    can need more than the GPU machine's (typer 0.29 needs pydantic, 0.28 does not), which is no reason to
    fail there."""
    dists = {normalize(d.metadata["Name"] or ""): d for d in metadata.distributions(path=[str(venv_site)])}
    todo, seen = [n for n in names if n in dists], set(names)
    while todo:
        for req in dists[todo.pop()].requires or ():
            if "extra ==" in req or "extra==" in req:
                continue
            dep = normalize(re.split(r"[\s;\[<>=!~(]", req.strip(), maxsplit=1)[0])
            if dep not in seen:
                seen.add(dep)
                if dep in dists:
                    todo.append(dep)
    return seen


def _link(src: Path, dst: Path) -> None:
    if not dst.exists() and not dst.is_symlink():
        os.symlink(src, dst)
