"""Use a trained checkpoint from other code, like HF's ``pipeline("audio-classification")``::

    from evaluation.classifier import Classifier
    clf = Classifier.from_checkpoint("runs/my-run/best.pt")
    clf.predict("song.mp3", top_k=3)            # [("rock", 0.71), ("metal", 0.12), ("blues", 0.05)]
    clf.predict(waveform, sample_rate=44100)     # numpy/torch [T], [channels, T] or [T, channels]
    clf.classify("song.mp3")                     # Prediction: all probabilities, windows, duration
    clf.analyze("song.mp3")                      # Analysis: also per-window probabilities and the spectrogram
    Classifier.from_export("runs/my-run/export_onnx")   # a folder written by export.py (onnxruntime)

Any length works: the whole recording is cut into the training window (``clip_seconds``) every
``eval_hop_seconds`` and the logits are averaged, exactly as in evaluation. ``predict.py`` and
``evaluate.py`` build their models and features through this class, from the checkpoint alone; ``app.py``
(the web demo) and exported folders (``export.py``) too. The front end (log-mel, PANNs log-mel, Kaldi fbank
or raw waveform) and the input transform come from the checkpoint's ``config`` and ``features["norm"]``;
configs written before front ends existed mean today's log-mel and 3-channel image.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.audio import MIN_SECONDS, AudioError, load_audio, resample
from data.features import build_features, window_frames
from data.windows import cut_windows, window_starts
from evaluation import forward_windows
from evaluation.export import ExportError, read_export
from experiment.checkpoint import CheckpointError, load_checkpoint
from experiment.distributed import pick_device
from models import build_model

# Checkpoint entries a Classifier keeps besides the model weights (training state is dropped).
_META_DROP = ("model", "optimizer", "scheduler", "scaler", "accum")


@dataclass
class Prediction:
    """One recording's result.

    ``probabilities``: float32 [num_classes] (cpu), softmax of the window-averaged logits, in the order of
    ``label_names``. ``num_windows``: windows averaged. ``seconds``: duration of the audio.
    """
    probabilities: torch.Tensor
    label_names: list[str]
    num_windows: int
    seconds: float

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable (label, probability) pairs, most probable first (all when k >= classes)."""
        top = self.probabilities.topk(max(1, min(k, len(self.probabilities))))
        return [(self.label_names[i], float(p)) for p, i in zip(top.values, top.indices)]


@dataclass
class Analysis:
    """One recording's prediction and what happened along time (what the web demo shows).

    ``prediction``: as :meth:`Classifier.classify` gives it (the same numbers). ``window_probabilities``:
    float32 [num_windows, num_classes] (cpu), softmax of each window's logits. ``window_starts``: float
    [num_windows], start of each window in seconds; every window is ``window_seconds`` long (a recording
    shorter than one window is padded, centred). ``spectrogram``: float32 [n_mels, frames], the
    whole-recording spectrogram the windows are cut from; ``frame_seconds`` is its hop (hop_length / sample_rate).
    """
    prediction: Prediction
    window_probabilities: torch.Tensor
    window_starts: np.ndarray
    window_seconds: float
    spectrogram: np.ndarray
    frame_seconds: float


def front_end(cfg: dict, norm: dict) -> tuple:
    """(logmel, input transform, window frames, hop frames) of a training config and its normalisation
    statistics (``features.norm``): what :meth:`Classifier.from_checkpoint` and :meth:`Classifier.from_export`
    both build, so a checkpoint and its export see the same input."""
    frontend, input_transform = build_features(cfg, **norm)
    return (frontend, input_transform, *window_frames(cfg, frontend))


class Classifier:
    """A model plus its feature pipeline and label names, in eval mode on ``device``.

    ``frontend`` (any of ``data.frontends``) turns a waveform [T] into features [n_mels, frames] (or [1, samples]);
    ``input_transform`` turns windows [N, 1, rows, W] into model inputs. ``window``/``hop`` are in the front
    end's frames.
    ``config`` is the training config of the checkpoint and ``meta`` its other entries (``label_names``,
    ``features``, ``epoch``, ``best``, ``experiment_name``, ``splits``...), without the training state.
    """

    def __init__(self, model, frontend, input_transform, label_names: list[str], window: int, hop: int,
                 device: torch.device, config: dict | None = None, meta: dict | None = None):
        self.model, self.frontend = model.to(device).eval(), frontend.eval()
        self.input_transform = input_transform.to(device).eval()
        self.label_names, self.window, self.hop, self.device = list(label_names), window, hop, device
        self.config, self.meta = dict(config or {}), dict(meta or {})

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto") -> "Classifier":
        """Load ``best.pt``/``last.pt`` (or a run folder, meaning its ``best.pt``). ``device``: auto, cpu, cuda...

        The network is rebuilt from the checkpoint's backbone record (``state["backbone"]``; checkpoints
        without one, written before records existed, rebuild ``config["arch"]`` as registered).
        Raises FileNotFoundError / CheckpointError (see ``experiment.checkpoint.load_checkpoint``), or
        RuntimeError for a device that is not available.
        """
        state = load_checkpoint(path)
        cfg, names = state["config"], state["label_names"]
        frontend, input_transform, window, hop = front_end(cfg, state["features"]["norm"])
        model = build_model(cfg["arch"], len(names), pretrained=False, record=state.get("backbone"))
        model.load_state_dict(state["model"])
        meta = {k: v for k, v in state.items() if k not in _META_DROP}
        return cls(model, frontend, input_transform, names, window, hop, pick_device(device), cfg, meta)

    @classmethod
    def from_export(cls, folder, device: str = "auto") -> "Classifier":
        """Load a folder written by ``export.py``: the network from its ONNX file (onnxruntime, CPU) or
        TorchScript file, the front end and input transform rebuilt from its ``export.json`` exactly as
        :meth:`from_checkpoint` builds them. ``meta`` holds the JSON's other entries (``metrics``, ``best``...).

        Raises FileNotFoundError (no export.json) or ExportError (a CheckpointError: unreadable folder, unknown
        format, onnxruntime missing).
        """
        device = pick_device(device)
        spec, network = read_export(folder, device)
        try:
            frontend, input_transform, window, hop = front_end(spec["config"], spec["features"]["norm"])
        except (KeyError, TypeError, ValueError) as err:
            raise ExportError(f"{folder}: export.json's config or features are incomplete or invalid "
                              f"({type(err).__name__}: {err}). Export again with export.py") from None
        meta = {k: v for k, v in spec.items() if k != "config"}
        names = spec["label_names"]
        return cls(network, frontend, input_transform, names, window, hop, device, spec["config"], meta)

    @classmethod
    def load(cls, path, device: str = "auto") -> "Classifier":
        """:meth:`from_export` for a folder holding ``export.json`` (or that file), else :meth:`from_checkpoint`."""
        path = Path(path)
        if path.name == "export.json" or (path / "export.json").is_file():
            return cls.from_export(path.parent if path.name == "export.json" else path, device)
        return cls.from_checkpoint(path, device)

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def min_seconds(self) -> float:
        """The shortest audio training accepts (``data.audio.MIN_SECONDS``, seconds)."""
        return MIN_SECONDS

    def waveform(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0) -> torch.Tensor:
        """Mono float32 [T] at :attr:`sample_rate`, decoded, down-mixed and resampled as in training.

        ``audio``: a file path, or a waveform (numpy/torch, [T], [channels, T] or soundfile's [T, channels],
        float in [-1, 1]) with its ``sample_rate`` in Hz. ``min_seconds``: shorter audio raises.
        Raises AudioError (file problems, too short) or ValueError (bad array, missing ``sample_rate``).
        """
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise ValueError("a waveform needs its sample_rate (Hz)")
            wave = torch.as_tensor(audio, dtype=torch.float32)
            if wave.dim() == 2:  # the shorter axis holds the channels
                wave = wave.mean(0) if wave.shape[0] <= wave.shape[1] else wave.mean(1)
            if wave.dim() != 1 or wave.numel() == 0 or not torch.isfinite(wave).all():
                raise ValueError(f"waveform must be a finite non-empty [T] or [channels, T] array, "
                                 f"got shape {tuple(np.shape(audio))}")
            if wave.numel() < min_seconds * sample_rate:
                raise AudioError("<waveform>", f"is only {wave.numel() / sample_rate:.3f} s long",
                                 "use a longer recording")
            return resample(wave, int(sample_rate), self.sample_rate)
        return load_audio(audio, self.sample_rate, min_seconds=min_seconds)

    def spectrogram(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0) -> np.ndarray:
        """Whole-recording features float32 [n_mels, frames] ([1, samples] for the waveform front end),
        computed on the CPU like the training cache.

        Arguments and errors as :meth:`waveform`.
        """
        with torch.no_grad():
            return self.frontend(self.waveform(audio, sample_rate, min_seconds)).numpy()

    def windows(self, features: np.ndarray) -> torch.Tensor:
        """Every evaluation window of whole-recording features [rows, frames] -> float32 [N, 1, rows, window],
        as training evaluates them (TrackDataset): a recording shorter than one window gives one centred window
        padded with the front end's silence (``frontend.pad_value``)."""
        return cut_windows(features, self.window, self.hop, self.frontend.pad_value)

    def classify(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0) -> Prediction:
        """Class probabilities of one whole recording (arguments and errors as :meth:`waveform`)."""
        return self.analyze(audio, sample_rate, min_seconds).prediction

    def predict(self, audio, sample_rate: int | None = None, top_k: int = 5, min_seconds: float = 0.0
                ) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs for one recording, most probable first.

        ``audio``: a path (any format soundfile decodes, any rate, any channels, any length) or a waveform
        [T] / [channels, T] with its ``sample_rate`` in Hz. Raises AudioError or ValueError.
        """
        return self.classify(audio, sample_rate, min_seconds).top_k(top_k)

    def analyze(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0) -> Analysis:
        """The recording's :class:`Prediction` (what :meth:`classify` returns: window logits averaged, then
        softmax) plus the per-window probabilities and the spectrogram, from one forward pass. Arguments and
        errors as :meth:`waveform`.
        """
        wave = self.waveform(audio, sample_rate, min_seconds)
        with torch.no_grad():
            mel = self.frontend(wave).numpy()
        logits = forward_windows(self.model, self.input_transform, self.windows(mel), self.device)
        frame = self.frontend.hop_length / self.sample_rate
        starts = np.asarray(window_starts(mel.shape[-1], self.window, self.hop), dtype=float) * frame
        prediction = Prediction(logits.mean(0).cpu().softmax(0), self.label_names, len(starts),
                                wave.numel() / self.sample_rate)
        return Analysis(prediction, logits.softmax(1).cpu(), starts, self.window * frame, mel, frame)


def load_for_cli(path, device: str = "auto") -> Classifier | None:
    """:meth:`Classifier.load` for a command line (predict.py, app.py): a missing or unreadable checkpoint or
    export prints ``error: <why>`` to stderr and returns None, so the caller exits with status 1."""
    try:
        return Classifier.load(path, device)
    except (FileNotFoundError, CheckpointError) as err:  # ExportError is a CheckpointError
        print(f"error: {err}", file=sys.stderr)
        return None
