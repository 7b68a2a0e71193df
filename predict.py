"""Classify audio files with a trained checkpoint: the top-k labels (genres) of each file.

    python predict.py runs/<experiment> song.mp3 other.flac my_music/ --top_k=3
    python predict.py runs/<experiment>/best.pt my_music/ --json > predictions.json
    python predict.py runs/<experiment>/export_onnx song.mp3       # a folder written by export.py
    python predict.py runs/<experiment> dog.wav --min_confidence=0.6   # "unknown" below 60%
    python predict.py runs/<experiment> mix.wav --timeline --hop_seconds=2   # what plays when, as CSV too
    python predict.py runs/<tagger> street.wav          # a multi-label model: every label above its threshold

Probabilities are calibrated: the logits are divided by the run's temperature (fitted on its val split at the
end of training; evaluation.calibration) before the softmax, so 80% means right about 8 times in 10 on data
like the val split. --uncalibrated prints the raw softmax; the top-1 label is the same either way. A model
without a temperature (trained before calibration existed) prints the raw softmax and says so.

--min_confidence=P answers "unknown" when the top calibrated probability is below P (the table's answer
column, the JSON's "label"); the model card's selective-classification table (or evaluate.py's) gives the
top-1 on the tracks a given P answers, and what fraction it answers.

A multi-label model (task multilabel, experiment/tasks.py) gives each label its own sigmoid probability and
answers every label whose probability reaches its class's threshold (tuned F1-optimal on the run's val split
and saved in best.pt): the table's answer column and the JSON's "labels" list (most probable first), "none"
when no label reaches its threshold; --min_confidence=P raises every threshold below P to P; --top_k still
lists the k most probable. The JSON then says "task": "multilabel" and holds the "thresholds".

--timeline writes, per file, every window's start, end (seconds) and top-k labels, and the segments:
consecutive windows with the same top label (or unknown; multi-label: the same set of labels at or above their
thresholds) merged, with the mean probability of that label (evaluation.timeline). They go to <timeline_dir>/windows.csv and segments.csv (one row per window or segment,
with the file's path) and, with --json, into each prediction's "timeline". --hop_seconds sets the windows'
hop (finer boundaries); --window_seconds their length, where the model takes other lengths (CNN14 and the
wav2vec2 family do; image-layout CNNs, AST and exported graphs take only the training window).

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
    {"checkpoint": ..., "task": "single_label", "label_names": [...], "calibrated": true, "temperature": 1.83,
     "min_confidence": 0.0,
     "predictions": [{"path": ..., "seconds": ..., "windows": ..., "label": ..., "confidence": ...,
                      "labels": [{"label": ..., "probability": ...}],
                      "top_k": [{"label": ..., "probability": ...}],
                      "timeline": {"windows": [{"start", "end", "top_k"}], "segments": [...], ...}}],
     "errors": [{"path": ..., "error": ...}]}
("timeline" only with --timeline; "temperature" is the one applied, 1.0 for the raw softmax; "labels" is the
answer as pairs: the top-1 alone, [] for unknown; multi-label runs add "thresholds": {label: threshold}.)
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

from data.audio import AUDIO_EXTENSIONS, MIN_SECONDS, AudioError
from evaluation.classifier import Classifier, load_for_cli
from evaluation.timeline import segment_rows, window_rows
from experiment.checkpoint import write_atomic
from experiment.distributed import pick_device
from experiment.progress import progress


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
    p.add_argument("--uncalibrated", action="store_true",
                   help="print the raw softmax instead of the calibrated probabilities (same top-1)")
    p.add_argument("--min_confidence", type=float, default=0.0, metavar="P",
                   help="answer 'unknown' when the top (calibrated) probability is below P, in [0, 1] (default 0: "
                        "always answer)")
    p.add_argument("--timeline", action="store_true",
                   help="also give each window's start, end and top-k and the merged segments (CSV in "
                        "--timeline_dir, and in --json)")
    p.add_argument("--timeline_dir", default="timeline",
                   help="folder for windows.csv and segments.csv with --timeline (default: ./timeline)")
    p.add_argument("--window_seconds", type=float, default=None,
                   help="window length in seconds (default: the run's clip_seconds); only models that take other "
                        "lengths (CNN14, the wav2vec2 family)")
    p.add_argument("--hop_seconds", type=float, default=None,
                   help="hop between windows in seconds (default: the run's eval_hop_seconds)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top_k must be at least 1, got {args.top_k}")
    if not 0.0 <= args.min_confidence <= 1.0:
        p.error(f"--min_confidence must be a probability in [0, 1], got {args.min_confidence}")
    for key in ("window_seconds", "hop_seconds"):
        if getattr(args, key) is not None and getattr(args, key) <= 0:
            p.error(f"--{key} must be positive, got {getattr(args, key)}")
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


def classify_files(clf: Classifier, files: list[str], top_k: int, on_error=None, timeline: bool = False,
                   window_seconds: float | None = None, hop_seconds: float | None = None
                   ) -> tuple[list[dict], list[dict]]:
    """Classify every file, with a progress bar on stderr when there are several and stderr is a terminal.

    Returns (predictions, errors): ``{"path", "seconds", "windows", "label" (the answer: top-1 or unknown; for a
    multi-label model the labels at or above their thresholds joined with ``;``, or none), "confidence" (the top
    probability), "labels": [{"label", "probability"}] (the answer's labels), "top_k": [{"label",
    "probability"}]}``, with ``timeline``
    (:meth:`evaluation.timeline.Timeline.to_dict`) when asked, and ``{"path", "error"}`` dicts.
    ``window_seconds``/``hop_seconds``: other windows than the run's (``Classifier.window_frames``).
    ``on_error(path, message)`` is called for each failure as it happens.
    """
    predictions, errors = [], []
    # no bar for one file; in a log (not a terminal) a plain line a minute (experiment.progress)
    for path in progress(files, desc="Classifying", unit="file", disable=len(files) < 2, leave=False):
        try:
            analysis = clf.analyze(path, min_seconds=clf.min_seconds, window_seconds=window_seconds,
                                   hop_seconds=hop_seconds)
        except AudioError as err:
            message = f"{err.reason}. Fix: {err.fix}"
        except Exception as err:  # anything else a hostile file provokes in the decoder or resampler
            message = f"cannot be classified ({type(err).__name__}: {err})"
        else:
            pred = analysis.prediction
            predictions.append(dict(path=path, seconds=round(pred.seconds, 3), windows=pred.num_windows,
                                    label=pred.label, confidence=pred.confidence,
                                    labels=[dict(label=label, probability=p) for label, p in pred.labels],
                                    top_k=[dict(label=label, probability=p) for label, p in pred.top_k(top_k)]))
            if timeline:
                predictions[-1]["timeline"] = analysis.timeline(top_k).to_dict()
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


def format_table(predictions: list[dict], top_k: int, answer: bool = False) -> str:
    """One row per file: path, length, windows averaged, the answer (top-1 or unknown, or a multi-label set;
    with ``answer``), then ``label  probability%`` for each of the top k."""
    label_width = max([len(t["label"]) for p in predictions for t in p["top_k"]]
                      + [len(p["label"]) for p in predictions if answer] + [7])
    path_width = max([len(p["path"]) for p in predictions] + [4])
    cell = label_width + 8
    answer_header = f"{'answer':<{label_width}}  " if answer else ""
    header = f"{'file':<{path_width}}  {'length':>7}  {'windows':>7}  {answer_header}" + "  ".join(
        f"{f'top-{i + 1}':<{cell}}" for i in range(top_k))
    rows = [header.rstrip()]
    for p in predictions:
        cells = "  ".join(f"{t['label']:<{label_width}} {100 * t['probability']:6.1f}%" for t in p["top_k"])
        said = f"{p['label']:<{label_width}}  " if answer else ""
        rows.append(f"{p['path']:<{path_width}}  {duration(p['seconds']):>7}  {p['windows']:>7}  {said}{cells}")
    return "\n".join(rows)


def format_segments(predictions: list[dict]) -> str:
    """Each file's segments, one per line: ``  12.5-30.0 s  jazz  87.3%  (4 windows)``."""
    lines = []
    for p in predictions:
        t = p["timeline"]
        lines.append(f"{p['path']}: {len(t['segments'])} segment(s) from {len(t['windows'])} windows of "
                     f"{t['window_seconds']:.2f} s every {t['hop_seconds']:.2f} s")
        width = max(len(s["label"]) for s in t["segments"])
        lines += [f"  {s['start']:7.2f}-{s['end']:7.2f} s  {s['label']:<{width}}  {100 * s['probability']:5.1f}%  "
                  f"({s['windows']} window{'s' if s['windows'] > 1 else ''})" for s in t["segments"]]
    return "\n".join(lines)


def write_timeline_csv(folder, predictions: list[dict]) -> tuple[Path, Path]:
    """Write ``windows.csv`` and ``segments.csv`` (atomically) into ``folder`` from predictions with a
    ``timeline``: one row per window (``path, start, end, top1_label, top1_probability, ...``) and per segment
    (``path, start, end, label, probability, windows``). Returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows_of in (("windows.csv", window_rows), ("segments.csv", segment_rows)):
        rows = [row for p in predictions for row in rows_of(p["path"], p["timeline"])]
        columns = list(dict.fromkeys(k for row in rows for k in row))

        def write(tmp: Path, rows=rows, columns=columns) -> None:
            with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        write_atomic(folder / name, write)
        paths.append(folder / name)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0: at least one file classified, 1: none)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clf = load_for_cli(args.checkpoint, args.device, not args.uncalibrated, args.min_confidence)
    if clf is None:
        return 1
    try:
        clf.window_frames(args.window_seconds, args.hop_seconds)  # refuses a window length the model cannot take
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    def report(path: str, message: str) -> None:
        tqdm.write(f"error: {path}: {message}", file=sys.stderr)

    files, errors = find_audio(args.paths)
    for e in errors:
        report(e["path"], e["error"])
    predictions, failed = classify_files(clf, files, args.top_k, report, args.timeline, args.window_seconds,
                                         args.hop_seconds)
    errors += failed
    csv_paths = write_timeline_csv(args.timeline_dir, predictions) if args.timeline and predictions else None
    if args.json:
        thresholds = {"thresholds": dict(zip(clf.label_names, clf.thresholds["thresholds"]))} if clf.thresholds else {}
        print(json.dumps(dict(checkpoint=str(args.checkpoint), task=clf.task.name, label_names=clf.label_names,
                              calibrated=clf.calibrated and "calibration" in clf.meta,
                              temperature=clf.applied_temperature, min_confidence=clf.min_confidence, **thresholds,
                              predictions=predictions, errors=errors), indent=2))
    elif predictions:
        cfg = clf.config
        window, hop = args.window_seconds or cfg["clip_seconds"], args.hop_seconds or cfg["eval_hop_seconds"]
        unknown = f"; 'unknown' below {100 * clf.min_confidence:g}%" if clf.min_confidence else ""
        print(f"{args.checkpoint}: {len(clf.label_names)} classes, windows of {window:g} s every {hop:g} s "
              f"averaged per file, {clf.device}\n{clf.probability_note()}{unknown}\n")
        answers = clf.min_confidence > 0 or clf.task.name == "multilabel"
        print(format_table(predictions, min(args.top_k, len(clf.label_names)), answer=answers))
        if csv_paths:
            print(f"\n{format_segments(predictions)}\ntimeline: {csv_paths[0]}, {csv_paths[1]}")
    if not predictions:
        print(f"error: none of the {len(files)} file(s) could be classified", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
