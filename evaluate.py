"""Evaluate a trained checkpoint on a split of its data, or on any labelled folder or CSV: top-1, macro-F1
with 95% bootstrap intervals, per-class table, confusion matrix; for a multi-label model mAP (with its
interval), mAUC, d', micro/macro-F1 at its per-class thresholds, the per-class table and AP chart.

    python evaluate.py runs/<experiment>                    # its best.pt, on test (val when the run has none)
    python evaluate.py runs/<experiment>/last.pt --split=val
    python evaluate.py runs/<experiment> --data_root=/new/place/GTZAN    # the data moved since training
    python evaluate.py runs/<experiment> --data_root=other/ --split=all  # every track of a labelled folder
    python evaluate.py runs/<experiment> --csv=other.csv --errors=wrong.csv  # a CSV (path,label); list the errors

For train/val/test, the split is rebuilt from the checkpoint's config (data_root, split, val_size, test_size,
split_seed, group_pattern, folds, fold) with the checkpoint's label names, so it is the split training used;
the track list saved in the checkpoint is compared with it and any difference is reported. Results go to the
run folder: confusion_matrix_<split>.png and the <split> entry of metrics.json.

--split=all scores every track of --data_root (<label>/<audio> folders), of --csv (columns path,label; paths
relative to the CSV's folder), or of the training data when neither is given. Labels are matched to the
checkpoint's label names by name: a label the model does not know is an error listing both sets; classes the
model knows that the data lacks are reported. Tracks the model saw in training (its train or val part) are
counted and named in the protocol. Results never touch the run's own metrics.json: they go to --out_dir
(default <run folder>/eval_<data folder or CSV name>/): index.csv, confusion_matrix_all.png and the "all"
entry of its metrics.json.

Every track is cut into clip_seconds windows every eval_hop_seconds and the model's logits are averaged over
them, the same code as training's validation (evaluation.predict_tracks). Prints the metrics with their 95%
intervals (percentile bootstrap over tracks, evaluation.metrics.bootstrap_intervals) and scikit-learn's
per-class table. --errors=FILE writes the misclassified recordings (path, true label, top-3 labels with
calibrated probabilities) as CSV, to listen to them.

Calibration (evaluation.calibration): the checkpoint's temperature, fitted on the run's val split at the end
of training, gives the calibrated probabilities; the report adds the expected calibration error (15 bins)
raw and calibrated, the selective-classification table (top-1 on the 50/80/90/100% most confident tracks and
the --min_confidence reaching each) and reliability_<split>.png. A checkpoint without a temperature (trained
before calibration existed) gets one fitted on its val split and stored in it (atomically; nothing else in
the file changes); --calibrate fits it again.

Multi-label checkpoints (experiment/tasks.py): the metrics are per track as above, mAP as the mean of
scikit-learn's per-class average precision over the classes with a positive (evaluation.multilabel); the
decision rule is one threshold per class, F1-optimal on the run's val split, stored in best.pt under
``thresholds`` at the end of training (fitted here and stored when missing; --calibrate tunes them again);
F1 on val is then optimistic. The report is average_precision_<split>.png and the per-class table (AP, AUC,
support, threshold, precision, recall, F1); --errors lists the tracks whose predicted label set differs from
their labels. No temperature: softmax calibration does not apply to independent labels.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sklearn.metrics import f1_score

from data import DataError, prepare_data
from data.dataset import TrackDataset, collate_tracks
from data.index import read_index
from data.splits import split_parts
from evaluation import predict_tracks
from evaluation.classifier import Classifier
from evaluation.metrics import BOOTSTRAP_RESAMPLES, close
from experiment.checkpoint import CheckpointError, store_entry, write_atomic
from experiment.distributed import pick_device
from experiment.progress import progress
from experiment.tasks import get_task
from experiment.tracking import Tracker

PROTOCOLS = {"test": "held-out test split, checkpoint chosen on val",
             "val": "val split, also used to choose the checkpoint (optimistic)",
             "train": "training split (the model has seen these tracks)",
             "all": "every track of the evaluated data"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder (meaning its best.pt) or a .pt checkpoint")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="split to evaluate; all: every track of --data_root or --csv (default: all with --csv, "
                        "else test when the run's split has one, else val)")
    p.add_argument("--data_root", default=None,
                   help="with train/val/test: where the training data is now, if it moved (the index is then rebuilt "
                        "into <run folder>/eval_index.csv unless --csv_path is given); with --split=all: any folder "
                        "of <label>/<audio files> (default: the checkpoint's data_root)")
    p.add_argument("--csv", default=None,
                   help="score the tracks listed in this CSV (columns path,label; paths relative to its folder); "
                        "implies --split=all")
    p.add_argument("--out_dir", default=None,
                   help="with --split=all: folder for index.csv, metrics.json and the confusion matrix (default: "
                        "<run folder>/eval_<data folder or CSV name>)")
    p.add_argument("--errors", default=None, metavar="FILE",
                   help="write the misclassified recordings to this CSV: path, true label, top-3 labels with "
                        "probabilities")
    p.add_argument("--calibrate", action="store_true",
                   help="fit the temperature (multi-label: the per-class thresholds) on the run's val split again "
                        "and store it in the checkpoint (done without asking when the checkpoint has none)")
    p.add_argument("--csv_path", default=None, help="index CSV to use or write (default: the checkpoint's)")
    p.add_argument("--cache_dir", default=None, help="spectrogram cache folder (default: the checkpoint's)")
    p.add_argument("--batch_size", type=int, default=None, help="tracks per batch (default: the checkpoint's)")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--swanlab_mode", choices=("disabled", "local", "offline", "cloud"), default="disabled",
                   help="also log the metrics and confusion image to a new SwanLab experiment "
                        "'<experiment>-eval-<split>' (default: disabled)")
    p.add_argument("--swanlab_logdir", default=None, help="folder of local/offline SwanLab runs (default: the "
                                                          "checkpoint's swanlab_logdir)")
    args = p.parse_args(argv)
    if args.csv and (args.data_root or args.split not in (None, "all")):
        p.error("--csv scores the tracks it lists (--split=all); it does not combine with --data_root or "
                f"--split={args.split}")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch_size must be at least 1, got {args.batch_size}")
    try:
        pick_device(args.device)
    except RuntimeError as err:
        p.error(f"--device={args.device}: {err}")
    return args


def data_config(config: dict, args: argparse.Namespace, run_dir: Path) -> dict:
    """The checkpoint's training config with this command's data overrides; never rescans by itself. A run on
    a Hugging Face dataset (``hf_dataset``) reads it again, unless --data_root points at a folder instead."""
    cfg = dict(config, rebuild_index=False)
    if args.data_root:
        cfg["data_root"], cfg["hf_dataset"] = args.data_root, ""
        cfg["csv_path"] = args.csv_path or str(run_dir / "eval_index.csv")
    elif args.csv_path:
        cfg["csv_path"] = args.csv_path
    if args.cache_dir:
        cfg["cache_dir"] = args.cache_dir
    if not cfg.get("hf_dataset") and not Path(cfg["data_root"]).is_dir():
        raise DataError(f"the checkpoint's data folder {cfg['data_root']} does not exist. If the data moved, "
                        f"pass --data_root=<its new place>.")
    return cfg


def run_parts(cfg: dict, meta: dict) -> tuple[str, ...]:
    """The parts the run was trained with: those its checkpoint records, else those its split makes (a
    ``predefined`` split has a test part only when the data has one)."""
    return tuple(meta.get("splits") or split_parts(cfg))


def check_split_exists(split: str, cfg: dict, parts: tuple[str, ...]) -> None:
    """Raise DataError naming the run's ``parts`` when ``split`` is not one of them."""
    if split not in parts:
        raise DataError(f"--split={split}: this run was trained with split={cfg['split']}, which has only "
                        f"{'/'.join(parts)}. For a held-out test split, train with --split=stratified "
                        f"(train/val/test by track, sizes --val_size/--test_size) or, on GTZAN, "
                        f"--split=fault_filtered.")


def check_same_split(recorded: dict | None, rebuilt: list[str], split: str) -> bool:
    """Compare the rebuilt split's track list with the checkpoint's; warn on a difference. True when equal."""
    if not recorded or split not in recorded:
        warnings.warn("the checkpoint records no track lists (trained before they were saved); the rebuilt "
                      f"{split} split cannot be checked against training's", stacklevel=2)
        return False
    old, new = set(recorded[split]), set(rebuilt)
    if old == new:
        return True
    gone, added = sorted(old - new), sorted(new - old)
    warnings.warn(f"the rebuilt {split} split differs from training's ({len(gone)} track(s) missing, {len(added)} "
                  f"new; e.g. {', '.join((gone + added)[:3])}): the data changed since training, so these metrics "
                  f"are not comparable with the run's", stacklevel=2)
    return False


def evaluate_split(clf: Classifier, data, split: str, batch_size: int, num_workers: int = 0,
                   show_progress: bool = True) -> dict:
    """Track-level evaluation of one prepared split with the classifier's model and features.

    Returns dict: ``logits`` float32 [N, K] (window-averaged, cpu), ``labels`` long [N] (multi-label: multi-hot
    float32 [N, K]), ``paths`` (N track paths), ``loss`` (mean cross-entropy, or BCE), ``metrics`` (the task's,
    experiment/tasks.py: :func:`evaluation.metrics.classification_metrics`, or
    :func:`evaluation.multilabel.multilabel_metrics` at the classifier's thresholds), ``skipped`` (tracks that
    could not be read, with reasons).
    Raises DataError when no track of the split can be read.
    """
    part = data.splits[split]
    tracks = TrackDataset(part.path, part.y, data.cache, clf.window, clf.hop, entries=part.entry)
    loader = DataLoader(tracks, batch_size=batch_size, collate_fn=collate_tracks, num_workers=num_workers,
                        pin_memory=clf.device.type == "cuda")
    bar = (lambda it: progress(it, desc=f"Evaluating {split}", unit="batch", leave=False)) if show_progress else None
    out = predict_tracks(clf.model, clf.input_transform, loader, clf.device, progress=bar)
    logits, labels = out["logits"], out["labels"]
    if not len(labels):
        raise DataError(f"no track of the {split} split could be read: "
                        + "; ".join(f"{s.path}: {s.reason}" for s in out["skipped"][:3]))
    metrics = clf.task.metrics(logits, labels, clf.label_names, BOOTSTRAP_RESAMPLES, clf.thresholds)
    return dict(logits=logits, labels=labels, paths=[part.path[int(i)] for i in out["indices"]],
                loss=clf.task.track_loss(logits, labels), metrics=metrics, skipped=out["skipped"])


def log_to_swanlab(mode: str, log_dir: str, cfg: dict, meta: dict, split: str, metrics: dict, figure,
                   run_dir: Path, calibration: dict | None = None, reliability=None, task=None) -> None:
    """A new SwanLab experiment ``<experiment>-eval-<split>`` in the run's project holding the ``task``'s
    scalars (percent; single_label, the default: top-1 and macro-F1; multilabel: mAP, mAUC, d', F1), the
    ``calibration`` summary scalars (CalibrationReport.summary), the split's figure (confusion matrix, or
    per-class AP) and the ``reliability`` diagram; SwanLab failures are reported and ignored."""
    task = task or get_task("single_label")
    tracker = Tracker(run_dir)
    name = f"{meta.get('experiment_name') or run_dir.name}-eval-{split}"
    tracker.start(meta.get("swanlab_project") or cfg.get("swanlab_project") or "evaluation", name,
                  dict(cfg, evaluated_split=split), mode, log_dir)
    step = int(meta.get("epoch") or 0)
    tracker.log(task.scalars(metrics, split), step)
    if calibration:
        tracker.log(calibration, step)
    tracker.log_figure(f"{split}/{task.figure_name}", figure, step, PROTOCOLS[split])
    if reliability is not None:
        tracker.log_figure(f"{split}/reliability", reliability, step, "raw and calibrated")
    tracker.finish("success")


def external_config(config: dict, args: argparse.Namespace, run_dir: Path):
    """``(cfg, index, out_dir)`` for --split=all: the checkpoint's config with every track of --csv, --data_root
    or its own data as the one part ``all`` (no groups, no folds). ``index`` is the read --csv (else None:
    prepare_data indexes the folder into ``<out_dir>/index.csv``); ``out_dir`` is --out_dir or
    ``<run folder>/eval_<data folder or CSV name>``. Raises DataError for an unreadable CSV."""
    index = read_index(Path(args.csv)) if args.csv else None
    root = args.data_root or config["data_root"]
    name = Path(args.csv).stem if args.csv else Path(root).resolve().name
    out_dir = Path(args.out_dir) if args.out_dir else run_dir / f"eval_{name}"
    csv_path = args.csv_path or (out_dir / "index.csv" if args.data_root else config["csv_path"])
    cfg = dict(config, split="all", folds=0, group_pattern="", rebuild_index=False, data_root=root,
               csv_path=str(csv_path), cache_dir=args.cache_dir or config["cache_dir"],
               hf_dataset="" if args.csv or args.data_root else config.get("hf_dataset", ""))
    return cfg, index, out_dir


def seen_in_training(meta: dict, config: dict, paths) -> int | None:
    """How many of ``paths`` were in the checkpoint's train or val part (None when it records no track lists)."""
    recorded = meta.get("splits")
    if not recorded:
        return None
    root = Path(config["data_root"])
    seen = {os.path.normpath(root / p) for part in ("train", "val") for p in recorded.get(part, [])}
    return sum(os.path.normpath(p) in seen for p in paths)


def external_report(clf: Classifier, out: dict, source: str) -> dict:
    """Print which of the model's classes the data lacks and what training saw; return metrics.json extras
    (``data``, ``absent_classes``, ``macro_f1_present``: macro-F1 over the classes present (single-label; a
    multi-label macro-F1 already averages the classes present only), ``seen_in_training``, ``protocol``)."""
    labels = out["labels"]
    present = sorted(set(labels.nonzero()[:, 1].tolist() if labels.dim() == 2 else labels.tolist()))
    absent = [n for i, n in enumerate(clf.label_names) if i not in present]
    extra = dict(data=source, absent_classes=absent)
    if "macro_f1" in out["metrics"]:
        extra["macro_f1_present"] = out["metrics"]["macro_f1"]
    if absent and labels.dim() == 1:
        pred = out["logits"].argmax(1).numpy()
        extra["macro_f1_present"] = float(f1_score(out["labels"].numpy(), pred, labels=present, average="macro",
                                                   zero_division=0))
        print(f"{len(absent)} of the model's {len(clf.label_names)} classes are absent from this data: "
              f"{', '.join(absent)}. macro-F1 averages all {len(clf.label_names)} classes (absent ones count 0); "
              f"over the {len(present)} present classes it is {100 * extra['macro_f1_present']:.1f}%.")
    seen = seen_in_training(clf.meta, clf.config, out["paths"])
    extra["seen_in_training"] = seen
    extra["protocol"] = (f"every track of {source}; " + (
        "the checkpoint records no track lists, so overlap with training is unknown" if seen is None else
        f"{seen} of them in training's train/val parts (optimistic)" if seen else
        "none of them in training's train/val parts"))
    if seen:
        print(f"warning: {seen} of these {len(out['paths'])} tracks were in training's train/val parts: the numbers "
              "are optimistic", file=sys.stderr)
    return extra


def calibrate(clf: Classifier, args: argparse.Namespace, ckpt: Path, run_dir: Path, data, split: str,
              out: dict) -> dict | None:
    """The checkpoint's decision rule (experiment/tasks.py: the ``calibration`` record, or multi-label
    ``thresholds``); when it has none, or with ``--calibrate``, one fitted on the run's val split (``data``
    when it holds the run's own splits, else prepared from the checkpoint's config; ``out`` when ``split`` is
    val), stored in ``ckpt`` and applied to ``clf``. Without ``--calibrate`` a val split that cannot be read
    leaves the probabilities raw (thresholds at 0.5) with a warning (returns None).

    Raises DataError (with ``--calibrate``) when the run's val split cannot be read.
    """
    key = clf.task.decision_key
    if clf.meta.get(key) and not args.calibrate:
        return clf.meta[key]
    try:
        if split == "val":
            val = out
        else:
            if split == "all":
                own = argparse.Namespace(**{**vars(args), "data_root": None, "csv_path": None})
                data = prepare_data(data_config(clf.config, own, run_dir), clf.frontend, label_names=clf.label_names,
                                    num_workers=max(args.num_workers, torch.multiprocessing.cpu_count() or 1))
            val = evaluate_split(clf, data, "val", args.batch_size or clf.config["batch_size"], args.num_workers)
    except DataError as err:
        if args.calibrate:
            raise
        print(f"warning: this checkpoint has no {key} and its val split cannot be read to fit them ({err}); "
              f"{clf.probability_note()}", file=sys.stderr)
        return None
    record = clf.task.fit_decision(val["logits"], val["labels"], clf.label_names)
    store_entry(ckpt, key, record)
    clf.set_decision(record)
    what = f"temperature {record['temperature']:.3f}" if "temperature" in record else "per-class thresholds"
    print(f"{key}: {what} fitted on {record['tracks']} val tracks, stored in {ckpt}")
    return record


def write_errors(path, out: dict, label_names: list[str], k: int = 3, temperature: float = 1.0,
                 clf: Classifier | None = None) -> int:
    """Write the misclassified tracks of :func:`evaluate_split`'s ``out`` to the CSV ``path`` (atomically):
    ``path,true_label,top1_label,top1_probability,...`` for the ``k`` most probable labels, probabilities
    of the logits divided by ``temperature``. A multi-label ``clf``: the tracks whose answered label set (at
    its thresholds) differs from their labels, with ``true_label`` and ``answer`` as ``;``-joined sets and
    sigmoid probabilities. Returns the rows."""
    task = clf.task if clf is not None else get_task("single_label")
    multilabel = task.name == "multilabel"
    probs = clf.probabilities(out["logits"]) if multilabel else (out["logits"] / temperature).softmax(1)
    k = min(k, len(label_names))
    top = probs.topk(k, dim=1)
    if multilabel:
        answers = [task.answer(row, label_names, clf.thresholds) for row in probs]
        truth = [task.describe(row, label_names) for row in out["labels"]]
        wrong = [i for i, (a, t) in enumerate(zip(answers, truth)) if set(a.split(";")) != set(t.split(";"))]
    else:
        wrong = (out["logits"].argmax(1) != out["labels"]).nonzero().flatten().tolist()  # as in the metrics
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            writer = csv.writer(f)
            header = [f"top{j}_{c}" for j in range(1, k + 1) for c in ("label", "probability")]
            writer.writerow(["path", "true_label"] + (["answer"] if multilabel else []) + header)
            for i in wrong:
                cells = [(label_names[int(c)], f"{float(q):.4f}") for c, q in zip(top.indices[i], top.values[i])]
                said = [truth[i], answers[i]] if multilabel else [label_names[int(out["labels"][i])]]
                writer.writerow([out["paths"][i], *said] + [v for cell in cells for v in cell])

    write_atomic(path, write)
    return len(wrong)


def main(argv: list[str] | None = None) -> dict:
    """Evaluate; returns :func:`evaluate_split`'s dict plus ``split``, ``png``, ``metrics_json`` and ``out_dir``.

    Raises:
        FileNotFoundError, CheckpointError: no usable checkpoint at the path.
        DataError: the split does not exist in the run, the data is gone, or a label is unknown.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "best.pt"
    run_dir = ckpt.parent
    clf = Classifier.from_checkpoint(ckpt, args.device)
    parts = run_parts(clf.config, clf.meta)
    split = args.split or ("all" if args.csv else "test" if "test" in parts else "val")
    if split == "all":
        cfg, index, out_dir = external_config(clf.config, args, run_dir)
    else:
        check_split_exists(split, clf.config, parts)
        cfg, index, out_dir = data_config(clf.config, args, run_dir), None, run_dir
    data = prepare_data(cfg, clf.frontend, label_names=clf.label_names,
                        num_workers=max(args.num_workers, torch.multiprocessing.cpu_count() or 1), index=index)
    if split != "all":
        check_same_split(clf.meta.get("splits"), data.track_lists()[split], split)
    seconds = (cfg["clip_seconds"], cfg["eval_hop_seconds"])
    print(f"{ckpt} (epoch {clf.meta.get('epoch', '?')}) on {split}: {len(data.splits[split])} tracks, "
          f"windows of {seconds[0]:g} s every {seconds[1]:g} s, logits averaged per track, {clf.device}", flush=True)
    out = evaluate_split(clf, data, split, args.batch_size or cfg["batch_size"], args.num_workers)
    for path, reason in {(s.path, s.reason) for s in out["skipped"]}:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    task = clf.task
    record = calibrate(clf, args, ckpt, run_dir, data, split, out)
    out["metrics"] = m = task.metrics(out["logits"], out["labels"], clf.label_names, BOOTSTRAP_RESAMPLES, record)
    extra = dict(protocol=PROTOCOLS[split], checkpoint=str(ckpt.resolve()) if split == "all" else ckpt.name,
                 epoch=clf.meta.get("epoch"), loss=out["loss"], evaluated_by="evaluate.py",
                 splits={split: data.split_record()[split]}, task=task.name)
    if split == "all":
        extra |= external_report(clf, out, args.csv or str(data.data_root))
    decision = task.decision_report(record, out["logits"], out["labels"], clf.label_names, split)
    extra |= decision.metrics
    title = (f"{clf.meta.get('experiment_name') or run_dir.name}\n{split} ({ckpt.name}, epoch "
             f"{clf.meta.get('epoch', '?')}): {task.headline(m)}")
    png, fig = task.save_report(out_dir, split, m, clf.label_names, title, extra=extra)
    reliability, reliability_fig = decision.save_figure(out_dir, title.replace("\n", ": "))
    if args.swanlab_mode != "disabled":
        log_to_swanlab(args.swanlab_mode, args.swanlab_logdir or cfg.get("swanlab_logdir", "swanlog"), cfg,
                       clf.meta, split, m, fig, out_dir, decision.summary(), reliability_fig, task)
    close(fig)
    if reliability_fig is not None:
        close(reliability_fig)
    print(f"\n{m['report']}")
    print(f"{split} {task.headline(m)}, loss {out['loss']:.4f}; {task.interval_text(m)}; {extra['protocol']}")
    print(decision.text())
    if args.errors:
        wrong = write_errors(args.errors, out, clf.label_names, temperature=clf.applied_temperature, clf=clf)
        print(f"{wrong} misclassified recording(s) written to {args.errors}")
    print(f"{task.figure_name.replace('_', ' ')}: {png}\n" + (f"reliability diagram: {reliability}\n" if reliability
                                                               else "") + f"metrics: {out_dir / 'metrics.json'}")
    return out | dict(split=split, png=str(png), metrics_json=str(out_dir / "metrics.json"), out_dir=str(out_dir),
                      reliability_png=str(reliability) if reliability else None, **decision.metrics)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (DataError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
