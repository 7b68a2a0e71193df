"""Track-level evaluation: windows -> images -> logits -> mean logits per track -> metrics.

``forward_windows`` is the one code path from spectrogram windows to logits; training's validation,
``evaluate.py`` and ``predict.py`` (through :class:`evaluation.classifier.Classifier`) all call it, so a
clip gets the same prediction everywhere.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from data.windows import average_logits


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` on ``device`` (``torch.autocast``); a no-op context when ``dtype`` is None.
    Training sets a dtype on CUDA only (experiment.engine.setup_runtime); the tests run CPU bfloat16 through
    the same paths."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def forward_windows(model: nn.Module, input_transform: nn.Module, windows: torch.Tensor, device: torch.device,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False, chunk: int = 64) -> torch.Tensor:
    """Logits of front-end windows.

    Args:
        input_transform: the run's input transform (data.features: MelImage -> images [N, 3, H, W],
            SpectrogramInput -> [N, 1, n_mels, W], WaveformInput -> [N, 1, 1, samples]).
        windows: float32 [N, 1, n_mels, W] or [N, 1, 1, samples] (any device). ``chunk`` windows go through
            the model at a time.
    Returns:
        float32 [N, num_classes] on ``device``.
    """
    out = []
    for part in windows.split(chunk):
        x = input_transform(part.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            out.append(model(x).float())
    return torch.cat(out)


@torch.no_grad()
def predict_tracks(model: nn.Module, input_transform: nn.Module, loader, device: torch.device,
                   amp_dtype: torch.dtype | None = None, channels_last: bool = False, progress=None) -> dict:
    """Window-averaged logits for every track of a loader over ``TrackDataset`` (``collate_tracks``).

    Returns dict: ``logits`` float32 [N, K] (cpu), ``labels`` long [N], ``indices`` long [N] (dataset
    positions), ``skipped`` list of Skipped. Puts ``model`` and ``input_transform`` in eval mode.
    """
    model.eval()
    input_transform.eval()
    logits, labels, indices, skipped = [], [], [], []
    for windows, y, track_index, idx, bad in (progress(loader) if progress else loader):
        skipped += bad
        if len(y) == 0:
            continue
        window_logits = forward_windows(model, input_transform, windows, device, amp_dtype, channels_last)
        logits.append(average_logits(window_logits, track_index.to(device), len(y)).cpu())
        labels.append(y)
        indices.append(idx)
    if not logits:
        return dict(logits=torch.empty(0, 0), labels=torch.empty(0, dtype=torch.long),
                    indices=torch.empty(0, dtype=torch.long), skipped=skipped)
    return dict(logits=torch.cat(logits), labels=torch.cat(labels), indices=torch.cat(indices), skipped=skipped)


def track_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of track-level (window-averaged) logits; nan for no tracks."""
    return float(F.cross_entropy(logits, labels)) if len(labels) else float("nan")
