"""End-to-end training: the loss falls, SwanLab local files and history.csv hold one value per epoch,
checkpoints carry the label names, helpful failure without data, real GTZAN clips, and SwanLab's default
(cloud) mode falling back to offline with no login and no terminal."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from conftest import GTZAN_MINI, ROOT, make_tree, swanlab_metrics, tiny_overrides
from experiment.checkpoint import load_checkpoint
from experiment.config import ConfigError
from models import build_model

EPOCH_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "train/lr", "train/epoch", "train/epoch_seconds",
              "train/clips_per_second")


def read_history(run_dir) -> list[dict[str, float]]:
    """``<run_dir>/history.csv`` as a list of rows of floats."""
    with open(Path(run_dir) / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def clean_env(home) -> dict:
    """This process's environment with HOME at ``home`` and no SWANLAB_* settings (no login, no mode);
    torch on one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB")}
    env["HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "1"  # 2 shared cores: more torch threads only oversubscribe
    return env


def run_train_py(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in ``cwd`` with stdin that is not a terminal."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- the shared 2-epoch local-mode run
def test_swanlab_local_files_hold_one_value_per_epoch(trained_run):
    summary, tmp = trained_run
    metrics = swanlab_metrics(tmp / "swanlog")
    keys = metrics["tiny"]  # the experiment_name of the run (other tests may add experiments beside it)
    for key in EPOCH_KEYS:
        assert [step for step, _ in keys[key]] == [1, 2], key
    assert [v for _, v in keys["train/epoch"]] == [1.0, 2.0]
    assert [v for _, v in keys["train/lr"]] == pytest.approx([1e-3, 1e-3])  # warmup 0, no step decay
    for key in ("train/acc", "val/acc"):
        assert all(0.0 <= v <= 100.0 for _, v in keys[key])
    for key in ("train/loss", "val/loss", "train/epoch_seconds", "train/clips_per_second"):
        assert all(v > 0 and v == v for _, v in keys[key]), key
    assert keys["summary/best_val_acc"][-1][1] == pytest.approx(summary["summary/best_val_acc"])


def test_history_csv_matches_swanlab(trained_run):
    summary, tmp = trained_run
    rows = read_history(summary["run_dir"])
    assert len(rows) == 2
    assert set(EPOCH_KEYS) <= set(rows[0])
    assert [r["train/epoch"] for r in rows] == [1.0, 2.0]
    keys = swanlab_metrics(tmp / "swanlog")["tiny"]
    for key in EPOCH_KEYS:
        assert [r[key] for r in rows] == pytest.approx([v for _, v in keys[key]], rel=1e-6), key
    best = max(range(2), key=lambda i: (rows[i]["val/acc"], -rows[i]["val/loss"]))
    assert summary["summary/best_epoch"] == best + 1
    assert summary["summary/best_val_acc"] == pytest.approx(rows[best]["val/acc"])


def test_best_and_last_checkpoints_load_and_carry_the_label_names(trained_run):
    summary, _ = trained_run
    run_dir = Path(summary["run_dir"])
    last, best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir)
    for ckpt in (last, best):
        assert ckpt["label_names"] == ["chirp", "pulses", "tone"]
        assert ckpt["config"]["num_epochs"] == 2 and ckpt["config"]["resize"] == 32
        assert ckpt["features"]["params"]["sample_rate"] == 8000
        model = build_model("resnet18", 3, pretrained=False)
        model.load_state_dict(ckpt["model"])
    assert last["epoch"] == 2 and last["step"] == 0
    assert best["epoch"] == summary["summary/best_epoch"]
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    assert (run_dir / "confusion_matrix_val.png").stat().st_size > 0


def test_swanlab_config_holds_the_whole_config(trained_run):
    summary, tmp = trained_run
    configs = [{k: v["value"] for k, v in yaml.safe_load(f.read_text()).items()}
               for f in (tmp / "swanlog").glob("run-*/files/config.yaml")]
    (logged,) = [c for c in configs if c.get("experiment_name") == "tiny"]
    saved = load_checkpoint(Path(summary["run_dir"]) / "last.pt")["config"]
    missing = set(train.CONFIG) - set(logged)
    assert not missing
    for key in train.CONFIG:
        assert logged[key] == saved[key], key
    assert logged["learning_rate"] == 1e-3 and logged["resize"] == 32 and logged["pretrained"] is False
    assert logged["environment"]["label_names"] == ["chirp", "pulses", "tone"]


# ---------------------------------------------------------------- SwanLab default mode, no login, no TTY
@pytest.fixture(scope="module")
def default_mode_run(tmp_path_factory):
    """train.py as a subprocess with --swanlab_mode= (SwanLab's default), HOME empty, stdin not a TTY:
    4 epochs without augmentation or mixup, one full batch per epoch. (process, tmp folder)."""
    tmp = tmp_path_factory.mktemp("default_mode")
    (tmp / "home").mkdir()
    (tmp / "cwd").mkdir()
    root = make_tree(tmp / "audio", per_class=5)
    args = tiny_overrides(tmp, root, swanlab_mode="", num_epochs=4, augment=False, mixup_alpha=0, batch_size=12,
                          confusion_every=0)
    return run_train_py(args, tmp / "cwd", clean_env(tmp / "home")), tmp


def test_default_swanlab_mode_without_login_falls_back_to_offline(default_mode_run):
    proc, tmp = default_mode_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SwanLab could not start its default (cloud) mode" in proc.stdout
    assert "Logging offline" in proc.stdout and "swanlab sync" in proc.stdout
    runs = list((tmp / "swanlog").glob("run-*/run-*.swanlab"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert (runs[0].parent / "files" / "config.yaml").is_file()
    assert len(read_history(tmp / "runs" / "tiny")) == 4
    assert load_checkpoint(tmp / "runs" / "tiny")["label_names"] == ["chirp", "pulses", "tone"]


def test_training_loss_falls(default_mode_run):
    proc, tmp = default_mode_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = [r["train/loss"] for r in read_history(tmp / "runs" / "tiny")]
    assert len(loss) == 4
    assert loss[0] > 0.5  # starts near chance (ln 3 = 1.1)
    assert max(loss[2:]) < 0.5 * loss[0], loss
    assert loss[-1] < loss[0]


# ---------------------------------------------------------------- no data
def test_without_gtzan_train_py_explains_how_to_get_it(tmp_path):
    proc = run_train_py([], tmp_path, clean_env(tmp_path), timeout=120)
    assert proc.returncode == 1
    err = proc.stderr
    assert "No dataset found" in err
    assert "GTZAN/genres_original" in err and "kaggle" in err.lower()
    assert "--data_root" in err and "--preset=demo" in err
    assert "Traceback" not in err
    assert not (tmp_path / "audio_dataset.csv").exists()


# ---------------------------------------------------------------- real GTZAN clips
@pytest.mark.skipif(not GTZAN_MINI.is_dir(), reason="../shared/gtzan-mini is not present")
def test_one_epoch_on_gtzan_mini(tmp_path, one_thread):
    summary = train.main(tiny_overrides(tmp_path, GTZAN_MINI.parent, num_epochs=1, clip_seconds=1.0,
                                        eval_hop_seconds=10.0, batch_size=20, swanlab_mode="disabled"))
    ckpt = load_checkpoint(summary["run_dir"])
    assert ckpt["label_names"] == ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop",
                                   "reggae", "rock"]
    assert ckpt["config"]["data_root"] == str(GTZAN_MINI.resolve())
    assert ckpt["model"]["fc.weight"].shape == (10, 512)
    rows = read_history(summary["run_dir"])
    assert len(rows) == 1 and rows[0]["train/clips_per_second"] > 0
    assert 0.0 <= summary["summary/val_acc"] <= 100.0
    assert not (tmp_path / "swanlog").exists()  # disabled: SwanLab writes nothing
    assert torch.isfinite(torch.tensor(rows[0]["val/loss"]))


# ---------------------------------------------------------------- a last batch of one clip
def test_a_training_batch_of_one_clip_is_dropped_with_one_note(tmp_path, capsys, one_thread):
    """12 training clips in batches of 11: the last batch of each epoch holds 1 clip, on which BatchNorm
    cannot train at 32x32 (1 value per channel after layer4). It is dropped, said once for the run."""
    root = make_tree(tmp_path / "audio", per_class=6)
    summary = train.main(tiny_overrides(tmp_path, root, batch_size=11, swanlab_mode="disabled"))
    out = capsys.readouterr().out
    assert out.count("fewer than 2 readable clips") == 1
    assert "note: skipped training step 2 of epoch 1" in out
    rows = read_history(summary["run_dir"])
    assert [r["train/epoch"] for r in rows] == [1.0, 2.0]
    for row in rows:  # top-1 over the 11 clips of the full batch: a whole number of them
        assert row["train/acc"] * 11 / 100 == pytest.approx(round(row["train/acc"] * 11 / 100), abs=1e-6)
    assert load_checkpoint(Path(summary["run_dir"]) / "last.pt")["step"] == 0


def test_a_batch_size_of_one_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"--batch_size=1: BatchNorm trains on batches of 2 clips or more"):
        train.main([f"--out_dir={tmp_path}", "--batch_size=1"])
    assert not list(tmp_path.iterdir())
