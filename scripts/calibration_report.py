"""Measure what a run's probabilities are worth: calibration on its test split, the selective-classification
table, and how well "unknown" catches recordings of something else (open-set).

    python scripts/calibration_report.py --run=runs/fsdd-calibration --out_of_set=../shared/gtzan-mini/genres_original \
        --run=runs/gtzan-calibration --out_of_set=../shared/fsdd --json=calibration_report.json

Each ``--run`` (a run folder or checkpoint) is paired with the ``--out_of_set`` folder after it (audio of
none of its classes, searched recursively). For each run, from its checkpoint alone:

- the run's val and test splits are rebuilt (as evaluate.py does) and scored, window logits averaged per track;
- the temperature is the checkpoint's (fitted on val at the end of training); a checkpoint without one gets
  one fitted on val here, in memory (evaluate.py would store it);
- ECE (15 bins) and NLL raw and calibrated on test, the coverage table on test (calibrated);
- a threshold P chosen on val: the calibrated confidence that answers ``--keep`` (default 95%) of the val
  tracks (so about 5% of in-set recordings are refused: the "95% true-positive rate" operating point used
  for out-of-distribution detection since Liang et al. 2018);
- open-set: the AUROC of the top probability, test tracks (in-set) against the out-of-set files, raw and
  calibrated (Hendrycks & Gimpel 2017), and at P the fraction of out-of-set files answered ``unknown``, of
  test tracks answered ``unknown``, and the top-1 on the test tracks still answered.

``--limit`` out-of-set files at most (a seeded random sample, default 500), each cut into the run's windows
exactly as predict.py does. Prints one block per run and a Markdown table; ``--json`` writes every number.
Read-only: nothing in the run folders changes.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import prepare_data  # noqa: E402
from data.audio import AudioError  # noqa: E402
from evaluate import data_config, evaluate_split  # noqa: E402
from evaluation import forward_windows  # noqa: E402
from evaluation.calibration import (ECE_BINS, expected_calibration_error, fit_calibration,  # noqa: E402
                                    negative_log_likelihood, softmax)
from evaluation.classifier import Classifier  # noqa: E402
from evaluation.selective import (confidence_for_coverage, coverage_table, coverage_text,  # noqa: E402
                                  open_set_auroc, rejected_fraction)
from predict import find_audio  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="a run folder or checkpoint (repeatable)")
    p.add_argument("--out_of_set", action="append", required=True,
                   help="a folder of audio outside the run's classes, one per --run, in the same order")
    p.add_argument("--keep", type=float, default=0.95, help="fraction of val tracks the threshold P answers")
    p.add_argument("--limit", type=int, default=500, help="out-of-set files at most (seeded random sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the out-of-set sample")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if len(args.run) != len(args.out_of_set):
        p.error(f"give one --out_of_set per --run ({len(args.run)} runs, {len(args.out_of_set)} folders)")
    return args


def file_logits(clf: Classifier, files: list[str]) -> tuple[np.ndarray, list[str]]:
    """Window-averaged logits float64 [N, K] of each readable file (predict.py's windows) and the files used."""
    rows, used = [], []
    for path in files:
        try:
            windows = clf.windows(clf.spectrogram(path, min_seconds=clf.min_seconds))
        except AudioError as err:
            print(f"skipped {path}: {err.reason}", file=sys.stderr)
            continue
        rows.append(forward_windows(clf.model, clf.input_transform, windows, clf.device).mean(0).cpu().double())
        used.append(path)
    return torch.stack(rows).numpy(), used


def report(run: str, out_of_set: str, args) -> dict:
    """Every number of one run (see the module docstring)."""
    clf = Classifier.from_checkpoint(run, args.device)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    none = argparse.Namespace(data_root=None, csv_path=None, cache_dir=None)
    data = prepare_data(data_config(clf.config, none, run_dir), clf.frontend, label_names=clf.label_names,
                        show_progress=False)
    batch = clf.config["batch_size"]
    test_split = "test" if "test" in data.splits else "val"
    val = evaluate_split(clf, data, "val", batch, show_progress=False)
    test = val if test_split == "val" else evaluate_split(clf, data, test_split, batch, show_progress=False)
    record = clf.meta.get("calibration")
    fitted_here = record is None
    if fitted_here:
        record = fit_calibration(val["logits"], val["labels"])
    t = record["temperature"]
    z_val, z_test, y_test = val["logits"].double().numpy(), test["logits"].double().numpy(), test["labels"].numpy()
    p_min = confidence_for_coverage(softmax(z_val, t).max(1), args.keep)

    files, _ = find_audio([out_of_set])
    rng = np.random.default_rng(args.seed)
    if len(files) > args.limit:
        files = sorted(rng.choice(files, args.limit, replace=False).tolist())
    z_out, used = file_logits(clf, files)
    conf_test_raw, conf_out_raw = softmax(z_test).max(1), softmax(z_out).max(1)
    conf_test, conf_out = softmax(z_test, t).max(1), softmax(z_out, t).max(1)
    answered = conf_test >= p_min
    right = softmax(z_test).argmax(1) == y_test
    guesses = Counter(clf.label_names[i] for i in z_out.argmax(1)).most_common(3)
    return dict(
        run=str(run), experiment=clf.meta.get("experiment_name"), classes=len(clf.label_names),
        temperature=t, fitted_here=fitted_here, fit_tracks=record["tracks"], test_split=test_split,
        test_tracks=int(len(y_test)), test_top1=float(right.mean()), ece_bins=ECE_BINS,
        ece_before=expected_calibration_error(softmax(z_test), y_test),
        ece_after=expected_calibration_error(softmax(z_test, t), y_test),
        nll_before=negative_log_likelihood(z_test, y_test), nll_after=negative_log_likelihood(z_test, y_test, t),
        val_ece_before=record["ece_before"], val_ece_after=record["ece_after"],
        coverage=coverage_table(softmax(z_test, t), y_test),
        keep=args.keep, min_confidence=p_min,
        out_of_set=str(out_of_set), out_of_set_files=len(used),
        out_of_set_labels=[(label, n / len(used)) for label, n in guesses],
        mean_confidence_test=float(conf_test.mean()), mean_confidence_out=float(conf_out.mean()),
        auroc_raw=open_set_auroc(conf_test_raw, conf_out_raw), auroc=open_set_auroc(conf_test, conf_out),
        out_of_set_rejected=rejected_fraction(conf_out, p_min), test_rejected=rejected_fraction(conf_test, p_min),
        test_top1_answered=float(right[answered].mean()) if answered.any() else float("nan"))


def text(r: dict) -> str:
    """A console block for one run's numbers."""
    return (f"{r['experiment']} ({r['run']}): {r['classes']} classes, {r['test_tracks']} {r['test_split']} tracks, "
            f"top-1 {100 * r['test_top1']:.1f}%\n"
            f"temperature {r['temperature']:.3f} ({'fitted here' if r['fitted_here'] else 'from the checkpoint'}, "
            f"{r['fit_tracks']} val tracks); val ECE {100 * r['val_ece_before']:.1f}% -> "
            f"{100 * r['val_ece_after']:.1f}%\n"
            f"{r['test_split']} ECE ({r['ece_bins']} bins) {100 * r['ece_before']:.1f}% raw -> "
            f"{100 * r['ece_after']:.1f}% calibrated; NLL {r['nll_before']:.3f} -> {r['nll_after']:.3f}\n"
            f"{coverage_text(r['coverage'], r['test_split'])}\n"
            f"open set: {r['out_of_set_files']} files of {r['out_of_set']}, called "
            + ", ".join(f"{label} {100 * share:.0f}%" for label, share in r["out_of_set_labels"])
            + f"; mean top probability {r['mean_confidence_out']:.3f} (test: {r['mean_confidence_test']:.3f}); "
            f"AUROC of the top probability {r['auroc_raw']:.3f} raw, {r['auroc']:.3f} calibrated\n"
            f"P = {r['min_confidence']:.3f} (answers {100 * r['keep']:g}% of val): rejects "
            f"{100 * r['out_of_set_rejected']:.1f}% of the out-of-set files and {100 * r['test_rejected']:.1f}% of "
            f"{r['test_split']}, whose top-1 on the answered ones is {100 * r['test_top1_answered']:.1f}%")


def markdown(results: list[dict]) -> str:
    """One Markdown table row per run."""
    head = ("| run | test tracks | top-1 | T | ECE raw -> calibrated | top-1 at 50 / 80 / 90 / 100% coverage | "
            "out-of-set | AUROC raw / calibrated | P (95% of val) | out-of-set rejected | test rejected |\n"
            "|---|---:|---:|---:|---|---|---|---|---:|---:|---:|")
    rows = []
    for r in results:
        cov = " / ".join(f"{100 * c['top1']:.1f}%" for c in r["coverage"])
        rows.append(f"| {r['experiment']} | {r['test_tracks']} | {100 * r['test_top1']:.1f}% | "
                    f"{r['temperature']:.2f} | {100 * r['ece_before']:.1f}% -> {100 * r['ece_after']:.1f}% | {cov} | "
                    f"{r['out_of_set_files']} files | {r['auroc_raw']:.3f} / {r['auroc']:.3f} | "
                    f"{r['min_confidence']:.3f} | {100 * r['out_of_set_rejected']:.1f}% | "
                    f"{100 * r['test_rejected']:.1f}% |")
    return "\n".join([head, *rows])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = [report(run, out, args) for run, out in zip(args.run, args.out_of_set)]
    for r in results:
        print(text(r) + "\n")
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\n{args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
