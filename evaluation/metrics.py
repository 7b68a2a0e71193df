"""Metrics from scikit-learn, the confusion-matrix picture (matplotlib) and ``metrics.json``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score  # noqa: E402


def classification_metrics(y_true, y_pred, label_names: list[str]) -> dict:
    """Top-1 accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Args: integer class ids (sequences of equal length); ``label_names[i]`` names class i.
    Returns: dict with ``top1`` and ``macro_f1`` (fractions in [0, 1]), ``per_class`` (scikit-learn's
    ``classification_report`` as a dict), ``report`` (its text), ``confusion`` (list of rows: true class,
    columns: predicted class) and ``n`` (number of tracks).
    """
    labels = list(range(len(label_names)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    kw = dict(labels=labels, target_names=label_names, zero_division=0)
    return dict(
        n=int(len(y_true)),
        top1=float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        per_class=classification_report(y_true, y_pred, output_dict=True, **kw),
        report=classification_report(y_true, y_pred, digits=3, **kw),
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


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
    path = run_dir / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[split] = {k: v for k, v in metrics.items() if k != "report"} | {"label_names": label_names} | (extra or {})
    tmp = path.with_name(f".metrics.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return png, fig


def close(fig) -> None:
    plt.close(fig)
