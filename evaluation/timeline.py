"""What plays when: a recording's windows with their top labels, merged into segments.

Evaluation cuts a recording into windows (``clip_seconds`` long, every ``eval_hop_seconds``) and averages
their logits into one answer. The windows themselves already say what plays when; this module turns them
into rows a user can read and save:

- a **window** row: its start and end in seconds (the end clipped to the recording) and its top-k labels
  with their (calibrated) probabilities;
- a **segment**: consecutive windows with the same top label, merged, with the mean of that label's
  probability over them. Windows overlap when the hop is shorter than the window, so segment boundaries are
  placed between windows, half-way between the centres of the last window of one segment and the first of the
  next: segments tile the recording from 0 to its end without overlap, and a change of sound at time t
  gives a boundary within half a hop of t (plus the window's own blur). With ``min_confidence`` a window
  whose top probability is below it is ``unknown``, and runs of such windows become ``unknown`` segments
  (their probability: the mean top probability that fell short).

For a multi-label model a window's answer is the set of labels at or above their thresholds (``a;b``, or
``none``), passed in as ``decide``; consecutive windows with the same set merge, and a segment's probability is
the mean over its windows of the mean probability of its labels.

:meth:`evaluation.classifier.Classifier.timeline` builds a :class:`Timeline`; ``predict.py --timeline``
writes :func:`window_rows` and :func:`segment_rows` as CSV and into its JSON; the web demo lists the segments.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from data.labels import SEPARATOR
from evaluation.selective import answer


@dataclass
class Window:
    """One window: ``start``/``end`` in seconds and ``top_k``: (label, probability) pairs, most probable first."""
    start: float
    end: float
    top_k: list[tuple[str, float]]


@dataclass
class Segment:
    """Consecutive windows with one top ``label`` (or ``unknown``), from ``start`` to ``end`` seconds;
    ``probability``: the mean of that label's probability over its ``windows`` windows."""
    start: float
    end: float
    label: str
    probability: float
    windows: int


@dataclass
class Timeline:
    """A recording's windows and segments. ``seconds``: its duration; ``window_seconds`` and ``hop_seconds``:
    the windows' length and hop; ``temperature``: what divided the logits (1.0: raw softmax);
    ``min_confidence``: the threshold below which a window is ``unknown`` (0: never)."""
    seconds: float
    window_seconds: float
    hop_seconds: float
    temperature: float
    min_confidence: float
    windows: list[Window]
    segments: list[Segment]

    def to_dict(self) -> dict:
        """JSON-ready: the fields, windows as ``{"start", "end", "top_k": [{"label", "probability"}]}``."""
        return dict(seconds=self.seconds, window_seconds=self.window_seconds, hop_seconds=self.hop_seconds,
                    temperature=self.temperature, min_confidence=self.min_confidence,
                    windows=[dict(start=w.start, end=w.end, top_k=[dict(label=n, probability=p) for n, p in w.top_k])
                             for w in self.windows],
                    segments=[asdict(s) for s in self.segments])


def segment_edges(starts, window_seconds: float, seconds: float) -> np.ndarray:
    """Boundaries float [N + 1] in seconds around N windows starting at ``starts`` (sorted): 0, the midpoints
    between consecutive window centres, and ``seconds``."""
    centres = np.asarray(starts, dtype=float) + window_seconds / 2
    return np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [float(seconds)]])


def _members(said: str, label_names: list[str]) -> list[int]:
    """Class ids of an answer: one label, several joined with ``;``, or none (``unknown`` / ``none``)."""
    if said in label_names:
        return [label_names.index(said)]
    return [label_names.index(n) for n in said.split(SEPARATOR) if n in label_names]


def merge_segments(probabilities, starts, window_seconds: float, seconds: float, label_names: list[str],
                   min_confidence: float = 0.0, decide: Callable | None = None) -> list[Segment]:
    """Segments of windows: runs of consecutive windows with the same answer (top label, or ``unknown`` below
    ``min_confidence``; or ``decide(row)``'s, e.g. a multi-label set ``a;b``) become one segment between
    :func:`segment_edges`.

    Args:
        probabilities: float [N, K] per window (numpy or torch), in the order of ``label_names``.
        starts: float [N], window starts in seconds. window_seconds, seconds: window length, recording length.
        decide: a window's probabilities [K] -> its answer (default: top label or ``unknown``).
    Returns:
        list of :class:`Segment`, in time order, tiling [0, seconds]; a segment's probability is the mean of
        its label's (labels' mean) probability, or of the top probability when it has no label.
    """
    p = probabilities.numpy() if isinstance(probabilities, torch.Tensor) else np.asarray(probabilities)
    edges = segment_edges(starts, window_seconds, seconds)
    labels = [decide(row) if decide else answer(row, label_names, min_confidence) for row in p]
    segments, first = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[first]:
            run, members = p[first:i], _members(labels[first], label_names)
            score = run[:, members].mean(1) if members else run.max(1)
            segments.append(Segment(float(edges[first]), float(edges[i]), labels[first], float(score.mean()),
                                    i - first))
            first = i
    return segments


def build_timeline(window_probabilities, starts, window_seconds: float, hop_seconds: float, seconds: float,
                   label_names: list[str], top_k: int = 3, temperature: float = 1.0,
                   min_confidence: float = 0.0, decide: Callable | None = None) -> Timeline:
    """A :class:`Timeline` from per-window probabilities float [N, K] and window ``starts`` [N] (seconds):
    each window's top ``top_k`` labels, and :func:`merge_segments` (with ``decide``)."""
    p = torch.as_tensor(np.asarray(window_probabilities), dtype=torch.float64)
    k = max(1, min(top_k, p.shape[1]))
    top = p.topk(k, dim=1)
    windows = [Window(float(s), float(min(s + window_seconds, seconds)),
                      [(label_names[int(i)], float(q)) for q, i in zip(values, indices)])
               for s, values, indices in zip(starts, top.values, top.indices)]
    return Timeline(float(seconds), float(window_seconds), float(hop_seconds), float(temperature),
                    float(min_confidence), windows,
                    merge_segments(p.numpy(), starts, window_seconds, seconds, label_names, min_confidence, decide))


def window_rows(path: str, timeline: dict) -> list[dict]:
    """CSV rows of the windows of a :meth:`Timeline.to_dict`: ``path, start, end, top1_label,
    top1_probability, top2_label, ...``."""
    rows = []
    for w in timeline["windows"]:
        row = dict(path=path, start=round(w["start"], 3), end=round(w["end"], 3))
        for j, top in enumerate(w["top_k"], 1):
            row |= {f"top{j}_label": top["label"], f"top{j}_probability": round(top["probability"], 4)}
        rows.append(row)
    return rows


def segment_rows(path: str, timeline: dict) -> list[dict]:
    """CSV rows of the segments of a :meth:`Timeline.to_dict`: ``path, start, end, label, probability, windows``."""
    return [dict(path=path, start=round(s["start"], 3), end=round(s["end"], 3), label=s["label"],
                 probability=round(s["probability"], 4), windows=s["windows"]) for s in timeline["segments"]]
