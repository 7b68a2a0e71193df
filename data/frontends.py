"""Front ends: mono waveform -> the whole-track features the cache stores and crops are cut from.

Each backbone is fine-tuned on the input it was pretrained on, so the front end is a config choice
(``frontend``, set by the backbone registry in ``models/``):

=================  ==============================================================  =====================
``frontend``       output (float32), what it reproduces                            padding of short clips
=================  ==============================================================  =====================
``logmel``         [n_mels, frames]: torchaudio MelSpectrogram (HTK mel scale, no   the clip's minimum
                   filter normalisation), dB (``scale="db"``) or power; the
                   project's own recipe and the SwanLab tutorial's
``panns_logmel``   [n_mels, frames]: PANNs CNN14 (torchlibrosa Spectrogram +        -100 dB (zeros)
                   LogmelFilterBank): Slaney mel scale and area normalisation,
                   10*log10(max(power, 1e-10))
``kaldi_fbank``    [n_mels, frames]: AST (``torchaudio.compliance.kaldi.fbank``),   0.0 (AST's zero pad)
                   natural-log Kaldi filter bank
``waveform``       [1, samples]: the resampled waveform (wav2vec2 / HuBERT)         0.0 (silence)
=================  ==============================================================  =====================

Every front end has the same small interface: ``params()`` (everything that determines the output: the
cache key and the checkpoint's record), ``num_frames(num_samples)``, ``seconds_to_frames(seconds)``,
``frames_per_second``, ``hop_length`` (samples per frame), ``pad_value`` (None: the clip's minimum),
``auto_normalization`` (what ``normalization="auto"`` means for it), ``mask_fill`` (what SpecAugment
masks are filled with: ``"mean"``, the normalisation mean, or ``"bin_mean"``, each mel bin's batch mean),
``units`` (``db``, ``ln``, ``power`` or ``wave``: how augmentation reads power from it, augment/base.py) and, for
the mel front ends, ``mel_axis()`` (band centres, for the mel-axis warps). Frames run along the last axis, so the
cache, random crops and evaluation windows work unchanged for all of them. A new front end is one class
and one entry in :data:`FRONTENDS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms as T
from torch import nn

from experiment.config import ConfigError

SCALES = ("db", "power")


@dataclass(frozen=True)
class MelAxis:
    """The frequency axis of a mel spectrogram: ``n_mels`` triangular bands whose centres are equally spaced on
    the ``scale`` ("htk": 2595 log10(1 + f/700), also Kaldi's 1127 ln(1 + f/700); "slaney": linear below 1 kHz,
    logarithmic above, librosa's default) between ``f_min`` and ``f_max`` Hz, as torchaudio's ``melscale_fbanks``
    and Kaldi's ``get_mel_banks`` lay them out (n_mels + 2 equally spaced mel points, the inner ones centres)."""
    n_mels: int
    f_min: float
    f_max: float
    scale: str = "htk"

    def hz_to_mel(self, f: torch.Tensor) -> torch.Tensor:
        if self.scale == "htk":
            return 2595.0 * torch.log10(1.0 + f / 700.0)
        f_sp, min_log_hz = 200.0 / 3, 1000.0  # librosa / torchaudio's Slaney formula
        min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
        return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-6) / min_log_hz) / logstep,
                           f / f_sp)

    def mel_to_hz(self, m: torch.Tensor) -> torch.Tensor:
        if self.scale == "htk":
            return 700.0 * (torch.pow(10.0, m / 2595.0) - 1.0)
        f_sp, min_log_hz = 200.0 / 3, 1000.0
        min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
        return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)

    def _mel_grid(self) -> tuple[float, float]:
        lo = float(self.hz_to_mel(torch.tensor(self.f_min, dtype=torch.float64)))
        hi = float(self.hz_to_mel(torch.tensor(self.f_max, dtype=torch.float64)))
        return lo, (hi - lo) / (self.n_mels + 1)

    def centres(self) -> torch.Tensor:
        """Centre frequency of each band, Hz: float64 [n_mels]."""
        lo, step = self._mel_grid()
        return self.mel_to_hz(lo + step * torch.arange(1, self.n_mels + 1, dtype=torch.float64))

    def hz_to_bin(self, f: torch.Tensor) -> torch.Tensor:
        """Fractional band index (0 = the first band's centre) of frequencies ``f`` in Hz (same shape)."""
        lo, step = self._mel_grid()
        return (self.hz_to_mel(f.to(torch.float64)) - lo) / step - 1.0



def _pad_to(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the last axis of ``waveform`` on the right to at least ``length`` samples."""
    if waveform.shape[-1] < length:
        waveform = F.pad(waveform, (0, length - waveform.shape[-1]))
    return waveform


class _CentredStft(nn.Module):
    """Frame arithmetic of a centred STFT (``center=True``): one frame every ``hop_length`` samples."""

    sample_rate: int
    n_fft: int
    hop_length: int

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` samples (shorter than ``n_fft``: padded to it)."""
        return 1 + max(num_samples, self.n_fft) // self.hop_length

    def seconds_to_frames(self, seconds: float) -> int:
        """Frames of a window of ``seconds`` (a crop of that many seconds of audio)."""
        return self.num_frames(int(round(seconds * self.sample_rate)))


class LogMel(_CentredStft):
    """Waveform -> mel spectrogram, in dB (``scale="db"``) or power (``scale="power"``).

    torchaudio ``MelSpectrogram`` defaults: periodic Hann window of ``n_fft``, centred frames with reflect
    padding, HTK mel scale, unnormalised triangular filters; dB via ``AmplitudeToDB`` (``top_db`` below
    each spectrogram's maximum).

    Args:
        sample_rate: Hz of the input. n_fft, hop_length: samples. n_mels: mel bands.
        f_min, f_max: band edges in Hz (``f_max=None``: sample_rate / 2).
        top_db: dB range kept below each spectrogram's maximum (``"db"`` only).
    Input: float32 [..., T] mono at ``sample_rate``; inputs shorter than ``n_fft`` are zero-padded to ``n_fft``.
    Output: float32 [..., n_mels, 1 + T // hop_length]; always finite (silence gives a constant -100 dB).
    Raises ValueError for an unknown ``scale``.
    """

    name = "logmel"
    pad_value = None  # windows of short clips are padded with the clip's minimum (its silence, in dB)
    mask_fill = "mean"  # the training mean (0 once normalised); the tutorial's power mel: 0, silence

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

    @classmethod
    def from_config(cls, cfg: dict) -> "LogMel":
        return cls(cfg["sample_rate"], cfg["n_fft"], cfg["hop_length"], cfg["n_mels"], cfg["f_min"],
                   cfg["f_max"] or None, cfg["scale"], cfg["top_db"])

    def params(self) -> dict:
        """Everything that determines the output: the cache key and the checkpoint's feature record.

        Kept exactly as before front ends existed (no ``frontend`` key), so existing caches stay valid."""
        return dict(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
                    f_min=self.f_min, f_max=self.f_max, scale=self.scale, top_db=self.top_db)

    @property
    def auto_normalization(self) -> str:
        """``normalization="auto"``: training-set statistics for dB, none for the tutorial's power mel."""
        return "train" if self.scale == "db" else "none"

    @property
    def units(self) -> str:
        return "db" if self.scale == "db" else "power"

    def mel_axis(self) -> MelAxis:
        """torchaudio's HTK mel bands between f_min and f_max (default Nyquist)."""
        return MelAxis(self.n_mels, self.f_min, float(self.f_max or self.sample_rate / 2), "htk")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        mel = self.mel(_pad_to(waveform, self.n_fft))
        return self.to_db(mel) if self.to_db is not None else mel


class PannsLogMel(_CentredStft):
    """PANNs log-mel (Kong et al. 2020): what CNN14 was pretrained on.

    Reproduces ``Cnn14.spectrogram_extractor`` + ``logmel_extractor`` of qiuqiangkong/audioset_tagging_cnn
    ``pytorch/models.py`` (torchlibrosa ``Spectrogram`` / ``LogmelFilterBank``): STFT with a periodic Hann
    window (librosa ``get_window(..., fftbins=True)``), ``win_length = n_fft``, ``center=True``,
    ``pad_mode="reflect"``, power 2; mel filters = ``librosa.filters.mel`` defaults (Slaney mel scale,
    Slaney area normalisation ``2 / (f[i+2] - f[i])``), here torchaudio's ``norm="slaney",
    mel_scale="slaney"``; then ``10 * log10(max(mel, 1e-10))`` with ref 1.0 and no ``top_db``. CNN14's
    settings: 32 kHz, n_fft 1024, hop 320, 64 bands, 50-14000 Hz (16 kHz variant: 512, 160, 50-8000 Hz).

    Differences from the official code: inputs shorter than ``n_fft`` are zero-padded to ``n_fft`` (the
    official reflect padding fails on them); torchaudio builds the filter frequencies on
    ``linspace(0, sample_rate // 2)``, which equals librosa's grid for even sample rates (all of PANNs').

    Input: float32 [..., T] at ``sample_rate``. Output: float32 [..., n_mels, 1 + max(T, n_fft) // hop_length],
    dB, finite (digital silence is -100 dB, the value used to pad short clips, as the official code zero-pads
    waveforms). The learned ``bn0`` BatchNorm that follows in CNN14 belongs to the model.
    """

    name = "panns_logmel"
    AMIN = 1e-10
    pad_value = 10.0 * math.log10(AMIN)  # -100 dB: a zero-padded waveform
    auto_normalization = "none"  # CNN14 normalises with its own learned bn0, as pretrained
    # The official Cnn14.forward masks after bn0, setting masked bins to 0, the batch mean of each mel bin;
    # masking before bn0 with that mean keeps it. (0 dB, the unnormalised "mean", is far louder than any
    # real bin, around -50 dB: loud stripes seen in training only.)
    mask_fill = "bin_mean"

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float = 0.0,
                 f_max: float | None = None):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.f_min, self.f_max = float(f_min), f_max
        self.mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop_length,
                                    f_min=f_min, f_max=f_max, n_mels=n_mels, window_fn=torch.hann_window, power=2.0,
                                    center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")

    units = "db"

    def mel_axis(self) -> MelAxis:
        """librosa's Slaney mel bands between f_min and f_max (default Nyquist)."""
        return MelAxis(self.n_mels, self.f_min, float(self.f_max or self.sample_rate / 2), "slaney")

    @classmethod
    def from_config(cls, cfg: dict) -> "PannsLogMel":
        return cls(cfg["sample_rate"], cfg["n_fft"], cfg["hop_length"], cfg["n_mels"], cfg.get("f_min", 0.0),
                   cfg.get("f_max") or None)

    def params(self) -> dict:
        return dict(frontend=self.name, sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                    n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, mel_scale="slaney", mel_norm="slaney",
                    amin=self.AMIN)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(self.mel(_pad_to(waveform, self.n_fft)).clamp(min=self.AMIN))


class KaldiFbank(nn.Module):
    """Kaldi-compatible log mel filter bank: what AST (Gong et al. 2021) was pretrained on.

    ``torchaudio.compliance.kaldi.fbank(waveform - waveform.mean(), htk_compat=True, sample_frequency=
    sample_rate, use_energy=False, window_type="hanning", num_mel_bins=n_mels, dither=0.0, frame_shift=10,
    frame_length=25)``, as YuanGongND/ast ``src/dataloader.py`` ``_wav2fbank`` calls it, transposed to
    [n_mels, frames]. Kaldi's defaults apply: per-frame DC removal, pre-emphasis 0.97, FFT rounded up to a
    power of two (512 at 16 kHz), natural log with a float32-epsilon floor, ``snip_edges`` (only whole frames).
    Here ``n_fft`` is the frame length and ``hop_length`` the frame shift, both in samples (AST: 400 and 160
    at 16 kHz = 25 ms / 10 ms); ``f_min``/``f_max`` are Kaldi's ``low_freq``/``high_freq`` (AST: Kaldi's
    defaults 20 Hz and 0 = Nyquist); ``f_max=None`` or 0 means Nyquist.

    Differences: the mean is removed over the whole track (the cache holds whole tracks), where the official
    code removes it per 10 s clip and HF ``ASTFeatureExtractor`` not at all; with Kaldi's per-frame DC removal
    this changes the output only by float rounding (~1e-5). Inputs shorter than one frame are zero-padded to
    one frame (Kaldi returns no frame for them). Short clips' windows are padded with 0.0 in the log domain,
    as AST's ``ZeroPad2d`` and ``ASTFeatureExtractor`` pad to 1024 frames before normalising.

    Input: float32 [..., T] at ``sample_rate``. Output: float32
    [..., n_mels, 1 + (max(T, n_fft) - n_fft) // hop_length]. Raises ConfigError (a ValueError) when
    ``n_fft``/``hop_length`` are not a number of milliseconds that Kaldi (which takes milliseconds) maps
    back to the same number of samples.
    """

    name = "kaldi_fbank"
    pad_value = 0.0
    auto_normalization = "train"  # AST's recipe for a new dataset: its own mean/std (src/get_norm_stats.py)
    # The official AST dataloader masks the unnormalised fbank with 0 (about +0.47 once normalised with the
    # AudioSet statistics); here masks take the normalisation mean (0 once normalised), a small departure.
    mask_fill = "mean"

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float = 20.0,
                 f_max: float | None = None):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.f_min, self.f_max = float(f_min), f_max
        self.frame_length_ms = n_fft * 1000.0 / sample_rate
        self.frame_shift_ms = hop_length * 1000.0 / sample_rate
        for key, samples, ms in (("n_fft", n_fft, self.frame_length_ms),
                                 ("hop_length", hop_length, self.frame_shift_ms)):
            if int(sample_rate * ms * 0.001) != samples:
                raise ConfigError(f"kaldi_fbank: {key}={samples} samples at {sample_rate} Hz is {ms} ms, which Kaldi "
                                 f"rounds to {int(sample_rate * ms * 0.001)} samples; use a whole number of "
                                 f"milliseconds (AST: n_fft=400, hop_length=160 at 16000 Hz)")

    units = "ln"  # natural log of the filter-bank energies

    def mel_axis(self) -> MelAxis:
        """Kaldi's mel bands (1127 ln(1 + f/700), the HTK scale) between low_freq and high_freq."""
        return MelAxis(self.n_mels, self.f_min, float(self.f_max or self.sample_rate / 2), "htk")

    @classmethod
    def from_config(cls, cfg: dict) -> "KaldiFbank":
        return cls(cfg["sample_rate"], cfg["n_fft"], cfg["hop_length"], cfg["n_mels"], cfg.get("f_min", 20.0),
                   cfg.get("f_max") or None)

    def params(self) -> dict:
        return dict(frontend=self.name, sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                    n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, window_type="hanning", dither=0.0,
                    remove_mean="track")

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        return 1 + (max(num_samples, self.n_fft) - self.n_fft) // self.hop_length

    def seconds_to_frames(self, seconds: float) -> int:
        """Frames of a window of ``seconds`` at 1 frame per hop: AST's 10.24 s is exactly 1024 frames (the
        official ``target_length``; 1024 frames span 10.255 s of audio, a 10.24 s clip gives 1022)."""
        return max(1, int(round(seconds * self.sample_rate / self.hop_length)))

    def _one(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _pad_to(waveform - waveform.mean(), self.n_fft)
        fbank = kaldi.fbank(waveform[None], htk_compat=True, sample_frequency=float(self.sample_rate),
                            use_energy=False, window_type="hanning", num_mel_bins=self.n_mels, dither=0.0,
                            frame_length=self.frame_length_ms, frame_shift=self.frame_shift_ms,
                            low_freq=self.f_min, high_freq=float(self.f_max or 0.0))
        return fbank.T.contiguous()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        flat = waveform.reshape(-1, waveform.shape[-1])
        out = torch.stack([self._one(w) for w in flat])
        return out.reshape(*waveform.shape[:-1], *out.shape[-2:])


class Waveform(nn.Module):
    """The resampled mono waveform itself, for wav2vec2 / HuBERT / DistilHuBERT (raw 16 kHz input).

    Input: float32 [..., T] at ``sample_rate``. Output: float32 [..., 1, T] (a one-row "spectrogram" whose
    "frames" are samples, so the cache, random crops and evaluation windows work unchanged along the last
    axis; frames per second = ``sample_rate``). Short clips are padded with 0.0 (silence).
    """

    name = "waveform"
    pad_value = 0.0
    hop_length = 1
    auto_normalization = "none"
    mask_fill = "mean"  # unused: waveforms are not masked
    units = "wave"

    def __init__(self, sample_rate: int):
        super().__init__()
        self.sample_rate = sample_rate

    @classmethod
    def from_config(cls, cfg: dict) -> "Waveform":
        return cls(cfg["sample_rate"])

    def params(self) -> dict:
        return dict(frontend=self.name, sample_rate=self.sample_rate)

    @property
    def frames_per_second(self) -> float:
        return float(self.sample_rate)

    def num_frames(self, num_samples: int) -> int:
        return int(num_samples)

    def seconds_to_frames(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.sample_rate)))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return waveform.to(torch.float32).unsqueeze(-2).contiguous()


# name -> class with ``from_config(cfg)``: a new front end is one entry.
FRONTENDS = {cls.name: cls for cls in (LogMel, PannsLogMel, KaldiFbank, Waveform)}


def build_frontend(cfg: dict) -> nn.Module:
    """The front end a train.py config describes (``cfg.get("frontend", "logmel")``; ``f_max=0``: Nyquist).

    Raises ConfigError (a ValueError) naming the valid front ends for an unknown ``frontend``.
    """
    name = cfg.get("frontend", "logmel")
    if name not in FRONTENDS:
        raise ConfigError(f"--frontend={name}: unknown front end; choose one of: {', '.join(FRONTENDS)}")
    return FRONTENDS[name].from_config(cfg)
