"""Any Hugging Face audio-classification checkpoint as a backbone: ``--arch=hf:<model id or folder>``.

    python train.py --arch=hf:MIT/ast-finetuned-audioset-10-10-0.4593    # a Hub model (downloaded once)
    python train.py --arch=hf:facebook/wav2vec2-base
    python train.py --arch=hf:path/to/my_finetuned_model                 # a folder written by save_pretrained

The registry entry (``models.registry.get_backbone``) is made from the checkpoint's own files:

* ``config.json``: the architecture. Its ``model_type`` must be one ``AutoModelForAudioClassification`` knows
  (AST, wav2vec2, HuBERT, WavLM, data2vec-audio, ...): :func:`spec_for` names its transformers classes and its
  head, the modules outside the pretrained base model (``classifier``; ``projector`` and ``classifier`` for the
  wav2vec2 family), which ``from_pretrained`` replaces by a new ``num_classes`` head. Any other missing or
  re-initialised key is an error (``models.hf.check_loading_info``); keys of another task's head (a pretraining
  quantizer, a CTC head) are ignored.
* ``preprocessor_config.json``: the front end, through :data:`FEATURE_EXTRACTORS` (its class name -> our front-end
  keys, and back for ``export.py --format hf``): ``ASTFeatureExtractor`` is a Kaldi fbank of ``num_mel_bins`` bins,
  25 ms frames every 10 ms, normalised ``(x - mean) / (2 * std)`` when ``do_normalize``, ``max_length`` frames;
  ``Wav2Vec2FeatureExtractor`` is the raw waveform, normalised per clip when ``do_normalize``. Other extractors
  (Whisper's log-mel, SeamlessM4T's fbank) are an error naming these two.

A checkpoint's backbone record holds the config and the front end, so a trained run rebuilds without the source.
Files come from the folder, or the Hugging Face cache, downloaded when missing and the Hub is reachable.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import torch
from huggingface_hub import constants

from experiment.config import ConfigError
from models.hf import HFSpec
from models.weights import PretrainedWeightsError, offline_message, reachable

PREFIX = "hf:"
# config keys that describe the old task's labels or the file, not the architecture
_NOT_ARCHITECTURE = ("id2label", "label2id", "num_labels", "architectures", "transformers_version", "_name_or_path")


def source_of(arch: str) -> str | None:
    """The model id or folder of an ``hf:`` arch (None for a named backbone)."""
    return arch[len(PREFIX):] if arch.startswith(PREFIX) else None


def _ast_frontend(extractor, config: dict) -> dict:
    """ASTFeatureExtractor -> front-end keys (transformers' ``_extract_fbank_features``: torchaudio's Kaldi fbank,
    hanning window, 25 ms / 10 ms, Kaldi's 20 Hz to Nyquist, no dither; zero-padded or cut to ``max_length``
    frames, then ``(x - mean) / (2 * std)``)."""
    sr, bins, frames = int(extractor.sampling_rate), int(extractor.num_mel_bins), int(extractor.max_length)
    if (config.get("num_mel_bins"), config.get("max_length")) != (bins, frames):
        raise ConfigError(f"the feature extractor gives {bins} mel bins x {frames} frames, but the model takes "
                          f"{config.get('num_mel_bins')} x {config.get('max_length')}: the checkpoint's "
                          "preprocessor_config.json does not belong to its config.json")
    hop = sr // 100
    keys = dict(frontend="kaldi_fbank", sample_rate=sr, n_fft=sr * 25 // 1000, hop_length=hop, n_mels=bins,
                f_min=20.0, f_max=sr / 2, input_layout="spectrogram", clip_seconds=frames * hop / sr)
    if extractor.do_normalize:
        return keys | dict(normalization="fixed", norm_mean=float(extractor.mean), norm_std=2 * float(extractor.std))
    return keys | dict(normalization="none")


def _ast_extractor(cfg: dict, mean: float, std: float, config) -> object:
    transformers = importlib.import_module("transformers")
    normalise = cfg["normalization"] != "none"
    return transformers.ASTFeatureExtractor(sampling_rate=cfg["sample_rate"], num_mel_bins=cfg["n_mels"],
                                            max_length=config.max_length, do_normalize=normalise,
                                            mean=mean if normalise else 0.0, std=std / 2 if normalise else 0.5)


def _waveform_frontend(extractor, config: dict) -> dict:
    """Wav2Vec2FeatureExtractor -> front-end keys: the raw waveform at ``sampling_rate``, normalised per clip
    (``zero_mean_unit_var_norm``) when ``do_normalize``; it has no maximum length."""
    return dict(frontend="waveform", sample_rate=int(extractor.sampling_rate), input_layout="waveform",
                normalization="per_clip" if extractor.do_normalize else "none")


def _waveform_extractor(cfg: dict, mean: float, std: float, config) -> object:
    transformers = importlib.import_module("transformers")
    return transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=cfg["sample_rate"], padding_value=0.0,
                                                 do_normalize=cfg["normalization"] == "per_clip",
                                                 return_attention_mask=False)


@dataclass(frozen=True)
class FeatureExtractorKind:
    """One transformers feature extractor we can read and write.

    ``frontend``: ``(extractor, model config dict) -> front-end keys`` (the vocabulary of ``data/features.py``).
    ``make``: ``(training config, normalisation mean, std, model config) -> extractor`` for an export.
    ``normalizations``: the ``normalization`` values it can express.
    """
    frontend: Callable[[object, dict], dict]
    make: Callable[[dict, float, float, object], object]
    frontends: tuple[str, ...]
    normalizations: tuple[str, ...]


FEATURE_EXTRACTORS = {
    "ASTFeatureExtractor": FeatureExtractorKind(_ast_frontend, _ast_extractor, ("kaldi_fbank",),
                                                ("fixed", "train", "none")),
    "Wav2Vec2FeatureExtractor": FeatureExtractorKind(_waveform_frontend, _waveform_extractor, ("waveform",),
                                                     ("per_clip", "none")),
}


def frontend_of(extractor, config: dict) -> dict:
    """Our front-end keys for a transformers feature extractor. Raises ConfigError for an extractor not in
    :data:`FEATURE_EXTRACTORS`."""
    kind = FEATURE_EXTRACTORS.get(type(extractor).__name__)
    if kind is None:
        raise ConfigError(f"its feature extractor is a {type(extractor).__name__}; the front ends this project "
                          f"computes are those of {', '.join(FEATURE_EXTRACTORS)} (Kaldi fbank, raw waveform)")
    return kind.frontend(extractor, config)


def feature_extractor(cfg: dict, mean: float, std: float, config):
    """The transformers feature extractor that computes a run's model input (for ``export.py --format hf``):
    ``cfg`` its training config, ``mean``/``std`` its input normalisation, ``config`` the model's config.
    Raises ConfigError when no extractor in :data:`FEATURE_EXTRACTORS` computes that front end and
    normalisation."""
    for name, kind in FEATURE_EXTRACTORS.items():
        if cfg.get("frontend") in kind.frontends:
            if cfg.get("normalization") not in kind.normalizations:
                raise ConfigError(f"normalization={cfg.get('normalization')} cannot be written as a {name} "
                                  f"(it does {', '.join(kind.normalizations)})")
            return kind.make(cfg, mean, std, config)
    raise ConfigError(f"no transformers feature extractor computes the {cfg.get('frontend')} front end")


def _classes(model_type: str):
    transformers = importlib.import_module("transformers")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES as MODELS
    if model_type not in MODELS:
        raise ConfigError(f"model type {model_type!r} has no AutoModelForAudioClassification class; these have one: "
                          f"{', '.join(MODELS)}")
    return getattr(transformers, CONFIG_MAPPING_NAMES[model_type]), getattr(transformers, MODELS[model_type])


def spec_for(config: dict, layout: str) -> tuple[HFSpec, int]:
    """(how to build the model of a transformers ``config`` dict on ``layout``, parameters outside its head).

    The head is every top-level module or parameter of the ``...ForAudioClassification`` class outside its base
    model (``base_model_prefix``), found on a meta-device instance. Raises ConfigError for a model type without
    an audio-classification class.
    """
    config_class, model_class = _classes(config["model_type"])
    kwargs = MappingProxyType({k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE})
    with torch.device("meta"):
        model = model_class(config_class(**kwargs, num_labels=2))
    base = model.base_model_prefix
    head = tuple(n for n, _ in model.named_children() if n != base) + tuple(
        n for n, _ in model.named_parameters(recurse=False))
    params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(base + "."))
    return HFSpec(config_class.__name__, model_class.__name__, layout, head=head, config_kwargs=kwargs,
                  base_model=base), params


def _offline_error(source: str, err: Exception, what: str) -> PretrainedWeightsError:
    if os.path.isdir(source):
        return PretrainedWeightsError(
            f"could not read {what} of --arch={PREFIX}{source} ({type(err).__name__}: {err}). The folder needs "
            "config.json and preprocessor_config.json (the feature extractor), as save_pretrained writes them.")
    folder = os.path.join(constants.HF_HUB_CACHE, "models--" + source.replace("/", "--"))
    return PretrainedWeightsError(offline_message(
        f"{what} of the Hugging Face model {source} (--arch={PREFIX}{source})", err,
        f"transformers downloads it from {constants.ENDPOINT}/{source}", folder,
        f"`hf download {source}` on a connected machine fills that cache; set $HF_HOME or $HF_HUB_CACHE to use "
        "another folder", f"with --arch={PREFIX}PATH instead, a folder from `hf download {source} --local-dir PATH`"))


def _fetch(loader, source: str, what: str):
    """``loader(source)`` from the folder or the cache; downloaded only when the Hub is reachable (3 s probe)."""
    local = os.path.isdir(source)
    try:
        try:
            return loader(source, local_files_only=True, cache_dir=constants.HF_HUB_CACHE)
        except OSError:
            if local or constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT):
                raise
            return loader(source, cache_dir=constants.HF_HUB_CACHE)
    except Exception as err:  # OSError (offline, not found), ValueError (an unreadable file)
        raise _offline_error(source, err, what) from None


def read_checkpoint(source: str) -> tuple[dict, dict]:
    """(config dict, front-end keys) of the model id or folder ``source``, from its ``config.json`` and
    ``preprocessor_config.json``.

    Raises PretrainedWeightsError (offline and not cached, a folder without those files: the message says where
    they go) or ConfigError (a model type or feature extractor this project cannot use).
    """
    from models.hf import config_dict
    transformers = importlib.import_module("transformers")
    config = config_dict(_fetch(transformers.AutoConfig.from_pretrained, source, "the config (config.json)"))
    extractor = _fetch(transformers.AutoFeatureExtractor.from_pretrained, source,
                       "the feature extractor (preprocessor_config.json)")
    _classes(config["model_type"])
    try:
        return config, frontend_of(extractor, config)
    except ConfigError as err:
        raise ConfigError(f"--arch={PREFIX}{source}: {err}") from None
