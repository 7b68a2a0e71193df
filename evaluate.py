"""Evaluate a trained checkpoint on a split of its data: top-1, macro-F1, per-class table, confusion matrix.

    python evaluate.py runs/<experiment>                    # its best.pt, on test (val when the run has none)
    python evaluate.py runs/<experiment>/last.pt --split=val
    python evaluate.py runs/<experiment> --data_root=/new/place/GTZAN    # the data moved since training

The split is rebuilt from the checkpoint's config (data_root, split, val_size, test_size, split_seed) with
the checkpoint's label names, so it is the split training used; the track list saved in the checkpoint
is compared with it and any difference is reported. Every track is cut into clip_seconds windows every
eval_hop_seconds and the model's logits are averaged over them, the same code as training's validation
(evaluation.predict_tracks). Prints the metrics and scikit-learn's per-class table, writes
confusion_matrix_<split>.png and merges the metrics into metrics.json in the run folder.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data import DataError, prepare_data
from data.dataset import TrackDataset, collate_tracks
from data.splits import PARTS
from evaluation import predict_tracks, track_loss
from evaluation.classifier import Classifier
from evaluation.metrics import classification_metrics, close, save_report
from experiment.checkpoint import CheckpointError
from experiment.distributed import pick_device
from experiment.tracking import Tracker

PROTOCOLS = {"test": "held-out test split, checkpoint chosen on val",
             "val": "val split, also used to choose the checkpoint (optimistic)",
             "train": "training split (the model has seen these tracks)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder (meaning its best.pt) or a .pt checkpoint")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="split to evaluate (default: test when the run's split has one, else val)")
    p.add_argument("--data_root", default=None,
                   help="where the training data is now, if it moved (default: the checkpoint's data_root); the "
                        "index is then rebuilt into <run folder>/eval_index.csv unless --csv_path is given")
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
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch_size must be at least 1, got {args.batch_size}")
    try:
        pick_device(args.device)
    except RuntimeError as err:
        p.error(f"--device={args.device}: {err}")
    return args


def data_config(config: dict, args: argparse.Namespace, run_dir: Path) -> dict:
    """The checkpoint's training config with this command's data overrides; never rescans by itself."""
    cfg = dict(config, rebuild_index=False)
    if args.data_root:
        cfg["data_root"] = args.data_root
        cfg["csv_path"] = args.csv_path or str(run_dir / "eval_index.csv")
    elif args.csv_path:
        cfg["csv_path"] = args.csv_path
    if args.cache_dir:
        cfg["cache_dir"] = args.cache_dir
    if not Path(cfg["data_root"]).is_dir():
        raise DataError(f"the checkpoint's data folder {cfg['data_root']} does not exist. If the data moved, "
                        f"pass --data_root=<its new place>.")
    return cfg


def check_split_exists(split: str, cfg: dict) -> None:
    """Raise DataError naming the run's splits when ``split`` is not one of them."""
    parts = PARTS.get(cfg["split"], ())
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

    Returns dict: ``logits`` float32 [N, K] (window-averaged, cpu), ``labels`` long [N], ``paths`` (N track
    paths), ``loss`` (mean cross-entropy), ``metrics`` (:func:`evaluation.metrics.classification_metrics`),
    ``skipped`` (tracks that could not be read, with reasons).
    Raises DataError when no track of the split can be read.
    """
    part = data.splits[split]
    tracks = TrackDataset(part.path, part.y, data.cache, clf.window, clf.hop, entries=part.entry)
    loader = DataLoader(tracks, batch_size=batch_size, collate_fn=collate_tracks, num_workers=num_workers,
                        pin_memory=clf.device.type == "cuda")
    bar = (lambda it: tqdm(it, desc=f"Evaluating {split}", unit="batch", leave=False)) if show_progress else None
    out = predict_tracks(clf.model, clf.image, loader, clf.device, progress=bar)
    logits, labels = out["logits"], out["labels"]
    if not len(labels):
        raise DataError(f"no track of the {split} split could be read: "
                        + "; ".join(f"{s.path}: {s.reason}" for s in out["skipped"][:3]))
    metrics = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), clf.label_names)
    return dict(logits=logits, labels=labels, paths=[part.path[int(i)] for i in out["indices"]],
                loss=track_loss(logits, labels), metrics=metrics, skipped=out["skipped"])


def log_to_swanlab(mode: str, log_dir: str, cfg: dict, meta: dict, split: str, metrics: dict, figure,
                   run_dir: Path) -> None:
    """A new SwanLab experiment ``<experiment>-eval-<split>`` in the run's project holding the top-1 and
    macro-F1 (percent) and the confusion image; SwanLab failures are reported and ignored."""
    tracker = Tracker(run_dir)
    name = f"{meta.get('experiment_name') or run_dir.name}-eval-{split}"
    tracker.start(meta.get("swanlab_project") or cfg.get("swanlab_project") or "evaluation", name,
                  dict(cfg, evaluated_split=split), mode, log_dir)
    step = int(meta.get("epoch") or 0)
    tracker.log({f"{split}/acc": 100 * metrics["top1"], f"{split}/macro_f1": 100 * metrics["macro_f1"]}, step)
    tracker.log_figure(f"{split}/confusion_matrix", figure, step, PROTOCOLS[split])
    tracker.finish("success")


def main(argv: list[str] | None = None) -> dict:
    """Evaluate; returns :func:`evaluate_split`'s dict plus ``split``, ``png`` and ``metrics_json`` paths.

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
    split = args.split or ("test" if "test" in PARTS.get(clf.config["split"], ()) else "val")
    check_split_exists(split, clf.config)
    cfg = data_config(clf.config, args, run_dir)
    data = prepare_data(cfg, clf.logmel, label_names=clf.label_names,
                        num_workers=max(args.num_workers, torch.multiprocessing.cpu_count() or 1))
    check_same_split(clf.meta.get("splits"), data.track_lists()[split], split)
    seconds = (cfg["clip_seconds"], cfg["eval_hop_seconds"])
    print(f"{ckpt} (epoch {clf.meta.get('epoch', '?')}) on {split}: {len(data.splits[split])} tracks, "
          f"windows of {seconds[0]:g} s every {seconds[1]:g} s, logits averaged per track, {clf.device}", flush=True)
    out = evaluate_split(clf, data, split, args.batch_size or cfg["batch_size"], args.num_workers)
    for path, reason in {(s.path, s.reason) for s in out["skipped"]}:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    m = out["metrics"]
    title = (f"{clf.meta.get('experiment_name') or run_dir.name}\n{split} ({ckpt.name}, epoch "
             f"{clf.meta.get('epoch', '?')}): top-1 {100 * m['top1']:.1f}%, macro-F1 {100 * m['macro_f1']:.1f}%")
    png, fig = save_report(run_dir, split, m, clf.label_names, title,
                           extra=dict(protocol=PROTOCOLS[split], checkpoint=ckpt.name, epoch=clf.meta.get("epoch"),
                                      loss=out["loss"], evaluated_by="evaluate.py"))
    if args.swanlab_mode != "disabled":
        log_to_swanlab(args.swanlab_mode, args.swanlab_logdir or cfg.get("swanlab_logdir", "swanlog"), cfg,
                       clf.meta, split, m, fig, run_dir)
    close(fig)
    print(f"\n{m['report']}")
    print(f"{split} top-1 {100 * m['top1']:.1f}%, macro-F1 {100 * m['macro_f1']:.1f}%, loss {out['loss']:.4f} "
          f"({m['n']} tracks; {PROTOCOLS[split]})")
    print(f"confusion matrix: {png}\nmetrics: {run_dir / 'metrics.json'}")
    return out | dict(split=split, png=str(png), metrics_json=str(run_dir / "metrics.json"))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (DataError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
