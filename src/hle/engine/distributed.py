"""Process-group set-up for multi-process training with DistributedDataParallel.

This module owns the few facts the trainer needs about distribution: whether the
process was started by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the
environment), the backend (NCCL on CUDA, Gloo on CPU), the device of this rank, and
wrapping a model with SyncBatchNorm (CUDA) + DDP. A single process is the degenerate case
``world_size = 1`` and takes the same code path everywhere else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "wrap_model",
    "unwrap_model",
    "average_buffers",
    "barrier",
    "reduce_max",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if started by ``torchrun``; otherwise a single process.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``. The backend follows the device: NCCL for
            CUDA, Gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """SyncBatchNorm + DistributedDataParallel when distributed; the model otherwise.

    SyncBatchNorm needs CUDA (PyTorch refuses it in DDP on CPU), so with Gloo on CPU the
    batch statistics stay per process; DDP still broadcasts rank 0's running
    statistics every step, so the replicas stay identical.
    """
    if not info.distributed:
        return model
    if info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # static_graph: the same parameters take part in every step; an ablation switch that
    # leaves a head out of the loss (e.g. associative embeddings ignore the sigmas) is
    # handled without find_unused_parameters' graph traversal on every step.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, static_graph=True)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over processes.

    DDP broadcasts rank 0's buffers at the start of every forward, so after the last
    step each replica holds its own update; averaging makes them identical before an
    evaluation or a checkpoint (and uses every process's data, unlike a broadcast).
    """
    if not info.distributed:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.distributed:
        dist.barrier()


def reduce_max(value: float, info: DistInfo) -> float:
    """The largest ``value`` over all processes (``value`` itself for one process)."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
