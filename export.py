"""Export a trained network to ONNX or TorchScript, with everything outside the graph in export.json.

    python export.py runs/<experiment> --format onnx               # -> runs/<experiment>/export_onnx/
    python export.py runs/<experiment>/best.pt --format torchscript --out my_model/
    python predict.py runs/<experiment>/export_onnx song.mp3        # the exported folder alone (onnxruntime)

Exported: the network only, the input transform's output (float32 [batch, 3, resize, resize] for an ImageNet
CNN, [batch, 1, n_mels, frames] for CNN14 and AST, [batch, 1, 1, samples] for the wav2vec2 family) -> logits
[batch, num_classes], with a dynamic batch axis. The front end (decode, resample, STFT/log-mel/fbank) and the
input transform (normalise; for images resize and 3 channels) stay outside the graph; export.json beside the network
holds their parameters (the checkpoint's config and features.norm), the label names, the window and hop,
the backbone, the run's metrics and its ``calibration`` (the temperature fitted on val, when the checkpoint
has one), and for a multi-label run its per-class ``thresholds`` (tuned on val). Classifier.from_export (and
predict.py / app.py on the folder) rebuilds them exactly as from the checkpoint and divides the network's raw
logits by the temperature (multi-label: the sigmoid, then the thresholds), so an export gives the checkpoint's
predictions.

ONNX uses torch's TorchScript-based exporter (opset 18, dynamic_axes) by default, which needs torch and
onnx; --dynamo uses the torch.export-based exporter torch recommends since 2.9 (also needs onnxscript).
Running an ONNX export needs onnxruntime (CPU). Share ONNX with people who should not have to trust your
files: onnxruntime runs no code from them, while a TorchScript archive holds TorchScript code (load only
TorchScript exports you trust). After writing, the export is loaded back and run on a batch of windows of
another batch size than the export's; the largest absolute logit difference to the PyTorch checkpoint is
printed and saved in export.json, and the command fails (status 1) above --tolerance.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from evaluation import forward_windows
from evaluation.classifier import Classifier
from evaluation.export import FORMATS, ExportError, write_export_json
from experiment.checkpoint import CheckpointError, write_atomic
from experiment.model_card import metrics_summary, read_metrics

EXPORT_BATCH = 2  # batch size of the example input used for the export; parity runs another size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder (meaning its best.pt) or a .pt checkpoint")
    p.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="output format (default: onnx)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/export_<format>)")
    p.add_argument("--dynamo", action="store_true", help="ONNX: use the torch.export-based exporter (needs "
                                                         "onnxscript) instead of the TorchScript-based one")
    p.add_argument("--audio", default=None, help="also check parity on the windows of this recording")
    p.add_argument("--parity_windows", type=int, default=3,
                   help=f"random windows in the parity batch (default 3; not {EXPORT_BATCH}, the export's batch size)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest logit difference accepted (default 1e-3)")
    args = p.parse_args(argv)
    if args.dynamo and args.format != "onnx":
        p.error("--dynamo applies to --format=onnx only")
    if args.parity_windows < 1:
        p.error(f"--parity_windows must be at least 1, got {args.parity_windows}")
    return args


def parity_windows(clf: Classifier, count: int, audio: str | None, seed: int = 0) -> torch.Tensor:
    """Front-end windows float32 [N, 1, ...] (log-mel: [N, 1, n_mels, window frames]): ``count`` random ones
    drawn around the training normalisation (so the network sees inputs of the usual range), plus every
    window of ``audio``. The shape comes from the front end itself (a window of silence)."""
    norm = clf.meta["features"]["norm"]
    silence = np.zeros(int(clf.config["clip_seconds"] * clf.sample_rate), dtype=np.float32)
    shape = clf.windows(clf.spectrogram(silence, clf.sample_rate)).shape[1:]
    windows = torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed)) * norm["std"] + norm["mean"]
    if audio:
        windows = torch.cat([windows, clf.windows(clf.spectrogram(audio))])
    return windows


def check_parity(clf: Classifier, network: torch.nn.Module, windows: torch.Tensor) -> dict:
    """Logits of the checkpoint's model and of the exported ``network`` on the same windows (one batch)."""
    reference = forward_windows(clf.model, clf.input_transform, windows, clf.device, chunk=len(windows))
    exported = forward_windows(network, clf.input_transform, windows, clf.device, chunk=len(windows))
    return dict(max_abs_logit_diff=float((reference - exported).abs().max()), batch_size=len(windows),
                top1_agree=bool((reference.argmax(1) == exported.argmax(1)).all()))


def export(args: argparse.Namespace) -> dict:
    """Write the export folder and check it; returns export.json's content.

    Raises FileNotFoundError / CheckpointError (no usable checkpoint), ExportError (the exporter failed).
    """
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    clf = Classifier.from_checkpoint(ckpt, "cpu")
    fmt, cfg = FORMATS[args.format], clf.config
    out = Path(args.out or run_dir / f"export_{args.format}")
    out.mkdir(parents=True, exist_ok=True)
    example = clf.input_transform(parity_windows(clf, EXPORT_BATCH, None, seed=1))
    try:
        how = write_atomic(out / fmt.file, lambda tmp: fmt.save(clf.model, example, tmp,
                                                                 **({"dynamo": True} if args.dynamo else {})))
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"{cfg['arch']} does not export to {args.format} ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:500]}). Try the other --format") from None
    parity = check_parity(clf, fmt.load(out / fmt.file, clf.device),
                          parity_windows(clf, args.parity_windows, args.audio))
    spec = dict(format=args.format, file=fmt.file, backbone=cfg["arch"], label_names=clf.label_names,
                input=dict(name="input", dtype="float32", shape=["batch", *example.shape[1:]]),
                output=dict(name="logits", dtype="float32", shape=["batch", len(clf.label_names)]),
                window_frames=clf.window, hop_frames=clf.hop, sample_rate=clf.sample_rate,
                clip_seconds=cfg["clip_seconds"], eval_hop_seconds=cfg["eval_hop_seconds"],
                features=clf.meta["features"], config=cfg, splits=clf.meta.get("splits"),
                experiment_name=clf.meta.get("experiment_name"),
                epoch=clf.meta.get("epoch"), best=clf.meta.get("best"), metrics=metrics_summary(read_metrics(run_dir)),
                task=clf.task.name,
                **{key: clf.meta[key] for key in ("calibration", "thresholds") if clf.meta.get(key)},
                exported_from=str(ckpt), exported_with=dict(how, torch=torch.__version__), parity=parity)
    write_export_json(out, spec)
    return spec | {"folder": str(out)}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0: exported and parity within --tolerance)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = export(args)
    except (FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    p = spec["parity"]
    print(f"{spec['folder']}: {spec['file']} ({spec['exported_with']['exporter']}) + export.json, "
          f"{spec['backbone']}, input {spec['input']['shape']}, {len(spec['label_names'])} classes")
    print(f"parity with the checkpoint on {p['batch_size']} windows (batch size {p['batch_size']}, exported with "
          f"{EXPORT_BATCH}): max |logit difference| {p['max_abs_logit_diff']:.2e}, top-1 "
          f"{'identical' if p['top1_agree'] else 'different (near-tied windows)'}")
    if p["max_abs_logit_diff"] > args.tolerance:
        print(f"error: the export does not match the checkpoint (tolerance {args.tolerance:g})", file=sys.stderr)
        return 1
    if "calibration" in spec:
        print(f"calibration: temperature {spec['calibration']['temperature']:.3f} (fitted on "
              f"{spec['calibration']['fitted_on']}) in export.json; predict.py, Classifier.from_export and app.py "
              f"apply it (the network itself outputs raw logits)")
    if "thresholds" in spec:
        print(f"multi-label: the per-class thresholds (tuned on {spec['thresholds']['fitted_on']}) in export.json; "
              f"predict.py, Classifier.from_export and app.py answer every label at or above its threshold (the "
              f"network outputs raw logits, the sigmoid is applied outside)")
    print(f"use it: python predict.py {spec['folder']} song.mp3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
