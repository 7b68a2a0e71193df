"""Hugging Face ``transformers`` backbones (AST, wav2vec2, HuBERT, DistilHuBERT) in this project's input layouts.

The networks are transformers' own classes (Apache-2.0), imported on first use so that scripts which never build
one do not pay for importing transformers. A thin wrapper maps our layouts to the model's ``input_values`` and
returns its logits. Pretrained weights load through ``from_pretrained(..., num_labels=K,
ignore_mismatched_sizes=True, output_loading_info=True)``; the loading report is then checked so that only the
classification head may be new: any other missing, unexpected or re-initialised key is an error.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F
from huggingface_hub import constants
from torch import nn

from models.weights import PretrainedWeightsError, in_modules, key_list, offline_message, reachable


@dataclass(frozen=True)
class HFSpec:
    """How to build one transformers backbone.

    ``config_kwargs``: this checkpoint's architecture where it differs from the config class defaults, so that
    ``pretrained=False`` builds it offline. ``head``: the model's new classification modules (HF names).
    ``ignore_unexpected``: checkpoint modules the classifier has no use for (pretraining heads), by name prefix.
    ``base_model``: when set, unexpected keys outside this module (another task's head) are ignored too.
    """
    config_class: str
    model_class: str
    layout: str  # "spectrogram" | "waveform"
    head: tuple[str, ...]
    config_kwargs: Mapping = field(default_factory=lambda: MappingProxyType({}))
    ignore_unexpected: tuple[str, ...] = ()
    base_model: str = ""


def config_dict(config) -> dict:
    """The complete config of a transformers model as a JSON-able dict (what ``save_pretrained`` writes)."""
    return json.loads(config.to_json_string(use_diff=False))


class SpectrogramTransformer(nn.Module):
    """AST on the ``spectrogram`` layout: float32 [B, 1, n_mels, frames] -> logits float32 [B, num_classes].

    AST's position embeddings fix its input at ``config.max_length`` frames (1024 = 10.24 s): longer input is cut
    to its first ``max_length`` frames and shorter input padded with ``pad_value``, as the official data loader
    and ``ASTFeatureExtractor`` do (they pad with 0 before normalising; ``pad_value`` is that 0 normalised).
    """

    def __init__(self, transformer: nn.Module, pad_value: float = 0.0):
        super().__init__()
        self.transformer, self.pad_value = transformer, pad_value

    def architecture(self) -> dict:
        """What rebuilds this exact network (JSON-able): ``{"config": <the transformers config dict>}``."""
        return {"config": config_dict(self.transformer.config)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_mels, frames = self.transformer.config.num_mel_bins, self.transformer.config.max_length
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != n_mels:
            raise ValueError(f"AST takes [batch, 1, {n_mels} mel bins, frames], got {tuple(x.shape)}")
        x = x[:, 0, :, :frames].transpose(1, 2)  # [B, frames, n_mels], the model's input_values
        if x.shape[1] < frames:
            x = F.pad(x, (0, 0, 0, frames - x.shape[1]), value=self.pad_value)
        return self.transformer(input_values=x).logits


def min_samples(config) -> int:
    """The receptive field of a wav2vec2-family convolutional feature encoder, in samples (400 = 25 ms at 16 kHz
    for the base models): the shortest input that gives one frame."""
    size, jump = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        size, jump = size + (kernel - 1) * jump, jump * stride
    return size


class WaveformTransformer(nn.Module):
    """wav2vec2 / HuBERT on the ``waveform`` layout: float32 [B, 1, 1, samples] -> logits float32 [B, num_classes].

    The model pools its frames (one per 20 ms for the base models) by their mean; ``samples`` must be at least
    :func:`min_samples` (400 for the base models).
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def architecture(self) -> dict:
        """What rebuilds this exact network (JSON-able): ``{"config": <the transformers config dict>}``."""
        return {"config": config_dict(self.transformer.config)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortest = min_samples(self.transformer.config)
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != 1 or x.shape[3] < shortest:
            raise ValueError(f"a waveform model takes [batch, 1, 1, >= {shortest} samples], got {tuple(x.shape)}")
        return self.transformer(input_values=x.flatten(1)).logits


def _classes(spec: HFSpec):
    transformers = importlib.import_module("transformers")
    return getattr(transformers, spec.config_class), getattr(transformers, spec.model_class)


def cache_folder(model_id: str) -> str:
    """The folder of ``model_id`` in the Hugging Face cache (``HF_HUB_CACHE/models--<org>--<name>``)."""
    return os.path.join(constants.HF_HUB_CACHE, "models--" + model_id.replace("/", "--"))


def _offline_error(entry, err: Exception, weights) -> PretrainedWeightsError:
    if not weights and os.path.isdir(entry.weights):
        return PretrainedWeightsError(
            f"could not load the model folder {entry.weights} for {entry.name} ({type(err).__name__}: {err}). It "
            "needs config.json and the weights (model.safetensors), as save_pretrained writes them; or train from "
            "scratch with --pretrained=False.")
    what = f"the Hugging Face model {entry.weights} for {entry.name}"
    what += f" from --weights={weights}" if weights else ""
    return PretrainedWeightsError(offline_message(
        what, err, f"transformers downloads it from {constants.ENDPOINT}/{entry.weights}",
        cache_folder(entry.weights),
        f"`hf download {entry.weights}` on a connected machine fills that cache; "
        "set $HF_HOME or $HF_HUB_CACHE to use another folder",
        f"a folder with config.json and the weights, e.g. from `hf download {entry.weights} --local-dir PATH`"))


def _from_pretrained(model_class, source: str, num_classes: int, local: bool):
    # id2label sets num_labels=K (passing num_labels next to the checkpoint's 527-entry id2label only adds a
    # misleading "incompatible" warning); the project's label names live in the checkpoint, not here.
    labels = {i: f"LABEL_{i}" for i in range(num_classes)}
    return model_class.from_pretrained(source, id2label=labels, label2id={v: k for k, v in labels.items()},
                                       ignore_mismatched_sizes=True, output_loading_info=True,
                                       local_files_only=local, cache_dir=constants.HF_HUB_CACHE)


def load_pretrained(entry, num_classes: int, weights=None) -> nn.Module:
    """``entry``'s transformers model with pretrained weights and a fresh ``num_classes`` head, in train mode.

    From ``weights`` (a local folder) or the Hugging Face cache; downloaded only when not cached, the Hub is
    reachable and ``HF_HUB_OFFLINE`` is not set (so offline it fails at once instead of retrying for ~20 s).
    Raises PretrainedWeightsError: not downloadable or not readable (the message says where the files go), or
    the checkpoint does not fit (see :func:`check_loading_info`).
    """
    spec = entry.spec
    model_class = _classes(spec)[1]
    source = os.fspath(weights) if weights else entry.weights
    try:
        if weights and not os.path.isdir(source):
            raise FileNotFoundError(f"{source} is not a folder")
        try:
            model, info = _from_pretrained(model_class, source, num_classes, local=True)
        except OSError:
            if weights or constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT):
                raise
            model, info = _from_pretrained(model_class, source, num_classes, local=False)
    except Exception as err:  # OSError (offline, not found), ValueError / SafetensorError (unreadable files)
        raise _offline_error(entry, err, weights) from None
    check_loading_info(info, spec, source)
    return model.train()


def check_loading_info(info: dict, spec: HFSpec, source: str) -> None:
    """Accept ``from_pretrained``'s loading report only when the head is the sole new part.

    Allowed: missing or re-initialised (size-mismatched) keys of ``spec.head``, unexpected keys under
    ``spec.ignore_unexpected`` or outside ``spec.base_model`` (when set). Raises PretrainedWeightsError naming
    every other key.
    """
    missing = [k for k in info["missing_keys"] if not in_modules(k, spec.head)]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(spec.ignore_unexpected)
                  and (not spec.base_model or in_modules(k, (spec.base_model,)))]
    mismatched = [f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in info["mismatched_keys"]
                  if not in_modules(k, spec.head)]
    if missing or unexpected or mismatched or info["error_msgs"]:
        raise PretrainedWeightsError(
            f"{source} does not fit {spec.model_class}: only the classification head ({', '.join(spec.head)}) may "
            f"be new, but missing keys {key_list(missing)}, unexpected keys {key_list(unexpected)}, "
            f"re-initialised keys {key_list(mismatched)}"
            + (f", errors {info['error_msgs']}" if info["error_msgs"] else ""))


def pad_value(frontend: Mapping) -> float:
    """What AST's input is padded with to its ``max_length`` frames: 0 (the fbank padding of the official code and
    ASTFeatureExtractor) after the front end's fixed normalisation, ``-norm_mean / norm_std``."""
    if frontend.get("normalization") == "fixed":
        return -frontend["norm_mean"] / frontend["norm_std"]
    return 0.0


def wrap(model: nn.Module, layout: str, pad: float = 0.0) -> nn.Module:
    """A transformers audio-classification model in our ``layout`` (``spectrogram``: :class:`SpectrogramTransformer`
    padding with ``pad``; ``waveform``: :class:`WaveformTransformer`)."""
    return WaveformTransformer(model) if layout == "waveform" else SpectrogramTransformer(model, pad_value=pad)


def build(entry, num_classes: int, pretrained: bool, weights=None, record=None, **overrides) -> nn.Module:
    """``entry``'s transformers backbone (a registry Backbone with an :class:`HFSpec` in ``entry.spec``) wrapped
    for its input layout.

    ``record`` (from :func:`models.backbone_record`) rebuilds a saved architecture without loading weights;
    ``overrides`` are config kwargs (e.g. ``num_hidden_layers=2, hidden_size=32``) for ``pretrained=False``.
    Raises PretrainedWeightsError (see :func:`load_pretrained`) or ValueError.
    """
    spec = entry.spec
    config_class, model_class = _classes(spec)
    if record is not None:
        config = config_class.from_dict(record["config"])
        if config.num_labels != num_classes:
            raise ValueError(f"{entry.name}: the record has {config.num_labels} classes, not {num_classes}")
        model = model_class(config)
    elif pretrained:
        if overrides:
            raise ValueError(f"{entry.name}: {overrides} change the architecture; they need pretrained=False")
        model = load_pretrained(entry, num_classes, weights)
    else:
        model = model_class(config_class(**{**spec.config_kwargs, **overrides, "num_labels": num_classes}))
    return wrap(model, spec.layout, pad_value(entry.frontend))
