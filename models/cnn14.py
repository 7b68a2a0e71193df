"""PANNs CNN14 (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern
Recognition", IEEE/ACM TASLP 28), written from the paper and the official model definition
(github.com/qiuqiangkong/audioset_tagging_cnn, ``pytorch/models.py``: ``Cnn14``, ``ConvBlock``, ``init_layer``,
``init_bn``), with the official parameter names so the official AudioSet checkpoint loads with ``strict=True``.

What differs from the official module lies outside its learned weights:
- the front end (STFT + Slaney log-mel, in the official module as frozen ``spectrogram_extractor`` and
  ``logmel_extractor`` tensors) is computed by the data pipeline (``frontend="panns_logmel"``); the loader checks
  the checkpoint's copies of those tensors against it;
- SpecAugment and mixup, done inside the official forward, are the training loop's (``augment/``, ``mixup_alpha``);
- the output is logits [B, num_classes] (no sigmoid) of the head ``fc_audioset`` applied to the 2048-d embedding
  after its dropout, as the official transfer code applies its new head (panns_transfer_to_gtzan,
  ``Transfer_Cnn14``).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.functional import melscale_fbanks

from models.weights import PretrainedWeightsError, download_file, hub_file, key_list, offline_message

NUM_BLOCKS = 6
# The official checkpoint's front-end tensors (torchlibrosa Spectrogram + LogmelFilterBank): not part of this module.
FRONTEND_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                 "logmel_extractor.melW")
HEAD = ("fc_audioset.weight", "fc_audioset.bias")
FRONTEND_TOLERANCE = 1e-5
# What torch.load(weights_only=True) must accept in the official files besides tensors: the 16 kHz file also
# pickles numpy data, under numpy 1.x names (the files were written in 2020) or numpy 2 names (re-saved files).
_MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 | 1
_NUMPY_GLOBALS = [_MULTIARRAY._reconstruct, _MULTIARRAY.scalar, np.ndarray, np.dtype, np.dtypes.Int64DType,
                  np.dtypes.Float64DType, (_MULTIARRAY._reconstruct, "numpy.core.multiarray._reconstruct"),
                  (_MULTIARRAY.scalar, "numpy.core.multiarray.scalar")]


def _init_layer(layer: nn.Module) -> None:
    """Official ``init_layer``: Xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _init_head(layer: nn.Linear) -> None:
    """The new classification head: truncated-normal weight with std 2e-5 and zero bias, so the first logits
    are near 0 and the loss starts at ln(num_classes).

    This departs from the official ``init_layer`` (Xavier-uniform) for this one layer, following MAE's
    fine-tuning recipe (facebookresearch/mae ``main_finetune.py``: ``trunc_normal_(model.head.weight,
    std=2e-5)``). On CNN14's large 2048-d ReLU embedding a Xavier head starts with logits of several units:
    measured on FSDD from scratch, the loss started at 4.3 (ln 10 = 2.3). With this head it starts at ln 10,
    and 25 full-batch steps on 30 FSDD clips reach training accuracy 0.27 against 0.10 with the Xavier head.
    (What kept the whole FSDD speaker split at chance from scratch was elsewhere: SpecAugment masks filled
    with 0 dB; see ``PannsLogMel.mask_fill``.)
    """
    nn.init.trunc_normal_(layer.weight, std=2e-5)
    nn.init.zeros_(layer.bias)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias), each followed by BatchNorm and ReLU, then average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        _init_layer(self.conv1)
        _init_layer(self.conv2)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool_size)


class Cnn14(nn.Module):
    """CNN14 on log-mel spectrograms: input float32 [B, 1, n_mels, frames] (log-mel in dB, not normalised:
    ``bn0`` is the learned BatchNorm over the mel bins), output logits float32 [B, num_classes].

    ``base_channels``: width of the first block (official 64; the blocks double it up to 32x, 2048). ``frames``
    and ``n_mels`` must be at least 32 (five 2x2 average poolings).
    """

    def __init__(self, num_classes: int, n_mels: int = 64, base_channels: int = 64):
        super().__init__()
        self.n_mels, self.base_channels = n_mels, base_channels
        widths = [1] + [base_channels * 2 ** i for i in range(NUM_BLOCKS)]
        self.bn0 = nn.BatchNorm2d(n_mels)
        for i in range(NUM_BLOCKS):
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], num_classes)
        _init_layer(self.fc1)
        _init_head(self.fc_audioset)

    def architecture(self) -> dict:
        """What rebuilds this exact network (JSON-able): ``{"n_mels", "base_channels"}``."""
        return {"n_mels": self.n_mels, "base_channels": self.base_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        min_size = 2 ** (NUM_BLOCKS - 1)
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.n_mels or x.shape[3] < min_size:
            raise ValueError(f"CNN14 takes [batch, 1, {self.n_mels} mel bins, >= {min_size} frames], "
                             f"got {tuple(x.shape)}")
        x = x.transpose(2, 3)  # [B, 1, frames, mel]: the official layout (its 3x3 kernels are (time, mel))
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BatchNorm over the mel bins
        for i in range(NUM_BLOCKS):
            pool = (2, 2) if i < NUM_BLOCKS - 1 else (1, 1)
            x = F.dropout(getattr(self, f"conv_block{i + 1}")(x, pool), p=0.2, training=self.training)
        x = x.mean(dim=3)  # over mel bins: [B, C, frames']
        x = x.max(dim=2).values + x.mean(dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        embedding = F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training)
        return self.fc_audioset(embedding)


def frontend_tensors(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> dict:
    """The official checkpoint's front-end tensors for these settings, float64, keyed by :data:`FRONTEND_KEYS`.

    torchlibrosa's STFT is a Conv1d whose kernels are the periodic Hann window times the DFT basis:
    ``conv_real[k, 0, n] = w[n] cos(2 pi k n / n_fft)``, ``conv_imag[k, 0, n] = -w[n] sin(2 pi k n / n_fft)``,
    [n_fft // 2 + 1, 1, n_fft]. ``melW`` is ``librosa.filters.mel`` (Slaney mel scale, Slaney area norm)
    transposed, [n_fft // 2 + 1, n_mels], which torchaudio's ``melscale_fbanks(..., norm="slaney",
    mel_scale="slaney")`` computes too: matching it proves the data pipeline's ``panns_logmel`` is the
    network's front end.
    """
    n_freqs = n_fft // 2 + 1
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * torch.remainder(k * n, n_fft) / n_fft
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    mel = melscale_fbanks(n_freqs, float(f_min), float(f_max), n_mels, sample_rate, norm="slaney",
                          mel_scale="slaney")
    return dict(zip(FRONTEND_KEYS, ((window * torch.cos(angle))[:, None, :],
                                    (-window * torch.sin(angle))[:, None, :], mel.double())))


def check_frontend(tensors: dict, frontend: dict, source: str) -> None:
    """Check a checkpoint's front-end tensors (any subset of :data:`FRONTEND_KEYS`) against ``frontend`` (the
    backbone's config keys: sample_rate, n_fft, n_mels, f_min, f_max): same shapes, values within 1e-5.

    Raises PretrainedWeightsError naming the tensor, its shape or largest difference, and the settings.
    """
    expected = frontend_tensors(frontend["sample_rate"], frontend["n_fft"], frontend["n_mels"],
                                frontend["f_min"], frontend["f_max"])
    settings = ", ".join(f"{k}={frontend[k]}" for k in ("sample_rate", "n_fft", "n_mels", "f_min", "f_max"))
    for key, value in tensors.items():
        want = expected[key]
        if tuple(value.shape) != tuple(want.shape):
            raise PretrainedWeightsError(
                f"{source}: {key} has shape {tuple(value.shape)}, the front end {settings} has "
                f"{tuple(want.shape)}: this file is for another front end (another --arch?)")
        diff = (value.double() - want).abs().max().item()
        if not diff <= FRONTEND_TOLERANCE:
            raise PretrainedWeightsError(
                f"{source}: {key} differs from the front end {settings} by up to {diff:.3g} "
                f"(tolerance {FRONTEND_TOLERANCE}): the checkpoint was trained on another front end")


def load_official_state(model: Cnn14, state: dict, frontend: dict, source: str) -> list[str]:
    """Load an official CNN14 checkpoint (``torch.load(p)`` or its ``['model']``) into ``model`` strictly.

    Accepted besides the network's own keys: the 3 front-end tensors (:data:`FRONTEND_KEYS`), checked by
    :func:`check_frontend`. ``fc_audioset`` with another number of classes (527 AudioSet classes vs ours) is the
    head: it keeps its fresh initialisation, as in the official transfer code. Returns the keys left fresh.
    Raises PretrainedWeightsError naming every missing, unexpected or mis-shaped key.
    """
    state = dict(state["model"] if "model" in state else state)
    check_frontend({k: state.pop(k) for k in FRONTEND_KEYS if k in state}, frontend, source)
    own = model.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise PretrainedWeightsError(f"{source} is not a CNN14 checkpoint of this layout: "
                                     f"missing keys {key_list(missing)}, unexpected keys {key_list(unexpected)}")
    fresh = [k for k in HEAD if state[k].shape[0] != own[k].shape[0] and state[k].shape[1:] == own[k].shape[1:]]
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})" for k in own
             if k not in fresh and state[k].shape != own[k].shape]
    if wrong:
        raise PretrainedWeightsError(f"{source}: shapes do not match: {key_list(wrong)}")
    state.update({k: own[k] for k in fresh})
    model.load_state_dict(state, strict=True)
    return fresh


def read_checkpoint(path: str) -> dict:
    """``torch.load`` of an official PANNs file on the CPU, restricted to tensors and plain numpy data."""
    with torch.serialization.safe_globals(_NUMPY_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _offline_error(entry, err: Exception, weights) -> PretrainedWeightsError:
    what = f"the AudioSet weights for {entry.name}" + (f" from --weights={weights}" if weights else "")
    return PretrainedWeightsError(offline_message(
        what, err, f"downloaded from {entry.weights} (Zenodo record 3987831)", hub_file(entry.weights_file),
        "set $TORCH_HOME to use another folder", f"the file {entry.weights_file} anywhere"))


def build(entry, num_classes: int, pretrained: bool, weights=None, record=None, **overrides) -> Cnn14:
    """A :class:`Cnn14` for ``entry`` (a registry Backbone: name, weights URL, weights_file, frontend).

    ``record`` (from :func:`models.backbone_record`) rebuilds a saved architecture without loading weights;
    ``overrides`` (``base_channels``, ``n_mels``) build a smaller network and need ``pretrained=False``.
    Pretrained: the official file from ``weights`` (a local path) or the torch hub cache (downloaded first),
    loaded by :func:`load_official_state`.
    Raises PretrainedWeightsError (offline, unreadable file, wrong keys or front end) or ValueError.
    """
    if record is not None:
        return Cnn14(num_classes, **record)
    if pretrained and overrides:
        raise ValueError(f"{entry.name}: {overrides} change the architecture; they need pretrained=False")
    model = Cnn14(num_classes, **{"n_mels": entry.frontend["n_mels"], **overrides})
    if not pretrained:
        return model
    try:
        path = os.fspath(weights) if weights else download_file(entry.weights, entry.weights_file)
        state = read_checkpoint(path)
    except Exception as err:  # URLError / HTTPError / missing, truncated or non-weights file
        raise _offline_error(entry, err, weights) from None
    load_official_state(model, state, entry.frontend, path)
    return model
