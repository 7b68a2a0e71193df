"""Exported networks: the model alone as ONNX or TorchScript, or as a Hugging Face ``transformers`` model folder,
and ``export.json`` with everything else.

An export folder (written by ``export.py``, read by :meth:`evaluation.classifier.Classifier.from_export`)::

    model.onnx | model.torchscript   the network: input float32 [batch, C, H, W] (the input transform's
                                     output) -> logits float32 [batch, num_classes]; the batch axis is dynamic
    export.json                      format, backbone, label names, the training config (every front-end key),
                                     ``features`` (front-end parameters and normalisation), window and hop in
                                     frames, the run's metrics, the parity measured at export, and
                                     ``calibration`` (the checkpoint's temperature record, when it has one:
                                     the logits are divided by it before the softmax), ``task`` and, for a
                                     multi-label run, ``thresholds`` (per class, tuned on val)

The front end (decoding, resampling, STFT/log-mel) and the input transform (normalise, resize, channels)
stay outside the graph: STFT ops export poorly (``torch.stft`` has no ONNX op before opset 17 and complex
tensors none at all), and keeping them in Python means one feature pipeline for checkpoints and exports.

The ``hf`` format (transformers-based backbones: AST, the wav2vec2 family, any ``hf:`` arch) is a folder that
``transformers.pipeline("audio-classification", model=FOLDER)`` loads: ``save_pretrained`` weights
(``model.safetensors``) and ``config.json`` with the run's ``id2label``/``label2id``, the feature extractor
that computes the run's input (``preprocessor_config.json``, ``models.hub.FEATURE_EXTRACTORS``), the model card
(``README.md``, with its confusion matrices) and ``export.json``. A checkpoint's calibration temperature
(``state["calibration"]["temperature"]``) is folded into the classification layer (weight and bias divided by
it), so pipeline()'s softmax gives the calibrated probabilities.

:data:`FORMATS` is the registry of output formats: adding one is one entry (file name, save, load, the
backbone families it exports).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from evaluation.calibration import temperature_of
from experiment.checkpoint import CheckpointError, write_atomic
from experiment.model_card import render_export_card

EXPORT_JSON = "export.json"
ONNX_OPSET = 18  # what the torch.export-based exporter writes natively (>= 17 has STFT); onnxruntime >= 1.14 runs it
REQUIRED = ("format", "label_names", "config", "features")


class ExportError(CheckpointError):
    """An export could not be written or read; the message names the folder and the fix."""


class OnnxNetwork(nn.Module):
    """An ONNX network run by onnxruntime on the CPU (``CPUExecutionProvider``), usable as an ``nn.Module``.

    Input: float32 [B, ...] on any device; output: float32 logits [B, num_classes] on the input's device.
    Raises ExportError when onnxruntime is not installed or cannot read the file.
    """

    def __init__(self, path):
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise ExportError(f"{path}: running an ONNX export needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(f"{path}: onnxruntime cannot read it ({type(err).__name__}: {err}). "
                              f"Export again with python export.py <run folder> --format onnx") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def save_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamo: bool = False) -> dict:
    """Export ``model`` (eval mode, CPU) to ONNX with a dynamic batch axis; returns how, for export.json.

    ``dynamo=False`` (default): torch's TorchScript-based exporter with ``dynamic_axes``, which needs nothing
    beyond torch and onnx. ``dynamo=True``: the ``torch.export``-based exporter torch recommends since 2.9,
    with a ``torch.export.Dim`` batch axis; it also needs onnxscript. Raises ExportError naming a missing package.
    """
    for module in ("onnx", "onnxscript") if dynamo else ("onnx",):
        if importlib.util.find_spec(module) is None:
            raise ExportError(f"ONNX export{' with --dynamo' if dynamo else ''} needs the {module} package: "
                              f"pip install {module}")
    names = dict(input_names=["input"], output_names=["logits"], opset_version=ONNX_OPSET)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False, **names,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **names,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return dict(exporter="torch.export (dynamo)" if dynamo else "TorchScript-based", opset=ONNX_OPSET)


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> dict:
    """Trace ``model`` (eval mode, CPU) with ``torch.jit.trace`` and save it; returns how, for export.json."""
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), str(path))
    return dict(exporter="torch.jit.trace")


def load_torchscript(path: Path, device: torch.device) -> nn.Module:
    """The TorchScript network on ``device`` (an archive holds TorchScript code: load only files you trust).

    Raises ExportError when torch cannot read the file."""
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as err:
        message = " ".join(str(err).split())[:300]
        raise ExportError(f"{path}: torch.jit cannot read it ({type(err).__name__}: {message}). Export again with "
                          f"python export.py <run folder> --format torchscript") from None


def fold_temperature(model: nn.Module, temperature: float) -> nn.Linear:
    """Divide the weight and bias of ``model``'s last ``nn.Linear`` with ``config.num_labels`` outputs (its
    classification layer) by ``temperature`` in place, so its logits become ``logits / temperature``; returns
    that layer. Raises ExportError when there is none."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == model.config.num_labels]
    if not layers:
        raise ExportError(f"{type(model).__name__} has no linear layer with {model.config.num_labels} outputs to "
                          "fold the calibration temperature into")
    with torch.no_grad():
        layers[-1].weight.div_(temperature)
        if layers[-1].bias is not None:
            layers[-1].bias.div_(temperature)
    return layers[-1]


def window_samples(frontend: nn.Module, frames: int) -> int:
    """The clip length, in samples at the front end's rate, that gives exactly ``frames`` frames (one window):
    ``frames`` for the waveform, ``n_fft + (frames - 1) * hop_length`` for the Kaldi fbank (whole frames only)."""
    return frames if frontend.name == "waveform" else frontend.n_fft + (frames - 1) * frontend.hop_length


def save_transformers(clf, example: torch.Tensor, folder: Path, run_dir: Path, location: str) -> dict:
    """Write ``clf``'s transformers model as a Hugging Face model folder (see the module docstring); returns how,
    for export.json (``temperature``: the one folded in, 1.0 for none). ``location``: where users will load it
    from (the output folder or the Hub id), for the model card.

    Raises ExportError (no transformers model inside, an uncalibratable head) or ConfigError (a front end or
    normalisation no transformers feature extractor computes).
    """
    from models.hub import feature_extractor
    transformers = importlib.import_module("transformers")
    inner = getattr(clf.model, "transformer", None)
    if not isinstance(inner, transformers.PreTrainedModel):
        raise ExportError(f"{clf.config.get('arch')} holds no transformers model")
    model = copy.deepcopy(inner).cpu().eval()
    temperature = temperature_of(clf.meta)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ExportError(f"the checkpoint's calibration temperature is {temperature}; it must be a positive number")
    if temperature != 1.0:
        fold_temperature(model, temperature)
    model.config.id2label = dict(enumerate(clf.label_names))
    model.config.label2id = {name: i for i, name in enumerate(clf.label_names)}
    model.save_pretrained(folder)
    transform = clf.input_transform
    feature_extractor(clf.config, transform.mean, transform.std, model.config).save_pretrained(folder)
    for png in sorted(Path(run_dir).glob("confusion_matrix_*.png")):
        shutil.copy(png, folder / png.name)
    state = {**clf.meta, "config": clf.config}
    card = render_export_card(run_dir, state, folder, location, _base_model(clf.config),
                              window_samples(clf.frontend, clf.window))
    (folder / "README.md").write_text(card, encoding="utf-8")
    return dict(exporter="transformers save_pretrained (safetensors)", transformers=transformers.__version__,
                temperature=temperature)


def _base_model(cfg: dict) -> str | None:
    """The Hub id the run was fine-tuned from (``pretrained`` from a Hub model, not a local folder), else None."""
    from models import get_backbone
    from models.hub import source_of
    if not cfg.get("pretrained") or cfg.get("weights"):
        return None
    source = source_of(cfg["arch"])
    weights = source if source is not None else get_backbone(cfg["arch"]).weights
    return None if Path(weights).expanduser().is_dir() else weights


def load_transformers(folder: Path, device: torch.device) -> nn.Module:
    """The model of a Hugging Face folder written by :func:`save_transformers`, in our input layout, on
    ``device``. Raises ExportError when transformers cannot read it."""
    from models import hf, hub
    transformers = importlib.import_module("transformers")
    try:
        model = transformers.AutoModelForAudioClassification.from_pretrained(folder, local_files_only=True)
        extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        frontend = hub.frontend_of(extractor, hf.config_dict(model.config))
    except Exception as err:
        message = " ".join(str(err).split())[:300]
        raise ExportError(f"{folder}: transformers cannot read it ({type(err).__name__}: {message}). Export again "
                          f"with python export.py <run folder> --format hf") from None
    return hf.wrap(model.eval(), frontend["input_layout"], hf.pad_value(frontend)).to(device)


def _onnx(clf, example, folder, run_dir, location, **options) -> dict:
    return save_onnx(clf.model, example, folder / "model.onnx", **options)


def _torchscript(clf, example, folder, run_dir, location) -> dict:
    return save_torchscript(clf.model, example, folder / "model.torchscript")


@dataclass(frozen=True)
class ExportFormat:
    file: str                                        # the network's main file inside the folder
    save: Callable[..., dict]                        # (classifier, example, folder, run_dir, location, **options)
    load: Callable[[Path, torch.device], nn.Module]  # (folder, device) -> network
    families: tuple[str, ...] | None = None          # backbone families (models.FAMILIES) it exports; None: all


FORMATS = {
    "onnx": ExportFormat("model.onnx", _onnx, lambda folder, device: OnnxNetwork(folder / "model.onnx")),
    "torchscript": ExportFormat("model.torchscript", _torchscript,
                                lambda folder, device: load_torchscript(folder / "model.torchscript", device)),
    "hf": ExportFormat("model.safetensors", save_transformers, load_transformers,
                       families=("spectrogram_transformer", "waveform_transformer")),
}


def formats_for(family: str) -> list[str]:
    """The :data:`FORMATS` that export a backbone of ``family``."""
    return [name for name, fmt in FORMATS.items() if fmt.families is None or family in fmt.families]


def write_export_json(folder: Path, spec: dict) -> Path:
    """Write ``spec`` as ``folder/export.json`` atomically."""
    path = Path(folder) / EXPORT_JSON
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(spec, indent=2)))
    return path


def read_export(folder, device: torch.device) -> tuple[dict, nn.Module]:
    """(export.json as a dict, the network loaded on ``device``) of an export folder.

    The network file's name comes from the format's registry entry, never from the JSON.
    Raises FileNotFoundError (no export.json) or ExportError (unreadable JSON, missing keys, unknown format,
    missing network file, onnxruntime missing).
    """
    folder = Path(folder)
    path = folder / EXPORT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {EXPORT_JSON} there (write one with: python export.py "
                                f"runs/<experiment> --format onnx)")
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: not readable JSON ({err}). Export again with export.py") from None
    missing = [k for k in REQUIRED if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}; not written by export.py. Export again")
    if spec["format"] not in FORMATS:
        raise ExportError(f"{path}: format {spec['format']!r} is unknown; known: {', '.join(FORMATS)}")
    network = folder / FORMATS[spec["format"]].file
    if not network.is_file():
        raise ExportError(f"{folder}: {network.name} is missing beside {EXPORT_JSON}. Copy the whole folder, "
                          f"or export again")
    return spec, FORMATS[spec["format"]].load(folder, device)
