"""Never lose a run: Ctrl-C, kill -9 at random moments, non-finite loss, failing disk, failing SwanLab."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import ROOT, make_tree, swanlab_metrics, tiny_overrides
from experiment.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def start_training(args, tmp_path):
    """train.py in a subprocess (own session, so signals reach only it); stdout+stderr to a log file."""
    log = open(tmp_path / f"train-{time.monotonic_ns()}.log", "w")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=tmp_path, env=env, start_new_session=True)
    proc.log_path = log.name
    return proc


def wait_for(predicate, timeout=120.0, proc=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}):\n{open(proc.log_path).read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def slow_overrides(tmp_path, root, **extra):
    """Small batches and many epochs: most of the wall time is spent inside a training epoch."""
    return tiny_overrides(tmp_path, root, batch_size=2, num_epochs=40, **extra)


def test_ctrl_c_saves_last_pt_finishes_swanlab_and_exits_130_then_resume_completes(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=6)
    run = tmp_path / "runs" / "tiny"
    proc = start_training(slow_overrides(tmp_path, root), tmp_path)
    wait_for(lambda: (run / "history.csv").exists(), proc=proc)  # one epoch done: we are inside epoch 2
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, open(proc.log_path).read()[-3000:]
    output = open(proc.log_path).read()
    assert "Interrupt: stopping after this step" in output and "--resume=" in output
    state = load_checkpoint(run / "last.pt")
    history = pd.read_csv(run / "history.csv")
    assert state["epoch"] == len(history) >= 1
    assert 0 <= state["step"] <= 9  # 18 training clips in batches of 2
    metrics = swanlab_metrics(tmp_path / "swanlog")["tiny"]  # written at finish: the run was closed
    assert [v for _, v in metrics["train/epoch"]] == history["train/epoch"].tolist()

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--resume={run}", "--num_epochs=3"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert pd.read_csv(run / "history.csv")["train/epoch"].tolist() == [1, 2, 3]


def test_kill_9_at_random_moments_leaves_a_loadable_checkpoint_and_resume_finishes(tmp_path):
    """SIGKILL a few times while epochs (and so checkpoint writes) follow each other quickly."""
    root = make_tree(tmp_path / "audio", per_class=6)
    run = tmp_path / "runs" / "tiny"
    args = tiny_overrides(tmp_path, root, num_epochs=6, batch_size=16)
    delays = [0.0, 0.15, 0.4]
    for i, delay in enumerate(delays):
        proc = start_training(args if i == 0 else [f"--resume={run}"], tmp_path)
        before = load_checkpoint(run / "last.pt")["epoch"] if i else 0
        wait_for(lambda: (run / "last.pt").exists() and load_checkpoint(run / "last.pt")["epoch"] > before,
                 proc=proc)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        state = load_checkpoint(run / "last.pt")  # never torn
        assert state["epoch"] >= 1
    final = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--resume={run}"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    history = pd.read_csv(run / "history.csv")
    assert history["train/epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run / "last.pt")["epoch"] == 6


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_checkpoints(tmp_path):
    import train
    root = make_tree(tmp_path / "audio", per_class=6)
    with pytest.raises(train.TrainingError, match=r"non-finite loss at epoch 1, step 1 .*--learning_rate"):
        train.main(tiny_overrides(tmp_path, root, learning_rate=float("inf")))  # step 0 makes the weights inf
    assert not (tmp_path / "runs" / "tiny" / "last.pt").exists()  # no checkpoint of a broken model


def test_failing_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A read-only folder: the write fails, the message says so, the previous file is kept."""
    import experiment.checkpoint as checkpoint
    path = tmp_path / "last.pt"
    save_checkpoint(dict(model={"w": torch.ones(2)}, config={}, label_names=["a"]), path)

    def read_only(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint, "open", read_only, raising=False)
    with pytest.raises(CheckpointError, match=r"last.pt .*Permission denied.*previous checkpoint there is unchanged"):
        save_checkpoint(dict(model={"w": torch.zeros(2)}, config={}, label_names=["a"]), path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_every_swanlab_call_raising_does_not_stop_training(tmp_path, monkeypatch, capsys):
    import swanlab

    import train

    def broken(*args, **kwargs):
        raise ConnectionError("tracker down")

    for name in ("init", "log", "finish", "Image"):
        monkeypatch.setattr(swanlab, name, broken)
    root = make_tree(tmp_path / "audio", per_class=6)
    summary = train.main(tiny_overrides(tmp_path, root, swanlab_mode="cloud"))
    out = capsys.readouterr().out
    assert out.count("SwanLab init failed (ConnectionError: tracker down)") == 1
    assert summary["summary/best_val_acc"] >= 0
    assert len(pd.read_csv(tmp_path / "runs" / "tiny" / "history.csv")) == 2
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "best.pt")["label_names"] == ["chirp", "pulses", "tone"]


def test_swanlab_failing_after_a_good_init_is_reported_once(tmp_path, monkeypatch, capsys):
    import swanlab

    import train

    def broken(*args, **kwargs):
        raise ConnectionError("network hiccup")

    monkeypatch.setattr(swanlab, "log", broken)
    monkeypatch.setattr(swanlab, "finish", broken)
    root = make_tree(tmp_path / "audio", per_class=6)
    try:
        train.main(tiny_overrides(tmp_path, root))
    finally:
        monkeypatch.undo()
        swanlab.finish()  # the real run is still open and hooks sys.stdout; close it for the next tests
    out = capsys.readouterr().out
    assert out.count("SwanLab log failed (ConnectionError: network hiccup)") == 1
    assert out.count("SwanLab finish failed") == 1
    assert len(pd.read_csv(tmp_path / "runs" / "tiny" / "history.csv")) == 2


def test_stop_request_takes_one_ctrl_c_quits_on_the_second_and_restores_the_previous_handler():
    from experiment.resume import StopRequest
    previous = signal.getsignal(signal.SIGINT)
    stop = StopRequest(announce=False).install()
    try:
        assert signal.getsignal(signal.SIGINT) != previous and not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) == previous
