"""train.py with groups, k-fold cross-validation and intervals: ``--folds=3`` gives three fold runs and a summary
of their reports, a re-run skips finished folds and resumes unfinished ones, ``--fold=i`` runs one fold that a
later gather refuses until every fold exists, a fold resumes on its own, the final report's bootstrap intervals
reach metrics.json and SwanLab, groups are recorded (metrics.json, checkpoint) and never shared between parts,
and every run writes its model card."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import train
from conftest import make_tree, swanlab_metrics, tiny_overrides
from evaluation import cross_validation
from evaluation.cross_validation import CrossValidationError
from experiment.checkpoint import load_checkpoint
from experiment.config import ConfigError

GROUPED = r"_\d(\d)\.wav$"  # <class>_0N.wav: group N holds one clip of every class


def fold_args(tmp, root, **extra) -> list[str]:
    """One-epoch tiny runs with 6 groups of 3 clips, folds written under ``tmp/runs``."""
    return tiny_overrides(tmp, root, num_epochs=1, group_pattern=GROUPED, folds=3, **extra)


def report(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, one_thread_module):
    """``--folds=3`` once: (summary, tmp folder, tree, the three fold folders, the (name, group) of every
    swanlab.init call)."""
    import swanlab
    tmp = tmp_path_factory.mktemp("cv")
    root = make_tree(tmp / "audio")
    init, started = swanlab.init, []

    def recording_init(**kwargs):
        started.append((kwargs["name"], kwargs.get("group")))
        return init(**kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(swanlab, "init", recording_init)
        summary = train.main(fold_args(tmp, root, experiment_name="cv"))
    return summary, tmp, root, [tmp / "runs" / "cv" / f"fold{i}" for i in range(3)], started


@pytest.fixture(scope="module")
def one_thread_module():
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_three_folds_give_three_runs_and_a_summary_of_their_reports(cv_run):
    summary, tmp, _, folds, started = cv_run
    assert started == [(f"cv-fold{i}", "cv") for i in range(3)]  # one SwanLab experiment per fold, one group
    reports = [report(d) for d in folds]
    assert [r["fold"] for r in reports] == [0, 1, 2] and {r["folds"] for r in reports} == {3}
    saved = json.loads((tmp / "runs" / "cv" / "cv_summary.json").read_text())
    assert saved["top1_mean"] == pytest.approx(np.mean([r["top1"] for r in reports]))
    assert saved["macro_f1_mean"] == pytest.approx(np.mean([r["macro_f1"] for r in reports]))
    assert saved["top1_std"] == pytest.approx(np.std([r["top1"] for r in reports], ddof=1))
    assert summary["top1_mean"] == saved["top1_mean"] and summary["run_dir"] == str(tmp / "runs" / "cv")
    assert saved["n"] == 18 and np.sum(saved["pooled_confusion"]) == 18  # every clip tested exactly once
    assert (tmp / "runs" / "cv" / "confusion_matrix_cv.png").stat().st_size > 0
    tested = [t for r in reports for t in r["splits"]["test"]["tracks"]]
    assert len(tested) == len(set(tested)) == 18


def test_folds_record_their_groups_with_none_shared_between_parts(cv_run):
    _, _, _, folds, _ = cv_run
    for run_dir in folds:
        entry = report(run_dir)
        parts = entry["splits"]
        assert set(parts) == {"train", "val", "test"} and entry["group_source"]
        groups = [set(parts[p]["groups"]) for p in parts]
        assert all(groups) and sum(map(len, groups)) == len(set().union(*groups)) == 6
        assert all(parts[p]["class_counts"] == {c: len(parts[p]["groups"]) for c in ("chirp", "pulses", "tone")}
                   for p in parts)
        assert load_checkpoint(run_dir / "best.pt")["split_record"] == parts


def test_the_final_report_carries_intervals_to_metrics_json_and_swanlab(cv_run):
    _, tmp, _, folds, _ = cv_run
    logged = swanlab_metrics(tmp / "swanlog")
    for i, run_dir in enumerate(folds):
        entry = report(run_dir)
        (lo, hi), (flo, fhi) = entry["top1_ci"], entry["macro_f1_ci"]
        assert 0 <= lo <= entry["top1"] <= hi <= 1 and 0 <= flo <= fhi <= 1 and "bootstrap" in entry["ci_method"]
        keys = logged[f"cv-fold{i}"]
        assert keys["summary/test_acc_ci_low"][-1][1] == pytest.approx(100 * lo)
        assert keys["summary/test_acc_ci_high"][-1][1] == pytest.approx(100 * hi)
        assert keys["summary/test_macro_f1_ci_low"][-1][1] == pytest.approx(100 * flo)
        assert keys["summary/test_macro_f1_ci_high"][-1][1] == pytest.approx(100 * fhi)


def test_every_fold_run_writes_its_model_card(cv_run):
    _, _, _, folds, _ = cv_run
    for run_dir in folds:
        card = (run_dir / "README.md").read_text()
        assert f"{100 * report(run_dir)['top1']:.1f}" in card
        assert f"- Fold {run_dir.name[-1]} of 3-fold cross-validation" in card
        assert "- Groups from file names matched by" in card and "none in two splits" in card


def test_a_rerun_skips_finished_folds_and_resumes_an_unfinished_one(cv_run, tmp_path, capsys):
    _, tmp, root, _, _ = cv_run
    shutil.copytree(tmp / "runs" / "cv", tmp_path / "runs" / "cv")
    folds = [tmp_path / "runs" / "cv" / f"fold{i}" for i in range(3)]
    (folds[2] / "metrics.json").unlink()  # fold 2 stopped after its last checkpoint, before its report
    before = (folds[0] / "metrics.json").stat().st_mtime_ns
    summary = train.main(tiny_overrides(tmp_path, root, num_epochs=1, group_pattern=GROUPED, folds=3,
                                        experiment_name="cv", cache_dir=tmp / "cache"))
    assert (folds[0] / "metrics.json").stat().st_mtime_ns == before
    assert "fold 0: finished earlier" in capsys.readouterr().out
    assert report(folds[2])["fold"] == 2 and len((folds[2] / "history.csv").read_text().splitlines()) == 2
    assert summary["top1_mean"] == pytest.approx(np.mean([report(d)["top1"] for d in folds]))


def test_one_fold_alone_resumes_and_is_gathered_once_every_fold_exists(cv_run, tmp_path):
    _, tmp, root, cv_folds, _ = cv_run
    with pytest.raises(ConfigError, match="experiment_name"):
        train.main(fold_args(tmp_path, root, fold=1, experiment_name=""))
    train.main(fold_args(tmp_path, root, fold=1, experiment_name="single", cache_dir=tmp / "cache"))
    parent = tmp_path / "runs" / "single"
    assert sorted(p.name for p in parent.iterdir()) == ["fold1"]
    with pytest.raises(CrossValidationError, match=r"fold\(s\) \[0, 2\] of the 3-fold"):
        cross_validation.main([str(parent)])

    with pytest.raises(ConfigError, match="cannot change \\['fold'\\]"):
        train.main([f"--resume={parent / 'fold1'}", "--fold=0"])
    resumed = train.main([f"--resume={parent / 'fold1'}", "--num_epochs=2"])
    assert resumed["run_dir"] == str(parent / "fold1")
    assert len((parent / "fold1" / "history.csv").read_text().splitlines()) == 3  # header + epochs 1 and 2
    assert report(parent / "fold1")["fold"] == 1

    for i in (0, 2):
        shutil.copytree(cv_folds[i], parent / f"fold{i}")
    summary = cross_validation.main([str(parent)])
    tops = [report(parent / f"fold{i}")["top1"] for i in range(3)]
    assert summary["top1_mean"] == pytest.approx(np.mean(tops))
    assert (parent / "cv_summary.json").exists()


@pytest.mark.parametrize("args, message", [(["--folds=1"], "--folds=1"), (["--fold=0"], "--fold=0"),
                                           (["--folds=3", "--fold=3", "--experiment_name=x"], "--fold=3")])
def test_fold_settings_that_cannot_work_are_refused_before_anything_runs(args, message):
    with pytest.raises(ConfigError, match=message):
        train.read_config(args)
