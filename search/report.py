"""A study's files in ``runs/<study>/``: trials.csv, optimization_history.png, param_importances.png, best.json,
and the text of ``sweep.py --status``.
"""
from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path

import pandas as pd
from optuna.trial import TrialState

from evaluation.metrics import close
from experiment.checkpoint import write_atomic
from search.trials import progress, trial_row

VALUE = "best val top-1 (%)"


def trials_frame(study, keys: list[str]) -> pd.DataFrame:
    """One row per trial (search.trials.trial_row), by trial number."""
    now = datetime.now()
    return pd.DataFrame([trial_row(t, keys, now) for t in study.get_trials(deepcopy=False)])


def write_trials_csv(study, keys: list[str], path: Path) -> pd.DataFrame:
    """``path`` (trials.csv) written atomically from the study's current trials; returns the frame."""
    frame = trials_frame(study, keys)
    write_atomic(Path(path), lambda tmp: frame.to_csv(tmp, index=False))
    return frame


def save_plots(study, out_dir: Path) -> dict[str, str]:
    """Optuna's matplotlib plots of the study: ``optimization_history.png`` (each completed trial's value and the
    best so far; Optuna leaves pruned trials out, so they are added as grey crosses at their best val top-1
    before they stopped) and ``param_importances.png`` (PED-ANOVA, Optuna 5's default, over the completed
    trials). Returns {name: PNG path, or why it could not be drawn (e.g. fewer than two completed trials)}."""
    from optuna.visualization import matplotlib as ovm
    out = {}
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(study, target_name=VALUE)
            if name == "optimization_history":
                add_pruned(ax, study)
            fig = ax.figure
            fig.set_size_inches(9.0, 4.5)
            fig.tight_layout()
            path = Path(out_dir) / f"{name}.png"
            write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
            close(fig)
            out[name] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            out[name] = f"not drawn: {err}"
    return out


def add_pruned(ax, study) -> None:
    """Grey crosses on an optimization-history axes: each pruned trial's best val top-1 before it stopped."""
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned], [max(t.intermediate_values.values()) for t in pruned], marker="x",
                   color="grey", label="pruned (best val before it stopped)", zorder=3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1.0))


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, written atomically."""
    write_atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def test_text(test: dict) -> str:
    """``test top-1 69.40% (95% CI 65.2-73.6%), macro-F1 64.15%, 500 tracks`` from the study's record of the best
    trial's test score (sweep.evaluate_best: a 95% interval, or the std over folds)."""
    spread = (f"95% CI {test['top1_ci'][0]:.1f}-{test['top1_ci'][1]:.1f}%" if "top1_ci" in test else
              f"± {test['top1_std']:.1f} over folds")
    return f"test top-1 {test['top1']:.2f}% ({spread}), macro-F1 {test['macro_f1']:.2f}%, {test['n']} tracks"


def status_text(study, keys: list[str], n_trials: int | None, where: str) -> str:
    """What ``sweep.py --status`` prints: counts, the best trial so far, and the trials table."""
    trials = study.get_trials(deepcopy=False)
    done = progress(trials)[0]
    states = pd.Series([t.state.name.lower() for t in trials]).value_counts().to_dict()
    total = f" of {n_trials}" if n_trials else ""
    lines = [f"study {study.study_name} ({where}): {done}{total} trials finished; "
             + ", ".join(f"{v} {k}" for k, v in sorted(states.items()))]
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    if completed:
        best = max(completed, key=lambda t: t.value)
        lines.append(f"best so far: t{best.number}, {VALUE} {best.value:.2f}: "
                     + ", ".join(f"{k}={v!r}" for k, v in best.params.items()))
        if best.user_attrs.get("command"):
            lines.append(f"  {best.user_attrs['command']}")
    test = study.user_attrs.get("test", {})
    if "top1" in test:
        lines.append(f"the best trial t{test['trial']}, evaluated once at the end: {test_text(test)}")
    if trials:
        frame = trials_frame(study, keys).drop(columns=["run_dir"])
        with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", 60):
            lines.append(frame.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return "\n".join(lines)
