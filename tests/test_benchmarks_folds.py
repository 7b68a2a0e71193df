"""The benchmarks' own protocols (issue 20): each reader on a few rows written in its real format (ESC-50,
UrbanSound8K, FSD50K), a ``fold`` column honoured exactly by --folds with val drawn inside the training folds,
the predefined train/val/test split, and a cross-validation run on predefined folds saying so."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import train
from conftest import tiny_overrides, write_wav
from data.benchmarks import find_benchmark, load_benchmark_index
from data.index import DataError, read_index
from data.splits import make_folds, make_splits

KINDS = ("chirp", "tone")


def esc50(root: Path, folds: int = 5, per_fold: int = 4) -> Path:
    """An ESC-50 download: meta/esc50.csv (its real header) and audio/<filename>; per fold, clips of 2 classes
    from 2 source recordings each (src_file shared by their clips, as the real data)."""
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, folds + 1):
        for i in range(per_fold):
            target, src, take = i % 2, 100000 + 10 * fold + i // 2 * 2 + i % 2, "AB"[i // 2 % 2]
            name = f"{fold}-{src}-{take}-{target}.wav"
            write_wav(root / "audio" / name, 0.5, kind=KINDS[target], seed=fold * 10 + i)
            rows.append(f"{name},{fold},{target},{['dog', 'rain'][target]},False,{src},{take}")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_esc50_reader(tmp_path):
    root = esc50(tmp_path / "ESC-50-master")
    assert find_benchmark(root) == "esc50" and find_benchmark(tmp_path) is None
    index = load_benchmark_index(root, tmp_path / "esc50.csv", show_progress=False)
    df = index.df
    assert list(df.columns) == ["path", "label", "group", "fold"] and len(df) == 20
    first = df[df.path.str.endswith("1-100010-A-0.wav")].iloc[0]
    assert (first.label, first.group, first.fold) == ("dog", "100010", "1")
    assert read_index(tmp_path / "esc50.csv").df.fold.tolist() == df.fold.tolist()  # the CSV keeps the folds
    assert load_benchmark_index(tmp_path, tmp_path / "x.csv") is None  # not a benchmark: the folder scan


def test_urbansound8k_reader(tmp_path):
    root = tmp_path / "UrbanSound8K"
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class",
            "100032-3-0-0.wav,100032,0.0,0.317551,1,5,3,dog_bark",
            "100263-2-0-117.wav,100263,58.5,62.5,1,5,2,children_playing",
            "101415-3-0-2.wav,101415,1.0,5.0,1,10,3,dog_bark"]
    for row in rows[1:]:
        name, fold = row.split(",")[0], row.split(",")[5]
        write_wav(root / "audio" / f"fold{fold}" / name, 0.5)
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    df = load_benchmark_index(root, tmp_path / "us8k.csv", show_progress=False).df
    assert df.label.tolist() == ["dog_bark", "children_playing", "dog_bark"]
    assert df.fold.tolist() == ["5", "5", "10"] and df.group.tolist() == ["100032", "100263", "101415"]
    assert df.path.iloc[2].endswith("audio/fold10/101415-3-0-2.wav")


def test_fsd50k_reader_and_the_predefined_split(tmp_path):
    root = tmp_path / "FSD50K"
    dev = ["fname,labels,mids,split",
           '64760,"Electric_guitar,Guitar,Plucked_string_instrument,Music","/m/02sgy,/m/0342h,/m/0fx80y,/m/04rlf",train',
           '16399,"Bark,Dog,Domestic_animals_and_pets,Animal","/m/05tny_,/m/0bt9lr,/m/068hy,/m/0jbk",train',
           '16401,"Bark,Dog","/m/05tny_,/m/0bt9lr",val']
    evaluation = ["fname,labels,mids", '37199,"Music,Guitar","/m/04rlf,/m/0342h"']
    for name, folder in (("64760", "dev"), ("16399", "dev"), ("16401", "dev"), ("37199", "eval")):
        write_wav(root / f"FSD50K.{folder}_audio" / f"{name}.wav", 0.5)
    (root / "FSD50K.ground_truth").mkdir(parents=True)
    (root / "FSD50K.ground_truth" / "dev.csv").write_text("\n".join(dev) + "\n")
    (root / "FSD50K.ground_truth" / "eval.csv").write_text("\n".join(evaluation) + "\n")
    df = load_benchmark_index(root, tmp_path / "fsd50k.csv", show_progress=False).df
    assert df.label.tolist() == ["Electric_guitar;Guitar;Plucked_string_instrument;Music",
                                 "Bark;Dog;Domestic_animals_and_pets;Animal", "Bark;Dog", "Music;Guitar"]
    assert df.split.tolist() == ["train", "train", "val", "test"]
    assert df.path.iloc[3].endswith("FSD50K.eval_audio/37199.wav")
    parts = make_splits(read_index(tmp_path / "fsd50k.csv").df, "predefined", multilabel=True)
    assert {k: len(v) for k, v in parts.items()} == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(DataError, match="'split' column"):
        make_splits(df.drop(columns="split"), "predefined")


def test_a_fold_column_is_honoured_exactly_with_val_inside_the_training_folds():
    rows = [(f"/d/{f}-{i}.wav", KINDS[i % 2], f"src{f}-{i // 2}", str(f)) for f in range(1, 6) for i in range(8)]
    df = pd.DataFrame(rows, columns=["path", "label", "group", "fold"]).sample(frac=1.0, random_state=0)
    for fold, value in enumerate(["1", "2", "3", "4", "5"]):
        parts = make_folds(df, 5, fold, val_size=0.2, split_seed=0)
        assert set(parts["test"].path) == set(df.path[df.fold == value])  # exactly the fold, never reshuffled
        assert value not in set(parts["val"].fold) | set(parts["train"].fold)  # val inside the training folds
        assert not set(parts["val"].group) & set(parts["train"].group)
        assert len(parts["val"]) + len(parts["train"]) == 32
    with pytest.raises(DataError, match="defines 5 folds"):
        make_folds(df, 4, 0)


def test_cross_validation_on_predefined_folds_says_so(tmp_path, one_thread):
    root = esc50(tmp_path / "ESC-50-master", folds=2, per_fold=8)
    args = [a for a in tiny_overrides(tmp_path, root, num_epochs=1, folds=2, experiment_name="esc")
            if not a.startswith("--csv_path")]
    summary = train.main([*args, f"--csv_path={tmp_path / 'esc50.csv'}"])
    assert summary["predefined_folds"] == ["1", "2"] and "predefined folds" in summary["protocol"]
    fold0 = json.loads((Path(summary["run_dir"]) / "fold0" / "metrics.json").read_text())["test"]
    assert fold0["predefined_folds"] == ["1", "2"] and all(t.startswith("audio/1-") for t in fold0["splits"]["test"]
                                                           ["tracks"])
    card = (Path(summary["run_dir"]) / "fold0" / "README.md").read_text()
    assert "predefined folds (the index's `fold` column: 1, 2)" in card


def test_multilabel_folds_are_summarised_by_map(tmp_path):
    from evaluation.cross_validation import format_summary, summarize_folds
    runs = []
    for fold, (m_ap, auc) in enumerate([(0.6, 0.8), (0.7, 0.9)]):
        run = tmp_path / f"fold{fold}"
        run.mkdir()
        entry = dict(n=10, mAP=m_ap, mAUC=auc, d_prime=1.0 + fold, macro_f1=0.5, mAP_ci=[m_ap - 0.1, m_ap + 0.1],
                     label_names=["a", "b"], fold=fold, folds=2, predefined_folds=["1", "2"], protocol="p")
        (run / "metrics.json").write_text(json.dumps({"test": entry}))
        runs.append(run)
    summary = summarize_folds(runs, tmp_path)
    assert summary["mAP_mean"] == pytest.approx(0.65) and summary["mAP_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert summary["n"] == 20 and Path(summary["png"]).name == "map_cv.png" and Path(summary["png"]).is_file()
    assert format_summary(summary).startswith("2-fold CV on predefined folds test mAP 0.650 ± 0.071")
