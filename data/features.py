"""The one feature pipeline, shared by training, evaluation, predict.py and bench.py.

    waveform [T] --LogMel--> mel [n_mels, frames] --(cache, crop/windows)--> [1, n_mels, W]
                 --MelImage--> image [3, resize, resize]

``LogMel`` runs once per track (its output is cached on disk, see ``data.cache``); crops and evaluation
windows are cut from the whole-track spectrogram in frames. ``MelImage`` (normalise, augment, 3 channels,
resize) is cheap and batch-friendly: the Dataset can apply it per item on the CPU, or the training loop
applies the same module to a whole batch on the training device (``features_on="device"``).

Two recipes (``scale``):
* ``"db"`` (default): log-mel in dB (AmplitudeToDB, ``top_db`` relative to the track's maximum), normalised
  with the training set's mean and standard deviation, bilinear (anti-aliased) resize.
* ``"power"``: the SwanLab tutorial's recipe: power mel, no log, no normalisation, ``clamp(min=0)``,
  ``AdaptiveAvgPool2d`` resize. Kept so the tutorial's runs can be reproduced.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch import nn

SCALES = ("db", "power")


class LogMel(nn.Module):
    """Waveform -> mel spectrogram, in dB (``scale="db"``) or power (``scale="power"``).

    Args:
        sample_rate: Hz of the input. n_fft, hop_length: samples. n_mels: mel bands.
        f_min, f_max: band edges in Hz (``f_max=None``: sample_rate / 2).
        top_db: dB range kept below each spectrogram's maximum (``"db"`` only).
    Input: float32 [..., T] mono at ``sample_rate``; inputs shorter than ``n_fft`` are zero-padded to ``n_fft``.
    Output: float32 [..., n_mels, 1 + T // hop_length]; always finite (silence gives a constant -100 dB).
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float = 0.0,
                 f_max: float | None = None, scale: str = "db", top_db: float | None = 80.0):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r}: choose one of {SCALES}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.f_min, self.f_max, self.scale, self.top_db = float(f_min), f_max, scale, top_db
        self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                    f_min=f_min, f_max=f_max, power=2.0)
        self.to_db = T.AmplitudeToDB(stype="power", top_db=top_db) if scale == "db" else None

    def params(self) -> dict:
        """Everything that determines the output: the cache key and the checkpoint's feature record."""
        return dict(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
                    f_min=self.f_min, f_max=self.f_max, scale=self.scale, top_db=self.top_db)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` samples."""
        return 1 + max(num_samples, self.n_fft) // self.hop_length

    def seconds_to_frames(self, seconds: float) -> int:
        """Frames of a window of ``seconds`` (a crop of that many seconds of audio)."""
        return self.num_frames(int(round(seconds * self.sample_rate)))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.shape[-1] < self.n_fft:
            waveform = F.pad(waveform, (0, self.n_fft - waveform.shape[-1]))
        mel = self.mel(waveform)
        return self.to_db(mel) if self.to_db is not None else mel


class MelImage(nn.Module):
    """Mel spectrogram crop(s) -> 3-channel image for an ImageNet CNN, augmenting in training mode.

    Steps: SpecAugment (``module.training`` and ``augment`` given; masks filled with ``mean``, i.e. 0 after
    normalisation) -> ``(x - mean) / std`` -> (power recipe: ``clamp(min=0)``) -> resize to
    ``resize`` x ``resize`` -> repeat to 3 channels.

    Input: float32 [1, n_mels, frames] (one item) or [B, 1, n_mels, frames] (a batch), on any device.
    Output: float32 [3, resize, resize] or [B, 3, resize, resize]. The batch path and the per-item path
    give the same result for the same input (resizing is per image).
    """

    def __init__(self, resize: int, scale: str = "db", augment: nn.Module | None = None,
                 mean: float = 0.0, std: float = 1.0):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r}: choose one of {SCALES}")
        if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
            raise ValueError(f"normalisation needs a finite mean and a positive std, got mean={mean}, std={std}")
        self.resize, self.scale, self.augment = int(resize), scale, augment
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        item = x.dim() == 3
        if item:
            x = x.unsqueeze(0)
        if self.training and self.augment is not None:
            x = self.augment(x, mask_value=self.mean)
        x = (x - self.mean) / self.std
        size = (self.resize, self.resize)
        if self.scale == "power":
            x = F.adaptive_avg_pool2d(x.clamp(min=0), size)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.repeat(1, 3, 1, 1)
        return x[0] if item else x


def normalisation_stats(mels) -> tuple[float, float]:
    """Mean and standard deviation over every value of an iterable of spectrograms (float64 accumulation).

    Used on the training split only, so nothing leaks from validation or test.
    """
    total, total_sq, count = 0.0, 0.0, 0
    for mel in mels:
        m = np.asarray(mel, dtype=np.float64)
        total += m.sum()
        total_sq += np.square(m).sum()
        count += m.size
    if count == 0:
        raise ValueError("no spectrogram to compute normalisation statistics from")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return float(mean), float(std if std > 1e-6 else 1.0)


def build_features(cfg: dict, mean: float = 0.0, std: float = 1.0, augment: nn.Module | None = None
                   ) -> tuple[LogMel, MelImage]:
    """The LogMel and MelImage described by a train.py config (``f_max=0`` means sample_rate / 2)."""
    logmel = LogMel(cfg["sample_rate"], cfg["n_fft"], cfg["hop_length"], cfg["n_mels"], cfg["f_min"],
                    cfg["f_max"] or None, cfg["scale"], cfg["top_db"])
    return logmel, MelImage(cfg["resize"], cfg["scale"], augment, mean, std)


def window_frames(cfg: dict, logmel: LogMel) -> tuple[int, int]:
    """(crop/window width, evaluation hop) in frames from ``clip_seconds`` and ``eval_hop_seconds``."""
    width = logmel.seconds_to_frames(cfg["clip_seconds"])
    hop = max(1, int(round(cfg["eval_hop_seconds"] * cfg["sample_rate"] / cfg["hop_length"])))
    return width, hop
