"""Hyperparameter sweeps over train.py's CONFIG with Optuna: TPE search, pruning through the real training loop,
a study database that any number of workers share, and every trial as a SwanLab experiment in one group.

    python sweep.py --space=search/fsdd.yaml --preset=fsdd --n_trials=16           # a worker; start it again to add one
    CUDA_VISIBLE_DEVICES=1 python sweep.py --space=search/fsdd.yaml --preset=fsdd --n_trials=16   # 2nd GPU, same study
    python sweep.py --space=s.yaml --storage=postgresql://user:pass@db-host/optuna ...   # workers on many machines
    python sweep.py --status runs/fsdd                                              # where a study stands, any time

The space is a YAML file, one line per CONFIG key (search/space.py): a list is categorical, ``{low, high}`` a
float or int range (by the type of the key's default), with ``log: true`` or ``step``. Every other
``--key=value`` (and ``--preset``) is the base config of every trial, as for train.py. A bad space or override
is an error before any training.

Each trial is an in-process ``train.run_training`` (one process per worker): run folder
``runs/<study>/<study>-t<k>/``, SwanLab experiment ``<study>-t<k>`` in group ``<study>`` with the trial's
parameters in its config. In-process, the pruner sees every epoch through run_training's ``on_epoch`` hook and
stops a hopeless trial at once (experiment.hooks.StopTraining): its history ends there, SwanLab shows it
aborted with ``summary/pruned_epoch``, its ``trial.json`` says pruned. A subprocess per trial would isolate
crashes and memory, but a trial's errors are caught here anyway, its memory is freed when it returns, and a
worker that dies is handled by the heartbeat; in-process keeps pruning a plain function call.

The study lives in ``runs/<study>/study.journal`` (Optuna's JournalFileBackend, which Optuna's documentation
recommends over SQLite for several processes), or in ``--storage=URL`` (search/storage.py says why and how).
``--n_trials`` is the total for the study over all workers; running the same command again after Ctrl-C or
``kill -9`` continues it: an interrupted trial, or one whose worker stopped sending heartbeats, is failed and
queued again with the same parameters.

Selection is on val only: a trial's value is its best val top-1 (%), the mean over folds with ``--folds=K``, and
trials score best.pt on val at their end (``--final_test=False``). When the study is complete, the best trial's
best.pt is evaluated once on the test split, with its 95% interval (with folds: each fold's test part, mean ± std).
``runs/<study>/`` then holds trials.csv, optimization_history.png, param_importances.png and best.json, and
the console prints the command that reproduces the best trial.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from tqdm import tqdm

import train
from data import DataError
from data.splits import split_parts
from experiment.checkpoint import CheckpointError, load_checkpoint
from experiment.config import ConfigError, explicit_keys, parse_value
from experiment.hooks import StopTraining
from experiment.tracking import Tracker
from search.report import VALUE, save_plots, status_text, test_text, write_json, write_trials_csv
from search.space import SearchSpace, SpaceError, load_space
from search.storage import JOURNAL_NAME, MAX_RETRY, describe, fail_stale_trials, is_url, open_storage
from search.trials import ACTIVE, counts, progress

# train.py keys that sweep.py sets for every trial: not searchable, not given on the command line.
PER_TRIAL = ("experiment_name", "swanlab_group", "final_test", "resume", "fold")
NOT_SEARCHED = PER_TRIAL + ("out_dir", "preset", "folds", "swanlab_project", "swanlab_mode", "swanlab_logdir")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


class SurplusTrial(RuntimeError):
    """A trial started after the study already had ``n_trials`` trials counted or under way (two workers asked
    for a trial at the same moment); it is failed before training and does not count."""


@dataclass
class Sweep:
    """One worker's view of the study: its name and folder, the space, the trials' base command line and
    config, the study total, and the storage."""
    study: str
    folder: Path
    space: SearchSpace
    train_argv: list[str]
    cfg: dict
    n_trials: int
    storage: str
    heartbeat: int

    def trial_argv(self, params: dict) -> list[str]:
        """The train.py arguments of a trial: the base command line and the trial's parameters."""
        return self.train_argv + [f"--{k}={format_value(v)}" for k, v in params.items()]

    def run_args(self, number: int) -> list[str]:
        """What sweep.py adds for trial ``number``: its run name and folder, the group, val-only final report."""
        return [f"--experiment_name={self.study}-t{number}", f"--out_dir={self.folder}",
                f"--swanlab_group={self.study}", "--final_test=False"]

    @property
    def full_epochs(self) -> int:
        """Epochs of one unpruned trial (all folds)."""
        return self.cfg["num_epochs"] * max(self.cfg["folds"], 1)


def format_value(value) -> str:
    """A value as ``--key=value`` text that parse_value reads back exactly (repr for floats)."""
    return repr(value) if isinstance(value, float) else str(value)


def command(argv: list[str]) -> str:
    """The train.py command line for ``argv``, quoted for a POSIX shell."""
    return shlex.join(["python", "train.py", *argv])


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(sweep options, train.py's --key=value arguments)."""
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any other --key=value is train.py's (python train.py --help lists them).")
    p.add_argument("--space", help="YAML search space: one line per CONFIG key, a list or {low, high[, log][, step]}")
    p.add_argument("--study", help="study name: runs/<study>/ and the SwanLab group (default: the space file's name)")
    p.add_argument("--n_trials", type=int, default=20, help="trials in the whole study, all workers together")
    p.add_argument("--storage", help=f"database URL (postgresql://..., mysql+pymysql://..., sqlite:///file.db) or a "
                                     f"journal file (default: <out_dir>/<study>/{JOURNAL_NAME})")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (default), random, or grid over lists "
                                                                     "and stepped ranges")
    p.add_argument("--sampler_seed", type=int, help="seed of the sampler; give it with one worker only (workers "
                                                    "with one seed propose the same first trials)")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="median (default), hyperband or none")
    p.add_argument("--prune_warmup", type=int, default=2, help="median: the earliest epoch after which a trial may "
                                                               "be pruned (default 2)")
    p.add_argument("--prune_startup", type=int, default=4, help="median: trials that finish unpruned before any is "
                                                                "pruned (default 4)")
    p.add_argument("--baseline", type=lambda s: parse_value("baseline", s, True), default=True,
                   help="run the base config's own values as the first trial, to compare against (default True)")
    p.add_argument("--heartbeat", type=int, default=60, help="seconds between heartbeats of a running trial; a trial "
                                                             "silent for twice this is failed and run again")
    p.add_argument("--status", metavar="STUDY_DIR", help="print where the study in STUDY_DIR stands and exit")
    return p.parse_known_args(argv)


def prepare(args: argparse.Namespace, train_argv: list[str]) -> Sweep:
    """Check everything before any training: the train.py overrides, the space, every value it can take.

    Raises:
        ConfigError: a bad override, or one that sweep.py sets per trial (PER_TRIAL); --space missing; bad
            --n_trials, --heartbeat or study name.
        SpaceError: a bad space, a searched key also fixed on the command line, a value train.py rejects,
            a grid over a continuous range.
    """
    given = explicit_keys(train_argv)
    owned = sorted(given & set(PER_TRIAL))
    if owned:
        raise ConfigError(f"--{owned[0]} is set by sweep.py for each trial; drop it")
    cfg, _ = train.read_config(train_argv)
    if not args.space:
        raise ConfigError("--space=FILE.yaml is required: one line per CONFIG key to search (see search/space.py)")
    space = load_space(args.space, train.CONFIG, reserved=NOT_SEARCHED)
    fixed = [k for k in space.keys if k in given]
    if fixed:
        raise SpaceError(f"search space, {fixed[0]}: it is searched, and also fixed by --{fixed[0]} on the command "
                         "line; drop one of the two")
    for p in space.params:
        for value in p.choices or (p.low, p.high):
            try:
                train.read_config([*train_argv, f"--{p.key}={format_value(value)}"])
            except (ConfigError, ValueError) as err:
                raise SpaceError(f"search space, {p.key}={value!r}: {err}") from None
    if args.sampler == "grid":
        space.grid()
    study = args.study or Path(args.space).stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
        raise ConfigError(f"--study={study}: use letters, digits, '_', '.' and '-' (it names a folder)")
    if args.n_trials < 1 or args.heartbeat < 1:
        raise ConfigError("--n_trials and --heartbeat must be at least 1")
    folder = Path(cfg["out_dir"]) / study
    return Sweep(study, folder, space, list(train_argv), cfg, args.n_trials,
                 args.storage or str(folder / JOURNAL_NAME), args.heartbeat)


def make_sampler(args: argparse.Namespace, sweep: Sweep) -> optuna.samplers.BaseSampler:
    """TPE (its random start-up: a third of the trials, 4 to 10, so a short study still gets modelled
    proposals; Optuna's default is 10), random, or grid (in a seeded random order)."""
    if args.sampler == "grid":
        return optuna.samplers.GridSampler(sweep.space.grid(), seed=args.sampler_seed)
    if args.sampler == "random":
        return optuna.samplers.RandomSampler(seed=args.sampler_seed)
    return optuna.samplers.TPESampler(n_startup_trials=max(4, min(10, sweep.n_trials // 3)), seed=args.sampler_seed)


def make_pruner(args: argparse.Namespace, sweep: Sweep) -> optuna.pruners.BasePruner:
    """Median (a trial whose best val top-1 so far is below the median of earlier trials at the same epoch is
    stopped, after ``prune_startup`` trials and from epoch ``prune_warmup`` on), Hyperband (successive halving
    from 1 epoch to a full trial, reduction factor 3) or none. The step is the epoch, counted over folds."""
    if args.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=args.prune_startup, n_warmup_steps=args.prune_warmup)
    if args.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=sweep.full_epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, sampler, pruner, baseline: bool) -> optuna.Study:
    """Create the study or join it; a study started with another space is an error (its trials would not be
    comparable). The first worker queues the baseline trial (the base config's values) when asked and when
    the space contains them."""
    storage = open_storage(sweep.storage, sweep.heartbeat)
    study = optuna.create_study(study_name=sweep.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    lines = sweep.space.describe()
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", lines)
        study.set_user_attr("train_argv", sweep.train_argv)
    elif recorded != lines:
        raise SpaceError(f"study {sweep.study} in {describe(sweep.storage)} was started with another space:\n  "
                         + "\n  ".join(recorded) + "\nnot:\n  " + "\n  ".join(lines)
                         + "\nUse another --study name, or the study's own space.")
    elif study.user_attrs.get("train_argv") != sweep.train_argv:
        print(f"note: study {sweep.study} was started with the train.py arguments {study.user_attrs['train_argv']}; "
              f"this worker's are {sweep.train_argv}", flush=True)
    if baseline and not study.get_trials(deepcopy=False):
        outside = sweep.space.outside(sweep.cfg)
        if isinstance(sampler, optuna.samplers.GridSampler):
            print("note: no separate baseline trial with the grid sampler", flush=True)
        elif outside:
            print(f"note: no baseline trial: the base config's {', '.join(outside)} lies outside the space",
                  flush=True)
        else:
            study.enqueue_trial({k: sweep.cfg[k] for k in sweep.space.keys}, user_attrs={"baseline": True},
                                skip_if_exists=True)
    return study


class Objective:
    """One trial: its parameters, then train.run_training in this process (K of them with ``--folds=K``), with
    an ``on_epoch`` hook that reports val top-1 to Optuna and raises StopTraining when the pruner says so.
    ``current``: the number of the trial in progress (None between trials); ``epochs``: the epochs it has run."""

    def __init__(self, sweep: Sweep):
        self.sweep, self.current, self.epochs = sweep, None, 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.current, self.epochs = trial.number, 0
        check_not_surplus(trial, self.sweep.n_trials)
        params = self.sweep.space.suggest(trial)
        argv = self.sweep.trial_argv(params)
        run_dir = self.sweep.folder / f"{self.sweep.study}-t{trial.number}"
        trial.set_user_attr("command", command(argv))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("run_dir", str(run_dir))
        record = dict(trial=trial.number, study=self.sweep.study, params=params, command=command(argv))
        try:
            value = self.train(trial, argv + self.sweep.run_args(trial.number))
        except StopTraining as stop:
            trial.set_user_attr("pruned", stop.reason)
            write_json(run_dir / "trial.json", dict(record, state="pruned", reason=stop.reason, epochs=self.epochs))
            raise optuna.TrialPruned(stop.reason) from None
        except train.TrainingError as err:
            trial.set_user_attr("error", str(err))
            write_json(run_dir / "trial.json", dict(record, state="fail", error=str(err)))
            raise
        except KeyboardInterrupt:
            write_json(run_dir / "trial.json", dict(record, state="interrupted"))
            raise
        except Exception as err:
            trial.set_user_attr("crash", f"{type(err).__name__}: {err}")
            raise
        finally:
            for last in run_dir.rglob("last.pt"):  # only --resume reads it, and a trial is never resumed
                last.unlink()
        write_json(run_dir / "trial.json", dict(record, state="complete", best_val_acc=value, epochs=self.epochs))
        return value

    def train(self, trial: optuna.Trial, argv: list[str]) -> float:
        """Best val top-1 (%) of the trial's run, or the mean over its folds; pruning steps count epochs over
        the folds (fold i's epoch e is step i * num_epochs + e)."""
        folds, epochs = self.sweep.cfg["folds"], self.sweep.cfg["num_epochs"]
        if not folds:
            return train.run_training(train.read_config(argv)[0], on_epoch=self.hook(trial, 0))["summary/best_val_acc"]
        values = []
        for i in range(folds):
            summary = train.run_training(train.read_config([*argv, f"--fold={i}"])[0],
                                         on_epoch=self.hook(trial, i * epochs))
            values.append(summary["summary/best_val_acc"])
            trial.set_user_attr("fold_best_val_acc", values)
        return float(np.mean(values))

    def hook(self, trial: optuna.Trial, offset: int):
        """The on_epoch hook of one run: report val top-1 at step ``offset + epoch``, stop if the pruner says so."""
        best = 0.0

        def on_epoch(epoch: int, metrics: dict) -> None:
            nonlocal best
            self.epochs, best = self.epochs + 1, max(best, metrics["val/acc"])
            trial.report(metrics["val/acc"], offset + epoch)
            if trial.should_prune():
                raise StopTraining("pruned", f"pruned after epoch {epoch}: best val top-1 so far {best:.1f}%, "
                                             "below what the pruner keeps at that epoch")
        return on_epoch


def check_not_surplus(trial: optuna.Trial, n_trials: int) -> None:
    """Raise SurplusTrial when ``n_trials`` trials with lower numbers are counted or under way: trial numbers are
    handed out atomically by the storage, so exactly ``n_trials`` trials pass."""
    ahead = sum(1 for t in trial.study.get_trials(deepcopy=False)
                if t.number < trial.number and (counts(t) or t.state in ACTIVE))
    if ahead >= n_trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number}: the study already has its {n_trials} trials")


def work(study: optuna.Study, sweep: Sweep, objective: Objective) -> bool:
    """Run trials until the study has ``n_trials`` counted ones (search.trials.counts). When the rest are running
    in other workers, wait for them: one that stops sending heartbeats is failed and queued again, and this
    worker runs it. A progress bar counts the study's finished trials. Returns whether this worker writes the
    report: it ran the trial that completed the study, or found the study complete; not when another worker
    completed it while this one waited."""
    done = progress(study.get_trials(deepcopy=False))[0]
    bar = tqdm(total=sweep.n_trials, initial=min(done, sweep.n_trials), desc=f"study {sweep.study}", unit="trial")
    said = False  # waiting for other workers' trials
    try:
        while True:
            fail_stale_trials(study)
            done, running, waiting = progress(study.get_trials(deepcopy=False))
            bar.n = min(done, sweep.n_trials)
            bar.refresh()
            if done >= sweep.n_trials:
                return not said
            if not waiting and done + running >= sweep.n_trials:
                if not said:
                    tqdm.write(f"waiting for {running} trial(s) running in other workers; one whose worker died is "
                               f"run again here after {2 * sweep.heartbeat} s without a heartbeat")
                    said = True
                time.sleep(min(sweep.heartbeat, 5))
                continue
            said = False
            study.optimize(objective, n_trials=1, catch=(train.TrainingError, SurplusTrial), gc_after_trial=True)
            if objective.current is not None:
                tqdm.write(trial_line(study.trials[objective.current], sweep))
            objective.current = None
    finally:
        bar.close()


def trial_line(trial: optuna.trial.FrozenTrial, sweep: Sweep) -> str:
    """One console line for a finished trial."""
    params = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    epochs = f"{len(trial.intermediate_values)}/{sweep.full_epochs} epochs"
    if trial.state == TrialState.COMPLETE:
        return f"t{trial.number} complete: {VALUE} {trial.value:.2f} ({epochs}) | {params}"
    if trial.state == TrialState.PRUNED:
        return f"t{trial.number} pruned ({epochs}): {trial.user_attrs.get('pruned', '')} | {params}"
    reason = trial.user_attrs.get("error") or ("surplus" if trial.user_attrs.get("surplus") else "")
    return f"t{trial.number} {trial.state.name.lower()}: {reason} | {params}"


def requeue(study: optuna.Study, number: int | None) -> None:
    """Queue an interrupted trial again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback, as
    for a dead worker's trial), so that the next run of the command continues with it."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=True)[number]
    if trial.state == TrialState.FAIL and not counts(trial) and "crash" not in trial.user_attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def evaluate_best(sweep: Sweep, best: optuna.trial.FrozenTrial) -> dict:
    """The best trial's best.pt on the test split, once (evaluate.py; with folds, each fold's test part and
    their mean ± std). Returns dict(top1, macro_f1 in %, their 95% intervals or the std over folds, n, protocol),
    or dict(note) when the split has no test part or the trial ran on another machine."""
    import evaluate
    from evaluation.cross_validation import summarize_folds
    run_dir = Path(best.user_attrs["run_dir"])
    if "test" not in split_parts(sweep.cfg):
        return dict(note=f"split={sweep.cfg['split']} has no test part: the best val top-1 is the only score, and it "
                         f"is optimistic (it chose the winner); use --split=stratified or --folds=K for a test score")
    folds = [run_dir / f"fold{i}" for i in range(sweep.cfg["folds"])] or [run_dir]
    if not all((d / "best.pt").exists() for d in folds):
        return dict(note=f"{run_dir} is not on this machine (worker {best.user_attrs.get('worker')}); evaluate it "
                         f"there: python evaluate.py {run_dir} --split=test")
    outs = [evaluate.main([str(d), "--split=test", "--swanlab_mode=disabled"])["metrics"] for d in folds]
    if len(outs) == 1:
        m = outs[0]
        return dict(top1=100 * m["top1"], top1_ci=[100 * x for x in m["top1_ci"]], macro_f1=100 * m["macro_f1"],
                    macro_f1_ci=[100 * x for x in m["macro_f1_ci"]], n=m["n"],
                    protocol="held-out test split, evaluated once, for the best trial only (chosen on val)")
    s = summarize_folds(folds, run_dir)
    return dict(top1=100 * s["top1_mean"], top1_std=100 * s["top1_std"], macro_f1=100 * s["macro_f1_mean"],
                macro_f1_std=100 * s["macro_f1_std"], n=s["n"], per_fold=s["per_fold"],
                protocol=f"each fold's test part, evaluated once, for the best trial only; {s['protocol']}")


def finish(study: optuna.Study, sweep: Sweep) -> dict:
    """The study is complete: trials.csv, the two plots, the best trial's test score (computed once and kept in
    the study), best.json, a SwanLab experiment ``<study>-summary`` in the group, and the console report with
    the command that reproduces the best trial. Returns best.json's dict."""
    trials = study.get_trials(deepcopy=False)
    write_trials_csv(study, sweep.space.keys, sweep.folder / "trials.csv")
    counted = [t for t in trials if counts(t)]
    epochs = sum(len(t.intermediate_values) for t in counted)
    starts = [t.datetime_start for t in counted if t.datetime_start]
    ends = [t.datetime_complete for t in counted if t.datetime_complete]
    out = dict(study=sweep.study, storage=describe(sweep.storage), n_trials=sweep.n_trials,
               states={s.name.lower(): sum(t.state == s for t in counted) for s in (TrialState.COMPLETE,
                                                                                   TrialState.PRUNED, TrialState.FAIL)},
               epochs_run=epochs, epochs_without_pruning=len(counted) * sweep.full_epochs,
               epochs_saved_percent=round(100 * (1 - epochs / max(len(counted) * sweep.full_epochs, 1)), 1),
               wall_minutes=round((max(ends) - min(starts)).total_seconds() / 60, 2) if starts and ends else None,
               space=sweep.space.describe())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        write_json(sweep.folder / "best.json", out)
        print(f"no trial of study {sweep.study} completed; see {sweep.folder / 'trials.csv'}")
        return out
    best = study.best_trial
    test, first = study.user_attrs.get("test", {}), False
    if test.get("trial") != best.number:  # evaluated once: a worker that finishes later reads it from the study
        test, first = dict(trial=best.number, **evaluate_best(sweep, best)), True
        study.set_user_attr("test", test)
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    out.update(best=dict(trial=best.number, best_val_acc=best.value, params=best.params,
                         command=best.user_attrs["command"], run_dir=best.user_attrs["run_dir"]),
               val_note=f"the best val top-1 is optimistic: it chose the winner among {len(counted)} trials on this "
                        "same val split; the test score is the estimate to quote",
               test=test, plots=save_plots(study, sweep.folder),
               baseline=dict(trial=baseline.number, best_val_acc=baseline.value) if baseline else None)
    write_json(sweep.folder / "best.json", out)
    if first:
        log_summary(sweep, out)
    print(f"\nstudy {sweep.study}: {len(counted)} trials ({', '.join(f'{v} {k}' for k, v in out['states'].items())}), "
          f"{epochs} of {out['epochs_without_pruning']} epochs run ({out['epochs_saved_percent']}% saved by pruning), "
          f"{out['wall_minutes']} min")
    if baseline:
        print(f"baseline (the base config, t{baseline.number}): {VALUE} {baseline.value:.2f}")
    print(f"best trial t{best.number}: {VALUE} {best.value:.2f} ({out['val_note']})")
    print(f"{test_text(test)}: {test['protocol']}" if "top1" in test else test["note"])
    print(f"files: {sweep.folder / 'trials.csv'}, {sweep.folder / 'best.json'}, "
          + ", ".join(p for p in out["plots"].values() if p.endswith(".png")))
    print(f"reproduce the best trial:\n  {best.user_attrs['command']}")
    return out


def log_summary(sweep: Sweep, out: dict) -> None:
    """A SwanLab experiment ``<study>-summary`` in the study's group: the best val and test scores as scalars
    and the two plots as images (in the best trial's SwanLab project)."""
    project = sweep.cfg["swanlab_project"]
    if not project:
        try:
            project = load_checkpoint(Path(out["best"]["run_dir"]) / ("fold0" if sweep.cfg["folds"] else "")
                                      / "best.pt")["swanlab_project"]
        except (OSError, CheckpointError, KeyError):
            project = "sweeps"
    tracker = Tracker(sweep.folder)
    config = dict(best=out["best"], space=out["space"], n_trials=out["n_trials"], storage=out["storage"])
    tracker.start(project, f"{sweep.study}-summary", config, sweep.cfg["swanlab_mode"], sweep.cfg["swanlab_logdir"],
                  group=sweep.study)
    test = {f"sweep/test_{k}": v for k, v in out["test"].items() if k in ("top1", "macro_f1")}
    scalars = {"sweep/best_val_acc": out["best"]["best_val_acc"],
               "sweep/epochs_saved_percent": out["epochs_saved_percent"], **test}
    if "top1_ci" in out["test"]:
        low, high = out["test"]["top1_ci"]
        scalars |= {"sweep/test_top1_ci_low": low, "sweep/test_top1_ci_high": high}
    tracker.log(scalars, step=1)
    for name, path in out["plots"].items():
        if path.endswith(".png"):
            tracker.log_figure(f"sweep/{name}", path, 1, name.replace("_", " "))
    tracker.finish("success")


def status(study_dir: str, storage: str | None) -> str:
    """``--status``: the text of search.report.status_text for the study whose folder is ``study_dir``.

    Raises:
        FileNotFoundError: no sweep.json there (not a study folder).
        ConfigError: the study's database URL is recorded without its password: pass --storage.
    """
    import json
    path = Path(study_dir) / "sweep.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --status takes the folder of a study, runs/<study>/, where "
                                "sweep.py writes sweep.json when it starts")
    meta = json.loads(path.read_text())
    storage = storage or meta["storage"]
    if is_url(storage) and "***" in storage:
        raise ConfigError(f"study {meta['study']} is in {storage}; pass --storage=URL with the password")
    study = optuna.load_study(study_name=meta["study"], storage=open_storage(storage))
    return status_text(study, meta["keys"], meta["n_trials"], describe(storage))


def main(argv: list[str] | None = None, pruner: optuna.pruners.BasePruner | None = None) -> dict:
    """Run one worker of the sweep the command line describes; returns best.json's dict once the study is
    complete. ``pruner`` (Python use) replaces the one ``--pruner`` names.

    Raises:
        ConfigError, SpaceError: bad options, overrides or space (before any training).
        KeyboardInterrupt: Ctrl-C; the interrupted trial is queued again, so the same command continues.
    """
    args, train_argv = parse_args(sys.argv[1:] if argv is None else argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial outcomes: our own lines
    if args.status:
        print(status(args.status, args.storage))
        return {}
    sweep = prepare(args, train_argv)
    study = open_study(sweep, make_sampler(args, sweep), pruner or make_pruner(args, sweep), args.baseline)
    if args.sampler == "grid":
        sweep.n_trials = min(sweep.n_trials, int(np.prod([len(v) for v in sweep.space.grid().values()])))
    worker = shlex.join(["python", "sweep.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(sweep.folder / "sweep.json", dict(study=sweep.study, storage=describe(sweep.storage),
                                                 n_trials=sweep.n_trials, keys=sweep.space.keys,
                                                 space=sweep.space.describe(), train_argv=sweep.train_argv,
                                                 worker_command=worker,
                                                 updated=datetime.now().isoformat(timespec="seconds")))
    print(f"study {sweep.study}: {sweep.n_trials} trials in {describe(sweep.storage)}; run folders in {sweep.folder}/."
          f"\nMore workers: start this same command again (other shells, GPUs with CUDA_VISIBLE_DEVICES, machines "
          f"sharing --storage). Progress: python sweep.py --status {sweep.folder}", flush=True)
    objective = Objective(sweep)
    try:
        reporter = work(study, sweep, objective)
    except KeyboardInterrupt:
        requeue(study, objective.current)
        print(f"\nInterrupted; nothing is lost. Run the same command to continue study {sweep.study}"
              + (f" (trial {objective.current} runs again with its parameters)." if objective.current is not None
                 else "."), flush=True)
        raise
    if not reporter:
        print(f"study {sweep.study} is complete. The worker that ran its last trial scores the best trial on test and "
              f"writes the report; read it with: python sweep.py --status {sweep.folder}", flush=True)
        return {}
    return finish(study, sweep)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (ConfigError, DataError, FileNotFoundError, ImportError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
