"""Multi-process training on torch's own engine: ``torchrun --nproc_per_node=N`` sets the environment, this module
joins the process group (NCCL on GPUs, gloo on CPUs), and the trainer wraps its model in DDP.

Single-process runs (no ``WORLD_SIZE`` in the environment, or 1) get a context that does nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistContext, str]:
    """Join the torchrun job if there is one; returns the context and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    log.info("rank %d/%d on %s", rank, world, device)
    return DistContext(rank=rank, world_size=world, local_rank=local), device


def wrap(model, ctx: DistContext, device: str):
    """``DistributedDataParallel`` around ``model`` in a multi-process job, else the model itself."""
    if not ctx.enabled:
        return model

    ids = [int(device.split(":")[1])] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model):
    """The plain module inside a DDP wrapper (for checkpoints and evaluation)."""
    return getattr(model, "module", model)


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks stop early together)."""
    if not ctx.enabled:
        return flag

    t = torch.tensor([int(flag)])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return bool(t.item())


def shard(order, ctx: DistContext):
    """This rank's share of ``order`` (an epoch's item order, the same on every rank): every ``world_size``-th
    item from ``rank``, after dropping the remainder so every rank gets as many (and runs as many steps)."""
    n = len(order) - len(order) % ctx.world_size
    return order[:n][ctx.rank::ctx.world_size]


def all_finite(loss, ctx: DistContext) -> bool:
    """Whether ``loss`` is finite on every rank (one tiny all-reduce under DDP), so a loss that diverges on one
    rank stops all of them together instead of leaving the others waiting in the gradient all-reduce."""

    finite = bool(torch.isfinite(loss.detach()).all())
    if not ctx.enabled:
        return finite

    flag = torch.tensor([int(finite)], device=loss.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled:
        if dist.is_initialized():
            dist.destroy_process_group()
