"""Single process or ``torchrun`` DistributedDataParallel: device choice and cross-rank reductions.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set) the process group uses NCCL on CUDA and gloo on the
CPU; rank 0 logs and checkpoints. Without torchrun every helper is a cheap no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process runs. ``is_main`` is rank 0."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: cuda (the local rank's GPU) if available, else mps, else cpu; or an explicit torch device."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={name} requested but CUDA is not available; use --device=auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when launched by torchrun and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_true(flag: bool, d: Dist) -> bool:
    """Whether ``flag`` holds on every rank: a one-number all-reduce, so every rank must call it (train.py
    calls it before every step; on CUDA it waits for the previous step to finish)."""
    if not d.enabled:
        return flag
    return all_reduce_sum([float(flag)], d)[0] == d.world_size


def gather(obj, d: Dist) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, d: Dist):
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Overwrite every buffer of ``module`` (BatchNorm running statistics) with rank 0's, in place.

    A collective: every rank must call it, with the same module structure.
    """
    if d.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
