"""Sounds added to the training clip: background at a random signal-to-noise ratio, and reverberation by a
room impulse response.

Both work on the front end's output, as the rest of the augmentation does: a spectrogram is mixed in the power
domain (two uncorrelated sounds add their power), a waveform in the amplitude domain. The SNR is the ratio of
the clip's total power to the background's over the crop; reverberation convolves each mel band's power along
time with the impulse response's own power envelope in that band (the convolutive transfer-function
approximation of a room, e.g. Avargel & Cohen 2007), or, for waveforms, the samples with the response.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn

from augment.base import PerExample, check_units, from_power, to_power, uniform
from data.audio import AUDIO_EXTENSIONS, load_audio

MAX_BANK_SECONDS = 600.0  # a noise folder is read up to this much audio (its files in sorted order)
SYNTHETIC_RIRS = 64  # synthetic responses drawn once (seed 0) when no rir_dir is given
MIN_RT60 = 0.1  # seconds: the shortest synthetic reverberation time


def audio_files(folder) -> list[Path]:
    """The audio files under ``folder`` (recursively, sorted). Raises FileNotFoundError naming the folder when it
    does not exist or holds none."""
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS) \
        if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no audio files ({' '.join(AUDIO_EXTENSIONS)}) there; give a folder of "
                                "noise recordings (noise_dir) or impulse responses (rir_dir), or leave the key empty")
    return files


def mean_power(power: torch.Tensor) -> torch.Tensor:
    """Mean of each example of a batch [B, ...] over everything but the batch axis: float [B, 1, 1, 1]."""
    return power.mean(dim=(1, 2, 3), keepdim=True)


def mix_at_snr(x: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor, units: str) -> torch.Tensor:
    """``x`` plus ``noise`` (same shape [B, C, F, T]) scaled so that the clip's power over the background's is
    ``snr_db`` [B] dB: power-domain addition for spectrograms, torchaudio's ``add_noise`` (amplitude addition)
    for waveforms (``wave``, [B, 1, 1, samples])."""
    if units == "wave":
        return AF.add_noise(x.flatten(1), noise.flatten(1), snr_db).view_as(x)
    signal, background = to_power(x, units), to_power(noise, units)
    scale = mean_power(signal) / (mean_power(background).clamp(min=1e-20)
                                  * torch.pow(10.0, snr_db.view(-1, 1, 1, 1) / 10.0))
    return from_power(signal + scale * background, units)


class BackgroundMix(PerExample):
    """Mixes a background into each chosen example at ``snr ~ U(min_snr, max_snr)`` dB: another clip of the
    batch (any class; the label stays the clip's own, as the background is quieter), or, with a ``bank`` (the
    front end's output of a noise folder, [rows, frames]), a random crop of it. Models other sounds around the
    recording. Per item (``features_on=item``, no batch) only the bank is used.

    Raises ValueError for min_snr > max_snr."""

    def __init__(self, min_snr: float, max_snr: float, p: float = 0.5, units: str = "db",
                 bank: torch.Tensor | None = None):
        super().__init__(p)
        if min_snr > max_snr:
            raise ValueError(f"background SNR range needs min <= max, got {min_snr}, {max_snr}")
        self.min_snr, self.max_snr, self.units = float(min_snr), float(max_snr), check_units(units)
        self.register_buffer("bank", bank, persistent=False)

    def background(self, x: torch.Tensor) -> torch.Tensor | None:
        """What each example of ``x`` [B, C, F, T] gets mixed with, or None (no bank and a single example)."""
        b, width = x.shape[0], x.shape[-1]
        if self.bank is not None:
            bank = self.bank if self.bank.shape[-1] >= width else self.bank.repeat(1, math.ceil(width / self.bank.shape[-1]))
            starts = (torch.rand(b, device=x.device) * (bank.shape[-1] - width + 1)).long()
            index = starts[:, None] + torch.arange(width, device=x.device)
            return bank[:, index].permute(1, 0, 2).unsqueeze(1).expand_as(x).to(x.dtype)
        if b < 2:
            return None
        other = (torch.arange(b, device=x.device) + torch.randint(1, b, (b,), device=x.device)) % b
        return x[other]

    def transform(self, x, mask_value):
        noise = self.background(x)
        if noise is None:
            return x
        return mix_at_snr(x, noise, uniform((x.shape[0],), self.min_snr, self.max_snr, x.device), self.units)


def synthetic_rir(rt60: float, drr_db: float, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    """A room impulse response of the statistical model: a unit direct path, then Gaussian noise decaying by
    60 dB over ``rt60`` seconds (``exp(-6.908 t / rt60)`` in amplitude), scaled so the direct path is ``drr_db``
    dB above the tail's energy. float32 [ceil(rt60 * sample_rate)]."""
    n = max(2, int(math.ceil(rt60 * sample_rate)))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    tail = torch.randn(n, generator=generator, dtype=torch.float64) * torch.exp(-6.908 * t / rt60)
    tail[0] = 0.0
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(tail.square().sum()))
    tail[0] = 1.0
    return tail.float()


def rir_bank(frontend: nn.Module, units: str, max_rt60: float, folder: str = "") -> torch.Tensor:
    """Impulse responses ready for :class:`Reverb`: from ``folder`` (every audio file, resampled to the front
    end's rate and started at its loudest sample) or :data:`SYNTHETIC_RIRS` synthetic ones (RT60 ~ U(0.1,
    max_rt60) s, direct-to-reverberant ratio ~ U(0, 10) dB, seed 0). Spectrogram units: each response's power
    envelope through ``frontend``, float [n, rows, K] with its first frame's mean power 1; ``wave``: the
    responses themselves, float [n, 1, samples] with a unit direct path. Shorter ones are zero-padded.
    Raises FileNotFoundError (no audio in ``folder``) or data.audio.AudioError (an unreadable response)."""
    sample_rate = int(frontend.sample_rate)
    if folder:
        waves = [load_audio(path, sample_rate) for path in audio_files(folder)]
        waves = [w[int(w.abs().argmax()):] / w.abs().max().clamp(min=1e-12) for w in waves]
    else:
        g = torch.Generator().manual_seed(0)
        params = torch.rand(SYNTHETIC_RIRS, 2, generator=g, dtype=torch.float64)
        waves = [synthetic_rir(MIN_RT60 + float(a) * max(max_rt60 - MIN_RT60, 0.0), 10.0 * float(b), sample_rate, g)
                 for a, b in params]
    if units == "wave":
        kernels = [w[None] for w in waves]
    else:
        with torch.no_grad():
            kernels = [to_power(frontend(w), units).float() for w in waves]
        kernels = [k / k[:, :1].mean().clamp(min=1e-20) for k in kernels]
    longest = max(k.shape[-1] for k in kernels)
    return torch.stack([nn.functional.pad(k, (0, longest - k.shape[-1])) for k in kernels])


class Reverb(PerExample):
    """Reverberation: each chosen example is convolved along time with a random impulse response of ``bank``
    (:func:`rir_bank`), in the power domain per mel band (spectrograms) or on the samples (``wave``), keeping
    the example's mean power. A crop starts dry (the tail of sound before the crop is not there).

    Input: [B, C, rows, T] in ``units``."""

    def __init__(self, bank: torch.Tensor, p: float = 0.5, units: str = "db"):
        super().__init__(p)
        self.units = check_units(units)
        self.register_buffer("bank", bank, persistent=False)

    def transform(self, x, mask_value):
        kernels = self.bank[torch.randint(len(self.bank), (x.shape[0],), device=self.bank.device)].unsqueeze(1)
        kernels = kernels.to(x.device, x.dtype)
        if self.units == "wave":
            wet = AF.fftconvolve(x, kernels)[..., :x.shape[-1]]
            return wet * (mean_power(x * x) / mean_power(wet * wet).clamp(min=1e-20)).sqrt()
        power = to_power(x, self.units)
        wet = AF.fftconvolve(power, kernels)[..., :x.shape[-1]].clamp(min=0)
        wet = wet * mean_power(power) / mean_power(wet).clamp(min=1e-20)
        return from_power(wet, self.units)


def noise_bank(folder: str, features_of, max_seconds: float = MAX_BANK_SECONDS, frames_per_second: float = 100.0
               ) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """The front end's output of the audio in ``folder``, concatenated along time: float32 [rows, frames], up to
    ``max_seconds`` of audio. ``features_of(path)`` gives a file's features (e.g. ``FeatureCache.get``).
    Returns (bank, skipped) with (path, reason) for unreadable files.
    Raises FileNotFoundError when the folder holds no audio or none of it is readable."""
    parts, skipped, frames = [], [], 0
    for path in audio_files(folder):
        try:
            feats = np.asarray(features_of(str(path)), dtype=np.float32)
        except Exception as err:  # an unreadable noise file is reported, not fatal
            skipped.append((str(path), str(err)))
            continue
        parts.append(torch.from_numpy(feats))
        frames += feats.shape[-1]
        if frames >= max_seconds * frames_per_second:
            break
    if not parts:
        raise FileNotFoundError(f"{folder}: none of its audio files could be read (noise_dir)")
    return torch.cat(parts, dim=-1), skipped
