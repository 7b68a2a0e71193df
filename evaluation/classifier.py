"""Use a trained checkpoint from other code, like HF's ``pipeline("audio-classification")``::

    from evaluation.classifier import Classifier
    clf = Classifier.from_checkpoint("runs/my-run/best.pt")
    clf.predict("song.mp3", top_k=3)            # [("rock", 0.71), ("metal", 0.12), ("blues", 0.05)]
    clf.predict(waveform, sample_rate=44100)     # numpy/torch [T], [channels, T] or [T, channels]
    clf.classify("song.mp3")                     # Prediction: all probabilities, windows, duration
    clf.analyze("song.mp3")                      # Analysis: also per-window probabilities and the spectrogram
    Classifier.from_export("runs/my-run/export_onnx")   # a folder written by export.py (onnxruntime)
    clf.timeline("mix.wav", hop_seconds=2.0)     # Timeline: windows and merged segments (what plays when)
    Classifier.from_checkpoint(path, min_confidence=0.6).predict("dog.wav")   # [("unknown", 0.41)]
    Classifier.from_checkpoint("runs/tagger/best.pt").predict("mix.wav")       # multi-label: [("dog", 0.93), ("rain", 0.71)]

Probabilities are calibrated by default: the logits are divided by the checkpoint's temperature (fitted on
the val split at the end of training, :mod:`evaluation.calibration`) before the softmax, so "0.8" means
right about 8 times in 10 on data like the val split; top-1 is the same either way. ``calibrated=False``
gives the raw softmax; a checkpoint without a temperature (trained before calibration existed) has
``temperature`` 1.0 and predicts exactly as before. ``min_confidence`` answers ``unknown`` when the top
probability is below it (:mod:`evaluation.selective`).

Multi-label checkpoints (``task`` multilabel, experiment/tasks.py) give each label its own sigmoid probability
(no temperature) and answer every label whose probability reaches its class's threshold (tuned on val,
F1-optimal, stored in the checkpoint under ``thresholds``); ``min_confidence`` is then a floor over all
thresholds, and ``none`` is the answer when no label reaches its threshold. :meth:`Classifier.predict` returns
those labels; ``Prediction.top_k`` still gives the k most probable.

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
from evaluation.calibration import temperature_of
from evaluation.export import ExportError, read_export
from evaluation.multilabel import NO_LABEL
from evaluation.selective import UNKNOWN
from evaluation.timeline import Timeline, build_timeline
from experiment.checkpoint import CheckpointError, load_checkpoint
from experiment.distributed import pick_device
from experiment.tasks import get_task, task_of
from models import build_model, get_backbone

# Checkpoint entries a Classifier keeps besides the model weights (training state is dropped).
_META_DROP = ("model", "optimizer", "scheduler", "scaler", "accum")


@dataclass
class Prediction:
    """One recording's result.

    ``probabilities``: float32 [num_classes] (cpu), softmax of the window-averaged logits divided by
    ``temperature`` (1.0: the raw softmax), or for ``task`` multilabel the sigmoid of each, in the order of
    ``label_names``. ``num_windows``: windows averaged. ``seconds``: duration of the audio.
    ``min_confidence``: below it, :attr:`label` is ``unknown`` (multilabel: a floor over the thresholds).
    ``thresholds``: the multi-label checkpoint's threshold record (``{"thresholds": [K floats], ...}``), or None.
    """
    probabilities: torch.Tensor
    label_names: list[str]
    num_windows: int
    seconds: float
    temperature: float = 1.0
    min_confidence: float = 0.0
    task: str = "single_label"
    thresholds: dict | None = None

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable (label, probability) pairs, most probable first (all when k >= classes)."""
        top = self.probabilities.topk(max(1, min(k, len(self.probabilities))))
        return [(self.label_names[i], float(p)) for p, i in zip(top.values, top.indices)]

    @property
    def confidence(self) -> float:
        """The top probability."""
        return float(self.probabilities.max())

    @property
    def label(self) -> str:
        """The answer: the most probable label, or ``unknown`` when :attr:`confidence` < ``min_confidence``;
        multilabel: the labels at or above their thresholds joined with ``;`` (most probable first), or ``none``."""
        return get_task(self.task).answer(self.probabilities, self.label_names, self.thresholds, self.min_confidence)

    @property
    def labels(self) -> list[tuple[str, float]]:
        """The answer as (label, probability) pairs, most probable first: one pair (single-label) or every label
        at or above its threshold (multilabel); [] for ``unknown`` / ``none``."""
        return get_task(self.task).chosen(self.probabilities, self.label_names, self.thresholds, self.min_confidence)


@dataclass
class Analysis:
    """One recording's prediction and what happened along time (what the web demo shows).

    ``prediction``: as :meth:`Classifier.classify` gives it (the same numbers). ``window_probabilities``:
    float32 [num_windows, num_classes] (cpu), softmax of each window's logits (divided by the prediction's
    temperature). ``window_starts``: float [num_windows], start of each window in seconds; every window is
    ``window_seconds`` long, one every ``hop_seconds`` (a recording shorter than one window is padded,
    centred). ``spectrogram``: float32 [n_mels, frames], the whole-recording spectrogram the windows are cut
    from; ``frame_seconds`` is its hop (hop_length / sample_rate).
    """
    prediction: Prediction
    window_probabilities: torch.Tensor
    window_starts: np.ndarray
    window_seconds: float
    spectrogram: np.ndarray
    frame_seconds: float
    hop_seconds: float = 0.0

    def timeline(self, top_k: int = 3) -> Timeline:
        """The windows' top ``top_k`` labels and merged segments (:mod:`evaluation.timeline`)."""
        p = self.prediction
        task = get_task(p.task)

        def decide(row):
            return task.answer(row, p.label_names, p.thresholds, p.min_confidence)
        return build_timeline(self.window_probabilities, self.window_starts, self.window_seconds, self.hop_seconds,
                              p.seconds, p.label_names, top_k, p.temperature, p.min_confidence, decide)


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
    ``features``, ``epoch``, ``best``, ``experiment_name``, ``splits``, ``calibration``...), without the
    training state.

    ``temperature``: the checkpoint's fitted temperature (``meta["calibration"]``; 1.0 when it has none).
    ``calibrated``: divide the logits by it before the softmax (default; False: the raw softmax).
    ``min_confidence``: in [0, 1]; a recording (or window) whose top probability is below it is ``unknown``.
    ``task``: the run's task (experiment/tasks.py, from the config); ``thresholds``: a multi-label checkpoint's
    threshold record (``meta["thresholds"]``), None otherwise.
    """

    def __init__(self, model, frontend, input_transform, label_names: list[str], window: int, hop: int,
                 device: torch.device, config: dict | None = None, meta: dict | None = None, calibrated: bool = True,
                 min_confidence: float = 0.0):
        self.model, self.frontend = model.to(device).eval(), frontend.eval()
        self.input_transform = input_transform.to(device).eval()
        self.label_names, self.window, self.hop, self.device = list(label_names), window, hop, device
        self.config, self.meta = dict(config or {}), dict(meta or {})
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be a probability in [0, 1], got {min_confidence}")
        self.temperature = temperature_of(self.meta)
        self.calibrated, self.min_confidence = calibrated, float(min_confidence)
        self.task = task_of(self.config)
        self.thresholds = self.meta.get("thresholds")

    def set_decision(self, record: dict) -> None:
        """Use ``record``, the task's decision rule fitted on val (``Task.fit_decision``: the calibration
        record, or the thresholds), from now on; it is also put in :attr:`meta` under the task's key."""
        self.meta[self.task.decision_key] = record
        self.temperature, self.thresholds = temperature_of(self.meta), self.meta.get("thresholds")

    @property
    def applied_temperature(self) -> float:
        """What divides the logits: :attr:`temperature` when :attr:`calibrated`, else 1.0."""
        return self.temperature if self.calibrated else 1.0

    def probability_note(self) -> str:
        """One line for a command line or page: whether the probabilities are calibrated, and by what."""
        if self.task.name == "multilabel":
            tuned = (f"tuned on {self.thresholds['tracks']} {self.thresholds['fitted_on']} tracks"
                     if self.thresholds else "untuned: 0.5 each (python evaluate.py RUN tunes them)")
            return (f"sigmoid probabilities, one per label; a label is answered at or above its class's threshold "
                    f"(F1-optimal, {tuned})")
        record = self.meta.get("calibration")
        if not record:
            return "raw softmax probabilities: this model has no temperature (python evaluate.py RUN fits one)"
        fitted = (f"temperature {self.temperature:.3f} fitted on {record.get('tracks', '?')} "
                  f"{record.get('fitted_on', '?')} tracks")
        if self.calibrated:
            return f"calibrated probabilities ({fitted}; --uncalibrated: the raw softmax)"
        return f"raw softmax probabilities (--uncalibrated; the {fitted} is not applied)"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits / :attr:`applied_temperature`) over the last axis (multilabel: the sigmoid of each
        logit); logits float [..., num_classes]."""
        return self.task.probabilities(logits, self.applied_temperature)

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", calibrated: bool = True,
                        min_confidence: float = 0.0) -> "Classifier":
        """Load ``best.pt``/``last.pt`` (or a run folder, meaning its ``best.pt``). ``device``: auto, cpu, cuda...
        ``calibrated``, ``min_confidence``: see the class.

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
        return cls(model, frontend, input_transform, names, window, hop, pick_device(device), cfg, meta, calibrated,
                   min_confidence)

    @classmethod
    def from_export(cls, folder, device: str = "auto", calibrated: bool = True,
                    min_confidence: float = 0.0) -> "Classifier":
        """Load a folder written by ``export.py``: the network from its ONNX file (onnxruntime, CPU) or
        TorchScript file, the front end and input transform rebuilt from its ``export.json`` exactly as
        :meth:`from_checkpoint` builds them. ``meta`` holds the JSON's other entries (``metrics``, ``best``,
        ``calibration``: the temperature, applied as for a checkpoint...).

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
        return cls(network, frontend, input_transform, names, window, hop, device, spec["config"], meta, calibrated,
                   min_confidence)

    @classmethod
    def load(cls, path, device: str = "auto", calibrated: bool = True, min_confidence: float = 0.0) -> "Classifier":
        """:meth:`from_export` for a folder holding ``export.json`` (or that file), else :meth:`from_checkpoint`."""
        path = Path(path)
        if path.name == "export.json" or (path / "export.json").is_file():
            return cls.from_export(path.parent if path.name == "export.json" else path, device, calibrated,
                                   min_confidence)
        return cls.from_checkpoint(path, device, calibrated, min_confidence)

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

    def windows(self, features: np.ndarray, window: int | None = None, hop: int | None = None) -> torch.Tensor:
        """Every evaluation window of whole-recording features [rows, frames] -> float32 [N, 1, rows, window],
        as training evaluates them (TrackDataset): a recording shorter than one window gives one centred window
        padded with the front end's silence (``frontend.pad_value``). ``window``/``hop``: frames (default: the
        run's)."""
        return cut_windows(features, window or self.window, hop or self.hop, self.frontend.pad_value)

    def fixed_window_reason(self) -> str | None:
        """Why this model takes only its training window length (None when any length works): an exported
        graph's time axis is fixed; the image layout resizes every window to ``resize`` pixels, so another length
        would stretch time; a backbone whose registry entry fixes ``clip_seconds`` (AST: position embeddings of
        1024 frames) takes only that."""
        if "format" in self.meta:
            return f"an exported network ({self.meta['format']}) takes a fixed time axis, the training window"
        if self.config.get("input_layout", "image") == "image":
            return (f"the image layout resizes every window to {self.config.get('resize')} x "
                    f"{self.config.get('resize')} pixels, so another length would stretch time")
        try:
            fixed = "clip_seconds" in (get_backbone(self.config.get("arch", "")).frontend or {})
        except ValueError:
            fixed = False
        return f"{self.config.get('arch')} takes only its pretrained window length" if fixed else None

    def window_frames(self, window_seconds: float | None = None, hop_seconds: float | None = None
                      ) -> tuple[int, int]:
        """(window, hop) in front-end frames for windows of ``window_seconds`` every ``hop_seconds`` (None: the
        run's ``clip_seconds`` / ``eval_hop_seconds``), with the frame arithmetic of ``data.features.window_frames``.

        Raises ValueError for a non-positive length, or another window length where :meth:`fixed_window_reason`
        says the model cannot take one (the message says why and that ``hop_seconds`` can still change).
        """
        window, hop = self.window, self.hop
        if window_seconds is not None:
            if window_seconds <= 0:
                raise ValueError(f"window_seconds must be positive, got {window_seconds}")
            window = self.frontend.seconds_to_frames(window_seconds)
            reason = self.fixed_window_reason()
            if window != self.window and reason:
                raise ValueError(f"window_seconds={window_seconds:g}: this model takes only its training window of "
                                 f"{self.config.get('clip_seconds')} s: {reason}. Change hop_seconds instead")
        if hop_seconds is not None:
            if hop_seconds <= 0:
                raise ValueError(f"hop_seconds must be positive, got {hop_seconds}")
            hop = max(1, int(round(hop_seconds * self.sample_rate / self.frontend.hop_length)))
        return window, hop

    def classify(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0) -> Prediction:
        """Class probabilities of one whole recording (arguments and errors as :meth:`waveform`)."""
        return self.analyze(audio, sample_rate, min_seconds).prediction

    def predict(self, audio, sample_rate: int | None = None, top_k: int = 5, min_seconds: float = 0.0
                ) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs for one recording, most probable first; when the top
        probability is below :attr:`min_confidence`, the one pair ``("unknown", top probability)``: the model
        declines to answer (:meth:`classify` still gives every probability). A multi-label model returns every
        label at or above its threshold instead (however many; ``top_k`` does not cut them), or the one pair
        ``("none", top probability)`` when no label reaches its threshold.

        ``audio``: a path (any format soundfile decodes, any rate, any channels, any length) or a waveform
        [T] / [channels, T] with its ``sample_rate`` in Hz. Raises AudioError or ValueError.
        """
        pred = self.classify(audio, sample_rate, min_seconds)
        if pred.label in (UNKNOWN, NO_LABEL) and not pred.labels:
            return [(pred.label, pred.confidence)]
        return pred.labels if self.task.name == "multilabel" else pred.top_k(top_k)

    def analyze(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0,
                window_seconds: float | None = None, hop_seconds: float | None = None) -> Analysis:
        """The recording's :class:`Prediction` (what :meth:`classify` returns: window logits averaged, divided
        by :attr:`applied_temperature`, then softmax) plus the per-window probabilities and the spectrogram,
        from one forward pass. ``window_seconds``/``hop_seconds``: other windows than the run's
        (:meth:`window_frames`). Other arguments and errors as :meth:`waveform`.
        """
        window, hop = self.window_frames(window_seconds, hop_seconds)
        wave = self.waveform(audio, sample_rate, min_seconds)
        with torch.no_grad():
            mel = self.frontend(wave).numpy()
        logits = forward_windows(self.model, self.input_transform, self.windows(mel, window, hop), self.device).cpu()
        frame = self.frontend.hop_length / self.sample_rate
        starts = np.asarray(window_starts(mel.shape[-1], window, hop), dtype=float) * frame
        prediction = Prediction(self.probabilities(logits.mean(0)), self.label_names, len(starts),
                                wave.numel() / self.sample_rate, self.applied_temperature, self.min_confidence,
                                self.task.name, self.thresholds)
        return Analysis(prediction, self.probabilities(logits), starts, window * frame, mel, frame, hop * frame)

    def timeline(self, audio, sample_rate: int | None = None, top_k: int = 3, window_seconds: float | None = None,
                 hop_seconds: float | None = None, min_seconds: float = 0.0) -> Timeline:
        """What plays when: each window's start, end and top ``top_k`` labels, and the merged segments
        (:mod:`evaluation.timeline`), with calibrated probabilities and ``unknown`` below
        :attr:`min_confidence`. Arguments and errors as :meth:`analyze`."""
        return self.analyze(audio, sample_rate, min_seconds, window_seconds, hop_seconds).timeline(top_k)


def load_for_cli(path, device: str = "auto", calibrated: bool = True, min_confidence: float = 0.0
                 ) -> Classifier | None:
    """:meth:`Classifier.load` for a command line (predict.py, app.py): a missing or unreadable checkpoint or
    export prints ``error: <why>`` to stderr and returns None, so the caller exits with status 1."""
    try:
        return Classifier.load(path, device, calibrated, min_confidence)
    except (FileNotFoundError, CheckpointError) as err:  # ExportError is a CheckpointError
        print(f"error: {err}", file=sys.stderr)
        return None
