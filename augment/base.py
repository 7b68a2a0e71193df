"""What every augmentation shares: the per-example probability, the units of the features it changes, and
the mel axis of the front end (for the warps).

Augmentations run on the front end's output before normalisation, in its own units:

=========  ===========================================  ==========================================
units      front end                                    power (what mixing and gains act on)
=========  ===========================================  ==========================================
``db``     ``logmel`` (scale=db), ``panns_logmel``      ``10 ** (x / 10)``
``ln``     ``kaldi_fbank`` (natural-log Kaldi fbank)    ``exp(x)``
``power``  ``logmel`` (scale=power, the tutorial's)     ``x``
``wave``   ``waveform`` (wav2vec2 family)               ``x ** 2`` per sample (amplitude domain)
=========  ===========================================  ==========================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from data.frontends import MelAxis

UNITS = ("db", "ln", "power", "wave")
DB_TO_LN = math.log(10.0) / 10.0  # 10 ** (x / 10) = exp(x * DB_TO_LN)


def check_units(units: str) -> str:
    """``units`` if it is one of :data:`UNITS`; raises ValueError otherwise."""
    if units not in UNITS:
        raise ValueError(f"units={units!r}: choose one of {UNITS}")
    return units


def to_power(x: torch.Tensor, units: str) -> torch.Tensor:
    """Features in ``units`` -> linear power (same shape); ``wave``: the squared samples."""
    if units == "db":
        return torch.exp(x * DB_TO_LN)
    if units == "ln":
        return torch.exp(x)
    return x * x if units == "wave" else x


def from_power(p: torch.Tensor, units: str, floor: float = 1e-10) -> torch.Tensor:
    """Linear power -> features in ``units`` (``db``, ``ln`` or ``power``), with ``floor`` against log(0)."""
    if units == "db":
        return torch.log(p.clamp(min=floor)) / DB_TO_LN
    if units == "ln":
        return torch.log(p.clamp(min=floor))
    if units == "power":
        return p
    raise ValueError("waveforms have no power-domain form; mix them in the amplitude domain")


def add_decibels(x: torch.Tensor, gain_db: torch.Tensor, units: str) -> torch.Tensor:
    """``x`` with its power changed by ``gain_db`` dB (a tensor broadcasting against ``x``): add dB, add
    ``gain_db * ln(10) / 10`` to a natural log, multiply power by ``10 ** (gain_db / 10)``, multiply a waveform's
    amplitude by ``10 ** (gain_db / 20)``."""
    if units == "db":
        return x + gain_db
    if units == "ln":
        return x + gain_db * DB_TO_LN
    if units == "power":
        return x * torch.pow(10.0, gain_db / 10.0)
    return x * torch.pow(10.0, gain_db / 20.0)


def uniform(shape, low: float, high: float, device) -> torch.Tensor:
    """U(low, high) samples of ``shape`` from torch's global generator (reproducible under manual_seed)."""
    return torch.empty(shape, device=device).uniform_(low, high)


@dataclass(frozen=True)
class Context:
    """What an augmentation needs to know about the features: their ``units``, the mel axis (None for
    waveforms), the ``sample_rate`` (Hz) and ``frames_per_second`` of the front end."""
    units: str
    axis: MelAxis | None
    sample_rate: int
    frames_per_second: float

    @classmethod
    def of(cls, frontend: nn.Module) -> "Context":
        """The context of a front end of ``data.frontends`` (its ``units`` and, for mel front ends, ``mel_axis()``)."""
        axis = frontend.mel_axis() if hasattr(frontend, "mel_axis") else None
        return cls(frontend.units, axis, int(frontend.sample_rate), float(frontend.frames_per_second))


class PerExample(nn.Module):
    """Applies :meth:`transform` to each example of a batch with probability ``p``, the identity in eval mode.

    ``forward(x, mask_value)``: x float [C, F, T] (one item) or [B, C, F, T] (a batch; waveforms are
    [B, 1, 1, samples]) -> same shape. ``mask_value``: what masked bins become, a number or a tensor that
    broadcasts against x. Randomness comes from torch's global generator, drawn per example.
    Raises ValueError for ``p`` outside [0, 1] or input of another rank.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability p={p} must be in [0, 1]")
        self.p = p

    def transform(self, x: torch.Tensor, mask_value: float | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask_value: float | torch.Tensor = 0.0) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"expected [C, F, T] or [B, C, F, T], got shape {tuple(x.shape)}")
        if self.p == 0.0 or not self.training:  # eval mode (module.eval()) is the identity, like Dropout
            return x
        item = x.dim() == 3
        batch = x.unsqueeze(0) if item else x
        out = self.transform(batch, mask_value)
        if self.p < 1.0:
            chosen = torch.rand(batch.shape[0], device=x.device) < self.p
            out = torch.where(chosen.view(-1, 1, 1, 1), out, batch)
        return out[0] if item else out
