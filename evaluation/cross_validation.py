"""k-fold cross-validation summary: the K fold runs' test reports -> mean ± std, pooled confusion matrix.

    python -m evaluation.cross_validation runs/<exp>      # train.py --folds=K: runs/<exp>/fold0 .. fold<K-1>
    python -m evaluation.cross_validation runs/a runs/b ... --out_dir=runs/cv

Each fold's run folder holds ``metrics.json`` with a ``test`` entry (written by ``save_report`` at the end of
training, or by ``evaluate.py``). The summary is the mean and the sample standard deviation (ddof=1) of top-1
accuracy and macro-F1 over the folds, and the pooled confusion matrix (the sum of the folds' matrices: every
track is tested exactly once, so it covers the whole data set). Papers on small benchmarks (GTZAN) report
10-fold mean ± std for this reason (DESIGN.md section 7). Written to ``<out_dir>/cv_summary.json`` and
``<out_dir>/confusion_matrix_cv.png``. Runs made one fold at a time (``--fold=i``, e.g. on a cluster) are
gathered by calling :func:`summarize_folds` (or this command) on their folders.

Predefined folds (the index's ``fold`` column: ESC-50's 5, UrbanSound8K's 10; the fold reports record them as
``predefined_folds``) are named as such in the protocol and the summary line, as the benchmarks' papers
report them. Multi-label folds (reports with ``mAP``) are summarised by mAP, mAUC, d' and macro-F1 mean ± std,
and ``map_cv.png`` shows each fold's mAP instead of a pooled confusion matrix (AP does not pool by summing).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

from data.index import DataError
from evaluation.metrics import bootstrap_intervals, close, plot_confusion_matrix, plt
from experiment.checkpoint import write_atomic


class CrossValidationError(DataError):
    """The fold reports cannot be summarised (a fold missing or twice, labels that differ); the message says which."""


def read_fold(run_dir, split: str = "test") -> dict:
    """The ``split`` entry of ``<run_dir>/metrics.json``. Raises CrossValidationError naming the folder."""
    path = Path(run_dir) / "metrics.json"
    try:
        entry = json.loads(path.read_text()).get(split)
    except (OSError, ValueError) as err:
        raise CrossValidationError(f"{path}: no readable fold report ({type(err).__name__}: {err}). Is the fold "
                                   "missing? Run it (train.py --fold=i) before gathering the folds.") from None
    if not entry or not ("confusion" in entry or "mAP" in entry):
        raise CrossValidationError(f"{path} has no '{split}' report: the fold did not finish. Run it again (train.py "
                                   "--fold=i resumes it) before gathering the folds.")
    return entry


def fold_finished(run_dir, split: str = "test") -> bool:
    """Whether ``<run_dir>/metrics.json`` holds a finished ``split`` report."""
    try:
        read_fold(run_dir, split)
    except CrossValidationError:
        return False
    return True


def fold_run_dirs(parent, split: str = "test") -> list[Path]:
    """``<parent>/fold0`` .. ``fold<K-1>``: the fold runs train.py ``--folds=K`` writes, K read from their reports.

    Raises:
        CrossValidationError: no finished fold under ``parent``, or folds not finished (named, with the
        command that runs or resumes them).
    """
    parent = Path(parent)
    finished = [d for d in sorted(parent.glob("fold*")) if fold_finished(d, split)]
    if not finished:
        raise CrossValidationError(f"{parent} holds no finished fold run (fold<i>/metrics.json with a '{split}' "
                                   "report). Run train.py --folds=K --experiment_name=NAME first.")
    k = int(read_fold(finished[0], split).get("folds", len(finished)))
    missing = [i for i in range(k) if not fold_finished(parent / f"fold{i}", split)]
    if missing:
        raise CrossValidationError(
            f"{parent}: fold(s) {missing} of the {k}-fold cross-validation have not finished. Run each with "
            f"`python train.py --folds={k} --fold=i --experiment_name={parent.name}` (same settings as the other "
            f"folds; a started fold continues with --resume={parent}/fold<i>), then gather again.")
    return [parent / f"fold{i}" for i in range(k)]


def _check_folds(entries: list[dict], run_dirs: list[Path]) -> None:
    """Same label names everywhere; folds 0..K-1 each once when the reports say which fold they are; test
    parts disjoint when the reports record their tracks."""
    names = entries[0].get("label_names")
    for run_dir, e in zip(run_dirs, entries):
        if e.get("label_names") != names:
            raise CrossValidationError(f"{run_dir} was scored on labels {e.get('label_names')}, but {run_dirs[0]} on "
                                       f"{names}: the folds must come from one data set and one label set.")
    k = len(entries)
    folds = [e.get("fold") for e in entries]
    if all(f is not None for f in folds):
        expected = {int(e.get("folds", k)) for e in entries}
        missing = sorted(set(range(max(expected))) - set(folds))
        twice = sorted({f for f in folds if folds.count(f) > 1})
        if expected != {k} or missing or twice:
            raise CrossValidationError(f"the {k} folder(s) hold fold(s) {sorted(folds)} of {sorted(expected)}-fold "
                                       f"cross-validation (missing {missing}, twice {twice}). Pass one folder per "
                                       "fold.")
    tracks = [set(e["splits"]["test"]["tracks"]) for e in entries if "test" in e.get("splits", {})]
    if len(tracks) == k and sum(map(len, tracks)) != len(set().union(*tracks)):
        raise CrossValidationError("the folds' test parts overlap: these runs are not folds of one cross-validation "
                                   "(different data, split_seed or folds?).")


def summarize_folds(run_dirs, out_dir, split: str = "test") -> dict:
    """Summarise K >= 2 fold runs and write ``cv_summary.json`` and ``confusion_matrix_cv.png`` to ``out_dir``.

    Args:
        run_dirs: the K fold run folders, each with ``metrics.json`` holding a ``split`` entry.
        out_dir: where the summary goes (created).
    Returns:
        dict (also ``cv_summary.json``): ``folds`` (K), ``split``, ``label_names``, ``per_fold`` (run_dir,
        fold, n, top1, macro_f1 and their ``*_ci`` per fold), ``top1_mean``, ``top1_std``, ``macro_f1_mean``,
        ``macro_f1_std`` (fractions; std with ddof=1 over folds), ``n`` (tracks over all folds),
        ``pooled_confusion`` (K x K sum, rows: true class), ``pooled_top1`` (its trace / n), ``pooled_top1_ci``
        and ``pooled_macro_f1_ci`` (:func:`pooled_intervals`), ``protocol``, ``png``.
    Raises:
        CrossValidationError: fewer than 2 folders, a folder without a finished ``split`` report, label names
        that differ, folds missing or given twice, overlapping test parts.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise CrossValidationError(f"cross-validation needs at least 2 fold runs, got {len(run_dirs)}")
    entries = [read_fold(d, split) for d in run_dirs]
    _check_folds(entries, run_dirs)
    if "mAP" in entries[0]:
        return summarize_multilabel_folds(entries, run_dirs, Path(out_dir), split)
    names = entries[0]["label_names"]
    top1 = np.array([e["top1"] for e in entries], dtype=float)
    macro_f1 = np.array([e["macro_f1"] for e in entries], dtype=float)
    pooled = np.sum([np.asarray(e["confusion"], dtype=np.int64) for e in entries], axis=0)
    k = len(entries)
    summary = dict(
        folds=k, split=split, label_names=names,
        per_fold=[dict(run_dir=str(d), fold=e.get("fold", i), n=e["n"], top1=e["top1"], macro_f1=e["macro_f1"],
                       top1_ci=e.get("top1_ci"), macro_f1_ci=e.get("macro_f1_ci"))
                  for i, (d, e) in enumerate(zip(run_dirs, entries))],
        top1_mean=float(top1.mean()), top1_std=float(top1.std(ddof=1)),
        macro_f1_mean=float(macro_f1.mean()), macro_f1_std=float(macro_f1.std(ddof=1)),
        n=int(pooled.sum()), pooled_confusion=pooled.tolist(),
        pooled_top1=float(np.trace(pooled) / max(pooled.sum(), 1)),
        **{f"pooled_{key}": value for key, value in pooled_intervals(pooled).items()},
        protocol=(f"{fold_protocol(entries, k)}: each fold's {split} part scored by the checkpoint chosen on that "
                  f"fold's val part ({entries[0].get('protocol', 'per-fold protocol not recorded')}); mean and sample "
                  "standard deviation (ddof=1) over folds; pooled confusion = sum of the folds' matrices"),
    )
    if entries[0].get("predefined_folds"):
        summary["predefined_folds"] = entries[0]["predefined_folds"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = plot_confusion_matrix(pooled, names, f"{k}-fold cross-validation, pooled {split} confusion\n"
                                + textwrap.fill(format_summary(summary), 80))
    summary["png"] = str(out_dir / "confusion_matrix_cv.png")
    fig.savefig(summary["png"])
    close(fig)
    write_atomic(out_dir / "cv_summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def pooled_intervals(pooled: np.ndarray) -> dict[str, list[float]]:
    """The track-bootstrap 95% intervals of top-1 and macro-F1 over every fold's tracks together (each track is
    in one fold's test part once): :func:`evaluation.metrics.bootstrap_intervals` on the (true, predicted) pairs
    that the pooled confusion matrix ``pooled`` [K, K] (int counts, rows: true class) holds. The resampling needs
    only those pairs, so the matrix is enough. Returns ``{"top1_ci": [lo, hi], "macro_f1_ci": [lo, hi]}``."""
    true, pred = np.nonzero(pooled)
    counts = pooled[true, pred]
    return bootstrap_intervals(np.repeat(true, counts), np.repeat(pred, counts), pooled.shape[0])


def fold_protocol(entries: list[dict], k: int) -> str:
    """How the K folds were made: the data's predefined folds (the reports' ``predefined_folds``), or drawn."""
    predefined = entries[0].get("predefined_folds")
    if predefined:
        return (f"{k}-fold cross-validation on the data's predefined folds (the index's fold column: "
                f"{', '.join(map(str, predefined))}), never reshuffled; val drawn inside the training folds")
    return f"{k}-fold cross-validation, group- and label-stratified (scikit-learn StratifiedGroupKFold)"


def summarize_multilabel_folds(entries: list[dict], run_dirs: list[Path], out_dir: Path, split: str) -> dict:
    """:func:`summarize_folds` for multi-label fold reports: ``per_fold`` (run_dir, fold, n, mAP, mAUC, d_prime,
    macro_f1, mAP_ci), ``<metric>_mean`` and ``<metric>_std`` (ddof=1) for mAP, mAUC, d_prime and macro_f1
    (when measured), ``n``, ``protocol`` and ``png`` (``map_cv.png``: each fold's mAP with its interval)."""
    k = len(entries)
    keys = [key for key in ("mAP", "mAUC", "d_prime", "macro_f1") if all(key in e for e in entries)]
    summary = dict(folds=k, split=split, task="multilabel", label_names=entries[0]["label_names"],
                   per_fold=[dict(run_dir=str(d), fold=e.get("fold", i), n=e["n"], mAP_ci=e.get("mAP_ci"),
                                  **{key: e[key] for key in keys}) for i, (d, e) in enumerate(zip(run_dirs, entries))],
                   n=int(sum(e["n"] for e in entries)))
    for key in keys:
        values = np.array([e[key] for e in entries], dtype=float)
        summary[f"{key}_mean"], summary[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1))
    if entries[0].get("predefined_folds"):
        summary["predefined_folds"] = entries[0]["predefined_folds"]
    summary["protocol"] = (f"{fold_protocol(entries, k)}: each fold's {split} part scored by the checkpoint chosen "
                           f"on that fold's val mAP; mean and sample standard deviation (ddof=1) over folds")
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 2), 3.5), dpi=110)
    values = [e["mAP"] for e in entries]
    errors = np.array([[v - e["mAP_ci"][0], e["mAP_ci"][1] - v] if e.get("mAP_ci") else [0, 0]
                       for v, e in zip(values, entries)]).T
    ax.bar(range(k), values, yerr=errors, color="tab:blue", capsize=3)
    ax.axhline(summary["mAP_mean"], color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(k), [str(e.get("fold", i)) for i, e in enumerate(entries)])
    ax.set_xlabel("fold")
    ax.set_ylabel(f"{split} mAP (95% bootstrap CI)")
    ax.set_ylim(0, 1)
    ax.set_title(format_summary(summary), fontsize=8)
    fig.tight_layout()
    summary["png"] = str(out_dir / "map_cv.png")
    fig.savefig(summary["png"])
    close(fig)
    write_atomic(out_dir / "cv_summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def format_summary(summary: dict) -> str:
    """``5-fold CV test top-1 81.2 ± 3.1%, macro-F1 80.4 ± 3.3% (1000 tracks; all tracks 81.2% (95% CI
    78.8–83.6%))`` for consoles and titles (a
    multi-label summary: ``mAP 0.712 ± 0.021, mAUC ...``); ``predefined`` folds say so."""
    s = summary
    kind = "CV on predefined folds" if s.get("predefined_folds") else "CV"
    if s.get("task") == "multilabel":
        return (f"{s['folds']}-fold {kind} {s['split']} mAP {s['mAP_mean']:.3f} ± {s['mAP_std']:.3f}, mAUC "
                f"{s['mAUC_mean']:.3f} ± {s['mAUC_std']:.3f}, d' {s['d_prime_mean']:.2f} ± {s['d_prime_std']:.2f} "
                f"({s['n']} tracks)")
    pooled = ""
    if s.get("pooled_top1_ci"):
        low, high = s["pooled_top1_ci"]
        pooled = f"; all tracks {100 * s['pooled_top1']:.1f}% (95% CI {100 * low:.1f}–{100 * high:.1f}%)"
    return (f"{s['folds']}-fold {kind} {s['split']} top-1 {100 * s['top1_mean']:.1f} ± {100 * s['top1_std']:.1f}%, "
            f"macro-F1 {100 * s['macro_f1_mean']:.1f} ± {100 * s['macro_f1_std']:.1f}% ({s['n']} tracks{pooled})")


def main(argv: list[str] | None = None) -> dict:
    """Command line: gather fold run folders into ``<out_dir>/cv_summary.json``; prints the summary line."""
    p = argparse.ArgumentParser(prog="python -m evaluation.cross_validation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="FOLD_RUN",
                   help="the fold run folders (one per fold), or the one folder train.py --folds=K wrote them to")
    p.add_argument("--out_dir", help="folder for cv_summary.json and confusion_matrix_cv.png (default: that one "
                                     "folder, when given)")
    p.add_argument("--split", default="test", help="the metrics.json entry to summarise (default: test)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    run_dirs, out_dir = args.run_dirs, args.out_dir
    if len(run_dirs) == 1 and not (Path(run_dirs[0]) / "metrics.json").exists():
        run_dirs, out_dir = fold_run_dirs(run_dirs[0], args.split), out_dir or run_dirs[0]
    if not out_dir:
        p.error("--out_dir is required when the fold folders are given one by one")
    summary = summarize_folds(run_dirs, out_dir, args.split)
    print(f"{format_summary(summary)}\nsummary: {Path(out_dir) / 'cv_summary.json'}\n"
          f"{'pooled confusion matrix' if 'pooled_confusion' in summary else 'per-fold mAP'}: {summary['png']}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
