"""Atomic checkpoints: write to a temp file in the same folder, fsync, then ``os.replace``.

A crash, ``kill -9`` or full disk at any moment leaves either the previous checkpoint or the new one,
never a torn file. Contents (see train.py): model, optimizer, scheduler and scaler state, ``epoch``
(completed epochs), ``step`` (batches done in the next epoch, for mid-epoch resume), ``config``,
``label_names``, ``features`` (front-end parameters and normalisation statistics), best metric, history;
``best.pt`` also gets ``calibration`` after the final report (the temperature fitted on val:
``evaluation.calibration.fit_calibration``; absent in older checkpoints, which then predict with T = 1).
"""
from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # no space left; disk quota exceeded
MB = 2 ** 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the fix."""


def write_atomic(path: Path, write: Callable[[Path], object]):
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``; returns what it returned.
    Readers see the old file or the new one, never half of one; the temp file never outlives the call.
    Errors of ``write`` or of the rename propagate."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = write(tmp)
        os.replace(tmp, path)
        return out
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` with ``torch.save`` to ``path`` atomically.

    Raises:
        CheckpointError: the write failed (disk full, read-only, ...); the previous file at ``path`` is intact.
            On a full disk the message names the folder, the checkpoint's size and the free space
            (:func:`full_disk_message`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        full = full_disk_error(err)
        if full is not None:
            raise CheckpointError(full_disk_message(path, full, serialized_size(state))) from err
        raise CheckpointError(f"could not write checkpoint {path} ({type(err).__name__}: {err}). "
                              f"The previous checkpoint there is unchanged. Free disk space or choose another "
                              f"--out_dir.") from err
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def full_disk_error(err: BaseException) -> OSError | None:
    """The "no space left" (or "quota exceeded") OSError behind ``err``, or None. torch.save reports a
    failed write as a RuntimeError of its zip writer ("unexpected pos ..."), with the OSError as its
    context, so the whole chain is searched."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL_DISK:
            return err
        err = err.__cause__ or err.__context__
    return None


class _ByteCount(io.RawIOBase):
    """A file that keeps nothing and counts what is written to it."""

    def __init__(self):
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.bytes += len(b)
        return len(b)


def serialized_size(state: dict) -> int:
    """Bytes ``torch.save(state)`` writes (serialised once more into a counter, nothing kept)."""
    counter = _ByteCount()
    torch.save(state, counter)
    return counter.bytes


def full_disk_message(path: Path, err: OSError, needed: int) -> str:
    """What to do when ``path`` could not be written for lack of space: the folder, the ``needed`` bytes (the
    checkpoint's size) and what is free there now (shutil.disk_usage)."""
    folder = path.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    return (f"could not write checkpoint {path}: the disk holding {folder} is full ({err.strerror}). The checkpoint "
            f"needs {needed / MB:.1f} MB there and {free / MB:.1f} MB are free: free at least "
            f"{max(needed - free, 0) / MB + 1:.0f} MB in {folder} (or move the run folder to a disk with room), then "
            f"continue with --resume={folder}. The previous {path.name} there is unchanged and loadable.")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no code is unpickled).

    ``path`` may be a run folder, in which case its ``best.pt`` is read.
    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is truncated or not one of our checkpoints.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint there (a run folder holds best.pt and last.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}). Use the other "
                              f"checkpoint of the run folder (best.pt / last.pt) or retrain.") from None
    if not isinstance(state, dict) or not {"model", "config", "label_names"} <= set(state):
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (needs model, config and label_names)")
    return state


def store_entry(path, key: str, value) -> None:
    """Set the entry ``key`` of the checkpoint at ``path`` (a .pt file, or a run folder meaning its best.pt) to
    ``value`` (plain types), written atomically; everything else in the file is kept. Raises as
    :func:`load_checkpoint` / :func:`save_checkpoint`."""
    state = load_checkpoint(path)
    state[key] = value
    save_checkpoint(state, Path(path) / "best.pt" if Path(path).is_dir() else path)
