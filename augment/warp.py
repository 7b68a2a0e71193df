"""Warps of the spectrogram's axes, per example on the device: the mel axis (vocal-tract length perturbation,
pitch shift) and the time axis (time stretch). Each output bin is read from a fractional source position by
linear interpolation (:func:`resample_axis`); a warp factor of exactly 1 copies the input."""
from __future__ import annotations

import math

import torch
from torch import nn

from augment.base import PerExample, uniform
from data.frontends import MelAxis

# Jaitly & Hinton 2013 keep the warp linear up to F_hi = 4800 Hz at 16 kHz (0.6 of the Nyquist frequency),
# then map the rest linearly onto [F_hi * min(alpha, 1), Nyquist]; here 0.6 of the mel axis' top (f_max).
VTLP_BOUNDARY = 0.6


def resample_axis(x: torch.Tensor, positions: torch.Tensor, axis: int, fill: float | torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Read ``x`` [B, C, F, T] at fractional ``positions`` along ``axis`` (-1 time, -2 frequency), linearly
    interpolated.

    Args:
        positions: float [B, N], source indices per example (integers copy exactly).
        fill: what positions outside [0, length - 1] read (None: the nearest edge). A tensor must broadcast
            against the output.
    Returns:
        [B, C, F, N] (axis -1) or [B, C, N, T] (axis -2), x's dtype.
    """
    length, (b, c, f, t) = x.shape[axis], x.shape
    pos = positions.to(x.dtype)
    low = pos.floor().clamp(0, length - 1)
    frac = (pos - low).clamp(0, 1)
    high = (low + 1).clamp(max=length - 1)
    if axis == -1:
        index = lambda i: i.long().view(b, 1, 1, -1).expand(b, c, f, -1)  # noqa: E731
        frac, outside = frac.view(b, 1, 1, -1), ((pos < 0) | (pos > length - 1)).view(b, 1, 1, -1)
    else:
        index = lambda i: i.long().view(b, 1, -1, 1).expand(b, c, -1, t)  # noqa: E731
        frac, outside = frac.view(b, 1, -1, 1), ((pos < 0) | (pos > length - 1)).view(b, 1, -1, 1)
    out = torch.lerp(x.gather(axis, index(low)), x.gather(axis, index(high)), frac)
    return out if fill is None else torch.where(outside, fill, out)


def vtlp_source_hz(target_hz: torch.Tensor, alpha: torch.Tensor, f_max: float) -> torch.Tensor:
    """Inverse of VTLP's piecewise-linear warp (Jaitly & Hinton 2013, eq. 1): the source frequency that the
    warp by ``alpha`` moves to each ``target_hz``. The forward warp is ``f -> alpha f`` below
    ``b = F_hi min(alpha, 1) / alpha`` (``F_hi`` = VTLP_BOUNDARY * f_max), then linear to keep ``f_max``
    fixed. ``target_hz`` [F] and ``alpha`` [B, 1] broadcast to [B, F]; Hz."""
    f_hi = VTLP_BOUNDARY * f_max
    knee = f_hi * alpha.clamp(max=1.0)  # = alpha * b, the warped boundary
    b = knee / alpha
    above = f_max - (f_max - target_hz) * (f_max - b) / (f_max - knee)
    return torch.where(target_hz <= knee, target_hz / alpha, above)


class FrequencyWarp(PerExample):
    """Vocal-tract length perturbation (VTLP, Jaitly & Hinton 2013) on the mel axis: each example's frequency
    axis is warped by ``alpha ~ U(1 - max_warp, 1 + max_warp)`` (the paper: 0.9-1.1), ``f -> alpha f`` below a
    boundary and linear above it so the top of the axis stays; formants and pitch move together, like a
    longer or shorter vocal tract. Done on the mel spectrogram through the bands' centre frequencies
    (:class:`augment.base.MelAxis`), so a tone at ``f`` ends up in the band of ``alpha f``.

    Input: [B, C, n_mels, T] in any units. Raises ValueError for ``max_warp`` outside [0, 1)."""

    def __init__(self, axis: MelAxis, max_warp: float, p: float = 0.5):
        super().__init__(p)
        if not 0.0 <= max_warp < 1.0:
            raise ValueError(f"VTLP max_warp={max_warp} must be in [0, 1)")
        self.axis, self.max_warp = axis, float(max_warp)
        self.register_buffer("centres", axis.centres().float(), persistent=False)

    def source_bins(self, alpha: torch.Tensor) -> torch.Tensor:
        """Fractional source band of every output band for warp factors ``alpha`` [B]: float [B, n_mels]."""
        source = vtlp_source_hz(self.centres.to(alpha.device), alpha[:, None], self.axis.f_max)
        return self.axis.hz_to_bin(source).to(torch.float32)

    def transform(self, x, mask_value):
        alpha = uniform((x.shape[0],), 1.0 - self.max_warp, 1.0 + self.max_warp, x.device)
        return resample_axis(x, self.source_bins(alpha), -2)


class PitchShift(PerExample):
    """Pitch shift on the mel axis: every frequency scaled by ``2 ** (n / 12)``, ``n ~ U(-max_semitones,
    +max_semitones)`` semitones per example (pitch and formants move together, the spectrogram-domain
    counterpart of ``torchaudio.transforms.PitchShift`` without its phase vocoder). Bands whose source lies
    outside the axis take ``mask_value`` (the front end's silence or the normalisation mean).

    Input: [B, C, n_mels, T]. Raises ValueError for a negative ``max_semitones``."""

    def __init__(self, axis: MelAxis, max_semitones: float, p: float = 0.5):
        super().__init__(p)
        if max_semitones < 0:
            raise ValueError(f"pitch shift max_semitones={max_semitones} must be >= 0")
        self.axis, self.max_semitones = axis, float(max_semitones)
        self.register_buffer("centres", axis.centres().float(), persistent=False)

    def source_bins(self, semitones: torch.Tensor) -> torch.Tensor:
        """Fractional source band of every output band for shifts ``semitones`` [B]: float [B, n_mels]."""
        factor = torch.pow(2.0, semitones[:, None] / 12.0)
        return self.axis.hz_to_bin(self.centres.to(semitones.device) / factor).to(torch.float32)

    def transform(self, x, mask_value):
        semitones = uniform((x.shape[0],), -self.max_semitones, self.max_semitones, x.device)
        fill = mask_value if torch.is_tensor(mask_value) else torch.tensor(float(mask_value), device=x.device)
        return resample_axis(x, self.source_bins(semitones), -2, fill.to(x.dtype))


class TimeStretch(nn.Module):
    """Time stretch without pitch change: each example plays at ``rate ~ U(1 - max_stretch, 1 + max_stretch)``
    (rate > 1 faster), by resampling the frames of the spectrogram (the magnitude counterpart of
    ``torchaudio.transforms.TimeStretch``'s phase vocoder, which needs the complex STFT the cache does not
    keep). A faster rate reads ``out_frames * rate`` input frames, so the crops come
    :meth:`input_frames` wide and leave ``out_frames`` wide; unchosen examples (probability ``1 - p``) take
    an exact ``out_frames`` slice at a random offset. Eval mode and inputs already ``out_frames`` wide in eval
    are passed through.

    ``forward(x, mask_value)``: [B, C, F, T_in] or [C, F, T_in] -> [..., out_frames].
    Raises ValueError for ``max_stretch`` outside [0, 1) or ``p`` outside [0, 1]."""

    def __init__(self, max_stretch: float, out_frames: int, p: float = 0.5):
        super().__init__()
        if not 0.0 <= max_stretch < 1.0 or not 0.0 <= p <= 1.0:
            raise ValueError(f"time stretch needs 0 <= max_stretch < 1 and 0 <= p <= 1, got {max_stretch}, {p}")
        self.max_stretch, self.out_frames, self.p = float(max_stretch), int(out_frames), p

    def input_frames(self, frames: int) -> int:
        """Frames a crop needs so that the fastest rate still reads real audio: ceil(frames * (1 + max))."""
        return int(math.ceil(frames * (1.0 + self.max_stretch)))

    def forward(self, x: torch.Tensor, mask_value: float | torch.Tensor = 0.0) -> torch.Tensor:
        if not self.training:
            return x
        item = x.dim() == 3
        x = x.unsqueeze(0) if item else x
        b, width, out = x.shape[0], x.shape[-1], self.out_frames
        rate = uniform((b,), 1.0 - self.max_stretch, 1.0 + self.max_stretch, x.device)
        rate = torch.where(torch.rand(b, device=x.device) < self.p, rate, torch.ones_like(rate))
        span = out * rate  # input frames each example reads
        start = torch.rand(b, device=x.device) * (width - span).clamp(min=0)
        start = torch.where(rate == 1.0, start.floor(), start)  # rate 1: an exact slice
        positions = start[:, None] + (torch.arange(out, device=x.device) + 0.5) * rate[:, None] - 0.5
        y = resample_axis(x, positions, -1)
        return y[0] if item else y
