"""Exported networks: the model alone as ONNX or TorchScript, and ``export.json`` with everything else.

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

:data:`FORMATS` is the registry of output formats: adding one is one entry (file name, save, load).
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from experiment.checkpoint import CheckpointError, write_atomic

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


@dataclass(frozen=True)
class ExportFormat:
    file: str                                                # the network's file name inside the folder
    save: Callable[..., dict]                                # (model, example, path, **options) -> how it was saved
    load: Callable[[Path, torch.device], nn.Module]          # (path, device) -> network


FORMATS = {
    "onnx": ExportFormat("model.onnx", save_onnx, lambda path, device: OnnxNetwork(path)),
    "torchscript": ExportFormat("model.torchscript", save_torchscript, load_torchscript),
}


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
    return spec, FORMATS[spec["format"]].load(network, device)
