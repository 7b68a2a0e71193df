"""Metrics from scikit-learn, the confusion-matrix picture (matplotlib) and ``metrics.json``."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score  # noqa: E402

from experiment.checkpoint import write_atomic  # noqa: E402


# Bootstrap settings of every reported interval (classification_metrics): fixed, so reruns agree.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def bootstrap_intervals(y_true, y_pred, num_classes: int, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict[str, list[float]]:
    """Percentile-bootstrap confidence intervals of top-1 accuracy and macro-F1, resampling tracks.

    Method: ``resamples`` times, draw n tracks with replacement from the n evaluated ones (numpy's
    ``default_rng(seed)``: the same inputs and seed give the same interval), and recompute top-1 and macro-F1
    (the mean over all ``num_classes`` classes of F1 = 2 TP / (true + predicted), 0 when a class has neither:
    scikit-learn's ``zero_division=0``, as in :func:`classification_metrics`). The interval is the
    (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled values (the percentile bootstrap,
    Efron & Tibshirani 1993, ch. 13). The track is the unit resampled: the windows of one track are not
    independent. Why: a test set of 100 tracks at 80% top-1 has a binomial standard error of
    sqrt(0.8 * 0.2 / 100) = 4.0 points (2.3 for 290 tracks; DESIGN.md section 7), so one number hides about
    +-8 points; for top-1 this interval is close to the binomial 0.8 +- 1.96 * 0.04.

    Args: integer class ids (sequences of equal length n).
    Returns: ``{"top1_ci": [lo, hi], "macro_f1_ci": [lo, hi]}`` as fractions; ``[nan, nan]`` when n is 0.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n, k = len(y_true), num_classes
    if n == 0:
        return dict(top1_ci=[float("nan")] * 2, macro_f1_ci=[float("nan")] * 2)
    rng = np.random.default_rng(seed)
    top1, macro_f1 = np.empty(resamples), np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # resamples per step: bounds memory for large test sets
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        pick = rng.integers(0, n, size=(b, n))
        t, p = y_true[pick], y_pred[pick]
        hit = t == p
        offset = np.arange(b)[:, None] * k  # one block of k counters per resample

        def counts(ids):
            return np.bincount(ids, minlength=b * k).reshape(b, k)
        tp, support = counts((offset + t)[hit]), counts((offset + t).ravel()) + counts((offset + p).ravel())
        top1[start:start + b] = hit.mean(1)
        macro_f1[start:start + b] = (2 * tp / np.maximum(support, 1)).mean(1)
    q = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    return dict(top1_ci=np.percentile(top1, q).tolist(), macro_f1_ci=np.percentile(macro_f1, q).tolist())


def interval_text(metrics: dict) -> str:
    """``95% CI: top-1 72.0-88.0%, macro-F1 70.9-87.3% (bootstrap over 100 tracks)`` from
    :func:`classification_metrics`' dict, for console lines; "" when it has no intervals."""
    if not metrics.get("top1_ci"):
        return ""
    (a, b), (c, d) = metrics["top1_ci"], metrics["macro_f1_ci"]
    return (f"{100 * CONFIDENCE:g}% CI: top-1 {100 * a:.1f}-{100 * b:.1f}%, macro-F1 {100 * c:.1f}-{100 * d:.1f}% "
            f"(bootstrap over {metrics['n']} tracks)")


def classification_metrics(y_true, y_pred, label_names: list[str], resamples: int = BOOTSTRAP_RESAMPLES,
                           seed: int = BOOTSTRAP_SEED) -> dict:
    """Top-1 accuracy, macro-F1 with their 95% bootstrap intervals, per-class precision/recall/F1 and the
    confusion matrix.

    Args: integer class ids (sequences of equal length); ``label_names[i]`` names class i. ``resamples`` and
    ``seed``: of :func:`bootstrap_intervals` (0 resamples: no intervals).
    Returns: dict with ``top1`` and ``macro_f1`` (fractions in [0, 1]), ``top1_ci`` and ``macro_f1_ci``
    ([low, high] fractions, None without resamples), ``ci_method`` (how they were computed), ``per_class``
    (scikit-learn's ``classification_report`` as a dict), ``report`` (its text, plus a line with the intervals),
    ``confusion`` (list of rows: true class, columns: predicted class) and ``n`` (number of tracks).
    """
    labels = list(range(len(label_names)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    kw = dict(labels=labels, target_names=label_names, zero_division=0)
    out = dict(
        n=int(len(y_true)),
        top1=float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        per_class=classification_report(y_true, y_pred, output_dict=True, **kw),
        report=classification_report(y_true, y_pred, digits=3, **kw),
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        top1_ci=None, macro_f1_ci=None, ci_method=None,
    )
    if resamples > 0:
        out.update(bootstrap_intervals(y_true, y_pred, len(label_names), resamples, seed),
                   ci_method=f"{100 * CONFIDENCE:g}% percentile bootstrap over tracks, {resamples} resamples, "
                             f"seed {seed}")
        out["report"] += f"\n{interval_text(out)}\n"
    return out


def plot_confusion_matrix(confusion, label_names: list[str], title: str):
    """A matplotlib Figure: counts in each cell, rows normalised for the colour, class names on both axes."""
    cm = np.asarray(confusion)
    k = len(label_names)
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                        color="white" if rate[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return fig


def save_report(run_dir, split: str, metrics: dict, label_names: list[str], title: str, extra: dict | None = None):
    """Write ``confusion_matrix_<split>.png`` and merge ``metrics[split]`` into ``metrics.json``.

    Returns (png path, the matplotlib Figure); close the figure when done.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fig = plot_confusion_matrix(metrics["confusion"], label_names, title)
    png = run_dir / f"confusion_matrix_{split}.png"
    fig.savefig(png)
    merge_metrics(run_dir, split, metrics, label_names, extra)
    return png, fig


def merge_metrics(run_dir: Path, split: str, metrics: dict, label_names: list[str], extra: dict | None = None) -> None:
    """Set ``metrics.json``'s ``split`` entry in ``run_dir`` to ``metrics`` (without the text ``report``), the
    label names and ``extra``, keeping the other splits' entries; written atomically. An unreadable or missing
    file starts empty."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[split] = {k: v for k, v in metrics.items() if k != "report"} | {"label_names": label_names} | (extra or {})
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def close(fig) -> None:
    plt.close(fig)
