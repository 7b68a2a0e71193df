"""Classify audio files with a trained checkpoint: the top-k labels (genres) of each file.

    python predict.py runs/<experiment> song.mp3 other.flac my_music/ --top_k=3
    python predict.py runs/<experiment>/best.pt my_music/ --json > predictions.json
    python predict.py runs/<experiment>/export_onnx song.mp3       # a folder written by export.py

A PATH is a file or a folder, searched recursively for audio files. Any format soundfile decodes (wav,
flac, ogg, mp3, au, aiff), any sample rate, mono or multichannel, any length: each recording is
down-mixed, resampled and cut into the training window (clip_seconds) every eval_hop_seconds, and the
model's logits are averaged over the windows, exactly as in evaluation. The label names come from the
checkpoint. A folder written by export.py runs without the checkpoint (ONNX through onnxruntime, or
TorchScript), with the same front end rebuilt from its export.json.

Short recordings work as in training: the shortest clip accepted is the checkpoint's minimum
(Classifier.min_seconds, the index builder's data.audio.MIN_SECONDS = 0.05 s), and a recording shorter than
the training window is padded exactly as in evaluation (centred, with its quietest value), so a file gets the
same probabilities here as in evaluate.py whatever its length. A file that cannot be decoded, holds no samples
or is shorter than that minimum gets one error line naming it on stderr and the others are still classified;
the exit status is 1 only when no file could be classified.
--json prints one JSON document on stdout (the progress bar and error lines go to stderr):
    {"checkpoint": ..., "label_names": [...],
     "predictions": [{"path": ..., "seconds": ..., "windows": ..., "top_k": [{"label": ..., "probability": ...}]}],
     "errors": [{"path": ..., "error": ...}]}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from data.audio import AUDIO_EXTENSIONS, MIN_SECONDS, AudioError
from evaluation.classifier import Classifier, load_for_cli
from experiment.distributed import pick_device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a .pt checkpoint, a run folder (meaning its best.pt), or a folder written by export.py")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help=f"audio files, or folders searched recursively for {' '.join(AUDIO_EXTENSIONS)}; at least "
                        f"training's minimum, {MIN_SECONDS:g} s (shorter than the training window: padded as in "
                        "evaluation)")
    p.add_argument("--top_k", type=int, default=3, help="labels shown per file, most probable first (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1 ...")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top_k must be at least 1, got {args.top_k}")
    try:
        pick_device(args.device)
    except RuntimeError as err:
        p.error(f"--device={args.device}: {err}")
    return args


def find_audio(paths: list[str]) -> tuple[list[str], list[dict]]:
    """Expand PATH arguments: a file is taken as is, a folder gives its audio files (recursively, sorted,
    hidden files skipped). Returns (files, errors) with ``errors`` as ``{"path", "error"}`` dicts for
    arguments that do not exist or folders without audio."""
    files, errors = [], []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            if not found:
                errors.append(dict(path=arg, error=f"no audio files ({' '.join(AUDIO_EXTENSIONS)}) in this folder"))
            files += found
        elif path.exists():
            files.append(arg)
        else:
            errors.append(dict(path=arg, error="no such file or folder"))
    return list(dict.fromkeys(files)), errors


def classify_files(clf: Classifier, files: list[str], top_k: int, on_error=None) -> tuple[list[dict], list[dict]]:
    """Classify every file, with a progress bar on stderr when there are several and stderr is a terminal.

    Returns (predictions, errors): ``{"path", "seconds", "windows", "top_k": [{"label", "probability"}]}``
    and ``{"path", "error"}`` dicts. ``on_error(path, message)`` is called for each failure as it happens.
    """
    predictions, errors = [], []
    quiet = len(files) < 2 or not sys.stderr.isatty()  # no bar in logs: error lines stay plain lines
    for path in tqdm(files, desc="Classifying", unit="file", disable=quiet, leave=False, file=sys.stderr):
        try:
            pred = clf.classify(path, min_seconds=clf.min_seconds)
        except AudioError as err:
            message = f"{err.reason}. Fix: {err.fix}"
        except Exception as err:  # anything else a hostile file provokes in the decoder or resampler
            message = f"cannot be classified ({type(err).__name__}: {err})"
        else:
            predictions.append(dict(path=path, seconds=round(pred.seconds, 3), windows=pred.num_windows,
                                    top_k=[dict(label=label, probability=p) for label, p in pred.top_k(top_k)]))
            continue
        message = " ".join(message.split())  # one line, whatever the decoder said
        errors.append(dict(path=path, error=message))
        if on_error:
            on_error(path, message)
    return predictions, errors


def duration(seconds: float) -> str:
    """``184.2`` -> ``3:04``; an hour or more -> ``1:02:03``."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_table(predictions: list[dict], top_k: int) -> str:
    """One row per file: path, length, windows averaged, then ``label  probability%`` for each of the top k."""
    label_width = max([len(t["label"]) for p in predictions for t in p["top_k"]] + [5])
    path_width = max([len(p["path"]) for p in predictions] + [4])
    cell = label_width + 8
    header = f"{'file':<{path_width}}  {'length':>7}  {'windows':>7}  " + "  ".join(
        f"{f'top-{i + 1}':<{cell}}" for i in range(top_k))
    rows = [header.rstrip()]
    for p in predictions:
        cells = "  ".join(f"{t['label']:<{label_width}} {100 * t['probability']:6.1f}%" for t in p["top_k"])
        rows.append(f"{p['path']:<{path_width}}  {duration(p['seconds']):>7}  {p['windows']:>7}  {cells}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0: at least one file classified, 1: none)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clf = load_for_cli(args.checkpoint, args.device)
    if clf is None:
        return 1

    def report(path: str, message: str) -> None:
        tqdm.write(f"error: {path}: {message}", file=sys.stderr)

    files, errors = find_audio(args.paths)
    for e in errors:
        report(e["path"], e["error"])
    predictions, failed = classify_files(clf, files, args.top_k, report)
    errors += failed
    if args.json:
        print(json.dumps(dict(checkpoint=str(args.checkpoint), label_names=clf.label_names, predictions=predictions,
                              errors=errors), indent=2))
    elif predictions:
        cfg = clf.config
        print(f"{args.checkpoint}: {len(clf.label_names)} classes, windows of {cfg['clip_seconds']:g} s every "
              f"{cfg['eval_hop_seconds']:g} s averaged per file, {clf.device}\n")
        print(format_table(predictions, min(args.top_k, len(clf.label_names))))
    if not predictions:
        print(f"error: none of the {len(files)} file(s) could be classified", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
