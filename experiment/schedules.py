"""Learning-rate schedules of train.py (``lr_schedule``): a registry, so a new schedule is one entry.

Each :class:`Schedule` builds a ``torch.optim.lr_scheduler`` for an optimiser and says whether train.py steps it
once per epoch or once per optimiser step. Every schedule scales every parameter group (body and head) by the same
factor, and its state is a plain ``state_dict`` (checkpoints hold it, ``--resume`` continues it).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from experiment.config import ConfigError


@dataclass(frozen=True)
class Schedule:
    """``per``: "epoch" (train.py calls ``scheduler.step()`` after each epoch) or "step" (after each optimiser
    step). ``build(optimizer, cfg, steps_per_epoch)``: the scheduler; ``steps_per_epoch`` counts optimiser steps."""
    per: str
    build: Callable[..., torch.optim.lr_scheduler.LRScheduler]


def warmup_step_lr(optimizer, cfg: dict, steps_per_epoch: int):
    """Per-epoch: linear warmup ``lr * (e + 1) / warmup_epochs`` for epochs ``e < warmup_epochs``, then
    StepLR(``lr_step_size``, ``lr_gamma``) counted from the end of warmup (the SwanLab tutorial's schedule)."""
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["lr_step_size"] or 10 ** 9, gamma=cfg["lr_gamma"])
    warmup = cfg["warmup_epochs"]
    if warmup <= 0:
        return step
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0,
                                               total_iters=max(warmup - 1, 1))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, step], milestones=[warmup])


def cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor of optimiser step ``step`` (0-based): ``step / warmup_steps`` during warmup,
    then ``0.5 * (1 + cos(pi * progress))`` with ``progress = (step - warmup) / (total - warmup)``, down to 0
    (transformers' ``get_cosine_schedule_with_warmup`` with ``num_cycles=0.5``)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(optimizer, cfg: dict, steps_per_epoch: int):
    """Per optimiser step: linear warmup over ``ceil(warmup_ratio * total)`` steps, then cosine to 0 at
    ``total = num_epochs * steps_per_epoch`` (the HF audio course's ``lr_scheduler_type="cosine"``,
    ``warmup_ratio``; transformers computes the warmup steps with the same ceil)."""
    total = max(1, cfg["num_epochs"] * steps_per_epoch)
    warmup = math.ceil(cfg["warmup_ratio"] * total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(cosine_factor, warmup_steps=warmup,
                                                                          total_steps=total))


SCHEDULES = {
    "step": Schedule("epoch", warmup_step_lr),
    "cosine": Schedule("step", warmup_cosine),
}


def get_schedule(name: str) -> Schedule:
    """The registry entry ``name``. Raises ConfigError listing the schedules."""
    if name not in SCHEDULES:
        raise ConfigError(f"--lr_schedule={name}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]
