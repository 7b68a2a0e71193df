"""Spectrogram augmentations for training: time masking, frequency masking (SpecAugment, Park et al. 2019,
via torchaudio), Gaussian noise and random gain.

Every transform takes one item [C, F, T] or a batch [B, C, F, T] (F mel bands, T frames) and draws its
randomness per example from torch's global generator, so a run is reproducible under ``torch.manual_seed``
on the CPU and on the GPU. Each has an application probability ``p`` per example, and is the identity in
eval mode (``module.eval()``).

The SwanLab tutorial's advanced run (source of the ``resnext101_32x8d`` preset) applies, on the power mel:
TimeMasking(20) and FrequencyMasking(20) always, noise sigma 0.01 with p=0.5, gain U(0.8, 1.2) with p=0.5.
"""
from __future__ import annotations

import torch
import torchaudio.transforms as T
from torch import nn


class _PerExample(nn.Module):
    """Applies ``self.transform`` to each example with probability ``p``."""

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
        out = self.transform(x, mask_value)
        if self.p == 1.0:
            return out
        chosen = torch.rand(x.shape[:-3], device=x.device) < self.p
        return torch.where(chosen.view(*chosen.shape, 1, 1, 1), out, x)


def _shared_mask(mask: nn.Module, x: torch.Tensor, mask_value: float | torch.Tensor, axis: int) -> torch.Tensor:
    """Draw one torchaudio mask per example along ``axis`` (-1 time, -2 frequency) and apply it to all
    channels. The mask is drawn on ones of shape [B, 1, 1, T] (or [B, 1, F, 1]): torchaudio draws the same
    random numbers as for a full [B, 1, F, T] tensor, and no full-size tensor is built or compared.
    ``mask_value``: a number, or a tensor that broadcasts against ``x`` (e.g. one value per mel bin)."""
    shape = [*x.shape[:-3], 1, 1, 1]
    shape[axis] = x.shape[axis]
    keep = mask(torch.ones(shape, device=x.device, dtype=x.dtype), 0.0)
    return torch.where(keep == 0, mask_value, x)  # a float stays a scalar: no host-to-device copy per call


class TimeMasking(_PerExample):
    """Sets ``t ~ U[0, max_frames)`` consecutive frames to ``mask_value`` (torchaudio ``TimeMasking``).
    In a batch each example gets its own mask; all channels of an example share it."""

    def __init__(self, max_frames: int, p: float = 1.0):
        super().__init__(p)
        self.mask = T.TimeMasking(time_mask_param=max_frames, iid_masks=True)

    def transform(self, x, mask_value):
        return _shared_mask(self.mask, x, mask_value, -1)


class FrequencyMasking(_PerExample):
    """Sets ``f ~ U[0, max_bins)`` consecutive mel bands to ``mask_value`` (torchaudio ``FrequencyMasking``)."""

    def __init__(self, max_bins: int, p: float = 1.0):
        super().__init__(p)
        self.mask = T.FrequencyMasking(freq_mask_param=max_bins, iid_masks=True)

    def transform(self, x, mask_value):
        return _shared_mask(self.mask, x, mask_value, -2)


class GaussianNoise(_PerExample):
    """Adds N(0, std^2) noise to every bin; ``std`` is in the input's units (dB for log-mel)."""

    def __init__(self, std: float, p: float = 0.5):
        super().__init__(p)
        self.std = std

    def transform(self, x, mask_value):
        return x + self.std * torch.randn_like(x)


class RandomGain(_PerExample):
    """Multiplies the power spectrogram by ``g ~ U(min_gain, max_gain)`` per example: ``x * g`` on a power
    input (``scale="power"``), ``x + 10 * log10(g)`` dB on a dB input (``scale="db"``)."""

    def __init__(self, min_gain: float, max_gain: float, p: float = 0.5, scale: str = "db"):
        super().__init__(p)
        if not 0 < min_gain <= max_gain:
            raise ValueError(f"gain range must satisfy 0 < min_gain <= max_gain, got {min_gain}, {max_gain}")
        self.min_gain, self.max_gain, self.scale = min_gain, max_gain, scale

    def transform(self, x, mask_value):
        shape = (*x.shape[:-3], 1, 1, 1) if x.dim() == 4 else (1, 1, 1)
        gain = torch.empty(shape, device=x.device).uniform_(self.min_gain, self.max_gain)
        return x * gain if self.scale == "power" else x + 10.0 * torch.log10(gain)


class SpectrogramAugment(nn.Module):
    """The four augmentations in the tutorial's order: time mask, frequency mask, noise, gain.

    ``forward(x, mask_value)``: x float32 [C, F, T] or [B, C, F, T] -> same shape and dtype. ``mask_value``
    (what the masked bins become) is a number or a tensor that broadcasts against ``x``.
    """

    def __init__(self, time_mask: int = 20, time_mask_p: float = 1.0, freq_mask: int = 20, freq_mask_p: float = 1.0,
                 noise_std: float = 0.01, noise_p: float = 0.5, gain_min: float = 0.8, gain_max: float = 1.2,
                 gain_p: float = 0.5, scale: str = "db"):
        super().__init__()
        self.steps = nn.ModuleList([TimeMasking(time_mask, time_mask_p), FrequencyMasking(freq_mask, freq_mask_p),
                                    GaussianNoise(noise_std, noise_p), RandomGain(gain_min, gain_max, gain_p, scale)])

    def forward(self, x: torch.Tensor, mask_value: float | torch.Tensor = 0.0) -> torch.Tensor:
        for step in self.steps:
            x = step(x, mask_value)
        return x


def build_augment(cfg: dict) -> SpectrogramAugment | None:
    """The training augmentation described by a train.py config, or None when ``augment`` is off."""
    if not cfg["augment"]:
        return None
    return SpectrogramAugment(cfg["time_mask"], cfg["time_mask_p"], cfg["freq_mask"], cfg["freq_mask_p"],
                              cfg["noise_std"], cfg["noise_p"], cfg["gain_min"], cfg["gain_max"], cfg["gain_p"],
                              cfg["scale"])
