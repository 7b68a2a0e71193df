"""Export a trained network to ONNX, TorchScript or a Hugging Face model folder, with everything outside the graph
in export.json.

    python export.py runs/<experiment> --format onnx               # -> runs/<experiment>/export_onnx/
    python export.py runs/<experiment>/best.pt --format torchscript --out my_model/
    python predict.py runs/<experiment>/export_onnx song.mp3        # the exported folder alone (onnxruntime)
    python export.py runs/<experiment> --format hf                  # transformers-based backbones: pipeline() loads it
    python export.py runs/<experiment> --format hf --push_to_hub=user/name [--private]   # and share it on the Hub

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

--format hf (AST, the wav2vec2 family, any --arch=hf:... run; see evaluation/export.py) writes save_pretrained
weights (safetensors) with the run's id2label/label2id, the feature extractor, the model card and export.json:
transformers.pipeline("audio-classification", model=FOLDER) then gives the checkpoint's top-1 and probabilities
(to 1e-4) on a clip that fills exactly one window; it reads one window, where the checkpoint averages the windows
of a longer clip. The ResNets and CNN14 have no transformers class: the error names their formats.
--push_to_hub uploads the folder with huggingface_hub (token from `hf auth login` or HF_TOKEN); offline or
without a token it fails before anything is written.

Files are written into a temporary folder beside the output and moved into it once complete (export.json
last), so a failed export leaves the output folder as it was.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from evaluation import forward_windows
from evaluation.classifier import Classifier
from evaluation.export import EXPORT_JSON, FORMATS, ExportError, formats_for, write_export_json
from evaluation.hub import check_push, push_folder
from experiment.checkpoint import CheckpointError
from experiment.config import ConfigError
from experiment.model_card import metrics_summary, read_metrics
from models import get_backbone

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
    p.add_argument("--push_to_hub", default=None, metavar="USER/NAME",
                   help="--format hf: upload the folder to this Hugging Face model repository (created when missing)")
    p.add_argument("--private", action="store_true", help="with --push_to_hub: create the repository private")
    args = p.parse_args(argv)
    if args.dynamo and args.format != "onnx":
        p.error("--dynamo applies to --format=onnx only")
    if args.push_to_hub is not None and args.format != "hf":
        p.error("--push_to_hub applies to --format=hf only")
    if args.private and args.push_to_hub is None:
        p.error("--private applies with --push_to_hub only")
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


def check_parity(clf: Classifier, network: torch.nn.Module, windows: torch.Tensor, temperature: float = 1.0) -> dict:
    """Logits of the checkpoint's model (divided by the calibration ``temperature`` the export folded in) and of
    the exported ``network`` on the same windows (one batch)."""
    reference = forward_windows(clf.model, clf.input_transform, windows, clf.device, chunk=len(windows)) / temperature
    exported = forward_windows(network, clf.input_transform, windows, clf.device, chunk=len(windows))
    return dict(max_abs_logit_diff=float((reference - exported).abs().max()), batch_size=len(windows),
                top1_agree=bool((reference.argmax(1) == exported.argmax(1)).all()))


def check_exportable(arch: str, fmt: str) -> None:
    """Raise ExportError when backbone ``arch`` cannot be written as ``fmt``, naming the formats it exports to."""
    family = get_backbone(arch).family
    if fmt not in formats_for(family):
        raise ExportError(f"{arch} ({family.replace('_', ' ')}) cannot be exported as --format {fmt}: transformers "
                          f"has no class for it. It exports to: {', '.join(formats_for(family))}.")


def publish(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` into ``out`` (created when missing), ``export.json`` last: each file is
    replaced whole, and export.json is only new once the rest is."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == EXPORT_JSON):
        os.replace(path, out / path.name)


def export(args: argparse.Namespace) -> dict:
    """Write the export folder and check it, then push it (``push_to_hub``); returns export.json's content plus
    ``folder`` and, when pushed, ``pushed`` (the commit URL).

    Raises FileNotFoundError / CheckpointError (no usable checkpoint), ExportError (a backbone the format does
    not take, the exporter failed) or HubError (cannot push: checked before anything is written).
    """
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    clf = Classifier.from_checkpoint(ckpt, "cpu")
    fmt, arch = FORMATS[args.format], clf.config["arch"]
    check_exportable(arch, args.format)
    token = check_push(args.push_to_hub) if args.push_to_hub else None
    out = Path(args.out or run_dir / f"export_{args.format}")
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    example = clf.input_transform(parity_windows(clf, EXPORT_BATCH, None, seed=1))
    try:
        staging.mkdir(parents=True)
        try:
            how = fmt.save(clf, example, staging, run_dir, args.push_to_hub or str(out),
                           **({"dynamo": True} if args.dynamo else {}))
        except ExportError:
            raise
        except Exception as err:
            others = [f for f in formats_for(get_backbone(arch).family) if f != args.format]
            raise ExportError(f"{arch} does not export to {args.format} ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:500]}). Try --format {' or '.join(others)}") from None
        parity = check_parity(clf, fmt.load(staging, clf.device), parity_windows(clf, args.parity_windows, args.audio),
                              how.get("temperature", 1.0))
        spec = export_spec(args, clf, ckpt, run_dir, example, how, parity)
        write_export_json(staging, spec)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    spec["folder"] = str(out)
    if token:
        message = f"Upload {spec['experiment_name'] or run_dir.name} ({arch}), exported by mel-classifier"
        spec["pushed"] = push_folder(out, args.push_to_hub, token, args.private, message)
    return spec


def export_spec(args: argparse.Namespace, clf: Classifier, ckpt: Path, run_dir: Path, example: torch.Tensor,
                how: dict, parity: dict) -> dict:
    """export.json's content: the format and network file, labels, input and output, the front end and
    windows, the training config, splits, calibration and metrics, how it was exported and the parity.

    ``calibration`` (only when the checkpoint has one) is its record, except when the format folded the
    temperature into the network (``how["temperature"]``, the hf format): the network's logits are calibrated
    already, so the record's ``temperature`` is 1.0 (nothing divides them again) and ``folded_into_network`` T."""
    cfg = clf.config
    calibration = clf.meta.get("calibration")
    if calibration and "temperature" in how:
        calibration = {**calibration, "temperature": 1.0, "folded_into_network": how["temperature"]}
    return dict(format=args.format, file=FORMATS[args.format].file, backbone=cfg["arch"], label_names=clf.label_names,
                input=dict(name="input", dtype="float32", shape=["batch", *example.shape[1:]]),
                output=dict(name="logits", dtype="float32", shape=["batch", len(clf.label_names)]),
                window_frames=clf.window, hop_frames=clf.hop, sample_rate=clf.sample_rate,
                clip_seconds=cfg["clip_seconds"], eval_hop_seconds=cfg["eval_hop_seconds"],
                features=clf.meta["features"], config=cfg, splits=clf.meta.get("splits"),
                experiment_name=clf.meta.get("experiment_name"),
                **({"calibration": calibration} if calibration else {}),
                epoch=clf.meta.get("epoch"), best=clf.meta.get("best"), metrics=metrics_summary(read_metrics(run_dir)),
                task=clf.task.name, **({"thresholds": clf.meta["thresholds"]} if clf.meta.get("thresholds") else {}),
                exported_from=str(ckpt), exported_with=dict(how, torch=torch.__version__), parity=parity)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0: exported, parity within --tolerance, pushed if asked)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = export(args)
    except (FileNotFoundError, CheckpointError, ConfigError) as err:  # ExportError, HubError are CheckpointErrors
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
    calibration = spec.get("calibration") or {}
    if "folded_into_network" in calibration:
        print(f"calibration: temperature {calibration['folded_into_network']:.3f} folded into the network's head "
              f"(its logits are already divided by it; export.json records 1.0 so nothing divides them again)")
    elif calibration:
        print(f"calibration: temperature {calibration['temperature']:.3f} (fitted on "
              f"{calibration.get('fitted_on', 'val')}) in export.json; predict.py, Classifier.from_export and app.py "
              f"apply it (the network itself outputs raw logits)")
    if "thresholds" in spec:
        print(f"multi-label: the per-class thresholds (tuned on {spec['thresholds']['fitted_on']}) in export.json; "
              f"predict.py, Classifier.from_export and app.py answer every label at or above its threshold (the "
              f"network outputs raw logits, the sigmoid is applied outside)")
    print(f"use it: python predict.py {spec['folder']} song.mp3")
    if args.format == "hf":
        print(f'or with transformers: pipeline("audio-classification", model="{spec["folder"]}"), see its README.md')
    if spec.get("pushed"):
        print(f"pushed to the Hub: {spec['pushed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
