"""Honest numbers (issue 12): group-aware splits (FSDD speakers, a group column, patterns), k-fold folds that
partition the data, the cross-validation summary, and bootstrap intervals against the binomial ones."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score

import train
from conftest import ROOT, make_tree
from data import PreparedData, prepare_data
from data.features import build_features
from data.index import DataError, build_index, read_index
from data.splits import GROUP, assign_groups, make_folds, make_splits, split_parts, split_tracks
from evaluation.cross_validation import CrossValidationError, format_summary, summarize_folds
from evaluation.cross_validation import main as cv_main
from evaluation.metrics import bootstrap_intervals, classification_metrics, close, save_report

FSDD = ROOT.parent / "shared" / "fsdd"
SPEAKER = r"_([a-z]+)_\d+\.wav$"  # FSDD: <digit>/<digit>_<speaker>_<n>.wav


def grouped(classes: int = 4, groups: int = 12, per_group: int = 2, seed: int = 0) -> pd.DataFrame:
    """An index with ``per_group`` tracks of every class in each group, rows scrambled."""
    rows = [(f"/data/c{c}/g{g:02d}_{i}.wav", f"c{c}", f"g{g:02d}")
            for c in range(classes) for g in range(groups) for i in range(per_group)]
    return pd.DataFrame(rows, columns=["path", "label", GROUP]).sample(frac=1.0, random_state=seed)


def groups_of(parts: dict) -> dict[str, set]:
    return {name: set(part[GROUP]) for name, part in parts.items()}


def assert_no_shared_group(parts: dict) -> None:
    names = list(parts)
    sets = groups_of(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], f"groups {sets[a] & sets[b]} are in both {a} and {b}"


# ---------------------------------------------------------------- groups and group-aware splits

@pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/fsdd is not present")
def test_speaker_split_on_fsdd_shares_no_speaker_and_keeps_every_digit(tmp_path):
    index = build_index(FSDD.resolve(), tmp_path / "fsdd.csv", show_progress=False)
    df, source = assign_groups(index.df, SPEAKER)
    assert source == f"group_pattern {SPEAKER!r}"
    assert df[GROUP].value_counts().to_dict() == {s: 500 for s in ("george", "jackson", "lucas", "nicolas", "theo")}
    cfg = dict(split="stratified", val_size=0.2, test_size=0.1, split_seed=42, group_pattern=SPEAKER)
    parts = split_tracks(df, cfg)
    assert_no_shared_group(parts)
    assert set().union(*groups_of(parts).values()) == set(df[GROUP])  # every speaker is somewhere
    for name, part in parts.items():
        assert sorted(part.label.unique()) == [str(d) for d in range(10)], name  # every digit in every split
    # 5 speakers: test is one of min(round(1 / 0.1), 5) = 5 group folds, val one of round(0.9 / 0.2) = 4
    assert {k: len(v) for k, v in parts.items()} == {"train": 1500, "val": 500, "test": 500}


def test_a_group_column_wins_over_the_pattern_and_is_recorded(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=6, seconds=0.3)
    rows = [(str(p.relative_to(tmp_path)), p.parent.name, f"s{int(p.stem[-2:])}") for p in sorted(root.rglob("*.wav"))]
    pd.DataFrame(rows, columns=["path", "label", GROUP]).to_csv(tmp_path / "index.csv", index=False)
    index = read_index(tmp_path / "index.csv")
    assert list(index.df.columns) == ["path", "label", GROUP]
    with pytest.warns(UserWarning, match="'group' column: it defines the groups"):
        df, source = assign_groups(index.df, r"_(\d+)\.wav$")  # the pattern would give 00..05
    assert source == "the 'group' column of the index CSV" and set(df[GROUP]) == {f"s{i}" for i in range(6)}

    cfg = dict(train.CONFIG, data_root=str(root), csv_path=str(tmp_path / "index.csv"), cache_dir=str(tmp_path / "c"),
               sample_rate=8000, n_fft=256, hop_length=80, n_mels=32, split="stratified", val_size=0.2,
               test_size=0.2, group_pattern=r"_(\d+)\.wav$")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the index CSV has a 'group' column")
        data = prepare_data(cfg, build_features(cfg)[0], show_progress=False)
    assert data.group_source == "the 'group' column of the index CSV"
    assert_no_shared_group(data.splits)
    record = data.split_record()
    json.dumps(record)  # JSON-able, for metrics.json and checkpoints
    assert set(record) == {"train", "val", "test"}
    for name, part in data.splits.items():
        assert record[name]["tracks"] == data.track_lists()[name]
        assert record[name]["groups"] == sorted(set(part[GROUP])) and record[name]["groups"][0].startswith("s")
        assert record[name]["class_counts"] == {n: int((part.label == n).sum()) for n in data.label_names}
    with pytest.raises(DataError, match="use --split=stratified"):  # the per-label tutorial split cannot keep groups
        prepare_data(dict(cfg, split="tutorial", group_pattern=""), build_features(cfg)[0], show_progress=False)


def test_a_pattern_that_matches_nothing_is_a_clear_error():
    df = pd.DataFrame({"path": ["/d/a/one.wav", "/d/b/two.wav"], "label": ["a", "b"]})
    with pytest.raises(DataError, match=r"group_pattern='_\(\[a-z\]\+\)_' matches none of the 2 paths \(e.g. /d/a/one"):
        assign_groups(df, "_([a-z]+)_")
    with pytest.raises(DataError, match="not a valid regular expression"):
        assign_groups(df, "([a-z")
    with pytest.warns(UserWarning, match="does not match 1 of 2 path"):
        out, _ = assign_groups(df, "one")  # no capture group: the whole match; the unmatched path is its own group
    assert out[GROUP].tolist() == ["one", "/d/b/two.wav"]
    assert assign_groups(df, "")[0] is df and GROUP not in df  # no pattern, no column: no groups


def test_group_aware_stratified_split_and_what_other_splits_do_with_groups():
    df = grouped()
    parts = make_splits(df, "stratified", val_size=0.2, test_size=0.2, split_seed=3)
    assert_no_shared_group(parts)
    assert sum(len(p) for p in parts.values()) == len(df)
    # in whole groups: test is fold 0 of 5 group folds, val fold 0 of round(0.8 / 0.2) = 4 over the other 9
    assert {k: len(groups_of(parts)[k]) for k in parts} == {"train": 6, "val": 3, "test": 3}
    again = make_splits(df.sample(frac=1.0, random_state=9), "stratified", val_size=0.2, test_size=0.2, split_seed=3)
    assert all(list(parts[k].path) == list(again[k].path) for k in parts)  # row order does not matter
    assert split_parts({"split": "stratified"}) == ("train", "val", "test")
    assert split_parts({"split": "tutorial", "folds": 5}) == ("train", "val", "test")
    with pytest.raises(DataError, match="at least 3 groups"):
        make_splits(grouped(groups=2, per_group=3), "stratified")
    assert set(make_splits(df, "all")["all"].path) == set(df.path)


def test_unseen_test_keeps_the_test_groups_apart_and_trains_every_other_group():
    df = grouped()
    parts = make_splits(df, "unseen_test", val_size=0.2, test_size=0.2, split_seed=3)
    stratified = make_splits(df, "stratified", val_size=0.2, test_size=0.2, split_seed=3)
    assert list(parts["test"].path) == list(stratified["test"].path)  # the same unseen groups
    sets = groups_of(parts)
    assert not sets["test"] & (sets["train"] | sets["val"])
    assert sets["train"] == set(df[GROUP]) - sets["test"] and sets["val"] <= sets["train"]
    assert sum(len(p) for p in parts.values()) == len(df)
    assert len(parts["val"]) == 72 // 4  # one of round(0.8 / 0.2) = 4 folds of the 72 tracks of 9 other groups
    assert set(parts["val"].label.value_counts()) <= {4, 5}  # stratified by label
    with pytest.raises(DataError, match="at least 2 groups"):
        make_splits(grouped(groups=1, per_group=4), "unseen_test")


# ---------------------------------------------------------------- k-fold cross-validation

@pytest.mark.parametrize("with_groups", [True, False])
def test_k_fold_test_parts_partition_the_data_and_no_group_crosses_parts(with_groups):
    df = grouped(groups=9) if with_groups else grouped(groups=9).drop(columns=GROUP)
    k, tests = 3, []
    for fold in range(k):
        parts = split_tracks(df, dict(folds=k, fold=fold, val_size=0.2, split_seed=5, split="tutorial"))
        assert set(parts) == {"train", "val", "test"}
        assert sum(len(p) for p in parts.values()) == len(df)
        assert set().union(*(set(p.path) for p in parts.values())) == set(df.path)
        if with_groups:
            assert_no_shared_group(parts)
            assert len(groups_of(parts)["test"]) == 3  # 9 groups in 3 folds
        for part in parts.values():
            assert part.label.nunique() == 4
        tests.append(set(parts["test"].path))
    assert set().union(*tests) == set(df.path) and sum(map(len, tests)) == len(df)  # a partition
    shuffled = make_folds(df.sample(frac=1.0, random_state=2), k, 1, 0.2, 5)
    assert set(shuffled["test"].path) == tests[1]


@pytest.mark.filterwarnings("ignore:The least populated class")  # scikit-learn's note on the rare class
def test_k_fold_errors_and_missing_class_warning():
    df = grouped(groups=4)
    with pytest.raises(DataError, match="at least 5 groups"):
        make_folds(df, 5, 0)
    with pytest.raises(DataError, match="fold in 0..folds-1"):
        make_folds(df, 3, 3)
    with pytest.raises(DataError, match="folds=1"):
        split_tracks(df, dict(folds=1))
    # a class recorded by two speakers only: whole groups move, so some fold tests or trains without it
    rare = pd.DataFrame({"path": [f"/r/{i}.wav" for i in range(4)], "label": "rare", GROUP: ["g00"] * 2 + ["g01"] * 2})
    rare = pd.concat([grouped(classes=2, groups=6), rare])
    with pytest.warns(UserWarning, match=r"the test part \(fold 0 of 3-fold cross-validation\) has no track of "
                                         r"class\(es\) \['rare'\]"):
        assert "rare" in set(make_folds(rare, 3, 0, 0.2, 0)["train"].label)
    with pytest.raises(DataError, match=r"\['rare'\] have no training clip in fold 1 of 3"):
        make_folds(rare, 3, 1, 0.2, 0)


def fake_fold_runs(tmp_path, k: int = 3, names=("a", "b", "c")) -> list[Path]:
    """K run folders whose metrics.json has a ``test`` entry written by save_report, as training writes it."""
    rng = np.random.default_rng(0)
    dirs = []
    for fold in range(k):
        y = rng.integers(0, len(names), 30 + 5 * fold)
        pred = np.where(rng.random(len(y)) < 0.6 + 0.1 * fold, y, rng.integers(0, len(names), len(y)))
        run = tmp_path / f"fold{fold}"
        _, fig = save_report(run, "test", classification_metrics(y, pred, list(names)), list(names), f"fold {fold}",
                             extra=dict(fold=fold, folds=k, protocol="held-out test split, checkpoint chosen on val"))
        close(fig)
        dirs.append(run)
    return dirs


def test_cv_summary_mean_std_and_pooled_confusion_equal_the_fold_reports(tmp_path, capsys):
    dirs = fake_fold_runs(tmp_path)
    reports = [json.loads((d / "metrics.json").read_text())["test"] for d in dirs]
    s = summarize_folds(dirs, tmp_path / "cv")
    assert s["folds"] == 3 and s["label_names"] == ["a", "b", "c"]
    assert s["top1_mean"] == pytest.approx(np.mean([r["top1"] for r in reports]))
    assert s["macro_f1_mean"] == pytest.approx(np.mean([r["macro_f1"] for r in reports]))
    assert s["top1_std"] == pytest.approx(np.std([r["top1"] for r in reports], ddof=1))
    assert s["pooled_confusion"] == np.sum([r["confusion"] for r in reports], axis=0).tolist()
    assert s["n"] == sum(r["n"] for r in reports) == 30 + 35 + 40
    assert [f["top1_ci"] for f in s["per_fold"]] == [r["top1_ci"] for r in reports]
    assert json.loads((tmp_path / "cv" / "cv_summary.json").read_text()) == s
    with Image.open(s["png"]) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert "3-fold cross-validation" in s["protocol"] and "StratifiedGroupKFold" in s["protocol"]
    cv_main([str(d) for d in dirs] + [f"--out_dir={tmp_path / 'cv2'}"])
    assert format_summary(s) in capsys.readouterr().out
    assert f"top-1 {100 * s['top1_mean']:.1f} ± {100 * s['top1_std']:.1f}%" in format_summary(s)
    # the pooled interval resamples the folds' tracks together: the same as bootstrapping their (true, pred) pairs
    pairs = [(t, p) for t, row in enumerate(s["pooled_confusion"]) for p, count in enumerate(row) for _ in range(count)]
    true, pred = np.array(pairs).T
    assert s["pooled_top1_ci"] == pytest.approx(bootstrap_intervals(true, pred, 3)["top1_ci"])
    assert s["pooled_top1_ci"][0] < s["pooled_top1"] < s["pooled_top1_ci"][1]
    assert f"(95% CI {100 * s['pooled_top1_ci'][0]:.1f}" in format_summary(s)


def test_cv_summary_refuses_a_missing_fold_or_other_labels(tmp_path):
    dirs = fake_fold_runs(tmp_path)
    with pytest.raises(CrossValidationError, match=r"missing \[2\]"):
        summarize_folds(dirs[:2], tmp_path / "cv")
    with pytest.raises(CrossValidationError, match=r"twice \[0\]"):
        summarize_folds([dirs[0], dirs[0], dirs[1]], tmp_path / "cv")
    (dirs[1] / "metrics.json").unlink()
    with pytest.raises(CrossValidationError, match=f"{dirs[1]}.*fold missing"):
        summarize_folds(dirs, tmp_path / "cv")
    other = fake_fold_runs(tmp_path / "other", names=("a", "b", "x"))
    with pytest.raises(CrossValidationError, match=r"labels \['a', 'b', 'x'\]"):
        summarize_folds([dirs[0], other[1], dirs[2]], tmp_path / "cv")
    assert not (tmp_path / "cv").exists()


# ---------------------------------------------------------------- bootstrap intervals

def test_bootstrap_interval_of_80_of_100_is_close_to_the_binomial_one():
    y = np.repeat([0, 1], 50)
    pred = y.copy()
    pred[:20] = 1  # 80 of 100 right
    ci = bootstrap_intervals(y, pred, 2)
    se = np.sqrt(0.8 * 0.2 / 100)  # 4.0 points (DESIGN.md section 7)
    assert ci["top1_ci"][0] == pytest.approx(0.8 - 1.96 * se, abs=0.015)
    assert ci["top1_ci"][1] == pytest.approx(0.8 + 1.96 * se, abs=0.015)
    assert bootstrap_intervals(y, pred, 2) == ci  # same seed, same interval
    assert bootstrap_intervals(y, pred, 2, seed=1) != ci
    m = classification_metrics(y, pred, ["a", "b"])
    assert m["top1_ci"] == ci["top1_ci"] and m["macro_f1_ci"] == ci["macro_f1_ci"]
    lo, hi = m["macro_f1_ci"]
    assert lo < m["macro_f1"] < hi and "percentile bootstrap over tracks, 1000 resamples" in m["ci_method"]
    assert f"95% CI: top-1 {100 * ci['top1_ci'][0]:.1f}-{100 * ci['top1_ci'][1]:.1f}%" in m["report"]


def test_bootstrap_resamples_are_scored_like_scikit_learn():
    rng = np.random.default_rng(4)
    y, pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    draws = np.random.default_rng(7).integers(0, 60, size=(5, 60))  # the draws bootstrap_intervals(seed=7) makes
    top1 = [np.mean(y[d] == pred[d]) for d in draws]
    f1 = [f1_score(y[d], pred[d], labels=range(5), average="macro", zero_division=0) for d in draws]  # class 4: none
    ci = bootstrap_intervals(y, pred, 5, resamples=5, seed=7)
    assert ci["top1_ci"] == pytest.approx(np.percentile(top1, [2.5, 97.5]).tolist())
    assert ci["macro_f1_ci"] == pytest.approx(np.percentile(f1, [2.5, 97.5]).tolist())
    assert classification_metrics(y, pred, list("abcde"), resamples=0)["top1_ci"] is None
    assert np.isnan(bootstrap_intervals([], [], 3)["top1_ci"]).all()


def test_prepared_data_record_without_groups():
    part = pd.DataFrame({"path": ["/r/a/1.wav", "/r/b/2.wav"], "label": ["a", "b"]})
    data = PreparedData(Path("/r"), None, {"all": part}, ["a", "b", "c"], None)
    assert data.split_record() == {"all": {"tracks": ["a/1.wav", "b/2.wav"], "groups": [],
                                           "class_counts": {"a": 1, "b": 1, "c": 0}}}
