"""Single process or ``torchrun`` DistributedDataParallel: device choice and cross-rank reductions.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set) the process group uses NCCL on CUDA and gloo on the
CPU; rank 0 logs and checkpoints. Without torchrun every helper is a cheap no-op.

Faults: a collective waits at most the process-group timeout (train.py's ``dist_timeout``) for the other
ranks, so a rank that died or hung never leaves the others waiting for ever; :func:`peer_failures` turns
the failed collective into :class:`PeerFailure`, a message that names the rank and the timeout. Waiting
for rank 0's data preparation (indexing, the feature cache, downloads) is not a training step: it goes
through a second gloo group with a timeout of ``DATA_WAIT`` (:func:`wait_for_main`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = 600.0  # seconds: NCCL's default process-group timeout (torch.distributed.constants)
DATA_WAIT = timedelta(hours=24)  # the longest the other ranks wait for rank 0's data preparation


class PeerFailure(RuntimeError):
    """A collective failed: another rank died (its connection closed) or did not answer within the
    process-group timeout. This rank cannot go on; the message says which and what to do."""


@dataclass
class Dist:
    """Where this process runs. ``is_main`` is rank 0."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout: float = DEFAULT_TIMEOUT  # seconds a collective waits for the other ranks
    wait_group: object = None  # the gloo group of wait_for_main (DATA_WAIT), or None outside torchrun

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


def setup(device: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> Dist:
    """Initialise the process group when launched by torchrun (or with RANK, WORLD_SIZE, MASTER_ADDR and
    MASTER_PORT set, as SLURM scripts do) and pick this rank's device. ``timeout``: seconds a collective
    waits for the other ranks before it fails (the process group's timeout); a gloo group with the
    ``DATA_WAIT`` timeout serves :func:`wait_for_main`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    wait_group = None
    if world_size > 1:
        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=timeout))
        wait_group = dist.new_group(backend="gloo", timeout=DATA_WAIT)
    return Dist(rank, world_size, local_rank, dev, timeout, wait_group)


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


def broadcast_from_main(obj, d: Dist):
    """Rank 0's ``obj`` on every rank, waiting for it up to ``DATA_WAIT`` (:func:`wait_for_main`): for what
    rank 0 works out during the data preparation."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=d.wait_group)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, d: Dist) -> None:
    """Overwrite every buffer of ``module`` (BatchNorm running statistics) with rank 0's, in place.

    A collective: every rank must call it, with the same module structure.
    """
    if d.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(d: Dist) -> None:
    """Wait until every rank gets here (at most the process-group timeout)."""
    if d.enabled:
        dist.barrier()


def wait_for_main(d: Dist) -> None:
    """A barrier for the other ranks to wait while rank 0 prepares the data (index, feature cache, downloads):
    up to ``DATA_WAIT`` instead of the process-group timeout, which is meant for training steps."""
    if d.enabled:
        dist.barrier(group=d.wait_group)


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed collective: torch's DistError family (NCCL, the store) or a gloo error
    (gloo raises plain RuntimeErrors, "[.../gloo/...] Connection reset by peer", "Timed out waiting ...")."""
    return isinstance(err, dist.DistError) or (type(err) is RuntimeError and "gloo" in str(err))


@contextlib.contextmanager
def peer_failures(d: Dist, doing, advice: str = ""):
    """Raise :class:`PeerFailure` for a collective that fails inside the block (:func:`is_peer_failure`):
    the message names this rank, what it was doing (``doing()``, called only then, e.g. "epoch 3, step 5"),
    the reason gloo or NCCL gave, the timeout, and ``advice``. It is also printed at once, flushed: a
    launcher such as torchrun stops the surviving ranks (SIGTERM) a moment after one dies."""
    try:
        yield
    except RuntimeError as err:
        if not d.enabled or not is_peer_failure(err) or isinstance(err, PeerFailure):
            raise
        reason = " ".join(str(err).split("] ", 1)[-1].split())[:300]
        message = (f"rank {d.rank} of {d.world_size} lost the other ranks during {doing()} ({reason}): another rank "
                   f"died (killed, out of memory) or did not answer within the process-group timeout of "
                   f"{d.timeout:g} s (--dist_timeout). {advice}").strip()
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise PeerFailure(message) from None


def leave_together(d: Dist) -> None:
    """End an agreed stop (Ctrl-C on any rank, every rank saved): wait for every rank, then leave the process
    group. torchrun stops the remaining ranks with SIGTERM as soon as one exits with a non-zero status
    (130), which would otherwise cut rank 0 short while it still closes the SwanLab run. A peer that is
    gone already is not waited for."""
    if not d.enabled:
        return
    with contextlib.suppress(RuntimeError):
        dist.barrier()
    cleanup(d)


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
