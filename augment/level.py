"""Level changes: Gaussian noise, a random gain, and random equalisation by band gains (FilterAugment)."""
from __future__ import annotations

import torch

from augment.base import PerExample, add_decibels, check_units, uniform

# FilterAugment's official settings (frednam93/FilterAugSED, ``filt_aug``, the ICASSP 2022 version): the
# "step" shape uses 2-4 bands at least 4 bins wide, the "linear" shape 3-5 bands at least 6 bins wide;
# ``filter_type=0.5`` draws the shape per batch.
STEP_BANDS, STEP_MIN_WIDTH = (2, 4), 4
LINEAR_BANDS, LINEAR_MIN_WIDTH = (3, 5), 6


class GaussianNoise(PerExample):
    """Adds N(0, std^2) noise to every bin; ``std`` is in the input's units (dB for log-mel)."""

    def __init__(self, std: float, p: float = 0.5):
        super().__init__(p)
        self.std = std

    def transform(self, x, mask_value):
        return x + self.std * torch.randn_like(x)


class RandomGain(PerExample):
    """Multiplies the signal's power by ``g ~ U(min_gain, max_gain)`` per example: ``x * g`` on power
    (``scale="power"``), ``x + 10 * log10(g)`` on dB, ``x + ln(g)`` on a natural log (``"ln"``), and the
    amplitude by ``sqrt(g)`` on a waveform (``"wave"``). ``scale``: the units of ``data.frontends``
    (augment/base.py). The tutorial's advanced run: U(0.8, 1.2) with p=0.5.
    Raises ValueError unless 0 < min_gain <= max_gain."""

    def __init__(self, min_gain: float, max_gain: float, p: float = 0.5, scale: str = "db"):
        super().__init__(p)
        if not 0 < min_gain <= max_gain:
            raise ValueError(f"gain range must satisfy 0 < min_gain <= max_gain, got {min_gain}, {max_gain}")
        self.min_gain, self.max_gain, self.scale = min_gain, max_gain, check_units(scale)

    def transform(self, x, mask_value):
        gain = uniform((x.shape[0], 1, 1, 1), self.min_gain, self.max_gain, x.device)
        return add_decibels(x, 10.0 * torch.log10(gain), self.scale)


def band_edges(n_bins: int, n_bands: int, min_width: int) -> torch.Tensor:
    """FilterAugment's random band boundaries: long [n_bands + 1] from 0 to ``n_bins``, each band at least
    ``min_width`` bins wide (narrower when ``n_bins`` is too small for that)."""
    while min_width > 1 and n_bins - n_bands * min_width + 1 < 0:
        min_width -= 1
    cuts = torch.randint(0, max(n_bins - n_bands * min_width + 1, 1), (n_bands - 1,)).sort().values
    cuts = cuts + torch.arange(1, n_bands) * min_width
    return torch.cat([torch.tensor([0]), cuts.clamp(max=n_bins), torch.tensor([n_bins])])


def band_gains_db(edges: torch.Tensor, gains_db: torch.Tensor, linear: bool) -> torch.Tensor:
    """Per-bin gains in dB of one band layout for a batch.

    Args:
        edges: long [n_bands + 1], band boundaries in bins (0 ... n_bins).
        gains_db: float [B, n_bands] ("step": one gain per band) or [B, n_bands + 1] (``linear``: gains at
            the band edges, linearly interpolated inside each band, FilterAugment's "linear" shape).
    Returns:
        float [B, n_bins], dB.
    """
    n_bins = int(edges[-1])
    bins = torch.arange(n_bins, device=gains_db.device)
    widths = (edges[1:] - edges[:-1]).to(gains_db.device)
    band = torch.bucketize(bins, edges[1:-1].to(gains_db.device), right=True)  # [n_bins], band of each bin
    if not linear:
        return gains_db[:, band]
    start = edges[:-1].to(gains_db.device)[band]
    t = (bins - start) / (widths[band] - 1).clamp(min=1)  # 0 at a band's first bin, 1 at its last
    return gains_db[:, band] + (gains_db[:, band + 1] - gains_db[:, band]) * t


class BandGain(PerExample):
    """FilterAugment (Nam et al., ICASSP 2022; the DCASE 2022-23 task 4 baselines): random equalisation, a
    gain drawn from U(-max_db, +max_db) dB on each of a few random frequency bands, as a step per band or
    linear between band edges (the shape drawn per batch, p=0.5 each, as the official ``filter_type=0.5``).
    Bands are laid out per batch, gains per example. Models a microphone's or a room's colouring.

    Input: [B, C, n_mels, T] in ``units`` (not waveforms). Raises ValueError for ``max_db < 0``."""

    def __init__(self, max_db: float, p: float = 0.5, units: str = "db"):
        super().__init__(p)
        if max_db < 0:
            raise ValueError(f"band gain max_db={max_db} must be >= 0")
        self.max_db, self.units = float(max_db), check_units(units)

    def transform(self, x, mask_value):
        linear = bool(torch.rand(()) < 0.5)
        low, high = LINEAR_BANDS if linear else STEP_BANDS
        n_bands = int(torch.randint(low, high + 1, ()))
        edges = band_edges(x.shape[-2], n_bands, LINEAR_MIN_WIDTH if linear else STEP_MIN_WIDTH)
        gains = uniform((x.shape[0], n_bands + int(linear)), -self.max_db, self.max_db, x.device)
        return add_decibels(x, band_gains_db(edges, gains, linear)[:, None, :, None], self.units)
