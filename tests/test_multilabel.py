"""Multi-label tagging (issue 20): label cells, iterative stratification, the PSLA sampler weights, the loss and
every metric against its formula on hand-made arrays, and one tiny multi-label run used end to end (evaluate.py,
predict.py with the thresholds tuned on val, exports with parity, the demo's handler, the model card)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

import train
from conftest import swanlab_metrics, tiny_overrides
from data.dataset import class_balance_weights
from data.demo import _clip
from data.index import DataError
from data.labels import encode, label_names, resolve_task, split_cell
from data.splits import make_folds, make_splits
from data.stratify import iterative_folds
from evaluation import multilabel as ml
from experiment.engine import PendingSteps
from experiment.tasks import TASKS, task_of

KINDS = ("chirp", "hum", "pulses", "tone")


# ---------------------------------------------------------------- labels, stratification, sampler weights

def test_label_cells_tasks_and_targets():
    assert split_cell(" dog; rain;;dog") == ["dog", "rain"]
    assert resolve_task("auto", ["a", "b"]) == "single_label" and resolve_task("auto", ["a", "a;b"]) == "multilabel"
    assert resolve_task("single_label", ["a;b"]) == "single_label"
    with pytest.raises(ValueError, match="task='tags'"):
        resolve_task("tags", [])
    cells = ["rain;dog", "dog", "speech;rain"]
    names = label_names(cells, multilabel=True)
    assert names == ["dog", "rain", "speech"] and label_names(cells) == sorted(cells)  # single-label: whole cells
    assert encode(cells, names, True).tolist() == [[1, 1, 0], [1, 0, 0], [0, 1, 1]]
    assert encode(["b", "a"], ["a", "b"], False).dtype == np.int64
    assert task_of({}).name == "single_label" and task_of({"task": "multilabel"}).name == "multilabel"


def test_iterative_stratification_spreads_rare_labels_and_keeps_groups():
    rng = np.random.default_rng(0)
    n, folds = 200, 5
    labels = (rng.random((n, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.0]).astype(float)
    labels[:5, 5] = 1  # a label on 5 tracks: one per fold
    fold = iterative_folds(labels, range(n), folds, seed=1)
    assert sorted(fold[:5]) == list(range(folds))
    per_fold = np.stack([labels[fold == f].sum(0) for f in range(folds)])
    assert (np.abs(per_fold - labels.sum(0) / folds) <= 1.0 + 1e-9).all()  # every label within one track
    assert np.array_equal(fold, iterative_folds(labels, range(n), folds, seed=1))  # same seed, same folds
    groups = [f"g{i // 4}" for i in range(n)]  # 4 tracks per group
    grouped = iterative_folds(labels, groups, folds, seed=1)
    for g in set(groups):
        assert len({grouped[i] for i in range(n) if groups[i] == g}) == 1
    assert all(abs(c - 40) <= 8 for c in np.bincount(grouped, minlength=folds))  # within two groups of a fifth


def test_multilabel_splits_are_group_aware_and_tutorial_refuses_them():
    rows = [(f"/d/t{i:03d}.wav", ";".join(KINDS[j] for j in range(4) if (i >> j) & 1 or j == i % 4), f"s{i % 10}")
            for i in range(120)]
    df = pd.DataFrame(rows, columns=["path", "label", "group"])
    parts = make_splits(df, "stratified", 0.2, 0.1, 42, multilabel=True)
    assert sum(map(len, parts.values())) == 120
    assert not set(parts["train"].group) & (set(parts["val"].group) | set(parts["test"].group))
    assert all(set(label_names(p.label, True)) == set(KINDS) for p in parts.values())
    with pytest.raises(DataError, match="cannot split multi-label"):
        make_splits(df.drop(columns="group"), "tutorial", multilabel=True)


def test_psla_weights_sum_inverse_label_frequencies():
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    w = class_balance_weights(list(y))
    assert w == pytest.approx([1 / 3, 1 / 3 + 1, 1 / 3, 1.0, 1 / 3])  # the unlabelled clip: the smallest weight
    assert class_balance_weights([0, 0, 1]) == [0.5, 0.5, 1.0]  # class ids: as before


# ---------------------------------------------------------------- the loss and every metric against its formula

def test_loss_and_training_score():
    z = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.7, -2.0]])
    t_a, t_b = torch.tensor([[1.0, 0, 1], [0, 1, 0]]), torch.tensor([[0.0, 1, 0], [0, 1, 1]])
    lam, eps = 0.7, 0.1
    t = (lam * t_a + (1 - lam) * t_b) * (1 - eps) + eps / 2
    by_hand = -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()
    assert float(TASKS["multilabel"].loss(z, t_a, t_b, lam, eps)) == pytest.approx(float(by_hand), rel=1e-6)
    y_a, y_b = torch.tensor([0, 1]), torch.tensor([2, 1])
    single = lam * F.cross_entropy(z, y_a) + (1 - lam) * F.cross_entropy(z, y_b)
    assert float(TASKS["single_label"].loss(z, y_a, y_b, lam)) == float(single)
    pending = PendingSteps(1, TASKS["multilabel"])
    pending.add(0, z, torch.tensor(0.5), t_a)  # top-1: class 0 (a label of track 0), class 1 (a label of track 1)
    assert int(pending.steps[0][2]) == 2


def test_metrics_against_their_formulas():
    y = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 1]])
    p = np.array([[.9, .2, .1, .8], [.3, .7, .2, .1], [.6, .6, .3, .3], [.2, .1, .1, .7], [.4, .3, .1, .2],
                  [.5, .5, .4, .5]])
    aps = [average_precision_score(y[:, k], p[:, k]) for k in (0, 1, 3)]  # class 2: no positive, no AP
    aucs = [roc_auc_score(y[:, k], p[:, k]) for k in (0, 1, 3)]
    thresholds = np.array([0.5, 0.5, 0.5, 0.5])
    m = ml.multilabel_metrics(y, p, list("abcd"), thresholds, resamples=200)
    assert m["mAP"] == pytest.approx(np.mean(aps)) and m["classes_scored"] == 3
    assert np.isnan(ml.average_precisions(y, p)[2]) and m["per_class"]["c"]["ap"] is None
    assert m["mAUC"] == pytest.approx(np.mean(aucs))
    assert m["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(np.mean(aucs)))
    assert ml.d_prime(0.5) == 0.0 and ml.d_prime(norm.cdf(1 / math.sqrt(2))) == pytest.approx(1.0)
    hit = p >= thresholds
    tp, fp, fn = (hit & (y == 1)).sum(), (hit & (y == 0)).sum(), (~hit & (y == 1)).sum()
    assert m["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    per = [2 * (hit[:, k] & (y[:, k] == 1)).sum() / (hit[:, k].sum() + y[:, k].sum()) for k in (0, 1, 3)]
    assert m["macro_f1"] == pytest.approx(np.mean(per))
    low, high = m["mAP_ci"]
    assert 0 <= low <= m["mAP"] <= high <= 1
    assert ml.bootstrap_map(y, p, 200) == m["mAP_ci"]  # seeded: the same interval again


def test_thresholds_are_f1_optimal():
    y = np.array([[1], [1], [0], [1], [0], [0]])
    p = np.array([[.9], [.6], [.55], [.4], [.3], [.1]])
    # cuts: >= .9: F1 .5; >= .6: .8; >= .55: .667; >= .4: .857; >= .3: .75; >= .1: .667 -> between .4 and .3
    assert ml.tune_thresholds(y, p).tolist() == pytest.approx([0.35])
    assert ml.tune_thresholds([[1], [1], [0]], [[.2], [.4], [.9]]).tolist() == pytest.approx([0.1])  # all: below .2
    assert ml.tune_thresholds(np.zeros((3, 1)), np.ones((3, 1))).tolist() == [ml.DEFAULT_THRESHOLD]
    chosen = TASKS["multilabel"].chosen(torch.tensor([0.9, 0.45, 0.2]), list("abc"), {"thresholds": [.5, .4, .3]})
    assert chosen == [("a", pytest.approx(0.9)), ("b", pytest.approx(0.45))]
    assert TASKS["multilabel"].answer(torch.tensor([0.9, 0.45, 0.2]), list("abc"), {"thresholds": [.5, .4, .3]},
                                      min_confidence=0.5) == "a"  # a floor over the thresholds
    assert TASKS["multilabel"].answer(torch.tensor([0.1, 0.2, 0.2]), list("abc"), {"thresholds": [.5, .4, .3]}) \
        == ml.NO_LABEL


# ---------------------------------------------------------------- one tiny multi-label run, end to end

def write_mixtures(folder: Path, count: int = 40) -> Path:
    """``count`` 1 s 8 kHz mixtures of 1-2 demo sounds with a multi-label index.csv (path,label)."""
    rows, rng = [], np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        kinds = sorted(rng.choice(len(KINDS), size=1 + i % 2, replace=False))
        x = sum(_clip(KINDS[k], np.random.default_rng(100 * i + k), 8000, 1.0) for k in kinds) / len(kinds)
        sf.write(folder / "audio" / f"m{i:02d}.wav", x, 8000)
        rows.append(f"audio/m{i:02d}.wav,{';'.join(KINDS[k] for k in kinds)}")
    (folder / "index.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return folder / "index.csv"


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A 1-epoch multi-label run from a CSV alone: (summary, tmp folder, csv)."""
    tmp = tmp_path_factory.mktemp("tagger")
    csv = write_mixtures(tmp)
    args = [a for a in tiny_overrides(tmp, "", split="stratified", num_epochs=1, balanced_sampler=True)
            if not a.startswith(("--data_root", "--csv_path"))]
    return train.main([*args, f"--csv_path={csv}"]), tmp, csv


def test_a_multilabel_csv_trains_and_reports_map(tagger, one_thread):
    summary, tmp, csv = tagger
    run = Path(summary["run_dir"])
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == ["train/epoch", "train/loss", "train/precision_at_1", "val/loss", "val/mAP",
                                     "val/mAUC", "val/d_prime", "train/lr", "train/epoch_seconds",
                                     "train/clips_per_second", "data/skipped_clips"]
    state = torch.load(run / "best.pt", weights_only=True)
    assert state["config"]["task"] == "multilabel" and state["label_names"] == list(KINDS)
    assert state["best"]["val_mAP"] == history["val/mAP"].max() and "calibration" not in state
    record = state["thresholds"]
    assert len(record["thresholds"]) == 4 and record["fitted_on"] == "val" and record["label_names"] == list(KINDS)
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["task"] == "multilabel" and test["thresholds"] == record
    assert summary["summary/test_mAP"] == pytest.approx(100 * test["mAP"])
    assert test["mAP_ci"][0] <= test["mAP"] <= test["mAP_ci"][1]
    per_class = test["per_class"]
    assert [per_class[n]["threshold"] for n in KINDS] == pytest.approx(record["thresholds"])
    assert (run / "average_precision_test.png").stat().st_size > 0 and not (run / "confusion_matrix_test.png").exists()
    card = (run / "README.md").read_text()
    assert "multi-label" in card and "| split | mAP |" in card and "## Decision thresholds" in card
    logged = swanlab_metrics(tmp / "swanlog")["tiny"]
    assert [v for _, v in logged["val/mAP"]] == pytest.approx(history["val/mAP"].tolist())
    assert {"val/mAUC", "val/d_prime", "summary/test_mAP"} <= set(logged)


def test_evaluate_and_predict_reuse_the_thresholds_tuned_on_val(tagger, capsys, one_thread):
    import evaluate
    import predict
    from evaluation.classifier import Classifier
    summary, tmp, csv = tagger
    run = Path(summary["run_dir"])
    out = evaluate.main([str(run), "--split=test", "--errors", str(tmp / "errors.csv")])
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert out["metrics"]["mAP"] == pytest.approx(saved["mAP"]) and out["metrics"]["micro_f1"] == saved["micro_f1"]
    clf = Classifier.from_checkpoint(run, "cpu")
    thresholds = clf.thresholds["thresholds"]
    files = sorted(str(p) for p in (tmp / "audio").glob("*.wav"))[:6]
    capsys.readouterr()
    assert predict.main([str(run), *files, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "multilabel" and list(doc["thresholds"].values()) == pytest.approx(thresholds)
    for entry, path in zip(doc["predictions"], files):
        probabilities = clf.classify(path).probabilities.tolist()
        expected = [n for n, q, t in zip(KINDS, probabilities, thresholds) if q >= t]
        assert sorted(x["label"] for x in entry["labels"]) == expected
        assert entry["label"] == (";".join(x["label"] for x in entry["labels"]) or ml.NO_LABEL)
        assert [x["label"] for x in entry["top_k"]] == [KINDS[i] for i in np.argsort(probabilities)[::-1][:3]]


def test_exports_and_the_demo_answer_as_the_checkpoint(tagger, one_thread):
    import app
    import export
    from gradio.utils import get_upload_folder
    from evaluation.classifier import Classifier
    summary, tmp, csv = tagger
    run = Path(summary["run_dir"])
    clf = Classifier.from_checkpoint(run, "cpu")
    clip = tmp / "audio" / "m01.wav"
    for fmt in ("onnx", "torchscript"):
        assert export.main([str(run), "--format", fmt]) == 0
        spec = json.loads((run / f"export_{fmt}" / "export.json").read_text())
        assert spec["task"] == "multilabel" and spec["thresholds"] == clf.thresholds
        exported = Classifier.from_export(run / f"export_{fmt}", "cpu")
        assert exported.predict(clip) == [(n, pytest.approx(p, abs=1e-5)) for n, p in clf.predict(clip)]
    upload = Path(get_upload_folder())
    upload.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, upload / "tagger_m01.wav")
    probabilities, *_, details, status = app.classify_upload(clf, str(upload / "tagger_m01.wav"), 50, 10, str(upload))
    assert probabilities == pytest.approx(dict(zip(KINDS, clf.classify(clip).probabilities.tolist())))
    assert [d["label"] for d in details["labels"]] == [n for n, _ in clf.predict(clip) if n != ml.NO_LABEL]
    assert details["thresholds"] == dict(zip(KINDS, clf.thresholds["thresholds"]))
    assert "threshold" in status
