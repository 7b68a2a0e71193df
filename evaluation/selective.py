"""Saying "unknown": selective classification by a confidence threshold, and how well the threshold works.

A classifier that may abstain answers only when its top (calibrated) probability reaches ``min_confidence``
and says ``unknown`` otherwise (the softmax-response rule of Geifman & El-Yaniv 2017, "Selective
Classification for Deep Neural Networks", NeurIPS). Raising the threshold trades coverage (the fraction of
recordings answered) for accuracy on the answered ones; :func:`coverage_table` gives that trade-off on a
held-out split, so a user picks the threshold from a number.

Recordings of something outside the classes (speech given to a genre model) should get low confidence too.
:func:`open_set_auroc` measures it as Hendrycks & Gimpel (2017, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples", ICLR) do: the AUROC of the maximum softmax probability for in-set against
out-of-set recordings (1.0: every out-of-set recording is less confident than every in-set one; 0.5: no
better than a coin).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

UNKNOWN = "unknown"  # the answer below the threshold
COVERAGES = (0.5, 0.8, 0.9, 1.0)  # rows of the coverage table


def _numpy(x, dtype=np.float64) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)


def answer(probabilities, label_names: list[str], min_confidence: float = 0.0) -> str:
    """The label of the top probability, or :data:`UNKNOWN` when that probability is below ``min_confidence``.

    ``probabilities``: float [K] (numpy or torch) in the order of ``label_names``. A threshold of 0 never
    answers unknown; a probability exactly at the threshold is answered."""
    p = _numpy(probabilities)
    top = int(p.argmax())
    return UNKNOWN if p[top] < min_confidence else label_names[top]


def confidence_for_coverage(confidence, coverage: float) -> float:
    """The threshold that answers the ``coverage`` fraction of the most confident predictions: the confidence
    of the ceil(coverage * N)-th most confident one. Answering when confidence >= it covers at least that
    fraction (more when several predictions tie at it). ``confidence``: float [N], N >= 1; ``coverage`` in (0, 1].
    Raises ValueError for no predictions or a coverage outside (0, 1]."""
    c = np.sort(_numpy(confidence))[::-1]
    if len(c) == 0 or not 0 < coverage <= 1:
        raise ValueError(f"confidence_for_coverage needs N >= 1 predictions and 0 < coverage <= 1, got N={len(c)}, "
                         f"coverage={coverage}")
    return float(c[math.ceil(coverage * len(c) - 1e-9) - 1])


def coverage_table(probabilities, labels, coverages=COVERAGES) -> list[dict]:
    """Selective classification on a labelled split: for each coverage c, keep the ceil(c * N) most confident
    predictions (confidence: the top probability) and measure their top-1.

    Args: probabilities float [N, K] (the calibrated ones: their threshold is what ``--min_confidence``
    takes), labels int [N].
    Returns: one dict per coverage: ``coverage`` (asked), ``tracks`` (kept), ``top1`` (fraction right among
    them) and ``min_confidence`` (the confidence of the least confident one kept: ``--min_confidence`` at this
    value answers at least these tracks). [] when N is 0.
    """
    p, y = _numpy(probabilities), _numpy(labels, np.int64)
    if len(p) == 0:
        return []
    confidence, right = p.max(1), p.argmax(1) == y
    order = np.argsort(-confidence, kind="stable")
    rows = []
    for c in coverages:
        kept = math.ceil(c * len(p) - 1e-9)
        rows.append(dict(coverage=float(c), tracks=int(kept), top1=float(right[order[:kept]].mean()),
                         min_confidence=float(confidence[order[kept - 1]])))
    return rows


def coverage_text(rows: list[dict], split: str) -> str:
    """The coverage table as console lines (percentages)."""
    if not rows:
        return ""
    lines = [f"selective classification on {split} (answer only the most confident tracks; --min_confidence=P):",
             "  coverage  tracks  top-1   P (confidence of the least confident answered)"]
    lines += [f"  {100 * r['coverage']:6.0f}%  {r['tracks']:6d}  {100 * r['top1']:5.1f}%  {r['min_confidence']:.3f}"
              for r in rows]
    return "\n".join(lines)


def open_set_auroc(in_confidence, out_confidence) -> float:
    """AUROC of the confidence (the top probability) separating in-set (positive) from out-of-set (negative)
    recordings: scikit-learn's ``roc_auc_score``. Both float [N_in], [N_out] with N_in, N_out >= 1.
    Raises ValueError when either set is empty."""
    a, b = _numpy(in_confidence), _numpy(out_confidence)
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"open_set_auroc needs in-set and out-of-set recordings, got {len(a)} and {len(b)}")
    return float(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]))


def rejected_fraction(confidence, min_confidence: float) -> float:
    """Fraction of ``confidence`` [N] below ``min_confidence`` (answered ``unknown``); NaN for N = 0."""
    c = _numpy(confidence)
    return float(np.mean(c < min_confidence)) if len(c) else float("nan")
