"""Training augmentation: a registry of augmentations of real variation, each with a probability and a strength
as train.py config keys, applied in registry order.

Where each one runs is set by the feature cache (features are computed once per track):

==============  ==========================================================  ===============  ==================
name            what it models (source)                                      where            config keys
==============  ==========================================================  ===============  ==================
speed           tempo and pitch together, speaking rate (Ko et al. 2015;     cache: 2 copies   speed_p,
                Kaldi's 0.9/1.0/1.1), torchaudio ``functional.speed``         per track         speed_factor
time_stretch    tempo without pitch (spectrogram frames resampled)           device, batch    time_stretch_p, ...
vtlp            vocal-tract length (Jaitly & Hinton 2013), mel-axis warp      device, batch    vtlp_p, vtlp_warp
pitch_shift     pitch and formants, mel-axis scaling by 2^(n/12)             device, batch    pitch_shift_p, ...
reverb          a room (impulse response, synthetic or ``rir_dir``)          device, batch    reverb_p, ...
background      other sounds at an SNR (another clip, or ``noise_dir``)      device, batch    background_p, ...
band_gain       microphone / channel colouring (FilterAugment, Nam 2022)     device, batch    band_gain_p, ...
time_mask       SpecAugment time masks (Park et al. 2019)                    device, batch    time_mask_p, ...
freq_mask       SpecAugment frequency masks                                  device, batch    freq_mask_p, ...
noise           Gaussian noise in the input's units (the tutorial's)         device, batch    noise_p, noise_std
gain            random gain (the tutorial's)                                 device, batch    gain_p, gain_min..
==============  ==========================================================  ===============  ==================

"device, batch" entries run in the input transform (``data.features``) on whole batches on the training device
(or per item on CPU workers with ``features_on=item``), in the front end's units (augment/base.py), before
normalisation; "cache" entries are waveform changes whose features are cached as extra copies per track
(``data.cache.FeatureCache.build_speed_copies``) and picked per crop by ``data.dataset.ClipDataset``. Waveform
front ends (the wav2vec2 family) take the entries that make sense on samples: speed, reverb, background, gain.
Every entry is the identity in eval mode and with probability 0; randomness comes from torch's global generator
(seeded per step by the training loop), so a seed gives the same batch. Adding an augmentation is one
:class:`Augmentation` entry in :data:`AUGMENTATIONS`.

The SwanLab tutorial's advanced run (source of the ``resnext101_32x8d`` preset) applies, on the power mel:
TimeMasking(20) and FrequencyMasking(20) always, noise sigma 0.01 with p=0.5, gain U(0.8, 1.2) with p=0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from augment.base import UNITS, Context, PerExample
from data.frontends import MelAxis
from augment.level import BandGain, GaussianNoise, RandomGain
from augment.masks import FrequencyMasking, TimeMasking
from augment.mixing import BackgroundMix, Reverb, noise_bank, rir_bank
from augment.warp import FrequencyWarp, PitchShift, TimeStretch
from experiment.config import ConfigError

SPECTROGRAM = ("db", "ln", "power")


@dataclass(frozen=True)
class Build:
    """What building an entry may need: the features' :class:`Context`, the front end, the crop width in frames
    (``clip_frames``) and ``features_of(path)`` (a file's cached features, for ``noise_dir``)."""
    context: Context
    frontend: nn.Module | None
    clip_frames: int | None
    features_of: Callable | None


@dataclass(frozen=True)
class Augmentation:
    """One registry entry: its config ``keys`` (the probability first, then the strengths), the feature
    ``units`` it works on, ``where`` it runs ("device": per batch in the input transform; "cache": copies of
    each track in the feature cache, picked by the dataset), its ``source``, and ``build(cfg, Build)`` giving
    the module (device entries)."""
    name: str
    keys: tuple[str, ...]
    units: tuple[str, ...]
    where: str
    source: str
    build: Callable[[dict, Build], nn.Module] | None = None


def _axis(b: Build) -> MelAxis:
    if b.context.axis is None:
        raise ConfigError("this augmentation warps the mel axis: it needs a mel front end")
    return b.context.axis


def _clip_frames(b: Build) -> int:
    if b.clip_frames is None:
        raise ConfigError("time_stretch needs the crop width (clip_frames)")
    return b.clip_frames


def _noise(cfg: dict, b: Build):
    if not cfg["noise_dir"]:
        return None
    if b.features_of is None:
        raise ConfigError("noise_dir needs the feature cache to read the noise recordings")
    bank, skipped = noise_bank(cfg["noise_dir"], b.features_of, frames_per_second=b.context.frames_per_second)
    for path, reason in skipped:
        print(f"warning: noise_dir: skipped {path}: {reason}")
    return bank


AUGMENTATIONS: dict[str, Augmentation] = {a.name: a for a in (
    Augmentation("speed", ("speed_p", "speed_factor"), UNITS, "cache",
                 "Ko et al. 2015, 'Audio augmentation for speech recognition'; Kaldi perturb_data_dir_speed.sh"),
    Augmentation("time_stretch", ("time_stretch_p", "time_stretch"), SPECTROGRAM, "device",
                 "time stretch of the magnitude spectrogram (torchaudio TimeStretch without phase)",
                 lambda cfg, b: TimeStretch(cfg["time_stretch"], _clip_frames(b), cfg["time_stretch_p"])),
    Augmentation("vtlp", ("vtlp_p", "vtlp_warp"), SPECTROGRAM, "device",
                 "Jaitly & Hinton 2013, 'Vocal Tract Length Perturbation improves speech recognition'",
                 lambda cfg, b: FrequencyWarp(_axis(b), cfg["vtlp_warp"], cfg["vtlp_p"])),
    Augmentation("pitch_shift", ("pitch_shift_p", "pitch_shift"), SPECTROGRAM, "device",
                 "pitch shift by scaling the mel axis (torchaudio PitchShift without the phase vocoder)",
                 lambda cfg, b: PitchShift(_axis(b), cfg["pitch_shift"], cfg["pitch_shift_p"])),
    Augmentation("reverb", ("reverb_p", "reverb_rt60", "rir_dir"), UNITS, "device",
                 "room impulse responses (synthetic exponential decay or rir_dir), convolutive transfer function",
                 lambda cfg, b: Reverb(rir_bank(b.frontend, b.context.units, cfg["reverb_rt60"], cfg["rir_dir"]),
                                       cfg["reverb_p"], b.context.units)),
    Augmentation("background", ("background_p", "background_snr_min", "background_snr_max", "noise_dir"), UNITS,
                 "device", "background mixing at a random SNR (torchaudio AddNoise's SNR definition)",
                 lambda cfg, b: BackgroundMix(cfg["background_snr_min"], cfg["background_snr_max"],
                                              cfg["background_p"], b.context.units, _noise(cfg, b))),
    Augmentation("band_gain", ("band_gain_p", "band_gain_db"), SPECTROGRAM, "device",
                 "FilterAugment, Nam et al. ICASSP 2022 (DCASE 2022-23 task 4 baselines)",
                 lambda cfg, b: BandGain(cfg["band_gain_db"], cfg["band_gain_p"], b.context.units)),
    Augmentation("time_mask", ("time_mask_p", "time_mask"), SPECTROGRAM, "device",
                 "SpecAugment, Park et al. 2019 (torchaudio TimeMasking)",
                 lambda cfg, b: TimeMasking(cfg["time_mask"], cfg["time_mask_p"])),
    Augmentation("freq_mask", ("freq_mask_p", "freq_mask"), SPECTROGRAM, "device",
                 "SpecAugment, Park et al. 2019 (torchaudio FrequencyMasking)",
                 lambda cfg, b: FrequencyMasking(cfg["freq_mask"], cfg["freq_mask_p"])),
    Augmentation("noise", ("noise_p", "noise_std"), SPECTROGRAM, "device",
                 "the SwanLab tutorial's Gaussian noise (sigma in the input's units)",
                 lambda cfg, b: GaussianNoise(cfg["noise_std"], cfg["noise_p"])),
    Augmentation("gain", ("gain_p", "gain_min", "gain_max"), UNITS, "device",
                 "the SwanLab tutorial's random gain U(0.8, 1.2)",
                 lambda cfg, b: RandomGain(cfg["gain_min"], cfg["gain_max"], cfg["gain_p"], b.context.units)),
)}


class AugmentPipeline(nn.Module):
    """Augmentations applied in order: ``forward(x, mask_value)``, x float [C, F, T] or [B, C, F, T] in
    ``units`` -> float [..., F, T_out] (``T_out`` = the crop width; :meth:`input_frames` says how wide crops
    must come in, wider only with ``time_stretch``). ``mask_value``: what masked or empty bins become (a
    number or a tensor broadcasting against x)."""

    def __init__(self, steps, units: str = "db"):
        super().__init__()
        self.steps, self.units = nn.ModuleList(steps), units

    def input_frames(self, frames: int) -> int:
        """Width in frames that training crops need so that the output is ``frames`` wide."""
        return max([frames] + [s.input_frames(frames) for s in self.steps if hasattr(s, "input_frames")])

    def forward(self, x: torch.Tensor, mask_value: float | torch.Tensor = 0.0) -> torch.Tensor:
        for step in self.steps:
            x = step(x, mask_value)
        return x


class SpectrogramAugment(AugmentPipeline):
    """The tutorial's four augmentations in its order: time mask, frequency mask, noise, gain (each with its
    probability; ``scale``: the units, "db" or "power")."""

    def __init__(self, time_mask: int = 20, time_mask_p: float = 1.0, freq_mask: int = 20, freq_mask_p: float = 1.0,
                 noise_std: float = 0.01, noise_p: float = 0.5, gain_min: float = 0.8, gain_max: float = 1.2,
                 gain_p: float = 0.5, scale: str = "db"):
        super().__init__([TimeMasking(time_mask, time_mask_p), FrequencyMasking(freq_mask, freq_mask_p),
                          GaussianNoise(noise_std, noise_p), RandomGain(gain_min, gain_max, gain_p, scale)], scale)


def speed_factors(cfg: dict) -> tuple[float, ...]:
    """The speed factors of the cached copies, ``(1 - speed_factor, 1 + speed_factor)``, or () when speed
    perturbation is off (``augment`` off or ``speed_p`` 0)."""
    if not cfg.get("augment") or not cfg.get("speed_p", 0.0):
        return ()
    return (round(1.0 - cfg["speed_factor"], 6), round(1.0 + cfg["speed_factor"], 6))


def check_config(cfg: dict) -> None:
    """Raises ConfigError naming the key for a probability outside [0, 1] or a speed factor outside (0, 1)."""
    for entry in AUGMENTATIONS.values():
        p = cfg.get(entry.keys[0], 0.0)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"--{entry.keys[0]}={p}: a probability, between 0 and 1")
    if not 0.0 < cfg.get("speed_factor", 0.1) < 1.0:
        raise ConfigError(f"--speed_factor={cfg['speed_factor']}: the copies play at 1 -/+ this; use e.g. 0.1")


def build_augment(cfg: dict, frontend: nn.Module | None = None, clip_frames: int | None = None,
                  features_of: Callable | None = None, notes: list | None = None) -> AugmentPipeline | None:
    """The training augmentation of a train.py config for ``frontend`` (None: a log-mel of ``cfg["scale"]``
    without a mel axis, enough for the tutorial's four), or None when ``augment`` is off or nothing applies.

    ``clip_frames``: the crop width the model takes (time_stretch); ``features_of(path)``: cached features of a
    file (noise_dir). Entries with probability 0 are left out; entries that cannot work on the front end's units
    (e.g. masks on a waveform) are left out and named in ``notes`` when a list is given.
    Raises ConfigError naming the key for a bad probability or strength, or a folder without audio.
    """
    if not cfg["augment"]:
        return None
    check_config(cfg)
    context = Context.of(frontend) if frontend is not None else Context(cfg["scale"], None, cfg["sample_rate"], 0.0)
    build = Build(context, frontend, clip_frames, features_of)
    steps = []
    for entry in AUGMENTATIONS.values():
        if entry.where != "device" or not cfg.get(entry.keys[0], 0.0):
            continue
        if context.units not in entry.units:
            if notes is not None:
                notes.append(entry.name)
            continue
        try:
            steps.append(entry.build(cfg, build))
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"augmentation {entry.name} ({', '.join('--' + k for k in entry.keys)}): {err}") from None
    return AugmentPipeline(steps, context.units) if steps else None


__all__ = ["AUGMENTATIONS", "AugmentPipeline", "Augmentation", "BackgroundMix", "BandGain", "Context",
           "FrequencyMasking", "FrequencyWarp", "GaussianNoise", "MelAxis", "PerExample", "PitchShift",
           "RandomGain", "Reverb", "SpectrogramAugment", "TimeMasking", "TimeStretch", "build_augment",
           "check_config", "speed_factors"]
