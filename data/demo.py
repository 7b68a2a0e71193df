"""A small synthetic labelled audio set for ``--preset=demo``: runs the whole pipeline offline.

Four classes that differ in ways a spectrogram CNN can see, each with random pitch, rate, loudness and
background noise so that it is not a lookup table:
    tone   - a steady harmonic stack (f0 120-600 Hz) with vibrato
    chirp  - an exponential sine sweep upwards over 2-5 octaves
    pulses - short noise bursts at 3-9 per second
    hum    - low band-limited noise (cut-off 200-900 Hz) with a slow tremolo
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from experiment.progress import progress

CLASSES = ("chirp", "hum", "pulses", "tone")
VERSION = "1"


def _clip(kind: str, rng: np.random.Generator, sample_rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    if kind == "tone":
        f0 = rng.uniform(120, 600) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        x = sum(rng.uniform(0.3, 1) / k * np.sin(k * phase) for k in range(1, int(rng.integers(3, 7))))
    elif kind == "chirp":
        f_start, octaves = rng.uniform(150, 500), rng.uniform(2, 5)
        f = f_start * 2 ** (octaves * t / seconds)
        x = np.sin(2 * np.pi * np.cumsum(f) / sample_rate)
    elif kind == "pulses":
        x = np.zeros_like(t)
        period = 1 / rng.uniform(3, 9)
        for start in np.arange(rng.uniform(0, period), seconds, period):
            i, n = int(start * sample_rate), int(rng.uniform(0.01, 0.04) * sample_rate)
            x[i:i + n] += rng.standard_normal(len(x[i:i + n])) * np.hanning(len(x[i:i + n]))
    elif kind == "hum":
        spectrum = np.fft.rfft(rng.standard_normal(len(t)))
        spectrum[np.fft.rfftfreq(len(t), 1 / sample_rate) > rng.uniform(200, 900)] = 0
        x = np.fft.irfft(spectrum, len(t)) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    else:
        raise ValueError(kind)
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.8)
    x += rng.standard_normal(len(t)) * rng.uniform(0.005, 0.03)
    return np.clip(x, -1, 1).astype(np.float32)


def make_demo_dataset(root, clips_per_class: int = 48, sample_rate: int = 16000, seconds: float = 3.0,
                      seed: int = 0, show_progress: bool = True) -> Path:
    """Write ``root/<class>/<class>_NNN.wav`` (16-bit PCM) unless a complete set of this version is there.

    Returns ``root``. Deterministic for a given ``seed``.
    """
    root = Path(root)
    stamp = root / ".complete"
    signature = f"{VERSION} {clips_per_class} {sample_rate} {seconds} {seed}"
    if stamp.exists() and stamp.read_text() == signature:
        return root
    rng = np.random.default_rng(seed)
    jobs = [(kind, i) for kind in CLASSES for i in range(clips_per_class)]
    for kind, i in progress(jobs, desc="Generating the demo dataset", unit="clip", disable=not show_progress,
                            leave=False):
        (root / kind).mkdir(parents=True, exist_ok=True)
        sf.write(root / kind / f"{kind}_{i:03d}.wav", _clip(kind, rng, sample_rate, seconds), sample_rate,
                 subtype="PCM_16")
    stamp.write_text(signature)
    return root
