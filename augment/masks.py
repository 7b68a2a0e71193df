"""SpecAugment's time and frequency masks (Park et al. 2019), through torchaudio's ``TimeMasking`` and
``FrequencyMasking``: each example gets its own mask, shared by its channels."""
from __future__ import annotations

import torch
import torchaudio.transforms as T
from torch import nn

from augment.base import PerExample


def _shared_mask(mask: nn.Module, x: torch.Tensor, mask_value: float | torch.Tensor, axis: int) -> torch.Tensor:
    """Draw one torchaudio mask per example along ``axis`` (-1 time, -2 frequency) and apply it to all
    channels. The mask is drawn on ones of shape [B, 1, 1, T] (or [B, 1, F, 1]): torchaudio draws the same
    random numbers as for a full [B, 1, F, T] tensor, and no full-size tensor is built or compared.
    ``mask_value``: a number, or a tensor that broadcasts against ``x`` (e.g. one value per mel bin)."""
    shape = [x.shape[0], 1, 1, 1]
    shape[axis] = x.shape[axis]
    keep = mask(torch.ones(shape, device=x.device, dtype=x.dtype), 0.0)
    return torch.where(keep == 0, mask_value, x)  # a float stays a scalar: no host-to-device copy per call


class TimeMasking(PerExample):
    """Sets ``t ~ U[0, max_frames)`` consecutive frames to ``mask_value`` (torchaudio ``TimeMasking``).
    In a batch each example gets its own mask; all channels of an example share it."""

    def __init__(self, max_frames: int, p: float = 1.0):
        super().__init__(p)
        self.mask = T.TimeMasking(time_mask_param=max_frames, iid_masks=True)

    def transform(self, x, mask_value):
        return _shared_mask(self.mask, x, mask_value, -1)


class FrequencyMasking(PerExample):
    """Sets ``f ~ U[0, max_bins)`` consecutive mel bands to ``mask_value`` (torchaudio ``FrequencyMasking``)."""

    def __init__(self, max_bins: int, p: float = 1.0):
        super().__init__(p)
        self.mask = T.FrequencyMasking(freq_mask_param=max_bins, iid_masks=True)

    def transform(self, x, mask_value):
        return _shared_mask(self.mask, x, mask_value, -2)
