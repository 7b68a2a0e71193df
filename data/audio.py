"""Audio decoding: soundfile -> mono float32 -> resampled with torchaudio.

torchaudio >= 2.9 decodes only through torchcodec (and ffmpeg); soundfile bundles libsndfile, which
reads WAV (8/16/24/32-bit int, 32/64-bit float), FLAC, OGG Vorbis/Opus, MP3, AU and AIFF with no
system packages. Every failure becomes an :class:`AudioError` that names the file and the fix.
"""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# Extensions the index builder picks up (all decoded by libsndfile).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".au", ".snd", ".aif", ".aiff")

# Shorter clips carry too little signal to classify; predict.py and the index builder reject them.
MIN_SECONDS = 0.05


class AudioError(Exception):
    """A file that cannot be used as audio. ``str(err)`` reads ``<path>: <reason>. <fix>``."""

    def __init__(self, path, reason: str, fix: str = "re-encode it as WAV or FLAC, or remove it from the data"):
        self.path = os.fspath(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}. Fix: {fix}")


def sf_path(path) -> bytes:
    """``path`` as bytes for soundfile, which encodes str paths strictly and so fails on non-UTF-8 names."""
    return os.fsencode(path)


def read_audio(path) -> tuple[np.ndarray, int]:
    """Decode a whole file with soundfile.

    Returns:
        (samples, sample_rate): float32 array [frames, channels] in [-1, 1], rate in Hz.
    Raises:
        AudioError: missing, undecodable, empty or non-finite audio.
    """
    if not os.path.exists(path):
        raise AudioError(path, "file not found", "check the path, or rebuild the index with --rebuild_index=True")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        samples, sample_rate = sf.read(sf_path(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises LibsndfileError/RuntimeError/TypeError/ValueError
        raise AudioError(path, f"cannot be decoded as audio ({type(err).__name__}: {err})".rstrip()) from None
    if samples.size == 0 or samples.shape[0] == 0:
        raise AudioError(path, "contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(path, "contains NaN or infinite samples (a broken float WAV)")
    return samples, int(sample_rate)


def to_mono(samples: np.ndarray) -> torch.Tensor:
    """Down-mix [frames, channels] to mono float32 [frames] by averaging the channels."""
    return torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32)))


def resample(waveform: torch.Tensor, orig_rate: int, sample_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling (torchaudio.functional.resample) of [..., T]; no-op when rates match."""
    if orig_rate == sample_rate:
        return waveform
    return AF.resample(waveform, orig_rate, sample_rate)


def load_audio(path, sample_rate: int, min_seconds: float = MIN_SECONDS) -> torch.Tensor:
    """Decode, down-mix to mono and resample a file.

    Args:
        path: any file libsndfile decodes, any rate, any number of channels, any length.
        sample_rate: target rate in Hz.
        min_seconds: shorter files raise (seconds, measured before resampling).
    Returns:
        float32 tensor [T] at ``sample_rate``.
    Raises:
        AudioError: unreadable, empty, non-finite or too short.
    """
    samples, orig_rate = read_audio(path)
    if samples.shape[0] < min_seconds * orig_rate:
        raise AudioError(path, f"is only {samples.shape[0] / orig_rate:.3f} s long (at least {min_seconds} s needed)",
                         "use a longer recording")
    return resample(to_mono(samples), orig_rate, sample_rate)


def change_speed(waveform: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """Speed perturbation (Ko et al. 2015; Kaldi's ``perturb_data_dir_speed.sh`` with factors 0.9 and 1.1):
    play ``waveform`` [..., T] at ``factor`` times its speed, tempo and pitch together, by resampling
    (torchaudio ``functional.speed``). Returns [..., round(T / factor)] at the same ``sample_rate`` (Hz);
    ``factor`` 1 returns the input."""
    if factor == 1.0:
        return waveform
    return AF.speed(waveform, int(sample_rate), float(factor))[0]
