"""The tracker's SwanLab mode: an empty SWANLAB_MODE in the environment counts as unset."""
from __future__ import annotations

import os

from conftest import swanlab_metrics
from experiment.tracking import Tracker


def test_empty_swanlab_mode_variable_is_unset_and_the_explicit_mode_wins(tmp_path, monkeypatch, capsys):
    """SwanLab validates SWANLAB_MODE even when ``mode=`` is passed, and rejects an empty one; the tracker
    drops the empty variable so that ``--swanlab_mode=local`` writes its files."""
    monkeypatch.setenv("SWANLAB_MODE", "")
    tracker = Tracker(tmp_path / "run")
    tracker.start("project", "empty-env", {"learning_rate": 1e-3}, mode="local", log_dir=str(tmp_path / "swanlog"))
    tracker.log_epoch({"train/epoch": 1, "train/loss": 0.75}, step=1)
    tracker.finish()
    assert "SwanLab init failed" not in capsys.readouterr().out
    assert tracker.mode == "local"
    assert "SWANLAB_MODE" not in os.environ
    assert swanlab_metrics(tmp_path / "swanlog")["empty-env"]["train/loss"] == [(1, 0.75)]
