"""Multi-label tagging metrics: mAP, mAUC, d', F1 at per-class thresholds tuned on val, bootstrap intervals,
the per-class table and the per-class AP chart.

Every metric is per track (window logits averaged, then the sigmoid), computed as AST, PSLA, PaSST and
EfficientAT compute them (DESIGN.md section 10):

* AP of a class: scikit-learn's ``average_precision_score`` (the area under the precision-recall curve as the
  sum over score thresholds of (R_n - R_{n-1}) P_n, no interpolation); **mAP** is the mean over the classes
  with at least one positive track (a class without positives has no AP).
* **mAUC**: the mean of scikit-learn's per-class ``roc_auc_score`` over the classes with positives and
  negatives; **d'** = sqrt(2) * Phi^-1(mAUC) (the sensitivity index of AST and PSLA: the distance between two
  unit-variance Gaussians whose ROC has that area).
* **micro-F1 / macro-F1** at per-class thresholds: a label is predicted when its probability reaches its
  class's threshold; each threshold is the F1-optimal one on the val split (:func:`tune_thresholds`), so on
  val itself F1 is optimistic. micro-F1 pools every (track, class) decision; macro-F1 is the mean of the
  per-class F1 over the classes with positives (as mAP).
* Intervals: the 95% percentile bootstrap over tracks (1000 resamples, seed 0), as ``evaluation.metrics`` does
  for top-1; :func:`bootstrap_map` computes the resampled APs without sorting again (a resample is the
  original order with multiplicities).

Accuracy is not reported for multi-label runs: with sparse labels a model that predicts nothing is right on
most (track, class) pairs (AST issue 128: "0.9 accuracy but 0.3-0.5 AP").
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, merge_metrics  # noqa: E402

NO_LABEL = "none"  # the answer when no label reaches its threshold
DEFAULT_THRESHOLD = 0.5  # the threshold of a class the val split cannot tune (no positive track there)


def _numpy(x, dtype=np.float64) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)


def sigmoid(logits) -> np.ndarray:
    """Probabilities float64 [N, K] of logits [N, K] (numpy or torch), each class on its own."""
    z = _numpy(logits)
    return np.exp(-np.logaddexp(0.0, -z))


def average_precisions(targets, scores) -> np.ndarray:
    """Per-class AP float64 [K] (scikit-learn's ``average_precision_score``); NaN for a class without a
    positive track. ``targets``: multi-hot [N, K]; ``scores``: [N, K] (probabilities or logits)."""
    y, s = _numpy(targets) > 0, _numpy(scores)
    return np.array([average_precision_score(y[:, k], s[:, k]) if y[:, k].any() else np.nan
                     for k in range(y.shape[1])])


def roc_aucs(targets, scores) -> np.ndarray:
    """Per-class ROC AUC float64 [K] (scikit-learn's ``roc_auc_score``); NaN for a class without positive or
    without negative tracks."""
    y, s = _numpy(targets) > 0, _numpy(scores)
    return np.array([roc_auc_score(y[:, k], s[:, k]) if 0 < y[:, k].sum() < len(y) else np.nan
                     for k in range(y.shape[1])])


def d_prime(auc: float) -> float:
    """Sensitivity index d' = sqrt(2) * Phi^-1(auc) (AST/PSLA's ``d_prime``); Phi^-1: scipy's ``norm.ppf``."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


def bootstrap_map(targets, scores, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                  confidence: float = CONFIDENCE) -> list[float]:
    """Percentile-bootstrap interval [low, high] of mAP, resampling tracks (``default_rng(seed)``; as
    ``evaluation.metrics.bootstrap_intervals``).

    Each resample draws N tracks with replacement and recomputes mAP over the classes with a positive among
    the drawn tracks. Method: per class the tracks are sorted once by score (descending); a resample is that
    order with each track weighted by how often it was drawn, so the precision-recall points (one per
    distinct score, ties together as in scikit-learn) come from weighted cumulative sums. With every weight 1
    this is exactly ``average_precision_score``. Returns [nan, nan] for no tracks.
    """
    y, s = _numpy(targets) > 0, _numpy(scores)
    n, k = y.shape
    if n == 0:
        return [float("nan")] * 2
    order = np.argsort(-s, axis=0, kind="stable").T  # [K, N]
    ys = np.take_along_axis(y.T, order, axis=1).astype(np.float64)
    ss = np.take_along_axis(s.T, order, axis=1)
    last = np.ones_like(ss, dtype=bool)  # the last track of each run of equal scores: a precision-recall point
    last[:, :-1] = ss[:, 1:] != ss[:, :-1]
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)[order]  # [K, N]
        tp, fp = np.cumsum(weights * ys, axis=1), np.cumsum(weights * (1 - ys), axis=1)
        positives = tp[:, -1]
        at_point = np.where(last, tp, 0.0)
        before = np.concatenate([np.zeros((k, 1)), np.maximum.accumulate(at_point, axis=1)[:, :-1]], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            ap = np.where(last, (tp - before) * precision, 0.0).sum(1) / positives
        values[b] = ap[positives > 0].mean() if (positives > 0).any() else np.nan
    q = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    return np.nanpercentile(values, q).tolist()


def tune_thresholds(targets, probabilities) -> np.ndarray:
    """The F1-optimal threshold of every class on held-out tracks: float64 [K].

    For class k, the candidate cuts are its tracks' distinct probabilities (scikit-learn's
    ``precision_recall_curve``): a track is predicted positive when its probability is >= the cut, and the cut
    with the highest F1 = 2PR / (P + R) wins (the lowest one among ties). The threshold is then placed half-way
    between that probability and the next lower one on these tracks (half of it below the lowest), which
    predicts these tracks exactly as the cut does but leaves none of them on the threshold, where a rounding
    difference (an exported network) would flip the answer. A class without a positive track keeps
    :data:`DEFAULT_THRESHOLD`.
    """
    y, p = _numpy(targets) > 0, _numpy(probabilities)
    out = np.full(y.shape[1], DEFAULT_THRESHOLD)
    for k in range(y.shape[1]):
        if not y[:, k].any():
            continue
        precision, recall, cuts = precision_recall_curve(y[:, k], p[:, k])
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        best = int(np.argmax(f1[:-1]))
        out[k] = (cuts[best] + (cuts[best - 1] if best else 0.0)) / 2
    return out


def threshold_record(targets, probabilities, label_names: list[str], fitted_on: str = "val") -> dict:
    """The ``thresholds`` entry a multi-label checkpoint stores: ``{"thresholds": [K floats in label order],
    "label_names", "fitted_on", "tracks", "untuned": [classes without a positive there], "rule"}``."""
    y = _numpy(targets) > 0
    return dict(thresholds=tune_thresholds(targets, probabilities).tolist(), label_names=list(label_names),
                fitted_on=fitted_on, tracks=int(len(y)),
                untuned=[n for n, hit in zip(label_names, y.any(0)) if not hit],
                rule=f"per class, the F1-optimal probability threshold on the {fitted_on} split "
                     f"({DEFAULT_THRESHOLD} for a class without a positive there)")


def predicted(probabilities, thresholds) -> np.ndarray:
    """bool [N, K]: probability >= its class's threshold."""
    return _numpy(probabilities) >= _numpy(thresholds)[None, :]


def multilabel_metrics(targets, probabilities, label_names: list[str], thresholds=None,
                       resamples: int = 0, seed: int = BOOTSTRAP_SEED) -> dict:
    """Track-level multi-label metrics.

    Args:
        targets: multi-hot [N, K]; probabilities: sigmoid outputs [N, K] (ranking metrics only need the order,
            so logits give the same mAP and mAUC).
        thresholds: [K] per-class thresholds (e.g. tuned on val); None: no F1.
        resamples: bootstrap resamples of the mAP interval (0: none).
    Returns:
        dict: ``n``, ``mAP``, ``mAUC``, ``d_prime``, ``classes_scored`` (classes with a positive), ``mAP_ci``
        ([low, high] or None), ``ci_method``; with thresholds ``micro_f1`` and ``macro_f1``; ``per_class``
        {name: {ap, auc, support, threshold, precision, recall, f1}} (None where undefined); ``report`` (the
        per-class table as text). mAP, mAUC, F1 are fractions.
    """
    y, p = _numpy(targets) > 0, _numpy(probabilities)
    ap, auc = average_precisions(y, p), roc_aucs(y, p)
    m_auc = _nanmean(auc)
    out = dict(n=int(len(y)), mAP=_nanmean(ap), mAUC=m_auc, d_prime=d_prime(m_auc) if not np.isnan(m_auc) else
               float("nan"), classes_scored=int(y.any(0).sum()), mAP_ci=None, ci_method=None)
    support = y.sum(0)
    rows = {n: dict(ap=None if np.isnan(a) else float(a), auc=None if np.isnan(c) else float(c), support=int(s))
            for n, a, c, s in zip(label_names, ap, auc, support)}
    if thresholds is not None:
        t = _numpy(thresholds)
        hit = predicted(p, t)
        scored = support > 0
        per_f1 = f1_score(y, hit, average=None, zero_division=0)
        out["micro_f1"] = float(f1_score(y, hit, average="micro", zero_division=0))
        out["macro_f1"] = float(per_f1[scored].mean()) if scored.any() else float("nan")
        tp = (hit & y).sum(0)
        for k, name in enumerate(label_names):
            rows[name] |= dict(threshold=float(t[k]), precision=float(tp[k] / max(hit[:, k].sum(), 1)),
                               recall=float(tp[k] / max(support[k], 1)), f1=float(per_f1[k]))
    out["per_class"] = rows
    if resamples > 0:
        out["mAP_ci"] = bootstrap_map(y, p, resamples, seed)
        out["ci_method"] = (f"{100 * CONFIDENCE:g}% percentile bootstrap over tracks, {resamples} resamples, "
                            f"seed {seed}")
    out["report"] = per_class_text(out, label_names)
    return out


def _cell(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def interval_text(metrics: dict) -> str:
    """``95% CI: mAP 0.712-0.801 (bootstrap over 300 tracks)``; "" without an interval."""
    if not metrics.get("mAP_ci"):
        return ""
    low, high = metrics["mAP_ci"]
    return f"{100 * CONFIDENCE:g}% CI: mAP {low:.3f}-{high:.3f} (bootstrap over {metrics['n']} tracks)"


def headline(metrics: dict) -> str:
    """``mAP 0.756, mAUC 0.912, d' 1.91, micro-F1 70.1%, macro-F1 68.3%`` (F1 only when measured)."""
    text = f"mAP {metrics['mAP']:.3f}, mAUC {metrics['mAUC']:.3f}, d' {metrics['d_prime']:.2f}"
    if "micro_f1" in metrics:
        text += f", micro-F1 {100 * metrics['micro_f1']:.1f}%, macro-F1 {100 * metrics['macro_f1']:.1f}%"
    return text


def per_class_text(metrics: dict, label_names: list[str]) -> str:
    """The per-class table (AP, AUC, support, threshold, precision, recall, F1) and the headline, as text."""
    width = max([len(n) for n in label_names] + [5])
    lines = [f"{'class':>{width}}  {'AP':>6}  {'AUC':>6}  {'support':>7}  {'thresh':>6}  {'prec':>6}  "
             f"{'recall':>6}  {'F1':>6}"]
    for name in label_names:
        r = metrics["per_class"][name]
        lines.append(f"{name:>{width}}  {_cell(r['ap'], '{:.3f}'):>6}  {_cell(r['auc'], '{:.3f}'):>6}  "
                     f"{r['support']:>7d}  {_cell(r.get('threshold'), '{:.3f}'):>6}  "
                     f"{_cell(r.get('precision'), '{:.3f}'):>6}  {_cell(r.get('recall'), '{:.3f}'):>6}  "
                     f"{_cell(r.get('f1'), '{:.3f}'):>6}")
    lines.append(f"\n{headline(metrics)} over {metrics['classes_scored']} of {len(label_names)} classes with a "
                 f"positive, {metrics['n']} tracks")
    if metrics.get("mAP_ci"):
        lines.append(interval_text(metrics))
    return "\n".join(lines) + "\n"


def plot_average_precision(metrics: dict, label_names: list[str], title: str):
    """A matplotlib Figure: one horizontal bar per class, its AP (sorted, best on top), the class's
    positive tracks and F1 (when measured) written beside it, the mAP as a dashed line."""
    rows = [(n, metrics["per_class"][n]) for n in label_names if metrics["per_class"][n]["ap"] is not None]
    rows.sort(key=lambda r: r[1]["ap"])
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.32 * len(rows) + 1.5)), dpi=110)
    ax.barh(range(len(rows)), [r["ap"] for _, r in rows], color="tab:blue")
    for i, (_, r) in enumerate(rows):
        note = f"{r['support']} pos" + (f", F1 {r['f1']:.2f}" if r.get("f1") is not None else "")
        ax.text(min(r["ap"] + 0.01, 0.82), i, note, va="center", fontsize=7)
    ax.axvline(metrics["mAP"], color="black", linestyle="--", linewidth=1, label=f"mAP {metrics['mAP']:.3f}")
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision (per class, tracks)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def save_multilabel_report(run_dir, split: str, metrics: dict, label_names: list[str], title: str,
                           extra: dict | None = None):
    """Write ``average_precision_<split>.png`` and merge ``metrics[split]`` into ``metrics.json`` (as
    ``evaluation.metrics.save_report`` does for the confusion matrix). Returns (png path, Figure)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fig = plot_average_precision(metrics, label_names, title)
    png = run_dir / f"average_precision_{split}.png"
    fig.savefig(png)
    merge_metrics(run_dir, split, metrics, label_names, extra)
    return png, fig
