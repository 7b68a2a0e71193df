"""Use a trained checkpoint from other code, like HF's ``pipeline("audio-classification")``::

    from evaluation.classifier import Classifier
    clf = Classifier.from_checkpoint("runs/my-run/best.pt")
    clf.predict("song.mp3", top_k=3)            # [("rock", 0.71), ("metal", 0.12), ("blues", 0.05)]
    clf.predict(waveform, sample_rate=44100)     # numpy/torch [T] or [channels, T]

Any length works: the whole recording is cut into the training window (``clip_seconds``) every
``eval_hop_seconds`` and the logits are averaged, exactly as in evaluation.
"""
from __future__ import annotations

import numpy as np
import torch

from data.audio import AudioError, load_audio, resample
from data.features import build_features, window_frames
from data.windows import cut_windows
from evaluation import forward_windows
from experiment.checkpoint import load_checkpoint
from experiment.distributed import pick_device
from models import build_model


class Classifier:
    """A model plus its feature pipeline and label names, in eval mode on ``device``."""

    def __init__(self, model, logmel, image, label_names: list[str], window: int, hop: int, device: torch.device):
        self.model, self.logmel, self.image = model.to(device).eval(), logmel.eval(), image.to(device).eval()
        self.label_names, self.window, self.hop, self.device = list(label_names), window, hop, device

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto") -> "Classifier":
        """Load ``best.pt``/``last.pt`` (or a run folder, meaning its ``best.pt``). ``device``: auto, cpu, cuda...

        Raises FileNotFoundError / CheckpointError (see ``experiment.checkpoint.load_checkpoint``).
        """
        state = load_checkpoint(path)
        cfg, names = state["config"], state["label_names"]
        logmel, image = build_features(cfg, **state["features"]["norm"])
        model = build_model(cfg["arch"], len(names), pretrained=False)
        model.load_state_dict(state["model"])
        window, hop = window_frames(cfg, logmel)
        return cls(model, logmel, image, names, window, hop, pick_device(device))

    @property
    def sample_rate(self) -> int:
        return self.logmel.sample_rate

    def spectrogram(self, audio, sample_rate: int | None = None, min_seconds: float = 0.0) -> np.ndarray:
        """Whole-recording spectrogram float32 [n_mels, frames], computed on the CPU like the training cache.

        ``audio``: a file path, or a waveform (numpy/torch, [T] or [channels, T], float in [-1, 1]) with its
        ``sample_rate`` in Hz. Raises AudioError (file problems, too short) or ValueError (bad array).
        """
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            if sample_rate is None:
                raise ValueError("a waveform needs its sample_rate (Hz)")
            wave = torch.as_tensor(audio, dtype=torch.float32)
            if wave.dim() == 2:
                wave = wave.mean(0)
            if wave.dim() != 1 or wave.numel() == 0 or not torch.isfinite(wave).all():
                raise ValueError(f"waveform must be a finite [T] or [channels, T] array, got {tuple(wave.shape)}")
            if wave.numel() < min_seconds * sample_rate:
                raise AudioError("<waveform>", f"is only {wave.numel() / sample_rate:.3f} s long", "use a longer recording")
            wave = resample(wave, int(sample_rate), self.sample_rate)
        else:
            wave = load_audio(audio, self.sample_rate, min_seconds=min_seconds)
        with torch.no_grad():
            return self.logmel(wave).numpy()

    def logits_of_spectrogram(self, mel: np.ndarray) -> torch.Tensor:
        """Window-averaged logits float32 [num_classes] (cpu) of a whole-recording spectrogram."""
        windows = cut_windows(mel, self.window, self.hop)
        return forward_windows(self.model, self.image, windows, self.device).mean(0).cpu()

    def predict(self, audio, sample_rate: int | None = None, top_k: int = 5, min_seconds: float = 0.0
                ) -> list[tuple[str, float]]:
        """The ``top_k`` (label, probability) pairs for one recording, most probable first."""
        probs = self.logits_of_spectrogram(self.spectrogram(audio, sample_rate, min_seconds)).softmax(0)
        top = probs.topk(min(top_k, len(probs)))
        return [(self.label_names[i], float(p)) for p, i in zip(top.values, top.indices)]
