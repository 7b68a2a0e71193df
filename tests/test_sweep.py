"""sweep.py: a bad space fails before training, naming the key; a pruned trial stops at once (fewer epochs, state
pruned, SwanLab closed as aborted with summary/pruned_epoch); two worker processes on one journal run exactly
n_trials distinct trials and the printed best command reproduces the best val top-1; a worker killed mid-trial
leaves a trial that the next run fails and runs again, completing the study. Tiny data, 1-3 epochs a trial."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

import sweep
import train
from conftest import ROOT, make_tree, swanlab_metrics, tiny_overrides
from experiment.config import ConfigError
from search.space import SpaceError, load_space


def sweep_args(tmp, root, space: str, study: str, **extra) -> list[str]:
    """sweep.py's arguments for a tiny study: the space file written under ``tmp``, train.py's tiny overrides
    (stratified split with a test part) and ``extra`` sweep options or overrides."""
    path = tmp / f"{study}.yaml"
    path.write_text(space)
    options = {k: extra.pop(k) for k in list(extra) if k in ("n_trials", "pruner", "heartbeat", "baseline",
                                                              "prune_startup", "prune_warmup")}
    base = [a for a in tiny_overrides(tmp, root, split="stratified", val_size=0.3, test_size=0.3, **extra)
            if not a.startswith("--experiment_name=")]
    return [f"--space={path}", f"--study={study}", *(f"--{k}={v}" for k, v in options.items()), *base]


def load(tmp, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp / "runs" / study / "study.journal"))))


def start_worker(args: list[str], log) -> subprocess.Popen:
    """``python sweep.py ARGS`` in its own process (one torch thread), output to the open file ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=env)


@pytest.mark.parametrize("space, fragment", [
    ("learning_rat: {low: 1e-4, high: 1e-2}", "'learning_rat'. Did you mean learning_rate"),
    ("learning_rate: {low: 1e-2, high: 1e-4}", "learning_rate: low 0.01 is above high 0.0001"),
    ("weight_decay: {low: 0, high: 0.1, log: true}", "weight_decay: a log range needs low > 0"),
    ("time_mask: {low: 0.5, high: 20}", "time_mask: --time_mask=0.5: expected int"),
    ("arch: {low: 1, high: 2}", "arch: a range needs a numeric key"),
    ("mixup_alpha: {low: 0, hgh: 0.5}", "mixup_alpha: a range has low and high"),
    ("arch: [resnet18, resnet9000]", "arch='resnet9000'"),
    ("grad_accum_steps: [0, 2]", "grad_accum_steps=0: --grad_accum_steps=0: use 1"),
    ("experiment_name: [a, b]", "experiment_name is set by the sweep"),
    ("learning_rate: 1e-3", "learning_rate: '1e-3' is neither a list"),
    ("seed: [1, 1]", "seed: a choice is listed twice"),
])
def test_a_bad_space_fails_before_training_naming_the_key(tmp_path, space, fragment):
    with pytest.raises(SpaceError) as err:
        sweep.main(sweep_args(tmp_path, tmp_path / "no-audio-needed", space, "bad"))
    assert fragment in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_space_types_follow_the_config_and_conflicts_are_errors(tmp_path):
    space = load_space({"learning_rate": {"low": "1e-4", "high": 1e-2, "log": True}, "time_mask": {"low": 0,
                        "high": 20, "step": 5}, "augment": [True, False]}, train.CONFIG)
    assert [(p.key, p.kind) for p in space.params] == [("learning_rate", "float"), ("time_mask", "int"),
                                                       ("augment", "categorical")]
    assert space.params[0].low == 1e-4 and space.params[1].values() == [0, 5, 10, 15, 20]
    assert space.outside(dict(train.CONFIG, time_mask=40)) == ["time_mask=40"]
    with pytest.raises(SpaceError, match="learning_rate: it is searched, and also fixed by --learning_rate"):
        sweep.main(sweep_args(tmp_path, tmp_path, "learning_rate: [1e-3, 1e-2]", "both", learning_rate=1e-3))
    with pytest.raises(SpaceError, match="mixup_alpha: the grid sampler needs a list or a range with a step"):
        sweep.main(["--sampler=grid"] + sweep_args(tmp_path, tmp_path, "mixup_alpha: {low: 0, high: 1}", "g"))
    with pytest.raises(ConfigError, match="--fold is set by sweep.py"):
        sweep.main(sweep_args(tmp_path, tmp_path, "seed: [1, 2]", "f", fold=0))


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report and nothing else: the pruning path without depending on what tiny
    data learns in an epoch."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_a_pruned_trial_stops_at_once_and_says_so(tmp_path, one_thread, monkeypatch):
    import swanlab
    calls = []
    init, finish = swanlab.init, swanlab.finish
    monkeypatch.setattr(swanlab, "init", lambda **kw: calls.append(("init", kw["name"], kw.get("group"))) or init(**kw))
    monkeypatch.setattr(swanlab, "finish", lambda state="success", **kw: calls.append(("finish", state))
                        or finish(state=state, **kw))
    root = make_tree(tmp_path / "audio")
    out = sweep.main(sweep_args(tmp_path, root, "mixup_alpha: [0.0, 0.2]\n", "pr", n_trials=2, num_epochs=3),
                     pruner=PruneTrialOne())
    trials = load(tmp_path, "pr").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[0].user_attrs["baseline"] and trials[0].params == {"mixup_alpha": 0.2}  # the config's own value
    folder = tmp_path / "runs" / "pr"
    history = [pd.read_csv(folder / f"pr-t{i}" / "history.csv") for i in (0, 1)]
    assert [len(h) for h in history] == [3, 1]
    record = json.loads((folder / "pr-t1" / "trial.json").read_text())
    assert record["state"] == "pruned" and record["epochs"] == 1 and "pruned after epoch 1" in record["reason"]
    assert not list(folder.rglob("last.pt")) and (folder / "pr-t1" / "best.pt").exists()
    assert ("init", "pr-t1", "pr") in calls and ("init", "pr-summary", "pr") in calls
    assert calls[calls.index(("init", "pr-t1", "pr")) + 1] == ("finish", "aborted")
    assert swanlab_metrics(tmp_path / "swanlog")["pr-t1"]["summary/pruned_epoch"] == [(1, 1)]
    table = pd.read_csv(folder / "trials.csv")
    assert table.state.tolist() == ["complete", "pruned"] and table.epochs.tolist() == [3, 1]
    # selection on val, then one test evaluation of the winner, with its interval
    assert out["best"]["trial"] == 0 and out["epochs_run"] == 4 and out["epochs_without_pruning"] == 6
    assert out["test"]["n"] > 0 and len(out["test"]["top1_ci"]) == 2
    metrics = json.loads((folder / "pr-t0" / "metrics.json").read_text())
    assert "final_test=False" in metrics["val"]["protocol"] and metrics["test"]["evaluated_by"] == "evaluate.py"


def test_workers_share_one_study_survive_kill_9_and_print_a_command_that_reproduces_the_best(tmp_path, one_thread,
                                                                                          capsys):
    """Worker A is killed (SIGKILL) mid-trial; the same command started twice more (workers B and C, two
    processes on one journal) fails A's trial once its heartbeat is stale, runs it again with the same
    parameters, and completes the study with exactly n_trials counted trials, shared by B and C."""
    root = make_tree(tmp_path / "audio")
    args = sweep_args(tmp_path, root, "weight_decay: {low: 1e-4, high: 0.3, log: true}\n", "duo", n_trials=3,
                      pruner="none", heartbeat=1, num_epochs=2, swanlab_mode="disabled")
    folder = tmp_path / "runs" / "duo"
    history = folder / "duo-t0" / "history.csv"
    with open(tmp_path / "a.log", "w") as log:
        worker = start_worker(args, log)
        deadline = time.time() + 120
        while not history.exists() and worker.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert history.exists(), (tmp_path / "a.log").read_text()
    assert [t.state.name for t in load(tmp_path, "duo").trials] == ["RUNNING"]  # left behind by the dead worker
    logs = [open(tmp_path / f"{name}.log", "w") for name in "bc"]
    workers = [start_worker(args, log) for log in logs]
    codes = [w.wait(timeout=240) for w in workers]
    outputs = [(tmp_path / f"{name}.log").read_text() for name in "bc"]
    assert codes == [0, 0], outputs
    trials = load(tmp_path, "duo").trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3 + ["FAIL"] and trials[0].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params and retry[0].user_attrs["baseline"]
    assert len({t.user_attrs["worker"] for t in trials[1:]}) == 2  # B and C both ran trials
    table = pd.read_csv(folder / "trials.csv")
    assert len(table) == 4 and "worker died" in table.note[0] and f"retry of t0" in table.note[retry[0].number]
    assert (folder / "optimization_history.png").stat().st_size > 10_000
    assert (folder / "param_importances.png").stat().st_size > 10_000
    best = json.loads((folder / "best.json").read_text())
    assert best["best"]["best_val_acc"] == max(t.value for t in trials if t.value is not None)
    assert best["states"] == {"complete": 3, "pruned": 0, "fail": 0} and len(best["test"]["top1_ci"]) == 2
    printed = [m for out in outputs for m in re.findall(r"reproduce the best trial:\n  (.+)", out)]
    assert printed and printed[0] == best["best"]["command"]
    summary = train.main(shlex.split(printed[0])[2:] + ["--experiment_name=again"])
    assert summary["summary/best_val_acc"] == pytest.approx(best["best"]["best_val_acc"])
    capsys.readouterr()
    sweep.main(["--status", str(folder)])
    status = capsys.readouterr().out
    assert "3 of 3 trials finished; 3 complete, 1 fail" in status and f"best so far: t{best['best']['trial']}" in status
