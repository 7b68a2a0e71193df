"""Cutting whole-track features into fixed-length pieces along time (the last axis, in frames).

Training takes one random crop per track per epoch; evaluation and prediction cut the whole track into
windows and average the model's logits over them (one decision per track). Features are any front end's
output [rows, frames] (``data.frontends``): a spectrogram [n_mels, frames] or a waveform [1, samples].
A track shorter than a window is padded with ``pad_value``, the front end's silence (its ``pad_value``;
None: the track's quietest value, i.e. silence in dB for ``logmel``), placed at random in training and
centred in evaluation.
"""
from __future__ import annotations

import numpy as np
import torch


def _pad(mel: np.ndarray, width: int, left: int, pad_value: float | None) -> np.ndarray:
    out = np.full((mel.shape[0], width), mel.min() if pad_value is None else pad_value, dtype=mel.dtype)
    out[:, left:left + mel.shape[1]] = mel
    return out


def random_crop(mel: np.ndarray, width: int, rng: np.random.Generator, pad_value: float | None = None) -> np.ndarray:
    """A ``width``-frame crop of ``mel`` [rows, frames] at a uniformly random start; a shorter ``mel`` is
    padded with ``pad_value`` (None: its minimum) at a random offset."""
    frames = mel.shape[1]
    if frames < width:
        return _pad(mel, width, int(rng.integers(0, width - frames + 1)), pad_value)
    start = int(rng.integers(0, frames - width + 1))
    return mel[:, start:start + width]


def window_starts(frames: int, width: int, hop: int) -> list[int]:
    """Starts of ``width``-frame windows every ``hop`` frames, plus one ending at the last frame if the
    regular grid leaves a tail. With ``hop <= width`` the windows cover all ``frames``; a larger hop samples
    the track sparsely (first and last windows always included). A short track gives ``[0]``."""
    if hop < 1:
        raise ValueError(f"window hop must be at least one frame, got {hop}")
    if frames <= width:
        return [0]
    starts = list(range(0, frames - width + 1, hop))
    if starts[-1] + width < frames:
        starts.append(frames - width)
    return starts


def cut_windows(mel: np.ndarray, width: int, hop: int, pad_value: float | None = None) -> torch.Tensor:
    """All evaluation windows of ``mel`` [rows, frames] -> float32 tensor [N, 1, rows, width]; a shorter
    ``mel`` gives one centred window padded with ``pad_value`` (None: its minimum)."""
    frames = mel.shape[1]
    if frames < width:
        return torch.from_numpy(_pad(mel, width, (width - frames) // 2, pad_value))[None, None]
    return torch.from_numpy(np.stack([mel[:, s:s + width] for s in window_starts(frames, width, hop)]))[:, None]


def average_logits(logits: torch.Tensor, track_index: torch.Tensor, num_tracks: int) -> torch.Tensor:
    """Mean of window logits per track.

    Args:
        logits: float [N, K] for N windows. track_index: long [N], the track (0..num_tracks-1) of each window.
    Returns:
        float32 [num_tracks, K].
    """
    logits = logits.float()
    sums = torch.zeros(num_tracks, logits.shape[1], device=logits.device).index_add_(0, track_index, logits)
    counts = torch.bincount(track_index, minlength=num_tracks).clamp(min=1).unsqueeze(1)
    return sums / counts
