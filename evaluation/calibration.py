"""Calibrated probabilities: temperature scaling, the expected calibration error and the reliability diagram.

A network's softmax is a score, not yet a probability: deep networks trained with cross-entropy tend to be
over-confident, and mixup (on by default here) moves them again, often towards under-confidence. Temperature
scaling (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural Networks", ICML, section 4.2)
divides every logit vector by one scalar T > 0 fitted on held-out data (our val split, track-level logits) by
maximum likelihood: T > 1 softens over-confident probabilities, T < 1 sharpens under-confident ones. Dividing
by a positive scalar keeps the order of the logits, so top-1 (and every accuracy) never changes.

The expected calibration error (Naeini, Cooper & Hauskrecht 2015; the 15-bin form of Guo et al. 2017,
eq. 3) sorts predictions into 15 equal-width bins of their confidence (the top probability) and averages
|accuracy - mean confidence| over the bins, weighted by the fraction of predictions in each: 0 is perfectly
calibrated, and 0.10 means the stated confidence is off by 10 points on average.

train.py fits T at the end of training (:func:`fit_calibration`) and stores it in ``best.pt`` under the key
``calibration``; ``evaluate.py`` fits it for any run folder that lacks it. :class:`CalibrationReport` holds
what an evaluated split reports: ECE and NLL before and after, the selective-classification table
(``evaluation.selective``) and the reliability diagram.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib
import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.selective import coverage_table, coverage_text  # noqa: E402
from experiment.checkpoint import store_entry  # noqa: E402

ECE_BINS = 15  # Guo et al. 2017 (section 5 and their code): 15 equal-width confidence bins
TEMPERATURE_BOUNDS = (0.01, 100.0)  # the search interval of T; a fit at a bound means the data are separable


def _numpy(x, dtype=np.float64) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Probabilities float64 [N, K] of logits [N, K] (numpy or torch) divided by ``temperature``."""
    z = _numpy(logits) / temperature
    return np.exp(z - logsumexp(z, axis=1, keepdims=True))


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy (nats) of ``softmax(logits / temperature)`` against integer ``labels`` [N]."""
    z, y = _numpy(logits) / temperature, _numpy(labels, np.int64)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T minimising the mean negative log-likelihood of ``softmax(logits / T)`` (Guo et al.
    2017, section 4.2): maximum likelihood of one scalar on held-out logits.

    Method: a bounded 1-D search (scipy's ``minimize_scalar(method="bounded")``, Brent's method) over log T in
    ``log(bounds)``, in float64. The NLL is convex in 1 / T (a log-sum-exp of linear functions of 1 / T minus
    a linear one), hence unimodal in log T, so the search finds the global minimum to 1e-6 in log T.

    When every track is classified right there is no maximum: the likelihood keeps rising as T -> 0, towards
    probabilities of exactly 1 for everything, which would make any "unknown" threshold useless. Such a
    held-out set (typically a small one) cannot tell how sure to be, so 1.0 (the raw softmax) is returned.
    With at least one wrong track the NLL grows without bound as T -> 0 and the minimum is finite; a model no
    better than chance gets a large T (near-uniform probabilities), which is the honest answer for it.

    Args:
        logits: float [N, K] (numpy or torch), e.g. window-averaged track logits of the val split.
        labels: int [N], class ids.
    Returns:
        T as a float in ``bounds``.
    Raises:
        ValueError: no tracks, shapes that do not match, or non-finite logits.
    """
    z, y = _numpy(logits), _numpy(labels, np.int64)
    if z.ndim != 2 or len(z) == 0 or len(y) != len(z):
        raise ValueError(f"fit_temperature needs logits [N, K] and labels [N] with N >= 1, got {z.shape} and "
                         f"{y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("fit_temperature: the logits hold NaN or infinite values")
    if (z.argmax(1) == y).all():
        return 1.0
    picked = z[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        inv = math.exp(-log_t)
        return float(np.mean(logsumexp(z * inv, axis=1) - picked * inv))

    low, high = math.log(bounds[0]), math.log(bounds[1])
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options=dict(xatol=1e-6))
    return float(math.exp(result.x))


def reliability_bins(probabilities, labels, bins: int = ECE_BINS) -> dict:
    """Predictions sorted into ``bins`` equal-width bins of their confidence (the top probability):
    bin b holds confidences in (b / bins, (b + 1) / bins] (Guo et al. 2017's code; the first bin also takes 0).

    Args: probabilities float [N, K] (rows sum to 1), labels int [N].
    Returns: dict of numpy arrays: ``edges`` [bins + 1], ``counts`` [bins] (int), ``accuracy`` and
    ``confidence`` [bins] (the fraction right and the mean confidence per bin; NaN for an empty bin).
    """
    p, y = _numpy(probabilities), _numpy(labels, np.int64)
    confidence, right = p.max(1), (p.argmax(1) == y).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, right, minlength=bins) / counts
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
    return dict(edges=np.linspace(0, 1, bins + 1), counts=counts, accuracy=accuracy, confidence=mean_confidence)


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (tracks in bin / N) * |accuracy(bin) - mean confidence(bin)| (Guo et al. 2017,
    eq. 3), with :func:`reliability_bins`' 15 equal-width bins. A fraction in [0, 1]; NaN for no tracks."""
    b = reliability_bins(probabilities, labels, bins)
    n = b["counts"].sum()
    if n == 0:
        return float("nan")
    full = b["counts"] > 0
    return float(np.sum(b["counts"][full] / n * np.abs(b["accuracy"][full] - b["confidence"][full])))


def fit_calibration(logits, labels, fitted_on: str = "val") -> dict:
    """The ``calibration`` record a checkpoint stores: ``{"temperature", "ece_before", "ece_after",
    "fitted_on", "tracks"}``, plus ``note`` when every track was right (T kept at 1.0, see
    :func:`fit_temperature`); the ECEs (fractions, 15 bins) are measured on the same tracks the temperature
    was fitted on (``logits`` [N, K], ``labels`` [N]: the val split's track logits). Raises as
    :func:`fit_temperature`."""
    temperature = fit_temperature(logits, labels)
    record = dict(temperature=temperature, ece_before=expected_calibration_error(softmax(logits), labels),
                  ece_after=expected_calibration_error(softmax(logits, temperature), labels),
                  fitted_on=fitted_on, tracks=int(len(labels)))
    if (_numpy(logits).argmax(1) == _numpy(labels, np.int64)).all():
        record["note"] = f"every {fitted_on} track is right: no finite maximum-likelihood temperature, kept 1.0"
    return record


def store_calibration(path, record: dict) -> None:
    """Add ``record`` (:func:`fit_calibration`) to the checkpoint at ``path`` as its ``calibration`` entry,
    written atomically (``save_checkpoint``); everything else in the file is kept. Raises as
    ``load_checkpoint`` / ``save_checkpoint``."""
    store_entry(path, "calibration", dict(record))


def temperature_of(meta: dict | None) -> float:
    """The temperature in a checkpoint's (or export.json's) ``calibration`` entry; 1.0 when it has none."""
    record = (meta or {}).get("calibration") or {}
    return float(record.get("temperature", 1.0))


@dataclass
class CalibrationReport:
    """What an evaluated split says about its probabilities, with the temperature of ``record`` (None: the
    checkpoint has none, T = 1).

    ``logits`` float [N, K] and ``labels`` int [N] are the split's track logits. ``split`` names it.
    """
    record: dict | None
    logits: np.ndarray
    labels: np.ndarray
    split: str

    @property
    def temperature(self) -> float:
        return temperature_of({"calibration": self.record})

    @cached_property
    def metrics(self) -> dict:
        """metrics.json entries of the split: ``calibration`` (temperature, where it was fitted and on how many
        tracks, ECE bins, ``ece_before``/``ece_after`` and ``nll_before``/``nll_after`` on this split) and
        ``selective`` (:func:`evaluation.selective.coverage_table` of the calibrated probabilities)."""
        t, record = self.temperature, self.record or {}
        calibration = dict(temperature=t, fitted_on=record.get("fitted_on"), fit_tracks=record.get("tracks"),
                           bins=ECE_BINS, ece_before=expected_calibration_error(softmax(self.logits), self.labels),
                           ece_after=expected_calibration_error(softmax(self.logits, t), self.labels),
                           nll_before=negative_log_likelihood(self.logits, self.labels),
                           nll_after=negative_log_likelihood(self.logits, self.labels, t))
        return dict(calibration=calibration, selective=coverage_table(softmax(self.logits, t), self.labels))

    def summary(self) -> dict:
        """SwanLab summary scalars: ``summary/temperature``, ``summary/<split>_ece_before`` and ``_after`` (%),
        and ``summary/<split>_acc_at_coverage<C>`` (% top-1 on the C% most confident tracks)."""
        m, split = self.metrics, self.split
        out = {"summary/temperature": m["calibration"]["temperature"],
               f"summary/{split}_ece_before": 100 * m["calibration"]["ece_before"],
               f"summary/{split}_ece_after": 100 * m["calibration"]["ece_after"]}
        for row in m["selective"]:
            out[f"summary/{split}_acc_at_coverage{round(100 * row['coverage'])}"] = 100 * row["top1"]
        return out

    def text(self) -> str:
        """Console lines: the temperature, ECE and NLL before/after on the split, the coverage table."""
        m = self.metrics
        c, record = m["calibration"], self.record
        fitted = (f"temperature {c['temperature']:.3f} fitted on {c['fit_tracks']} {c['fitted_on']} tracks "
                  f"(maximum likelihood, Guo et al. 2017)" if record else
                  "no temperature (the checkpoint has none): probabilities are the raw softmax")
        few = (f" ({record['note']})" if record and "note" in record else
               " (few tracks: a rough estimate)" if record and (c["fit_tracks"] or 0) < 50 else "")
        return (f"calibration: {fitted}{few}\n"
                f"{self.split} ECE ({ECE_BINS} bins) {100 * c['ece_before']:.1f}% raw -> {100 * c['ece_after']:.1f}% "
                f"calibrated; NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f}; top-1 unchanged\n"
                + coverage_text(m["selective"], self.split))

    def figure(self, title: str):
        """The reliability diagram, raw and calibrated side by side (:func:`plot_reliability`)."""
        return plot_reliability(self.logits, self.labels, self.temperature, title)

    def save_figure(self, folder, title: str):
        """Write ``reliability_<split>.png`` into ``folder``; returns (path, Figure): close the figure."""
        fig = self.figure(title)
        path = Path(folder) / f"reliability_{self.split}.png"
        fig.savefig(path)
        return path, fig


def calibration_report(record: dict | None, logits, labels, split: str) -> CalibrationReport:
    """:class:`CalibrationReport` of a split's track ``logits`` [N, K] and ``labels`` [N] (numpy or torch)."""
    return CalibrationReport(record, _numpy(logits), _numpy(labels, np.int64), split)


def plot_reliability(logits, labels, temperature: float, title: str, bins: int = ECE_BINS):
    """A matplotlib Figure: two reliability diagrams (Guo et al. 2017, fig. 1), the raw softmax (T = 1) and
    the calibrated one (``temperature``). Bars: accuracy per confidence bin; red hatching: the gap to the bin's
    mean confidence (above a bar: over-confident, inside it: under-confident); dashed: perfect calibration;
    numbers at the foot of the bars: tracks per bin. Titles give the ECE."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), dpi=110, sharey=True)
    width = 1 / bins
    for ax, t, name in ((axes[0], 1.0, "raw softmax"), (axes[1], temperature, f"calibrated, T = {temperature:.3f}")):
        probs = softmax(logits, t)
        b = reliability_bins(probs, labels, bins)
        full = b["counts"] > 0
        left = b["edges"][:-1][full]
        ax.bar(left, b["accuracy"][full], width=width, align="edge", color="tab:blue", edgecolor="black",
               label="accuracy")
        ax.bar(left, b["confidence"][full] - b["accuracy"][full], bottom=b["accuracy"][full], width=width,
               align="edge", fill=False, hatch="///", edgecolor="tab:red", linewidth=0.8, label="gap to confidence")
        for x, n, acc in zip(left, b["counts"][full], b["accuracy"][full]):
            ax.text(x + width / 2, 0.015, str(int(n)), ha="center", fontsize=6,
                    color="white" if acc > 0.05 else "black")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ece = expected_calibration_error(probs, labels, bins)
        ax.set_title(f"{name}\nECE {100 * ece:.1f}% ({bins} bins)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
    axes[0].set_ylabel("accuracy (numbers: tracks per bin)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
