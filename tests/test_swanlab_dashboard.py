"""Two tiny runs into one local SwanLab folder, then `swanlab watch` serves both with config and metrics."""
from __future__ import annotations

import socket

import pytest

import train
from conftest import make_tree, tiny_overrides
from experiment.dashboard import get_json, serve_dashboard


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    root = make_tree(tmp / "audio", per_class=6)
    train.main(tiny_overrides(tmp, root, experiment_name="", learning_rate=1e-3, swanlab_project="compare"))
    train.main(tiny_overrides(tmp, root, experiment_name="", learning_rate=3e-4, arch="resnet34",
                              swanlab_project="compare"))
    return tmp / "swanlog"


def test_default_experiment_names_tell_runs_apart(two_runs):
    from conftest import swanlab_metrics
    names = sorted(swanlab_metrics(two_runs))
    assert len(names) == 2
    assert names[0].startswith("resnet18-32px-lr0.001-") and names[1].startswith("resnet34-32px-lr0.0003-")


def test_swanlab_watch_serves_both_experiments_with_config_and_metrics(two_runs):
    with serve_dashboard(two_runs) as url:
        port = int(url.rsplit(":", 1)[1])
        project = get_json(f"{url}/api/v1/project")["data"]
        assert project["name"] == "compare"
        experiments = {e["name"]: e for e in project["experiments"]}
        assert len(experiments) == 2
        archs = sorted(e["config"]["arch"]["value"] for e in experiments.values())
        assert archs == ["resnet18", "resnet34"]
        for e in experiments.values():
            assert e["config"]["environment"]["value"]["label_names"] == ["chirp", "pulses", "tone"]
            detail = get_json(f"{url}/api/v1/experiment/{e['id']}")["data"]
            assert detail["name"] == e["name"]
            for key in ("val/acc", "train/loss"):
                tag = get_json(f"{url}/api/v1/experiment/{e['id']}/tag/{key}")["data"]
                steps = [row["index"] for row in tag["list"]]
                assert steps == [1, 2], (key, tag)
                assert all(isinstance(row["data"], (int, float)) for row in tag["list"])
    with socket.socket() as s:  # the server is gone once the block ends
        assert s.connect_ex(("127.0.0.1", port)) != 0
