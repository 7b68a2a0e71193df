"""Tasks: what a run learns and how it is judged. One :data:`TASKS` entry per task; train.py, evaluate.py, the
Classifier (predict.py, the demo, exports) and the model card ask the run's entry instead of branching.

* ``single_label``: one class per track. Targets are class ids (long [B]); the loss is cross-entropy (with
  ``label_smoothing``; mixup mixes the two losses, ``lam * CE(y_a) + (1 - lam) * CE(y_b)``, which equals the
  cross-entropy of the blended targets); the training score is top-1; validation gives top-1 and macro-F1 and
  best.pt is chosen on ``val/acc``; the final report is the confusion matrix with bootstrap intervals on top-1
  and macro-F1, and the decision rule fitted on val is the softmax temperature (``calibration``,
  :mod:`evaluation.calibration`); prediction is the softmax of logits / T, top-k, ``unknown`` below
  ``min_confidence``.
* ``multilabel``: any number of labels per track (``;`` in the index's label cells, ``data.labels``).
  Targets are multi-hot float [B, K]; the loss is ``BCEWithLogitsLoss`` on the mixup-blended targets
  ``lam * t_a + (1 - lam) * t_b`` (``label_smoothing`` e moves each target to t (1 - e) + e / 2, the
  two-class case of Szegedy et al.'s smoothing); the training score is precision at 1 (the top-scored class is
  one of the clip's labels); validation gives mAP, mAUC and d' (:mod:`evaluation.multilabel`) and best.pt is
  chosen on ``val/mAP``; the final report is the per-class table (AP, support, threshold, F1) and AP chart
  with a bootstrap interval on mAP, and the decision rule fitted on val is one F1-optimal probability
  threshold per class (``thresholds``); prediction is the sigmoid of the logits and every label at or above
  its threshold (and ``min_confidence``, a floor over all classes), ``none`` when no label reaches it.
  Temperature scaling is a softmax method (one temperature for competing classes) and is not applied: the
  sigmoid probabilities are reported as they are, and the thresholds are the calibrated decision.

:attr:`Task.selection` is the history key a run maximises (best.pt, early stopping), exposed so that a sweep
can maximise the same metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.labels import SEPARATOR, resolve_task
from evaluation import track_loss
from evaluation import multilabel as ml
from evaluation.calibration import calibration_report, fit_calibration
from evaluation.metrics import classification_metrics, interval_text, plot_confusion_matrix, save_report
from evaluation.selective import UNKNOWN, answer


@dataclass
class ThresholdReport:
    """What a multi-label split says about its decision rule (the counterpart of
    ``evaluation.calibration.CalibrationReport``): the per-class thresholds of ``record`` (fitted on val)."""
    record: dict | None
    split: str

    @property
    def metrics(self) -> dict:
        """metrics.json entries: ``thresholds`` (the record)."""
        return dict(thresholds=self.record)

    def summary(self) -> dict:
        return {}

    def text(self) -> str:
        r = self.record
        if not r:
            return (f"decision: no thresholds (the checkpoint has none): every label is answered at or above "
                    f"{ml.DEFAULT_THRESHOLD}; F1 is not measured")
        untuned = f"; {len(r['untuned'])} class(es) without a positive there keep {ml.DEFAULT_THRESHOLD}" \
            if r["untuned"] else ""
        return (f"decision: per-class thresholds, each F1-optimal on the {r['tracks']} {r['fitted_on']} tracks"
                f"{untuned}; a label is answered when its sigmoid probability reaches its threshold (no "
                f"temperature: softmax calibration does not apply to independent labels)")

    def save_figure(self, folder, title: str):
        """No figure (the per-class table holds the thresholds): (None, None)."""
        return None, None


class Task:
    """One entry of :data:`TASKS`; see the module docstring. Tensors: logits float [B, K]; targets long [B]
    (single_label) or float [B, K] multi-hot (multilabel)."""
    name = ""
    selection = ""       # history key maximised to choose best.pt (and by early stopping, and a sweep)
    selection_words = ""  # how messages name it
    best_key = ""        # its key in the checkpoint's ``best`` dict
    train_metric = ""    # history key of the training clips' score (%)
    train_words = ""     # how the console line names it
    decision_key = ""    # checkpoint entry of the decision rule fitted on val
    figure_name = ""     # the per-split figure: <figure_name>_<split>.png and SwanLab <split>/<figure_name>

    def loss(self, logits, y_a, y_b, lam: float, label_smoothing: float = 0.0) -> torch.Tensor:
        raise NotImplementedError

    def hits(self, logits, y) -> torch.Tensor:
        """How many clips of the batch the training score counts as right (a 0-dim tensor, not synced)."""
        raise NotImplementedError

    def track_loss(self, logits, targets) -> float:
        raise NotImplementedError

    def metrics(self, logits, targets, label_names, resamples: int = 0, record: dict | None = None) -> dict:
        """Track-level metrics of logits [N, K] against targets; ``record``: the decision rule (thresholds)."""
        raise NotImplementedError

    def scalars(self, metrics: dict, prefix: str) -> dict:
        """History / SwanLab scalars of a split's metrics, in % (``<prefix>/...``), in their column order."""
        raise NotImplementedError

    def scalars_text(self, scalars: dict, prefix: str) -> str:
        """The console line's fragment for :meth:`scalars`."""
        raise NotImplementedError

    def summary(self, metrics: dict, split: str) -> dict:
        """SwanLab summary scalars of the final split (%), with the bootstrap interval's ends."""
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        raise NotImplementedError

    def interval_text(self, metrics: dict) -> str:
        raise NotImplementedError

    def figure(self, metrics: dict, label_names, title: str):
        raise NotImplementedError

    def save_report(self, run_dir, split: str, metrics: dict, label_names, title: str, extra: dict | None = None):
        """Write the split's figure and its ``metrics.json`` entry; returns (png path, Figure)."""
        raise NotImplementedError

    def fit_decision(self, logits, targets, label_names, fitted_on: str = "val") -> dict:
        """The decision rule a checkpoint stores under :attr:`decision_key`, fitted on held-out tracks."""
        raise NotImplementedError

    def decision_report(self, record: dict | None, logits, targets, label_names, split: str):
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def chosen(self, probabilities, label_names, record: dict | None, min_confidence: float = 0.0
               ) -> list[tuple[str, float]]:
        """The answer as (label, probability) pairs, most probable first; [] when the model answers nothing
        (``unknown`` / ``none``). ``probabilities``: float [K]."""
        raise NotImplementedError

    def answer(self, probabilities, label_names, record: dict | None, min_confidence: float = 0.0) -> str:
        """The answer as one string: the label(s) of :meth:`chosen` joined with ``;``, or the no-answer word."""
        raise NotImplementedError

    def describe(self, target, label_names) -> str:
        """A training example's label(s) as text (the example-input figure)."""
        raise NotImplementedError


class SingleLabel(Task):
    name = "single_label"
    selection, selection_words, best_key = "val/acc", "val top-1", "val_acc"
    train_metric, train_words, decision_key, figure_name = "train/acc", "acc", "calibration", "confusion_matrix"

    def loss(self, logits, y_a, y_b, lam, label_smoothing=0.0):
        return (lam * F.cross_entropy(logits, y_a, label_smoothing=label_smoothing)
                + (1 - lam) * F.cross_entropy(logits, y_b, label_smoothing=label_smoothing))

    def hits(self, logits, y):
        return (logits.argmax(1) == y).sum()

    def track_loss(self, logits, targets):
        return track_loss(logits, targets)

    def metrics(self, logits, targets, label_names, resamples=0, record=None):
        return classification_metrics(np.asarray(targets), np.asarray(logits.argmax(1)), label_names, resamples)

    def scalars(self, metrics, prefix):
        return {f"{prefix}/acc": 100 * metrics["top1"], f"{prefix}/macro_f1": 100 * metrics["macro_f1"]}

    def scalars_text(self, scalars, prefix):
        return f"acc {scalars[f'{prefix}/acc']:5.1f}% F1 {scalars[f'{prefix}/macro_f1']:5.1f}%"

    def summary(self, metrics, split):
        out = {f"summary/{split}_acc": 100 * metrics["top1"], f"summary/{split}_macro_f1": 100 * metrics["macro_f1"]}
        if metrics.get("top1_ci"):
            (a, b), (c, d) = metrics["top1_ci"], metrics["macro_f1_ci"]
            out |= {f"summary/{split}_acc_ci_low": 100 * a, f"summary/{split}_acc_ci_high": 100 * b,
                    f"summary/{split}_macro_f1_ci_low": 100 * c, f"summary/{split}_macro_f1_ci_high": 100 * d}
        return out

    def headline(self, metrics):
        return f"top-1 {100 * metrics['top1']:.1f}%, macro-F1 {100 * metrics['macro_f1']:.1f}%"

    def interval_text(self, metrics):
        return interval_text(metrics)

    def figure(self, metrics, label_names, title):
        return plot_confusion_matrix(metrics["confusion"], label_names, title)

    def save_report(self, run_dir, split, metrics, label_names, title, extra=None):
        return save_report(run_dir, split, metrics, label_names, title, extra)

    def fit_decision(self, logits, targets, label_names, fitted_on="val"):
        return fit_calibration(logits, targets, fitted_on)

    def decision_report(self, record, logits, targets, label_names, split):
        return calibration_report(record, logits, targets, split)

    def probabilities(self, logits, temperature=1.0):
        return (logits.float() / temperature).softmax(-1)

    def chosen(self, probabilities, label_names, record, min_confidence=0.0):
        said = answer(probabilities, label_names, min_confidence)
        return [] if said == UNKNOWN else [(said, float(torch.as_tensor(probabilities).max()))]

    def answer(self, probabilities, label_names, record, min_confidence=0.0):
        return answer(probabilities, label_names, min_confidence)

    def describe(self, target, label_names):
        return label_names[int(target)]


class MultiLabel(Task):
    name = "multilabel"
    selection, selection_words, best_key = "val/mAP", "val mAP", "val_mAP"
    train_metric, train_words = "train/precision_at_1", "p@1"
    decision_key, figure_name = "thresholds", "average_precision"

    def loss(self, logits, y_a, y_b, lam, label_smoothing=0.0):
        target = lam * y_a.float() + (1 - lam) * y_b.float()
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target)

    def hits(self, logits, y):
        return (y.gather(1, logits.argmax(1, keepdim=True)) > 0.5).sum()

    def track_loss(self, logits, targets):
        return float(F.binary_cross_entropy_with_logits(logits, targets.float())) if len(targets) else float("nan")

    def metrics(self, logits, targets, label_names, resamples=0, record=None):
        thresholds = record["thresholds"] if record else None
        return ml.multilabel_metrics(targets, ml.sigmoid(logits), label_names, thresholds, resamples)

    def scalars(self, metrics, prefix):
        out = {f"{prefix}/mAP": 100 * metrics["mAP"], f"{prefix}/mAUC": 100 * metrics["mAUC"],
               f"{prefix}/d_prime": metrics["d_prime"]}
        if "micro_f1" in metrics:
            out |= {f"{prefix}/micro_f1": 100 * metrics["micro_f1"], f"{prefix}/macro_f1": 100 * metrics["macro_f1"]}
        return out

    def scalars_text(self, scalars, prefix):
        return (f"mAP {scalars[f'{prefix}/mAP']:5.1f}% mAUC {scalars[f'{prefix}/mAUC']:5.1f}% "
                f"d' {scalars[f'{prefix}/d_prime']:.2f}")

    def summary(self, metrics, split):
        out = {f"summary/{split}_{k}": v for k, v in
               {k.split("/", 1)[1]: v for k, v in self.scalars(metrics, split).items()}.items()}
        if metrics.get("mAP_ci"):
            low, high = metrics["mAP_ci"]
            out |= {f"summary/{split}_mAP_ci_low": 100 * low, f"summary/{split}_mAP_ci_high": 100 * high}
        return out

    def headline(self, metrics):
        return ml.headline(metrics)

    def interval_text(self, metrics):
        return ml.interval_text(metrics)

    def figure(self, metrics, label_names, title):
        return ml.plot_average_precision(metrics, label_names, title)

    def save_report(self, run_dir, split, metrics, label_names, title, extra=None):
        return ml.save_multilabel_report(run_dir, split, metrics, label_names, title, extra)

    def fit_decision(self, logits, targets, label_names, fitted_on="val"):
        return ml.threshold_record(targets, ml.sigmoid(logits), label_names, fitted_on)

    def decision_report(self, record, logits, targets, label_names, split):
        return ThresholdReport(record, split)

    def probabilities(self, logits, temperature=1.0):
        return logits.float().sigmoid()

    def chosen(self, probabilities, label_names, record, min_confidence=0.0):
        p = torch.as_tensor(probabilities, dtype=torch.float64)
        thresholds = torch.as_tensor(record["thresholds"] if record else [ml.DEFAULT_THRESHOLD] * len(p),
                                     dtype=torch.float64)
        above = (p >= thresholds.clamp(min=min_confidence)).nonzero().flatten().tolist()
        return sorted(((label_names[i], float(p[i])) for i in above), key=lambda pair: -pair[1])

    def answer(self, probabilities, label_names, record, min_confidence=0.0):
        chosen = self.chosen(probabilities, label_names, record, min_confidence)
        return ";".join(name for name, _ in chosen) if chosen else ml.NO_LABEL

    def describe(self, target, label_names):
        return SEPARATOR.join(n for n, t in zip(label_names, target) if t > 0.5) or ml.NO_LABEL


TASKS: dict[str, Task] = {"single_label": SingleLabel(), "multilabel": MultiLabel()}


def get_task(name: str) -> Task:
    """The :data:`TASKS` entry ``name``. Raises ValueError naming the choices for an unknown one."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def task_of(config: dict) -> Task:
    """The task a checkpoint's (or export's) training config ran: its ``task`` key, written resolved by
    train.py; configs older than tasks (no key) and an unresolved ``auto`` are single_label."""
    name = config.get("task", "single_label")
    return get_task(resolve_task(name, ()) if name == "auto" else name)
