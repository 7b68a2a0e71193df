"""Score trained models as taggers on a multi-label CSV: any model's probabilities, ranked per class.

    python scripts/score_tagging.py --csv=.cache/fsdd_mixtures/mixtures.csv \
        --model multilabel=runs/mix-ml-s0 --model multilabel=runs/mix-ml-s1 \
        --model softmax=runs/mix-sl-s0 --model softmax=runs/mix-sl-s1 --json=tagging.json

The CSV is a multi-label index with a ``split`` column (``path,label,split``; labels joined with ';', e.g.
scripts/fsdd_mixtures.py's mixtures.csv). Each ``--model NAME=RUN`` (a run folder or checkpoint; several with
one NAME are seeds of one model) is loaded from its checkpoint alone (evaluation.classifier.Classifier), its
classes matched to the CSV's labels by name, and every track of ``--split`` (default test) and of val is cut
into the model's windows and scored, window logits averaged per track as in evaluation. The scores are the
model's own probabilities: the sigmoid of a multi-label model, the (calibrated) softmax of a single-label one,
which competes across classes and so has to share its mass between the digits of a mixture.

Per model: mAP with its 95% bootstrap interval over tracks, mAUC, d', and micro/macro-F1 at per-class
thresholds tuned F1-optimal on the val tracks with that model's probabilities (for a multi-label model exactly
the thresholds it stores; evaluation.multilabel). Per NAME: mean ± sample std (ddof=1) over its runs. Prints a
Markdown table; ``--json`` writes every number. Read-only: nothing in the run folders changes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import prepare_data  # noqa: E402
from data.dataset import TrackDataset, collate_tracks  # noqa: E402
from data.index import read_index  # noqa: E402
from evaluation import predict_tracks  # noqa: E402
from evaluation.classifier import Classifier  # noqa: E402
from evaluation.multilabel import multilabel_metrics, tune_thresholds  # noqa: E402
from evaluation.metrics import BOOTSTRAP_RESAMPLES  # noqa: E402
from experiment.checkpoint import write_atomic  # noqa: E402

METRICS = ("mAP", "mAUC", "d_prime", "micro_f1", "macro_f1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/score_tagging.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="multi-label index CSV with a split column (train/val/test)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=RUN",
                   help="a model to score: NAME=<run folder or checkpoint>; repeat (same NAME: its seeds)")
    p.add_argument("--split", default="test", help="the part scored (default test); val tunes the thresholds")
    p.add_argument("--cache_dir", default=None, help="spectrogram cache (default: each checkpoint's)")
    p.add_argument("--json", default=None, help="write every number to this file")
    args = p.parse_args(argv)
    if any("=" not in m for m in args.model):
        p.error("--model takes NAME=RUN")
    return args


def track_probabilities(clf: Classifier, data, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, K], multi-hot targets [N, K]) of every track of ``split``, window logits averaged."""
    part = data.splits[split]
    tracks = TrackDataset(part.path, part.y, data.cache, clf.window, clf.hop, entries=part.entry)
    out = predict_tracks(clf.model, clf.input_transform, DataLoader(tracks, batch_size=32, collate_fn=collate_tracks),
                         clf.device)
    return clf.probabilities(out["logits"]).numpy(), out["labels"].numpy()


def score(run: str, args: argparse.Namespace) -> dict:
    """One model's metrics on ``args.split``, thresholds tuned on val with its own probabilities."""
    clf = Classifier.from_checkpoint(run, "cpu")
    csv = Path(args.csv).resolve()
    cfg = dict(clf.config, data_root=str(csv.parent), csv_path=str(csv), split="predefined", folds=0, task="multilabel",
               group_pattern="", rebuild_index=False, cache_dir=args.cache_dir or clf.config["cache_dir"])
    data = prepare_data(cfg, clf.frontend, label_names=clf.label_names, index=read_index(csv), show_progress=False,
                        num_workers=torch.multiprocessing.cpu_count() or 1)
    val_p, val_y = track_probabilities(clf, data, "val")
    p, y = track_probabilities(clf, data, args.split)
    m = multilabel_metrics(y, p, clf.label_names, tune_thresholds(val_y, val_p), BOOTSTRAP_RESAMPLES)
    return dict(run=str(run), task=clf.task.name, tracks=m["n"], mAP_ci=m["mAP_ci"], **{k: m[k] for k in METRICS})


def summarise(rows: list[dict]) -> dict:
    """Mean and sample std (ddof=1; 0 for one run) of every metric over one model's runs."""
    out = {}
    for key in METRICS:
        values = np.array([r[key] for r in rows], dtype=float)
        out[key] = dict(mean=float(values.mean()), std=float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return out


def table(scored: dict[str, list[dict]], split: str) -> str:
    """Markdown: one line per model (mean ± std over runs, and each run's mAP with its interval)."""
    lines = [f"| model | runs | {split} mAP | mAUC | d' | micro-F1 | macro-F1 | mAP per run (95% CI) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, rows in scored.items():
        s = summarise(rows)
        cell = {k: f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in ("mAP", "mAUC")}
        cell["d_prime"] = f"{s['d_prime']['mean']:.2f} ± {s['d_prime']['std']:.2f}"
        cell |= {k: f"{100 * s[k]['mean']:.1f} ± {100 * s[k]['std']:.1f}%" for k in ("micro_f1", "macro_f1")}
        runs = "; ".join(f"{r['mAP']:.3f} ({r['mAP_ci'][0]:.3f}-{r['mAP_ci'][1]:.3f})" for r in rows)
        lines.append(f"| {name} ({rows[0]['task']}) | {len(rows)} | {cell['mAP']} | {cell['mAUC']} | {cell['d_prime']} | "
                     f"{cell['micro_f1']} | {cell['macro_f1']} | {runs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Score every model; returns {NAME: {"runs": [...], "summary": {...}}}."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    scored: dict[str, list[dict]] = {}
    for spec in args.model:
        name, run = spec.split("=", 1)
        row = score(run, args)
        print(f"{name}: {run}: {args.split} mAP {row['mAP']:.3f} ({row['mAP_ci'][0]:.3f}-{row['mAP_ci'][1]:.3f}), "
              f"mAUC {row['mAUC']:.3f}, micro-F1 {100 * row['micro_f1']:.1f}%", flush=True)
        scored.setdefault(name, []).append(row)
    print(f"\n{table(scored, args.split)}")
    result = {name: dict(runs=rows, summary=summarise(rows)) for name, rows in scored.items()}
    if args.json:
        write_atomic(Path(args.json), lambda tmp: tmp.write_text(json.dumps(dict(csv=args.csv, split=args.split,
                                                                                 models=result), indent=2)))
    return result


if __name__ == "__main__":
    main()
