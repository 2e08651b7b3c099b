"""What the GPU check measures, at which sizes, in which order, and what it is compared with.

Two plans: ``device`` (the lent H200, one run of at most five minutes) and ``rehearse`` (the same sequence on the
CPU with tiny sizes, to find what would fail there). Steps run in :data:`STEP_ORDER`, most valuable first, so a run
cut short still returns the environment and the first model's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODELS: tuple[str, ...] = ("deit_small", "swin_tiny")
#: (name, what it holds); the driver runs them in this order.
STEP_ORDER: tuple[tuple[str, str], ...] = (
    ("environment", "histo-bench env, nvidia-smi, measured bf16 matmul and device-copy ceilings"),
    ("store", "a synthetic BreakHis store written there (the loaders' input)"),
    ("model:deit_small", "train N fixed steps (bf16, device-resident loader), then histo-bench run"),
    ("model:swin_tiny", "train N fixed steps (bf16, device-resident loader), then histo-bench run"),
    ("loader", "histo-bench loader-bench: input-pipeline efficiency, device-resident vs torch DataLoader"),
    ("tiling", "cuCIM tile reads GPU vs CPU and histo-ingest tile, on a deflate slide written there"),
)

#: Reported as skipped, with the reason, in every run.
SKIPPED: dict[str, str] = {
    "compile_max_autotune": "time: its kernel autotuning takes minutes per batch size, more than this five-minute "
                            "run holds",
    "onnxruntime (CUDA provider)": "onnxruntime-gpu is a 255 MB wheel; one device call carries 64 MiB in all (the "
                                   "GPU machine's onnxruntime is the CPU build)",
    "DALI GPU loader": "nvidia-dali-cuda130 is a 199 MB wheel; one device call carries 64 MiB in all",
    "tensorrt": "torch-tensorrt is not on the GPU machine and its wheels cannot be obtained here",
    "naive OpenSlide loop (tile-bench baseline)": "OpenSlide is not on the GPU machine",
    "tifffile reader": "needs imagecodecs, which the GPU machine lacks",
}

#: Published and computed reference points printed beside the measured figures.
ANCHORS: tuple[str, ...] = (
    "timm 2026 benchmark tables, RTX Pro 6000, bf16, torch.compile, inference: DeiT-S 14.6k img/s, Swin-T 7.5k "
    "img/s (device-resident input).",
    "Compute ceiling: DeiT-S 9.2 GFLOP/img (multiply-add = 2 FLOPs) at the H200's ~790 TFLOP/s bf16 matmul rate -> "
    "~86k img/s; the measured matmul rate of this run gives the ceiling printed per row.",
)


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one GPU-check run.

    Attributes:
        mode: "device" or "rehearse".
        device: torch device for every step.
        budget_s: the whole run's wall-clock budget; each step gets what is left, capped at its ``step_caps_s``.
        batch_sizes: the inference sweep.
        backends: ``histo-bench run`` backends per model (eager runs fp32, amp bf16, compile and cudagraphs bf16).
        model_kwargs: model builder overrides (the rehearsal's tiny DeiT / Swin), also the checkpoint's.
        image_size: network input side.
        train_epochs, train_steps, train_batch: the fixed training measurement (steps per epoch, capped by the
            store's train split).
        store_patients, store_images, store_size: the synthetic BreakHis store (patients per class, images per
            patient and magnification, (height, width)).
        loader_models, loader_steps, loader_batch, loader_image_size, loader_precision: ``histo-bench
            loader-bench`` (the rehearsal feeds a small ResNet-18 in fp32: a full-size DeiT / Swin step takes
            seconds on 2 cores, and bf16 is emulated on CPUs without AVX512-BF16).
        slide_size, tile_size: the tiling step's slide (pixels a side) and tiles.
        min_time_s, max_time_s: timing of each inference point.
    """

    mode: str
    device: str
    budget_s: float
    batch_sizes: tuple[int, ...]
    backends: dict[str, tuple[str, ...]]
    model_kwargs: dict[str, dict] = field(default_factory=dict)
    image_size: int = 224
    train_epochs: int = 3
    train_steps: int = 10
    train_batch: int = 64
    store_patients: int = 8
    store_images: int = 8
    store_size: tuple[int, int] = (256, 384)
    loader_models: tuple[str, ...] = MODELS
    loader_steps: int = 30
    loader_batch: int = 64
    loader_image_size: int = 224
    loader_precision: str = "bf16"
    slide_size: int = 8192
    tile_size: int = 256
    min_time_s: float = 0.3
    max_time_s: float = 1.0
    step_caps_s: dict[str, float] = field(default_factory=dict)


_ALL = ("eager", "amp", "compile", "cudagraphs")
DEVICE = Plan(mode="device", device="cuda", budget_s=285, batch_sizes=(1, 32, 256),
              backends={m: _ALL for m in MODELS},
              step_caps_s={"environment": 30, "store": 30, "model:deit_small": 95, "model:swin_tiny": 105,
                           "loader": 40, "tiling": 40})
#: Tiny sizes for 2 CPU cores (~35 s in all). Swin is compiled on the device only: inductor takes ~30 s per batch
#: size for even a one-block Swin on 2 cores (DeiT's compile path is rehearsed, at one batch size: a second one is
#: a second ~9 s compile, and a backend's recompile for another batch size is tested in tests/benchmark).
REHEARSE = Plan(mode="rehearse", device="cpu", budget_s=150, batch_sizes=(2,),
                backends={"deit_small": _ALL, "swin_tiny": ("eager", "amp", "cudagraphs")},
                model_kwargs={"deit_small": {"img_size": 32, "depth": 1},
                              "swin_tiny": {"img_size": 32, "depths": (1, 1, 1, 1), "window_size": 4}},
                image_size=32, train_epochs=1, train_steps=1, train_batch=4, store_patients=3, store_images=1,
                store_size=(46, 70), loader_models=("resnet18",), loader_steps=2, loader_batch=2, loader_image_size=32,
                loader_precision="fp32", slide_size=1024,
                tile_size=128, min_time_s=0.01, max_time_s=0.05,
                step_caps_s={"environment": 30, "store": 30, "model:deit_small": 60, "model:swin_tiny": 45,
                             "loader": 45, "tiling": 30})
PLANS = {"device": DEVICE, "rehearse": REHEARSE}


def rehearsal_note(model: str, plan: Plan) -> str | None:
    """Why a backend the device plan runs is left out of this plan's run of ``model``, or None."""
    left = [b for b in _ALL if b not in plan.backends.get(model, ())]
    if plan.mode == "rehearse" and left:
        return (f"{', '.join(left)} left out of the rehearsal for time (compiling {model} takes ~30 s per batch size "
                "on 2 CPU cores); the device run measures it")
    return None
