"""Process-group logic, in one place.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single
process, which never creates a process group and never calls a collective.
Collectives here are no-ops in a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from continual.runtime.device import resolve_device

T = TypeVar("T")

# torchrun's wrapper for the entry point: a failing process's traceback reaches torchrun's report.
record_errors = record


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of processes, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, plots and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_option: str) -> DistContext:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_option, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_run() -> bool:
    """Whether this process is one of several (a process group is up)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place); identity in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of process ``src`` on every process; identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def shard(length: int, ctx: DistContext) -> list[int]:
    """This process's share of ``range(length)``: every index on exactly one process, no padding."""
    return list(range(ctx.rank, length, ctx.world_size))


def wrap_for_training(model: torch.nn.Module, ctx: DistContext, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel over the currently trainable parameters (the model itself in one process).

    Built again for every phase, because expansion and freezing change which
    parameters train; DDP also broadcasts rank 0's weights, so freshly created
    tokens and heads start identical on every process.
    """
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def gather_objects(obj: T) -> list[T]:
    """``obj`` of every process, in rank order; ``[obj]`` in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[T | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered  # type: ignore[return-value]  # every slot filled
