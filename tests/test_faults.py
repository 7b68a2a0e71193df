"""Faults of one process: a disk that fills while a checkpoint or a cache entry is written, clips that change
under a run at each stage (cache build, normalisation pass, mid-epoch, evaluation), and logs that stay plain
lines when the output is not a terminal."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import experiment.checkpoint as checkpoint
from conftest import full_disk_open, make_tree, tiny_overrides
from data.cache import FeatureCache
from data.dataset import EpochSampler
from data.features import LogMel, normalisation_stats
from experiment.checkpoint import CheckpointError, load_checkpoint
from experiment.progress import LineProgress, progress

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread, results do not depend on it


def run_dir(tmp_path):
    return tmp_path / "runs" / "tiny"


def overrides(tmp_path, root, **extra) -> list[str]:
    """A tiny run of one epoch without SwanLab (these tests read the run folder only)."""
    return tiny_overrides(tmp_path, root, **{"num_epochs": 1, "swanlab_mode": "disabled", **extra})


def no_temp_files(folder) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file()]


# ---------------------------------------------------------------- a full disk

def test_a_full_disk_stops_training_with_the_space_needed_and_keeps_both_checkpoints(tmp_path, monkeypatch):
    """Epoch 1 writes last.pt and best.pt; at epoch 2 the disk is full (4 KB left): torch.save's own error
    ("unexpected pos ...") used to be all the message said. Once space is freed, --resume finishes the run."""
    import train
    root = make_tree(tmp_path / "audio", per_class=4)
    full = full_disk_open(free=4096, after=2)
    monkeypatch.setattr(checkpoint, "open", full, raising=False)
    with pytest.raises(CheckpointError) as err:
        train.main(overrides(tmp_path, root, num_epochs=2))
    run = run_dir(tmp_path)
    message = str(err.value)
    assert f"could not write checkpoint {run / 'last.pt'}: the disk holding {run} is full (No space left on " \
           f"device)" in message and f"--resume={run}" in message and "unexpected pos" not in message
    needed = float(re.search(r"needs ([\d.]+) MB there", message).group(1))
    assert needed == pytest.approx((run / "last.pt").stat().st_size / 2 ** 20, abs=0.06)
    assert full.opened == 3  # the third write failed and stopped the run: no best.pt attempt after it
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(run / name)["epoch"] == 1  # the previous ones, intact
    assert no_temp_files(run)

    monkeypatch.undo()  # space freed: the run continues where last.pt stands
    train.main([f"--resume={run}"])
    assert pd.read_csv(run / "history.csv")["train/epoch"].tolist() == [1, 2]


def test_the_feature_cache_computes_on_the_fly_when_the_disk_is_full(tmp_path, monkeypatch, capsys):
    """np.save writes what fits, then fails: the features still come back, no entry and no partial temp file
    stays behind, and the warning comes once, not once per clip."""
    root = make_tree(tmp_path / "audio", classes=("tone",), per_class=2)
    paths = sorted(str(p) for p in root.rglob("*.wav"))
    cache = FeatureCache(tmp_path / "cache", LogMel(sample_rate=8000, n_fft=256, hop_length=80, n_mels=32))
    real_save = np.save

    def full_disk_save(file, arr, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk_save)
    got = [cache.get(p) for p in paths]
    monkeypatch.setattr(np, "save", real_save)
    for p, mel in zip(paths, got):
        np.testing.assert_array_equal(mel, cache.compute(p))
        assert not cache.entry(p).exists()
    assert no_temp_files(tmp_path / "cache")
    out = capsys.readouterr().out
    assert out.count("warning: could not write the feature cache entry") == 1 and "--cache_dir" in out
    entries, errors = cache.build(paths, show_progress=False)  # space again: entries are written
    assert errors == [] and all(e.is_file() for e in entries)


# ---------------------------------------------------------------- clips that change under a run

def train_clips(tmp_path, root, **extra):
    """The training split's paths and the config of a tiny run, as train.py will split them."""
    import train
    from data.index import find_data_root, load_or_build_index
    from data.splits import make_splits
    from experiment.config import parse_config
    cfg = parse_config(tiny_overrides(tmp_path, root, **extra), train.CONFIG, train.PRESETS)
    index = load_or_build_index(find_data_root(cfg["data_root"]), Path(cfg["csv_path"]), show_progress=False)
    return make_splits(index.df, cfg["split"], cfg["val_size"], cfg["test_size"], cfg["split_seed"]), cfg


def break_clip(path, how: str, cache_dir=None) -> None:
    """``how``: deleted, or corrupted (overwritten with text); with ``cache_dir`` its cache entries go too."""
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"this is no longer audio " * 40)
    if cache_dir is not None:
        for entry in (cache_dir / "features").rglob("*.npy"):
            entry.unlink()


def test_clips_broken_after_indexing_are_skipped_by_the_cache_build(tmp_path, monkeypatch):
    import data
    import train
    root = make_tree(tmp_path / "audio", per_class=4)
    splits, _ = train_clips(tmp_path, root, num_epochs=1)
    deleted, corrupted = (Path(p) for p in splits["train"].path.iloc[:2])
    real_build = data.FeatureCache.build

    def build_after_the_files_changed(self, paths, *args, **kwargs):
        if str(deleted) in paths:  # the first build: the index is written, nothing is cached yet
            break_clip(deleted, "deleted")
            break_clip(corrupted, "corrupted")
        return real_build(self, paths, *args, **kwargs)

    monkeypatch.setattr(data.FeatureCache, "build", build_after_the_files_changed)
    with pytest.warns(UserWarning, match="skipped 2 unusable audio file") as record:
        train.main(overrides(tmp_path, root))
    message = "\n".join(str(w.message) for w in record)
    assert f"{deleted}: file not found" in message and str(corrupted) in message
    state = load_checkpoint(run_dir(tmp_path) / "last.pt")
    assert len(state["splits"]["train"]) == len(splits["train"]) - 2
    assert not {deleted.name, corrupted.name} & {p.split("/")[-1] for p in state["splits"]["train"]}


def test_clips_broken_before_the_normalisation_pass_are_left_out_of_it(tmp_path, monkeypatch):
    """The cache could not store anything (a full disk), so the normalisation pass decodes the training clips
    again: two of them changed since the cache build. This crashed start-up with an AudioError."""
    import train
    root = make_tree(tmp_path / "audio", per_class=4)
    real_prepare, real_save = train.prepare_data, np.save
    broken = []

    def prepare_then_break(*args, **kwargs):
        prepared = real_prepare(*args, **kwargs)
        paths = prepared.splits["train"].path
        broken[:] = [paths.iloc[0], paths.iloc[1]]
        break_clip(prepared.data_root / broken[0], "deleted")
        break_clip(prepared.data_root / broken[1], "corrupted")
        return prepared

    def full_disk_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "prepare_data", prepare_then_break)
    monkeypatch.setattr(np, "save", full_disk_save)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train.main(overrides(tmp_path, root))
    monkeypatch.setattr(np, "save", real_save)
    message = "\n".join(str(w.message) for w in record if "normalisation" in str(w.message))
    assert "skipped 2 unusable audio file(s) while computing the normalisation statistics" in message
    assert all(p in message for p in broken)

    state = load_checkpoint(run_dir(tmp_path) / "last.pt")
    cache = FeatureCache(tmp_path / "cache", LogMel(sample_rate=8000, n_fft=256, hop_length=80, n_mels=32))
    readable = [cache.compute(str(root / p)) for p in state["splits"]["train"] if str(root / p) not in broken]
    mean, std = normalisation_stats(readable)
    assert state["features"]["norm"] == pytest.approx(dict(mean=mean, std=std), rel=1e-6)
    history = pd.read_csv(run_dir(tmp_path) / "history.csv")
    assert history["data/skipped_clips"].tolist() == [2]  # and the epoch skipped them as well


def test_a_clip_deleted_mid_epoch_is_skipped_and_reported(tmp_path, monkeypatch, capfd):
    """At step 1 of epoch 1 the clip of the epoch's last batch is deleted with its cache entry."""
    import train
    root = make_tree(tmp_path / "audio", per_class=4)
    splits, cfg = train_clips(tmp_path, root, num_epochs=1, batch_size=2)
    sampler = EpochSampler(len(splits["train"]), cfg["seed"])
    victim = Path(splits["train"].path.iloc[sampler.order()[-1]])
    real_step_seed = train.step_seed

    def delete_at_step_1(seed, rank, epoch, step):
        if (epoch, step) == (0, 1):
            break_clip(victim, "deleted", tmp_path / "cache")
        return real_step_seed(seed, rank, epoch, step)

    monkeypatch.setattr(train, "step_seed", delete_at_step_1)
    train.main(overrides(tmp_path, root, batch_size=2))
    out = capfd.readouterr()
    assert out.out.count(f"warning: skipped {victim}: ") == 1 and "file not found" in out.out
    history = pd.read_csv(run_dir(tmp_path) / "history.csv")
    assert history["data/skipped_clips"].tolist() == [1]
    # stdout and stderr are not terminals here: no progress bar redrawn with carriage returns (it was one per step)
    assert "\r" not in out.out + out.err


def test_a_clip_deleted_before_evaluation_is_skipped_and_reported(tmp_path, monkeypatch, capfd):
    import train
    root = make_tree(tmp_path / "audio", per_class=4)
    real_evaluate = train.evaluate
    victim = []

    def delete_then_evaluate(run, split, *args, **kwargs):
        if not victim:  # the first validation, after the training steps of epoch 1
            victim.append(Path(run.data.splits[split].path.iloc[0]))
            break_clip(victim[0], "deleted", tmp_path / "cache")
        return real_evaluate(run, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", delete_then_evaluate)
    train.main(overrides(tmp_path, root))
    out = capfd.readouterr()
    assert out.out.count(f"warning: skipped {victim[0]}: ") == 1 and "file not found" in out.out
    history = pd.read_csv(run_dir(tmp_path) / "history.csv")
    assert history["data/skipped_clips"].tolist() == [1]
    report = json.loads((run_dir(tmp_path) / "metrics.json").read_text())["val"]
    assert report["n"] == 2 == sum(map(sum, report["confusion"]))  # 3 val tracks, 1 gone


# ---------------------------------------------------------------- logs that are not a terminal

def test_progress_in_a_log_is_plain_lines_a_minute_apart(capfd):
    bar = progress(range(5), desc="Computing spectrograms", unit="clip")
    assert isinstance(bar, LineProgress)  # pytest's captured stderr is not a terminal
    assert list(bar) == list(range(5))
    assert capfd.readouterr().err == ""  # shorter than a minute: nothing at all
    bar = LineProgress(range(4), desc="epoch 1/3", unit="batch", initial=1, total=5, every=0.0)
    bar.set_postfix(loss="0.512")
    assert list(bar) == [0, 1, 2, 3]
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("epoch 1/3: 5/5 batch (100%), ")
    assert lines[-1].endswith(", loss=0.512") and lines[0].startswith("epoch 1/3: 2/5 batch (40%)")
