"""The backbone registry: every ``--arch``, what it was pretrained on, where its weights come from, how to build it.

Adding a backbone is one :class:`Backbone` entry in :data:`BACKBONES`; ``--arch=hf:<model id or folder>`` makes
an entry for any Hugging Face audio-classification checkpoint from its own files (``models/hub.py``), and the
named transformers entries (``ast``, ``distilhubert``...) are shortcuts with published recipes. Each entry
declares the front end it was pretrained on as config keys (the vocabulary of ``data/features.py``:
``frontend``, ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``f_min``, ``f_max``, ``input_layout``,
``normalization``, ``norm_mean``, ``norm_std``, ``clip_seconds``); :func:`resolve_frontend` applies it to a
config. The ImageNet CNNs declare none: they take the config's own log-mel image.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from torch import nn

from experiment.config import ConfigError
from models import cnn14, hf, hub, imagenet
from models.hf import HFSpec
from models.weights import hub_file

FAMILIES = ("imagenet_cnn", "audio_cnn", "spectrogram_transformer", "waveform_transformer")


@dataclass(frozen=True)
class Backbone:
    """One ``--arch``.

    ``weights``: what ``pretrained=True`` loads, a file URL (with ``weights_file``, its cache file name) or a
    Hugging Face model id. ``checksum``: the published checksum of that file: for ImageNet the sha256 prefix in
    torchvision's file name (torchvision checks it); None where none is published (the Hub checks its own files).
    ``params``: parameters of the network without its new classification head (computed; checked by
    tests/test_backbones.py). ``reference``: a published number with its protocol. ``frontend``: the config keys
    of the input it was pretrained on (None: the config's own features). ``head``: module names of the new
    classification head in the built model. ``builder(entry, num_classes, pretrained, weights, record,
    **overrides)`` builds it.
    """
    name: str
    family: str
    source: str
    licence: str
    weights: str
    weights_file: str
    checksum: str | None
    params: int
    reference: str
    frontend: Mapping | None
    head: tuple[str, ...]
    builder: Callable[..., nn.Module]
    spec: object = None


def _imagenet(name: str, params: int, reference: str = "") -> Backbone:
    weights = imagenet.ARCHS[name][1]
    return Backbone(
        name=name, family="imagenet_cnn",
        source="He et al. 2016 (ResNet) / Xie et al. 2017 (ResNeXt); torchvision IMAGENET1K_V1",
        licence="BSD-3-Clause (torchvision); weights trained on ImageNet-1k", weights=weights.url,
        weights_file=imagenet.file_name(name), checksum=imagenet.file_name(name).rsplit("-", 1)[1].split(".")[0],
        params=params, reference=reference or "no published audio number", frontend=None, head=("fc",),
        builder=imagenet.build)


_TUTORIAL = "GTZAN, tutorial per-genre 80/20 split, best epoch on the 200 validation clips (SwanLab tutorial)"
# PANNs front end: audioset_tagging_cnn pytorch/models.py (Cnn14, Cnn14_16k) and utils/config.py, torchlibrosa
# Spectrogram + LogmelFilterBank (hann, center, reflect, power 2, librosa Slaney mel, 10*log10(max(x, 1e-10)),
# ref 1.0, top_db None). No fixed normalisation: bn0 is a learned BatchNorm over the mel bins.
_PANNS = dict(frontend="panns_logmel", n_mels=64, f_min=50.0, input_layout="spectrogram", normalization="none")
_ZENODO = "https://zenodo.org/record/3987831/files/{}?download=1"
# The wav2vec2 family reads the 16 kHz waveform, each clip normalised to zero mean and unit variance as
# Wav2Vec2FeatureExtractor(do_normalize=True) does in the fine-tuning guides (the HF audio course passes
# do_normalize=True for DistilHuBERT). The config classes' defaults are the base architectures
# (transformers: "facebook/wav2vec2-base-960h style", "facebook/hubert-base-ls960 style").
_WAVEFORM = MappingProxyType(dict(frontend="waveform", sample_rate=16000, input_layout="waveform",
                                  normalization="per_clip"))
_WAV2VEC2_HEAD = ("projector", "classifier")


def _panns(name: str, file_name: str, reference: str, **frontend) -> Backbone:
    return Backbone(
        name=name, family="audio_cnn",
        source="PANNs CNN14, Kong et al. 2020 (IEEE/ACM TASLP); qiuqiangkong/audioset_tagging_cnn",
        licence="MIT (code); CC BY 4.0 (Zenodo record 3987831 of the weights)",
        weights=_ZENODO.format(file_name.replace("=", "%3D")), weights_file=file_name, checksum=None,
        params=79_673_792, reference=reference,
        frontend=MappingProxyType({**_PANNS, **frontend}), head=("fc_audioset",), builder=cnn14.build)


def _hf(name: str, family: str, source: str, licence: str, model_id: str, params: int, reference: str,
        frontend: Mapping, spec: HFSpec) -> Backbone:
    return Backbone(name=name, family=family, source=source, licence=licence, weights=model_id, weights_file="",
                    checksum=None, params=params, reference=reference, frontend=MappingProxyType(dict(frontend)),
                    head=tuple(f"transformer.{h}" for h in spec.head), builder=hf.build, spec=spec)


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    _imagenet("resnet18", 11_176_512, f"71.5% top-1, {_TUTORIAL}"),
    _imagenet("resnet34", 21_284_672),
    _imagenet("resnet50", 23_508_032),
    _imagenet("resnet101", 42_500_160),
    _imagenet("resnet152", 58_143_808),
    _imagenet("resnext50_32x4d", 22_979_904),
    _imagenet("resnext101_32x8d", 86_742_336, f"87.5% top-1 at 512 px, {_TUTORIAL}"),
    _imagenet("resnext101_64x4d", 81_406_272),
    _panns("cnn14", "Cnn14_mAP=0.431.pth",
           "0.890 accuracy on GTZAN fold 2 of 10-fold CV after 2000 iterations, ~30 min on one V100 "
           "(panns_transfer_to_gtzan README); AudioSet mAP 0.431",
           sample_rate=32000, n_fft=1024, hop_length=320, f_max=14000.0),
    _panns("cnn14_16k", "Cnn14_16k_mAP=0.438.pth",
           "AudioSet mAP 0.438 (audioset_tagging_cnn README); no published GTZAN number",
           sample_rate=16000, n_fft=512, hop_length=160, f_max=8000.0),
    _hf("ast", "spectrogram_transformer", "AST, Gong et al. 2021 (Interspeech); YuanGongND/ast via transformers",
        "BSD-3-Clause", "MIT/ast-finetuned-audioset-10-10-0.4593", 86_187_264,
        "0.88-0.92 accuracy on GTZAN in HF model cards of fine-tuned AST (random split, 100-clip eval); "
        "AudioSet mAP 0.4593",
        # YuanGongND/ast src/dataloader.py (kaldi fbank: htk_compat, no energy, hanning, dither 0, 10 ms shift,
        # 25 ms frames, 128 bins; Kaldi's default low_freq 20 Hz, high_freq Nyquist) and egs/audioset/run.sh
        # (mean -4.2677393, std 4.5689974, 1024 frames), normalised (x - mean) / (2 * std); transformers'
        # ASTFeatureExtractor has the same defaults.
        dict(frontend="kaldi_fbank", sample_rate=16000, n_fft=400, hop_length=160, n_mels=128, f_min=20.0,
             f_max=8000.0, input_layout="spectrogram", normalization="fixed", norm_mean=-4.2677393,
             norm_std=4.5689974 * 2, clip_seconds=10.24),
        HFSpec("ASTConfig", "ASTForAudioClassification", "spectrogram", head=("classifier",))),
    _hf("wav2vec2_base", "waveform_transformer", "wav2vec 2.0, Baevski et al. 2020 (NeurIPS); fairseq via transformers",
        "Apache-2.0", "facebook/wav2vec2-base", 94_371_712,
        "~80-85% on GTZAN (seed fine-tuning guide, random split)", _WAVEFORM,
        HFSpec("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", "waveform", head=_WAV2VEC2_HEAD,
               ignore_unexpected=("quantizer.", "project_hid.", "project_q."))),
    _hf("hubert_base", "waveform_transformer", "HuBERT, Hsu et al. 2021 (IEEE/ACM TASLP); fairseq via transformers",
        "Apache-2.0", "facebook/hubert-base-ls960", 94_371_712, "no published GTZAN number", _WAVEFORM,
        HFSpec("HubertConfig", "HubertForSequenceClassification", "waveform", head=_WAV2VEC2_HEAD)),
    _hf("distilhubert", "waveform_transformer",
        "DistilHuBERT, Chang et al. 2022 (ICASSP); s3prl distiller via transformers", "Apache-2.0",
        "ntu-spml/distilhubert", 23_491_968,
        "81% on GTZAN, random 90/10 split, best epoch (HF audio course ch. 4: lr 5e-5, batch 8, 10 epochs, "
        "warmup ratio 0.1)", _WAVEFORM,
        HFSpec("HubertConfig", "HubertForSequenceClassification", "waveform", head=_WAV2VEC2_HEAD,
               # transformers' convert_distilhubert_original_s3prl_checkpoint_to_pytorch.py (convert_config) on
               # s3prl's distiller: 2 layers, no feature-projection LayerNorm, the base conv encoder.
               config_kwargs=MappingProxyType(dict(
                   num_hidden_layers=2, feat_proj_layer_norm=False, feat_proj_dropout=0.0, final_dropout=0.0,
                   layerdrop=0.0, apply_spec_augment=False)))),
)}


_HUB: dict[str, Backbone] = {}  # the hf:<source> entries made in this process


def _hub_backbone(arch: str, config: dict, frontend: dict) -> Backbone:
    source = hub.source_of(arch)
    layout = frontend["input_layout"]
    spec, params = hub.spec_for(config, layout)
    return Backbone(
        name=arch, family="waveform_transformer" if layout == "waveform" else "spectrogram_transformer",
        source=f"{spec.model_class} from {source} (transformers AutoModelForAudioClassification)",
        licence=f"see the model card of {source}", weights=source, weights_file="", checksum=None, params=params,
        reference=f"none registered (--arch={arch})", frontend=MappingProxyType(dict(frontend)),
        head=tuple(f"transformer.{h}" for h in spec.head), builder=hf.build, spec=spec)


def get_backbone(arch: str, record: dict | None = None) -> Backbone:
    """The registry entry of ``arch``: a name of :data:`BACKBONES`, or ``hf:<model id or folder>`` for any
    Hugging Face audio-classification checkpoint (made once per process from its config.json and
    preprocessor_config.json, or without any file from a checkpoint's backbone ``record``).

    Raises ValueError listing the valid names; for ``hf:`` PretrainedWeightsError (the files cannot be read or
    downloaded) or ConfigError (a model type or feature extractor this project cannot use).
    """
    if hub.source_of(arch) is not None:
        if arch not in _HUB:
            if record is not None and "config" in record and "frontend" in record:
                config, frontend = record["config"], record["frontend"]
            else:
                config, frontend = hub.read_checkpoint(hub.source_of(arch))
            _HUB[arch] = _hub_backbone(arch, config, frontend)
        return _HUB[arch]
    if arch not in BACKBONES:
        raise ValueError(f"arch={arch!r} is unknown; choose one of: {', '.join(BACKBONES)}, or "
                         f"{hub.PREFIX}<Hugging Face model id or folder>")
    return BACKBONES[arch]


def build_model(arch: str, num_classes: int, pretrained: bool = True, weights=None, record: dict | None = None,
                **overrides) -> nn.Module:
    """The network ``arch`` with a new head of ``num_classes`` logits, in train mode.

    Input: the entry's ``input_layout`` (``image`` float32 [B, 3, H, W]; ``spectrogram`` [B, 1, n_mels, frames];
    ``waveform`` [B, 1, 1, samples]); output: logits float32 [B, num_classes] (no softmax/sigmoid).

    ``pretrained``: start from the published weights (downloaded once into the torch hub / Hugging Face cache).
    ``weights``: a local file (ImageNet, CNN14) or folder (transformers) used instead of downloading; only read
    when ``pretrained``. ``record``: the dict :func:`backbone_record` saved with a checkpoint; rebuilds exactly that
    architecture and loads no weights (the checkpoint's state dict follows). ``overrides``: architecture
    arguments for a from-scratch network (CNN14: ``base_channels``, ``n_mels``; transformers: config kwargs), e.g.
    tiny test models.
    Raises:
        ValueError: unknown ``arch`` (the message lists the valid names), ``num_classes < 2``, a record of another
            arch or size, or overrides with ``pretrained``.
        PretrainedWeightsError: ``pretrained`` and the weights cannot be downloaded (offline), read or loaded;
            the message names the file or model id, its folder, ``--weights=PATH`` and ``--pretrained=False``.
    """
    entry = get_backbone(arch, record)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    if record is not None and record.get("name") != arch:
        raise ValueError(f"the backbone record is for {record.get('name')!r}, not arch={arch!r}")
    if entry.family == "imagenet_cnn" and overrides:
        raise ValueError(f"{arch} takes no architecture overrides, got {overrides}")
    architecture = None if record is None else {k: v for k, v in record.items() if k not in ("name", "frontend")}
    return entry.builder(entry, num_classes, pretrained, weights, architecture, **overrides)


def backbone_record(arch: str, model: nn.Module) -> dict:
    """What rebuilds ``model``'s exact architecture from a checkpoint alone (JSON-able), for
    ``build_model(arch, num_classes, pretrained=False, record=...)``.

    Format: ``{"name": arch}`` plus, for CNN14, ``{"n_mels", "base_channels"}``, and for transformers models
    ``{"config": <the full transformers config dict, as in config.json>}``; an ``hf:`` arch also records its
    ``frontend`` keys, so it rebuilds without its source. ImageNet CNNs need only the name, so checkpoints
    written before records existed rebuild from ``config["arch"]`` alone.
    """
    entry = get_backbone(arch)
    architecture = getattr(model, "architecture", None)
    hub_frontend = {"frontend": dict(entry.frontend)} if hub.source_of(arch) is not None else {}
    return {"name": arch, **(architecture() if callable(architecture) else {}), **hub_frontend}


def weights_path(arch: str) -> str:
    """Where ``pretrained=True`` looks for ``arch``'s weights before downloading: the torch hub file
    (``$TORCH_HOME/hub/checkpoints/<file>``) or the model's folder in the Hugging Face cache."""
    entry = get_backbone(arch)
    return hub_file(entry.weights_file) if entry.weights_file else hf.cache_folder(entry.weights)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def resolve_frontend(cfg: dict, explicit_keys=()) -> dict:
    """``cfg`` with the front end that ``cfg["arch"]`` was pretrained on applied (a new dict).

    A backbone with a pretrained front end (CNN14, AST, the wav2vec2 family) decides the feature keys it
    declares (``Backbone.frontend``): they override the defaults and any preset (``--preset=demo --arch=cnn14``
    runs CNN14 at 32 kHz with its log-mel). ``explicit_keys`` are the keys the user set on the command line: one
    of them set to a different value than the backbone's is an error, since the pretrained weights would see
    another input than they were trained on; setting it to the same value is fine. It applies with
    ``--pretrained=False`` too: the network's shape follows it (CNN14's ``bn0`` has ``n_mels`` channels, AST takes
    128 bins x 1024 frames). ImageNet CNNs declare no front end: ``cfg`` is returned unchanged.
    Raises:
        ConfigError: naming each conflicting key, the user's value, the backbone's value and the fix (drop the
            flag, or choose another --arch).
        ValueError: unknown ``cfg["arch"]``.
    """
    entry = get_backbone(cfg["arch"])
    if entry.frontend is None:
        return cfg
    conflicts = [f"--{key}={cfg[key]!r}, but {entry.name} was pretrained on {key}={value!r}"
                 for key, value in entry.frontend.items()
                 if key in explicit_keys and key in cfg and not _same(cfg[key], value)]
    if conflicts:
        raise ConfigError("the front end of a pretrained backbone is fixed: " + "; ".join(conflicts)
                          + f".\nDrop {'these flags' if len(conflicts) > 1 else 'the flag'} (--arch={entry.name} "
                          f"sets {'them' if len(conflicts) > 1 else 'it'}) or choose another --arch.")
    return {**cfg, **entry.frontend}
