"""The one feature pipeline, shared by training, evaluation, predict.py and bench.py.

    waveform [T] --front end--> features [n_mels, frames] (or [1, samples]) --(cache, crop/windows)-->
        [1, n_mels, W] --input transform--> model input

The front end (``data.frontends``: ``logmel``, ``panns_logmel``, ``kaldi_fbank``, ``waveform``) runs once per
track; its output is cached on disk (``data.cache``) and crops and evaluation windows are cut from it along
the last axis. The input transform (augment, normalise, shape for the model) is cheap and batch-friendly:
the Dataset can apply it per item on the CPU, or the training loop applies the same module to a whole batch
on the training device (``features_on="device"``).

Config keys (read with ``cfg.get`` so the configs of older checkpoints keep their meaning):

* ``input_layout``: ``"image"`` (default; :class:`MelImage`, 3-channel ``resize`` x ``resize`` images for
  ImageNet CNNs), ``"spectrogram"`` (:class:`SpectrogramInput`, [B, 1, n_mels, frames] for CNN14 and AST),
  ``"waveform"`` (:class:`WaveformInput`, [B, 1, 1, samples] for the wav2vec2 family).
* ``normalization``: ``"auto"`` (default: the front end's choice: training-split statistics for ``logmel``
  in dB and ``kaldi_fbank``; none for the tutorial's power mel, for ``panns_logmel`` (CNN14's learned
  ``bn0`` normalises) and for waveforms), ``"train"`` (training-split mean and
  std), ``"fixed"`` (``norm_mean``, ``norm_std``; AST: -4.2677393 and 4.5689974 * 2), ``"none"``,
  ``"per_clip"`` (each crop or window to zero mean and unit variance, as Wav2Vec2FeatureExtractor's
  ``do_normalize``), ``"per_band"`` (each mel band of a crop or window to zero mean over its frames, cepstral
  mean normalisation as Kaldi's ``apply-cmvn`` does by default, then the crop to unit variance: a microphone's
  or a voice's fixed spectral tilt is removed). :func:`normalisation_for` gives a run's statistics.

Two log-mel recipes (``scale``) for the default front end:
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
from torch import nn

from data.frontends import FRONTENDS, SCALES, KaldiFbank, LogMel, PannsLogMel, Waveform, build_frontend
from experiment.config import ConfigError

__all__ = ["FRONTENDS", "LAYOUTS", "NORMALIZATIONS", "SCALES", "InputTransform", "KaldiFbank", "LogMel", "MelImage",
           "PannsLogMel", "SpectrogramInput", "Waveform", "WaveformInput", "build_features", "build_frontend",
           "build_input_transform", "normalisation_for", "normalisation_stats", "normalization_mode",
           "per_band_stats", "per_clip_stats", "window_frames"]

NORMALIZATIONS = ("auto", "train", "fixed", "none", "per_clip", "per_band")
MASK_FILLS = ("mean", "bin_mean")  # a front end's ``mask_fill``: see InputTransform
# Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm: (x - mean) / sqrt(var + 1e-7), population variance.
PER_CLIP_EPS = 1e-7


def per_clip_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``sqrt(var + 1e-7)`` (population variance) of each example of a batch [B, ...].

    Returns two float tensors [B, 1, ..., 1] that broadcast against ``x``."""
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dims, keepdim=True)
    return mean, torch.sqrt(x.var(dims, correction=0, keepdim=True) + PER_CLIP_EPS)


def per_band_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each band's mean over the frames of each example of a batch [B, C, F, T], and the spread of the whole
    example once those means are removed (``sqrt(var + 1e-7)``, population variance).

    Cepstral mean normalisation (Kaldi's ``apply-cmvn``, whose default ``--norm-vars=false`` removes means only)
    on the log-mel: a fixed gain per band, a microphone's or a vocal tract's spectral tilt, becomes 0. The spread
    stays one number per example, so a quiet band is not blown up to unit variance.
    Returns float tensors [B, C, F, 1] (mean) and [B, 1, 1, 1] (spread) that broadcast against ``x``."""
    mean = x.mean(-1, keepdim=True)
    return mean, per_clip_stats(x - mean)[1]


# normalization -> the statistics each example is normalised with by its own values (one entry per mode).
PER_EXAMPLE = {"per_clip": per_clip_stats, "per_band": per_band_stats}


class InputTransform(nn.Module):
    """Crops or windows -> model input: augmentation (training mode only), normalisation, then the layout's
    shaping (:meth:`finish`; the identity here).

    Normalisation is ``(x - mean) / std`` with SpecAugment masks filled with ``mean`` (0 after
    normalising); the augmentation works in the front end's units (dB for log-mel), before normalising.
    With ``mask_fill="bin_mean"`` (the front end's choice: ``panns_logmel``, whose network normalises with its
    own ``bn0``) masks are filled with each mel bin's mean over the batch and its frames instead, the value the
    official CNN14 masks with (0 after ``bn0``); a single item uses its own frames.
    The augmentation reads the front end's ``units`` (augment/base.py: dB, natural log, power or waveform), so a
    gain or a background is the same sound change whatever the front end; it may make crops narrower
    (``time_stretch`` takes wider crops in, ``augment.input_frames``).
    With ``per_example`` (a key of ``PER_EXAMPLE``: ``per_clip`` or ``per_band``) each example's own mean (per
    band for ``per_band``) is removed first, masks are filled with 0 (that mean), and in training the augmented
    example is normalised again by its own statistics, so that what the network sees has zero mean and unit
    variance as at evaluation (``mean``/``std`` are unused; a random gain, a level change, is normalised away).
    Dividing by the un-augmented example's spread instead blew up a gain or noise on a crop that is all silence
    (with ``top_db``, exactly constant): values in the thousands, whose BatchNorm statistics then poisoned the
    EMA of the weights.

    Input: float32 [C, F, T] (one item) or [B, C, F, T] (a batch), any device. Output: see subclasses.
    Raises ValueError for a non-finite ``mean``, a non-positive ``std`` or an unknown ``per_example``.
    """

    frontends = ("logmel", "panns_logmel", "kaldi_fbank")  # the front ends whose output this layout takes
    has_bands = True  # its input has frequency bands (normalization=per_band needs them)

    def __init__(self, augment: nn.Module | None = None, mean: float = 0.0, std: float = 1.0,
                 per_example: str = "", mask_fill: str = "mean"):
        super().__init__()
        if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
            raise ValueError(f"normalisation needs a finite mean and a positive std, got mean={mean}, std={std}")
        if mask_fill not in MASK_FILLS:
            raise ValueError(f"mask_fill={mask_fill!r}: choose one of {MASK_FILLS}")
        if per_example and per_example not in PER_EXAMPLE:
            raise ValueError(f"per_example={per_example!r}: choose one of {tuple(PER_EXAMPLE)} or ''")
        self.augment, self.mean, self.std = augment, float(mean), float(std)
        self.example_stats = PER_EXAMPLE.get(per_example)
        self.mask_fill = mask_fill

    @classmethod
    def from_config(cls, cfg: dict, augment: nn.Module | None, mean: float, std: float,
                    per_example: str, mask_fill: str = "mean") -> "InputTransform":
        return cls(augment, mean, std, per_example, mask_fill)

    def mask_value(self, x: torch.Tensor) -> float | torch.Tensor:
        """What SpecAugment masks of the batch ``x`` [B, C, F, T] are filled with, before normalising."""
        if self.mask_fill == "bin_mean":
            return x.mean(dim=(0, 1, 3), keepdim=True)  # [1, 1, F, 1]
        return self.mean

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Augment (training mode) and normalise a batch [B, C, F, T]."""
        augment = self.augment if self.training else None
        if self.example_stats is not None:
            mean, std = self.example_stats(x)
            x = x - mean
            if augment is None:
                return x / std
            x = augment(x, mask_value=0.0)
            mean, std = self.example_stats(x)  # the augmented crop's own: noise on silence stays unit-scale
            return (x - mean) / std
        if augment is not None:
            x = augment(x, mask_value=self.mask_value(x))
        return (x - self.mean) / self.std

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        item = x.dim() == 3
        if item:
            x = x.unsqueeze(0)
        x = self.finish(self.normalise(x))
        return x[0] if item else x


class MelImage(InputTransform):
    """Mel spectrogram crop(s) -> 3-channel image for an ImageNet CNN (``input_layout="image"``).

    Steps: :meth:`InputTransform.normalise` (SpecAugment in training mode, then ``(x - mean) / std``, or
    per-clip) -> (power recipe: ``clamp(min=0)``) -> resize to ``resize`` x ``resize`` -> repeat to 3 channels.

    Input: float32 [1, n_mels, frames] (one item) or [B, 1, n_mels, frames] (a batch), on any device.
    Output: float32 [3, resize, resize] or [B, 3, resize, resize]. The batch path and the per-item path
    give the same result for the same input (resizing is per image).
    Raises ValueError for an unknown ``scale`` or a bad ``mean``/``std``.
    """

    def __init__(self, resize: int, scale: str = "db", augment: nn.Module | None = None,
                 mean: float = 0.0, std: float = 1.0, per_example: str = "", mask_fill: str = "mean"):
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r}: choose one of {SCALES}")
        super().__init__(augment, mean, std, per_example, mask_fill)
        self.resize, self.scale = int(resize), scale

    @classmethod
    def from_config(cls, cfg, augment, mean, std, per_example, mask_fill="mean") -> "MelImage":
        return cls(cfg["resize"], cfg["scale"], augment, mean, std, per_example, mask_fill)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.resize, self.resize)
        if self.scale == "power":
            x = F.adaptive_avg_pool2d(x.clamp(min=0), size)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.repeat(1, 3, 1, 1)


class SpectrogramInput(InputTransform):
    """Spectrogram crop(s) as they are, augmented and normalised (``input_layout="spectrogram"``: CNN14, AST).

    Input: float32 [1, n_mels, frames] or [B, 1, n_mels, frames]. Output: the same shape, float32.
    """


class WaveformInput(InputTransform):
    """Waveform crop(s) for the wav2vec2 family (``input_layout="waveform"``), optionally normalised.

    ``augment`` applies only when it was built for waveforms (``units == "wave"``: speed copies, reverb,
    background and gain, see ``augment``); a spectrogram augmentation (masks, warps) is dropped. Mixup still
    applies in the training loop. ``per_clip`` is Wav2Vec2FeatureExtractor's
    ``do_normalize=True`` (``(x - mean) / sqrt(var + 1e-7)``), over the whole window including any zero
    padding of a short clip (the extractor skips padding through its attention mask).

    Input: float32 [1, 1, samples] or [B, 1, 1, samples]. Output: the same shape, float32.
    """

    frontends = ("waveform",)
    has_bands = False

    def __init__(self, augment: nn.Module | None = None, mean: float = 0.0, std: float = 1.0,
                 per_example: str = "", mask_fill: str = "mean"):
        super().__init__(augment if getattr(augment, "units", None) == "wave" else None, mean, std, per_example,
                         mask_fill)


# input_layout -> transform class (with ``from_config`` and the ``frontends`` it takes): a new layout is one entry.
LAYOUTS = {"image": MelImage, "spectrogram": SpectrogramInput, "waveform": WaveformInput}


def normalisation_stats(mels) -> tuple[float, float]:
    """Mean and standard deviation over every value of an iterable of spectrograms (float64 accumulation).

    Used on the training split only, so nothing leaks from validation or test.
    Raises ValueError when the iterable is empty.
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


def normalization_mode(cfg: dict, frontend: nn.Module | None = None) -> str:
    """The run's normalisation: ``train``, ``fixed``, ``none``, ``per_clip`` or ``per_band`` (``auto`` resolved
    through the front end, built from ``cfg`` when not given). Raises ConfigError for an unknown ``normalization``."""
    mode = cfg.get("normalization", "auto")
    if mode not in NORMALIZATIONS:
        raise ConfigError(f"--normalization={mode}: choose one of {', '.join(NORMALIZATIONS)}")
    if mode == "auto":
        return (frontend if frontend is not None else build_frontend(cfg)).auto_normalization
    return mode


def _fixed_stats(cfg: dict) -> tuple[float, float]:
    mean, std = cfg.get("norm_mean"), cfg.get("norm_std")
    if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ConfigError(f"normalization=fixed needs a finite norm_mean and a positive norm_std, got "
                          f"norm_mean={mean}, norm_std={std} (AST: --norm_mean=-4.2677393 --norm_std=9.1379948)")
    return float(mean), float(std)


def normalisation_for(cfg: dict, spectrograms=(), frontend: nn.Module | None = None) -> dict:
    """The normalisation statistics of a run, ``dict(mean=..., std=...)``: what checkpoints record in
    ``features["norm"]`` and :func:`build_features` takes.

    ``spectrograms`` (an iterable of the training split's cached features, e.g. a generator over
    ``cache.get``) is iterated only for ``normalization="train"`` (or ``auto`` resolving to it). ``fixed``
    gives (``norm_mean``, ``norm_std``); ``none``, ``per_clip`` and ``per_band`` give (0.0, 1.0), which the input
    transform does not use. Raises ConfigError (bad ``normalization`` or fixed statistics) or ValueError (no training
    spectrogram).
    """
    mode = normalization_mode(cfg, frontend)
    if mode == "train":
        mean, std = normalisation_stats(spectrograms)
    elif mode == "fixed":
        mean, std = _fixed_stats(cfg)
    else:
        mean, std = 0.0, 1.0
    return dict(mean=mean, std=std)


def build_input_transform(cfg: dict, frontend: nn.Module, mean: float = 0.0, std: float = 1.0,
                          augment: nn.Module | None = None) -> InputTransform:
    """The input transform of ``cfg["input_layout"]`` (default ``image``) for ``frontend``.

    ``mean``/``std`` are used for ``normalization="train"`` (and ``auto`` resolving to it); ``fixed`` takes
    ``norm_mean``/``norm_std`` from ``cfg``; ``none``, ``per_clip`` and ``per_band`` ignore them.
    Raises ConfigError for an unknown layout, a layout the front end cannot feed, or a bad normalisation
    (``per_band`` on a waveform).
    """
    layout = cfg.get("input_layout", "image")
    if layout not in LAYOUTS:
        raise ConfigError(f"--input_layout={layout}: choose one of {', '.join(LAYOUTS)}")
    cls = LAYOUTS[layout]
    if frontend.name not in cls.frontends:
        raise ConfigError(f"--input_layout={layout} cannot take the {frontend.name} front end; it takes "
                          f"{', '.join(cls.frontends)} (choose the backbone's layout, or leave both to --arch)")
    mode = normalization_mode(cfg, frontend)
    if mode == "per_band" and not cls.has_bands:
        raise ConfigError(f"--normalization=per_band needs frequency bands; --input_layout={layout} has none "
                          f"(use --normalization=per_clip)")
    if mode == "fixed":
        mean, std = _fixed_stats(cfg)
    elif mode != "train":
        mean, std = 0.0, 1.0
    return cls.from_config(cfg, augment, mean, std, mode if mode in PER_EXAMPLE else "", frontend.mask_fill)


def build_features(cfg: dict, mean: float = 0.0, std: float = 1.0, augment: nn.Module | None = None
                   ) -> tuple[nn.Module, InputTransform]:
    """(front end, input transform) described by a train.py config (``f_max=0`` means sample_rate / 2).

    ``mean``/``std``: the run's statistics (:func:`normalisation_for`, or a checkpoint's ``features["norm"]``).
    A config without the front-end keys (``frontend``, ``input_layout``, ``normalization``) gives today's
    LogMel and MelImage, bit for bit. Raises ConfigError or ValueError for bad settings.
    """
    frontend = build_frontend(cfg)
    return frontend, build_input_transform(cfg, frontend, mean, std, augment)


def window_frames(cfg: dict, frontend: nn.Module) -> tuple[int, int]:
    """(crop/window width, evaluation hop) in frames of ``frontend`` from ``clip_seconds`` and
    ``eval_hop_seconds`` (for ``waveform`` a frame is a sample; for ``kaldi_fbank`` 10.24 s is 1024 frames)."""
    width = frontend.seconds_to_frames(cfg["clip_seconds"])
    hop = max(1, int(round(cfg["eval_hop_seconds"] * frontend.sample_rate / frontend.hop_length)))
    return width, hop
