"""Several processes, one model: what the trainer needs to know about ``torchrun``'s process group.

``torchrun --nproc_per_node N -m dimbench train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; :func:`init_from_env`
joins the process group (NCCL on CUDA, gloo on the CPU) and :func:`distributed_info` tells the trainer its rank.
Without those variables everything is one process and no process group is created.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    world_size: int = 1

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (a logged loss then covers the whole global batch)."""
        if self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.cpu(), strict=True)}


def distributed_info() -> DistributedInfo:
    """This process's rank and the world size (1 when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistributedInfo(dist.get_rank(), dist.get_world_size())
    return DistributedInfo()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> torch.device:
    """Join torchrun's process group; returns this rank's device (cuda:LOCAL_RANK, or the CPU)."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
