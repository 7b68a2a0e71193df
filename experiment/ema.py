"""An exponential moving average (EMA) of the weights, through PyTorch's ``torch.optim.swa_utils``.

``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)``: after every optimiser
step ``w_ema = decay * w_ema + (1 - decay) * w`` (the first step copies the weights), for the parameters and the
buffers alike, so BatchNorm's running statistics are averaged with the weights they belong to (as timm's
``ModelEmaV2`` does) instead of being those of the latest weights. The average is what the run evaluates,
chooses as best and saves as a checkpoint's ``model``; the weights being trained travel beside it for
``--resume``. Averaging weights is an old idea (Polyak & Juditsky 1992); AST's weight averaging reports
0.448 -> 0.459 AudioSet mAP.

A decay d averages about the last 1 / (1 - d) optimiser steps: 0.99 about 100, 0.999 about 1000. Choose it so
that this spans an epoch or two of steps.
"""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """The EMA of ``model`` (a copy on its device, in its memory format), or None when ``decay`` is 0.
    Raises ValueError for a decay outside [0, 1)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay={decay}: use 0 (off) or a decay in (0, 1), e.g. 0.99")
    if decay == 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_checkpoint(ema: AveragedModel | None, model: nn.Module) -> tuple[dict, dict | None]:
    """(what a checkpoint saves as ``model``, its ``ema`` entry): the average and ``dict(online=<the trained
    weights>, n_averaged=<steps averaged>)`` with an EMA; the weights and None without."""
    if ema is None:
        return model.state_dict(), None
    return ema.module.state_dict(), dict(online=model.state_dict(), n_averaged=int(ema.n_averaged))


def restore_ema(ema: AveragedModel | None, model: nn.Module, checkpoint: dict) -> None:
    """Load a checkpoint written with :func:`ema_checkpoint` into ``model`` (the trained weights) and ``ema``:
    exactly the state it was saved in. A checkpoint without an EMA loads its ``model`` into both (an EMA added
    on resume starts from those weights)."""
    saved = checkpoint.get("ema")
    model.load_state_dict(saved["online"] if saved else checkpoint["model"])
    if ema is not None:
        ema.module.load_state_dict(checkpoint["model"])
        ema.n_averaged.fill_(saved["n_averaged"] if saved else 0)


def evaluated(ema: AveragedModel | None, model: nn.Module) -> nn.Module:
    """The module whose weights are evaluated and saved: the average with an EMA, else ``model``."""
    return ema.module if ema is not None else model



