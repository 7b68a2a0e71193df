"""What a study's trials count for: which are finished (and count toward ``n_trials``), which are still to come,
and one row per trial for trials.csv and ``sweep.py --status``.

A trial counts toward the study's ``n_trials`` when it completed, was pruned, or failed with a training error
(user attribute ``error``, e.g. a non-finite loss: that configuration was tried). A trial whose worker died or
was interrupted (failed without ``error``) does not count: a copy with its parameters is queued and counts when
it finishes. A trial started after the study was full (``surplus``; two workers asked at the same moment) is
failed before it trains and does not count either. A trial that crashed (any other exception, e.g. the data went
missing) does not count and is not retried: the worker stops with the error.
"""
from __future__ import annotations

from datetime import datetime

from optuna.trial import FrozenTrial, TrialState

ACTIVE = (TrialState.RUNNING, TrialState.WAITING)


def counts(trial: FrozenTrial) -> bool:
    """Whether ``trial`` counts toward ``n_trials`` (see the module docstring)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def progress(trials: list[FrozenTrial]) -> tuple[int, int, int]:
    """(counted, running, waiting) over ``trials``."""
    return (sum(counts(t) for t in trials), sum(t.state == TrialState.RUNNING for t in trials),
            sum(t.state == TrialState.WAITING for t in trials))


def note(trial: FrozenTrial) -> str:
    """Why a trial is in the state it is, when the state alone does not say (retries, errors, prunes)."""
    parts = []
    if "failed_trial" in trial.system_attrs:
        parts.append(f"retry of t{trial.system_attrs['failed_trial']}")
    if trial.user_attrs.get("surplus"):
        parts.append("surplus: the study was full when it started; not trained")
    elif "error" in trial.user_attrs:
        parts.append(f"error: {trial.user_attrs['error']}")
    elif "crash" in trial.user_attrs:
        parts.append(f"crashed, not counted: {trial.user_attrs['crash']}")
    elif trial.state == TrialState.FAIL:
        parts.append("interrupted or its worker died; queued again with the same parameters")
    if trial.state == TrialState.PRUNED and "pruned" in trial.user_attrs:
        parts.append(trial.user_attrs["pruned"])
    return "; ".join(parts)


def trial_row(trial: FrozenTrial, keys: list[str], now: datetime | None = None) -> dict:
    """One trials.csv row: number, state, best val top-1 (%; for a pruned or running trial, the best epoch so
    far), epochs run, minutes, the parameters (``keys``), the worker, the run folder and a note."""
    seen = list(trial.intermediate_values.values())
    if trial.state == TrialState.COMPLETE:
        value = trial.value
    else:
        value = max(seen) if seen else None
    end = trial.datetime_complete or (now or datetime.now())
    minutes = (end - trial.datetime_start).total_seconds() / 60 if trial.datetime_start else None
    ran = trial.state != TrialState.WAITING  # a queued retry carries the attributes of the trial it repeats
    return dict(number=trial.number, state=trial.state.name.lower(), best_val_acc=value, epochs=len(seen),
                minutes=None if minutes is None else round(minutes, 2),
                **{k: trial.params.get(k) for k in keys}, worker=trial.user_attrs.get("worker", "") if ran else "",
                run_dir=trial.user_attrs.get("run_dir", "") if ran else "", note=note(trial))
