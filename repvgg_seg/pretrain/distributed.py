"""Where a pretraining process sits under ``torchrun``, and metric reduction.

The process group itself is started by the package's one owner of the distributed start-up,
:func:`repvgg_seg.runner.distributed.init_process_group` (nccl on GPUs, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UsageError
from ..runner.distributed import init_process_group


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its device.

    Attributes:
        rank: Global rank (0 when not distributed).
        world_size: Number of processes (1 when not distributed).
        local_rank: Rank on this machine; selects the GPU.
        device: The device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files."""
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistContext:
    """Joins the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device: ``'cuda'``, ``'cpu'``, or None for CUDA when available. Under torchrun each
            process takes GPU ``LOCAL_RANK``.

    Raises:
        ValueError: ``device`` asks for CUDA on a machine without it.
    """
    device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for but CUDA is not available; use cpu.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1:
        init_process_group(torch_device.type)
    return DistContext(rank, world_size, local_rank, torch_device)


def cleanup_distributed() -> None:
    """Leaves the process group (a no-op outside torchrun)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums ``values`` element-wise over all processes (returns them unchanged alone)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over all processes."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copies rank 0's buffers (BN running statistics) to every process.

    Each process updates BN statistics with its own last batches, so before evaluating or
    saving, all ranks take rank 0's, which is what the checkpoint holds.
    """
    if not dist.is_initialized():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
