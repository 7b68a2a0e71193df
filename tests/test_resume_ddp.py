"""Resume reproduces an uninterrupted run exactly; torchrun DDP (gloo, CPU) logs what a single process measures."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from conftest import ROOT, make_tree, swanlab_metrics, tiny_overrides
from data import prepare_data
from data.cache import FeatureCache
from data.dataset import TrackDataset, collate_tracks
from data.features import build_features, window_frames
from evaluation import predict_tracks, track_loss
from experiment.checkpoint import load_checkpoint
from models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread, results do not depend on it


# Scalars that depend on the data and the weights only (not on wall time).
EXACT = ["train/epoch", "train/loss", "train/acc", "val/loss", "val/acc", "val/macro_f1", "train/lr",
         "data/skipped_clips"]


def schedule(tmp_path, root, **extra):
    """Tiny overrides with a learning rate that changes every epoch (warmup, then StepLR), independent of
    num_epochs, and batches of 4 so an epoch has several steps to interrupt."""
    return tiny_overrides(tmp_path, root, batch_size=4, warmup_epochs=2, lr_step_size=1, lr_gamma=0.5,
                          confusion_every=0, **extra)


def weights(path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_resume_at_an_epoch_boundary_and_mid_epoch_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    import train
    root = make_tree(tmp_path / "audio", per_class=6)  # 12 training clips: 3 steps of 4 per epoch

    whole = tmp_path / "whole"
    train.main(schedule(whole, root, num_epochs=3))
    expected = pd.read_csv(whole / "runs" / "tiny" / "history.csv")

    # 1 epoch, then resume with num_epochs=3 (allowed: the schedule does not depend on it) ...
    parts = tmp_path / "parts"
    run = parts / "runs" / "tiny"
    train.main(schedule(parts, root, num_epochs=1))
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv")[EXACT], expected[EXACT].iloc[:1])

    # ... interrupted by SIGINT during step 1 of epoch 2: last.pt holds 2 of its 3 steps ...
    real_step_seed = train.step_seed

    def interrupt(seed, rank, epoch, step):
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)
        return real_step_seed(seed, rank, epoch, step)

    monkeypatch.setattr(train, "step_seed", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.main([f"--resume={run}", "--num_epochs=3", f"--swanlab_logdir={parts / 'swanlog-2'}"])
    monkeypatch.setattr(train, "step_seed", real_step_seed)
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"], state["accum"]["batches"], state["accum"]["seen"]) == (1, 2, 2, 8)
    assert len(state["history"]) == 1

    # ... and resumed again into a fresh SwanLab folder: the last batch of epoch 2, then epoch 3.
    summary = train.main([f"--resume={run}", f"--swanlab_logdir={parts / 'swanlog-3'}"])
    assert summary["run_dir"] == str(run)
    history = pd.read_csv(run / "history.csv")
    pd.testing.assert_frame_equal(history[EXACT], expected[EXACT], rtol=1e-6)
    assert_same_weights(weights(run / "best.pt"), weights(whole / "runs" / "tiny" / "best.pt"))
    assert_same_weights(weights(run / "last.pt"), weights(whole / "runs" / "tiny" / "last.pt"))
    final = load_checkpoint(run / "last.pt")
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5)  # StepLR after warmup
    assert summary["summary/best_val_acc"] == pytest.approx(expected["val/acc"].max(), abs=1e-9)

    # The resumed SwanLab experiment holds every epoch: the tracker replays the history it resumed with.
    logged = swanlab_metrics(parts / "swanlog-3")["tiny"]
    for key in ("train/loss", "val/acc", "train/lr"):
        assert [s for s, _ in logged[key]] == [1, 2, 3]
        assert [v for _, v in logged[key]] == pytest.approx(expected[key].tolist(), rel=1e-6)


# What last.pt held before train.py was cut into stages (issue 10): a checkpoint with exactly these keys,
# its running totals a plain dict under "accum", must keep resuming.
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "accum", "best", "config",
                   "label_names", "features", "history", "splits", "swanlab_run_id", "swanlab_project",
                   "experiment_name", "split_record",
                   "backbone",  # backbone: the architecture record (issue 11)
                   "ema"}  # ema: the trained weights beside an EMA's average, or None (issue 18)



def test_resume_state_round_trips_through_the_checkpoint_fields_and_keeps_the_best():
    from experiment.resume import ResumeState
    fresh = ResumeState.restore(None)
    assert fresh.checkpoint_fields() == dict(epoch=0, step=0, accum=None,
                                             best=dict(val_acc=-1.0, val_loss=float("inf"), epoch=0))
    assert fresh.record_best(1, 50.0, 1.2)
    assert not fresh.record_best(2, 50.0, 1.3)  # same top-1, higher loss
    assert fresh.record_best(3, 50.0, 1.1) and fresh.best == dict(val_acc=50.0, val_loss=1.1, epoch=3)
    accum = dict(loss_sum=3.0, batches=2, correct=5, seen=8, skipped=1, seconds=4.0, train_seconds=3.5)
    state = ResumeState.restore(dict(epoch=1, step=2, accum=accum, best=fresh.best))
    assert state.epoch_totals().seen == 8
    assert state.checkpoint_fields() == dict(epoch=1, step=2, accum=accum, best=fresh.best)
    state.next_epoch()
    assert (state.epoch, state.step, state.totals) == (2, 0, None)

def test_a_mid_epoch_checkpoint_in_the_earlier_layout_resumes_with_its_running_totals(tmp_path):
    import train
    from experiment.checkpoint import save_checkpoint
    root = make_tree(tmp_path / "audio", per_class=6)  # 12 training clips: 3 steps of 4 per epoch
    train.main(schedule(tmp_path, root, num_epochs=1, swanlab_mode="disabled"))
    run = tmp_path / "runs" / "tiny"
    state = load_checkpoint(run / "last.pt")
    assert set(state) == CHECKPOINT_KEYS and state["accum"] is None
    assert set(state["best"]) == {"val_acc", "val_loss", "epoch"}

    # Ctrl-C after step 1 of epoch 2, as the earlier train.py saved it: totals that stand out in the log
    accum = dict(loss_sum=600.0, batches=1, correct=4, seen=4, skipped=1, seconds=1000.0, train_seconds=1000.0)
    save_checkpoint(dict(state, epoch=1, step=1, accum=accum), run / "last.pt")
    train.main([f"--resume={run}", "--num_epochs=2"])
    row = pd.read_csv(run / "history.csv").iloc[1]
    assert row["train/epoch"] == 2
    assert 200 < row["train/loss"] < 210  # (600 + two ordinary step losses) / 3 steps
    assert row["train/epoch_seconds"] > 1000 and row["data/skipped_clips"] == 1
    assert row["train/acc"] * 12 / 100 == pytest.approx(round(row["train/acc"] * 12 / 100))  # of 4 + 8 clips
    assert row["train/acc"] >= 100 * 4 / 12
    final = load_checkpoint(run / "last.pt")
    assert set(final) == CHECKPOINT_KEYS and (final["epoch"], final["step"], final["accum"]) == (2, 0, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd, timeout: float, nproc: int = 2) -> str:
    """``python -m torch.distributed.run --nproc_per_node=nproc train.py args``; returns its stdout.
    Fails on a non-zero exit or after ``timeout`` seconds (a hang), stopping every rank first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                             f"--master_port={free_port()}", str(ROOT / "train.py"), *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes SIGTERM on to the ranks (each runs in its own session)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"torchrun did not finish in {timeout} s:\n{out[-3000:]}{err[-3000:]}") from None
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


def test_torchrun_two_ranks_gather_validation_and_log_what_one_process_evaluates(tmp_path):
    """``torchrun --nproc_per_node=2`` (gloo on the CPU) with a validation track that has become unreadable
    since it was cached (audio now NaN, cache entry lost): it is rank 1's only track, so rank 1 evaluates no
    window at all while rank 0 evaluates two (this hung while evaluation went through the DDP wrapper, whose
    first forward is a collective). Rank 0 alone writes; the logged metrics equal one process's evaluation
    of best.pt."""
    import train
    from data.index import find_data_root, load_or_build_index
    from data.splits import make_splits
    from experiment.config import parse_config

    root = make_tree(tmp_path / "audio", per_class=5)  # 3 classes: 12 training, 3 validation tracks
    args = tiny_overrides(tmp_path, root, num_epochs=2)
    cfg = parse_config(args, train.CONFIG, train.PRESETS)
    index = load_or_build_index(find_data_root(cfg["data_root"]), Path(cfg["csv_path"]), show_progress=False)
    val = make_splits(index.df, cfg["split"], cfg["val_size"], cfg["test_size"], cfg["split_seed"])["val"]
    broken = val.path.iloc[1]  # rank 1's shard of the validation split: tracks 1, 3, ...
    assert len(val) == 3
    sf.write(broken, np.full(4000, np.nan, dtype=np.float32), 8000, subtype="FLOAT")  # header still fine
    entry = FeatureCache(cfg["cache_dir"], build_features(cfg)[0]).entry(broken)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"not a spectrogram")

    out = torchrun(args, tmp_path, timeout=240)

    # rank 0 alone prints, writes the run folder and logs to SwanLab
    assert "on cpu x2, run folder" in out
    assert out.count("epoch   1/2 |") == 1 and out.count("epoch   2/2 |") == 1
    assert out.count(f"warning: skipped {broken}") == 1
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]
    run = tmp_path / "runs" / "tiny"
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no leftover temp files
    history = pd.read_csv(run / "history.csv")
    assert history["train/epoch"].tolist() == [1, 2]
    assert list(swanlab_metrics(tmp_path / "swanlog")) == ["tiny"]

    # rank 1's skipped track reached rank 0's log; the two readable tracks were all evaluated
    assert history["data/skipped_clips"].tolist() == [1, 1]
    report = json.loads((run / "metrics.json").read_text())["val"]
    assert report["n"] == 2 == sum(map(sum, report["confusion"]))

    # one process, best.pt, the same validation split
    best = load_checkpoint(run / "best.pt")
    best_row = history[history["train/epoch"] == best["epoch"]].iloc[0]
    cfg = best["config"]
    logmel, _ = build_features(cfg)
    data = prepare_data(cfg, logmel, label_names=best["label_names"], show_progress=False)
    _, image = build_features(cfg, best["features"]["norm"]["mean"], best["features"]["norm"]["std"])
    width, hop = window_frames(cfg, logmel)
    val = data.splits["val"]
    loader = DataLoader(TrackDataset(val.path, val.y, data.cache, width, hop, entries=val.entry), batch_size=4,
                        collate_fn=collate_tracks)
    model = build_model(cfg["arch"], len(best["label_names"]), pretrained=False)
    model.load_state_dict(best["model"])
    single = predict_tracks(model, image, loader, torch.device("cpu"))
    assert [s.path for s in single["skipped"]] == [broken] and len(single["labels"]) == 2
    acc = 100 * (single["logits"].argmax(1) == single["labels"]).sum().item() / len(single["labels"])
    assert acc == pytest.approx(100 * report["top1"], abs=1e-9)
    assert acc == pytest.approx(best_row["val/acc"], abs=1e-9)
    assert track_loss(single["logits"], single["labels"]) == pytest.approx(best_row["val/loss"], rel=1e-4)


def test_torchrun_ranks_agree_to_skip_a_step_when_one_rank_has_no_readable_clip(tmp_path):
    """Both clips of rank 1's first batch have become unreadable since they were cached, so rank 1 has
    nothing to train on at step 1 while rank 0 has a full batch. Every rank skips that step together
    (a rank that stepped alone waited for the others in DDP's gradient all-reduce); the run finishes."""
    import train
    from data.dataset import EpochSampler
    from data.index import find_data_root, load_or_build_index
    from data.splits import make_splits
    from experiment.config import parse_config

    root = make_tree(tmp_path / "audio", per_class=5)  # 12 training clips: 6 per rank, 3 steps of 2
    # scale=power: no normalisation pass over the training clips at start-up, which would read them
    args = tiny_overrides(tmp_path, root, num_epochs=1, batch_size=2, confusion_every=0, scale="power")
    cfg = parse_config(args, train.CONFIG, train.PRESETS)
    index = load_or_build_index(find_data_root(cfg["data_root"]), Path(cfg["csv_path"]), show_progress=False)
    part = make_splits(index.df, cfg["split"], cfg["val_size"], cfg["test_size"], cfg["split_seed"])["train"]
    sampler = EpochSampler(len(part), cfg["seed"], rank=1, world_size=2)
    sampler.set_epoch(0)
    first_batch = [part.path.iloc[i] for (i, _), _ in zip(sampler, range(2))]
    for path in first_batch:
        sf.write(path, np.full(4000, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
        entry = FeatureCache(cfg["cache_dir"], build_features(cfg)[0]).entry(path)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_bytes(b"not a spectrogram")

    out = torchrun(args, tmp_path, timeout=180)

    assert out.count("note: skipped training step 1 of epoch 1") == 1  # rank 0 had a batch; it says why
    history = pd.read_csv(tmp_path / "runs" / "tiny" / "history.csv")
    assert history["train/epoch"].tolist() == [1] and history["data/skipped_clips"].tolist() == [2]
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 0)
