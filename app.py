"""Web demo: classify an uploaded file or a microphone recording with a trained run, in the browser.

    python app.py runs/<experiment>                     # http://127.0.0.1:7860, this machine only
    python app.py runs/<experiment> --port 8080 --top_k 3
    python app.py runs/<experiment>/export_onnx         # a folder written by export.py (onnxruntime)
    python app.py runs/<experiment> --host 0.0.0.0      # reachable from other machines on the network
    python app.py runs/<experiment> --concurrency 2 --queue_size 128   # a GPU, many users

The page shows the top-k labels with their calibrated probabilities (the run's temperature, fitted on its
val split; --uncalibrated: the raw softmax), the answer ("unknown" when the top probability is below
--min_confidence), each window's probabilities along time (for a song: which part sounds like which genre)
with the segments listed under it (consecutive windows with the same top label), the log-mel spectrogram the
windows were cut from, and what the model is: labels, training data and its test (or val) accuracy with the
protocol behind it. A multi-label model (experiment/tasks.py) shows each label's own sigmoid probability and
answers every label at or above its threshold (tuned on val), "none" when no label reaches it; its model facts
give mAP. The numbers come from Classifier.analyze, the same features, windows and network as
predict.py, so they are predict.py's numbers. Gradio's API works too:
gradio_client.Client(url).predict(handle_file("song.wav"), api_name="/classify").

Offline and safe by default: no analytics (GRADIO_ANALYTICS_ENABLED=False) and the default theme's fonts
are served by the app itself, so the page loads nothing from the internet; it listens on 127.0.0.1 unless
--host says otherwise and makes no public share link unless --share. Gradio refuses uploads over --max_mb
before storing them; the handler checks the size again with os.stat and the duration with the file header
(soundfile.info) before decoding anything, and refuses over --max_minutes. The only path it opens is the
temp file Gradio wrote for the upload (checked to be inside Gradio's upload folder). Checkpoints are
loaded with torch.load(weights_only=True).

Many users at once (Gradio's queue, set deliberately): --concurrency classifications run at the same time
(default 1: on a CPU the network already uses every core for one recording, so a second one at once only
splits the cores and holds two recordings' features and figures in memory; on a GPU, 2 overlaps one
request's decoding and plotting with another's network), and at most --queue_size requests wait (default
64); the next ones are refused at once with Gradio's "queue is full" instead of waiting minutes. Uploads are
not queued: Gradio receives them on its own threads and refuses those over --max_mb. scripts/load_test.py
measures what this holds (README, Reliability).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and on every analytics call

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from data.audio import MIN_SECONDS, AudioError, sf_path  # noqa: E402
from evaluation.classifier import Analysis, Classifier, load_for_cli  # noqa: E402
from evaluation.selective import UNKNOWN  # noqa: E402
from experiment.model_card import class_counts, dataset_name, metrics_summary, percent, read_metrics  # noqa: E402

MAX_ROWS = 12  # classes shown in the time plot (the most probable ones)
LABEL_INCHES = 0.35  # blank band above each figure: Gradio draws the plot's label over its top-left corner


class UploadRefused(ValueError):
    """An upload that is not decoded: too large, too long, not audio, or not Gradio's own temp file."""


def reason(err: Exception, path: str) -> str:
    """One short line from an exception, without the temp file's folder (soundfile quotes the whole path)."""
    text = getattr(err, "error_string", None) or f"{type(err).__name__}: {err}"
    return " ".join(text.replace(repr(os.fsencode(path)), "").replace(path, Path(path).name).split())[:200]


def check_upload(path: str, max_mb: float, max_minutes: float, upload_root: str) -> None:
    """Vet an upload before decoding it.

    Raises UploadRefused with a message for the page: the path is not inside ``upload_root`` (Gradio's
    upload folder), the file is over ``max_mb`` MB (os.stat), its header cannot be read, or it is longer
    than ``max_minutes`` (soundfile.info; no samples are decoded).
    """
    name = Path(path).name
    if not Path(path).resolve().is_relative_to(Path(upload_root).resolve()):
        raise UploadRefused(f"{name}: refused, only files uploaded through this page are classified.")
    size_mb = os.stat(path).st_size / 2 ** 20
    if size_mb > max_mb:
        raise UploadRefused(f"{name} is {size_mb:.1f} MB; this demo takes files up to {max_mb:g} MB "
                            f"(app.py --max_mb). Cut or compress it, or use predict.py for long files.")
    try:
        info = sf.info(sf_path(path))
    except Exception as err:
        raise UploadRefused(f"{name} cannot be read as audio ({reason(err, path)}). Use WAV, FLAC, OGG or MP3."
                            ) from None
    if info.duration > max_minutes * 60:
        raise UploadRefused(f"{name} is {info.duration / 60:.1f} minutes long; this demo takes recordings up to "
                            f"{max_minutes:g} minutes (app.py --max_minutes). Use predict.py for long files.")


def edges(centres: np.ndarray, width: float) -> np.ndarray:
    """Cell edges around sorted centres (midpoints; half a neighbour gap, or ``width`` for one cell, outside)."""
    if len(centres) == 1:
        return np.array([centres[0] - width / 2, centres[0] + width / 2])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def time_figure(analysis: Analysis, label_names: list[str]) -> Figure:
    """Heat map of each window's class probabilities (rows: the most probable classes, at most MAX_ROWS;
    columns: windows at their centre time in seconds). Titles are the gr.Plot labels."""
    probs = analysis.window_probabilities.numpy()
    rows = np.argsort(-analysis.prediction.probabilities.numpy())[:MAX_ROWS]
    centres = analysis.window_starts + analysis.window_seconds / 2
    fig = Figure(figsize=(8, 1.3 + 0.32 * len(rows)), dpi=100)
    ax = fig.subplots()
    x = np.clip(edges(centres, analysis.window_seconds), 0, analysis.prediction.seconds)  # a short clip: its length
    mesh = ax.pcolormesh(x, np.arange(len(rows) + 1) - 0.5,
                         probs[:, rows].T, cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(rows)), [label_names[i] for i in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"time (s): centres of the {len(centres)} window(s) of {analysis.window_seconds:.1f} s")
    fig.colorbar(mesh, ax=ax, pad=0.01, label="probability")
    fig.tight_layout(rect=(0, 0, 1, 1 - LABEL_INCHES / fig.get_figheight()))
    return fig


def spectrogram_figure(analysis: Analysis, scale: str) -> Figure:
    """The whole recording's spectrogram [n_mels, frames] against time in seconds, as the model's windows see it."""
    mel = analysis.spectrogram
    fig = Figure(figsize=(8, 2.8), dpi=100)
    ax = fig.subplots()
    image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                      extent=(0, mel.shape[1] * analysis.frame_seconds, 0, mel.shape[0]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    fig.colorbar(image, ax=ax, pad=0.01, label="dB" if scale == "db" else "power")
    fig.tight_layout(rect=(0, 0, 1, 1 - LABEL_INCHES / fig.get_figheight()))
    return fig


def model_summary(clf: Classifier, metrics: dict) -> str:
    """Markdown: backbone, labels, training data and split, and the run's accuracy with its protocol."""
    cfg, meta = clf.config, clf.meta
    counts = {split: sum(c.values()) for split, c in class_counts(meta.get("splits"), clf.label_names).items()}
    lines = [f"**Model**: `{cfg.get('arch')}` from run `{meta.get('experiment_name') or '?'}`"
             + (f" (exported, {meta['format']})" if "format" in meta else "") + ".",
             f"**Labels** ({len(clf.label_names)}): " + ", ".join(clf.label_names) + ".",
             f"**Training data**: {dataset_name(cfg)}, split `{cfg.get('split')}`"
             + (" (" + ", ".join(f"{n} {split}" for split, n in counts.items()) + " tracks)" if counts else "") + "."]
    for split, m in metrics.items():
        protocol = m.get("protocol", "protocol not recorded")
        if "mAP" in m:
            lines.append(f"**{split}**: {clf.task.headline(m)} on {m.get('n', '?')} tracks ({protocol}).")
        else:
            lines.append(f"**{split} top-1**: {percent(m['top1'])}, macro-F1 "
                         f"{percent(m.get('macro_f1', float('nan')))} on {m.get('n', '?')} tracks ({protocol}).")
    key = clf.task.best_key
    if key in (meta.get("best") or {}):
        lines.append(f"**Best {clf.task.selection_words} during training**: {meta['best'][key]:.1f}% "
                     f"(epoch {meta['best'].get('epoch', '?')}).")
    lines.append(f"**Input**: mono at {clf.sample_rate} Hz, cut into {cfg.get('clip_seconds')} s windows every "
                 f"{cfg.get('eval_hop_seconds')} s; the window logits are averaged.")
    unknown = (f" Below {percent(clf.min_confidence)} the answer is *unknown* (--min_confidence)."
               if clf.min_confidence else "")
    lines.append(f"**Probabilities**: {clf.probability_note()}.{unknown}")
    return "\n\n".join(lines)


SEGMENT_HEADERS = ["start (s)", "end (s)", "label", "probability", "windows"]


def segment_table(analysis: Analysis) -> list[list]:
    """Rows of the segments under the heat map: start and end (seconds), label, probability (%), windows."""
    return [[round(s.start, 2), round(s.end, 2), s.label, f"{100 * s.probability:.1f}%", s.windows]
            for s in analysis.timeline().segments]


def classify_upload(clf: Classifier, path: str | None, max_mb: float, max_minutes: float, upload_root: str):
    """The page's handler: (label probabilities, time figure, segment rows, spectrogram figure, details dict,
    status text).

    Every problem becomes a gr.Error with a readable message (shown on the page, never a traceback).
    """
    if not path:
        raise gr.Error("Upload an audio file or record one first.")
    name = Path(path).name
    try:
        check_upload(path, max_mb, max_minutes, upload_root)
        analysis = clf.analyze(path, min_seconds=MIN_SECONDS)
    except UploadRefused as err:
        raise gr.Error(str(err)) from None
    except AudioError as err:
        raise gr.Error(f"{name}: {err.reason}. Fix: {err.fix}") from None
    except Exception as err:  # anything else a hostile file provokes in the decoder or resampler
        raise gr.Error(f"{name} cannot be classified ({reason(err, path)}).") from None
    pred = analysis.prediction
    probabilities = {n: float(p) for n, p in zip(clf.label_names, pred.probabilities)}
    segments = segment_table(analysis)
    details = dict(file=name, seconds=round(pred.seconds, 3), windows=pred.num_windows, answer=pred.label,
                   calibrated=clf.calibrated and "calibration" in clf.meta, temperature=clf.applied_temperature,
                   min_confidence=clf.min_confidence, probabilities=probabilities,
                   labels=[dict(label=n, probability=q) for n, q in pred.labels],
                   thresholds=dict(zip(clf.label_names, clf.thresholds["thresholds"])) if clf.thresholds else None,
                   window_starts=[round(float(s), 3) for s in analysis.window_starts],
                   window_probabilities=analysis.window_probabilities.tolist(),
                   segments=[dict(zip(SEGMENT_HEADERS, row)) for row in segments])
    top, p = pred.top_k(1)[0]
    if clf.task.name == "multilabel":
        answer = ("labels at or above their thresholds: " + ", ".join(f"**{n}** ({percent(q)})" for n, q in pred.labels)
                  if pred.labels else f"answer: **{pred.label}**: no label reaches its threshold (the most "
                                      f"probable, {top}, has {percent(p)})")
    else:
        answer = (f"most probable: **{top}** ({percent(p)})" if pred.label != UNKNOWN else
                  f"answer: **{UNKNOWN}** (the most probable, {top}, has {percent(p)}, below the "
                  f"{percent(clf.min_confidence)} minimum)")
    status = f"**{name}**: {pred.seconds:.1f} s, {pred.num_windows} window(s) averaged; {answer}."
    return (probabilities, time_figure(analysis, clf.label_names), segments,
            spectrogram_figure(analysis, clf.config.get("scale")), details, status)


def build_demo(clf: Classifier, metrics: dict | None = None, top_k: int = 5, max_mb: float = 50,
               max_minutes: float = 10, concurrency: int = 1, queue_size: int = 64) -> gr.Blocks:
    """The page (not launched): audio input, Classify button, top-k chart, time plot, spectrogram, model facts.

    ``metrics``: :func:`experiment.model_card.metrics_summary` of the run (shown in the model facts). The
    Classify button is also the API endpoint ``/classify`` (one audio file in; label probabilities, the time
    figure, the segments table, the spectrogram figure, a details dict with every probability, window and
    segment, and the status text out). ``clf``'s ``calibrated`` and ``min_confidence`` decide the numbers and
    the answer. ``concurrency``: classifications at once; ``queue_size``: requests that may wait (Gradio's queue,
    see the module docstring).
    """
    upload_root = get_upload_folder()
    name = clf.meta.get("experiment_name") or "audio classifier"

    def classify(path):
        return classify_upload(clf, path, max_mb, max_minutes, upload_root)

    with gr.Blocks(title=f"{name}: audio classifier", analytics_enabled=False) as demo:
        gr.Markdown(f"# {name}\nUpload a recording (WAV, FLAC, OGG, MP3; up to {max_mb:g} MB and "
                    f"{max_minutes:g} minutes) or record one, then press **Classify**.")
        with gr.Row():
            with gr.Column(scale=2):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording")
                button = gr.Button("Classify", variant="primary")
                status = gr.Markdown()
                with gr.Accordion("About this model", open=True):
                    gr.Markdown(model_summary(clf, metrics or {}))
            with gr.Column(scale=3):
                top_k = min(top_k, len(clf.label_names))
                kind = ("sigmoid, each label on its own" if clf.task.name == "multilabel" else
                        "calibrated" if clf.calibrated and "calibration" in clf.meta else "raw softmax")
                label = gr.Label(num_top_classes=top_k, label=f"Top {top_k} ({kind} probabilities)")
                timeline = gr.Plot(label="Along time: each window's class probabilities")
                segments = gr.Dataframe(headers=SEGMENT_HEADERS, label="Segments: consecutive windows with the "
                                        "same top label", interactive=False)
                spectrogram = gr.Plot(label="The log-mel spectrogram the windows are cut from")
                with gr.Accordion("All numbers (JSON)", open=False):
                    details = gr.JSON(label="probabilities, windows and segments")
        button.click(classify, inputs=audio, outputs=[label, timeline, segments, spectrogram, details, status],
                     api_name="classify", concurrency_limit=concurrency)
    demo.queue(max_size=queue_size)
    return demo


def launch_options(host: str = "127.0.0.1", port: int = 7860, share: bool = False, max_mb: float = 50) -> dict:
    """Keyword arguments of ``Blocks.launch``: the address, no share link unless asked, Gradio's own upload
    limit (it refuses larger uploads before storing them), messages only from gr.Error, and the default
    theme, whose fonts Gradio serves itself (a ``gr.themes.GoogleFont`` would load them from Google)."""
    return dict(server_name=host, server_port=port, share=share, max_file_size=int(max_mb * 2 ** 20),
                show_error=False, theme=gr.themes.Default(), footer_links=["api"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="RUN", help="a run folder (its best.pt), a .pt checkpoint or an export.py folder")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--share", action="store_true", help="also make a public *.gradio.live link (off by default)")
    p.add_argument("--max_mb", type=float, default=50, help="largest upload accepted, MB (default 50)")
    p.add_argument("--max_minutes", type=float, default=10, help="longest recording accepted, minutes (default 10)")
    p.add_argument("--top_k", type=int, default=5, help="labels shown in the chart (default 5)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="classifications running at once (default 1; 2 on a GPU overlaps decoding and the network)")
    p.add_argument("--queue_size", type=int, default=64,
                   help="requests that may wait for a turn; more are refused at once (default 64)")
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--uncalibrated", action="store_true",
                   help="show the raw softmax instead of the calibrated probabilities (same top-1)")
    p.add_argument("--min_confidence", type=float, default=0.0, metavar="P",
                   help="answer 'unknown' when the top (calibrated) probability is below P, in [0, 1] (default 0)")
    args = p.parse_args(argv)
    for key in ("max_mb", "max_minutes", "top_k", "concurrency", "queue_size"):
        if getattr(args, key) <= 0:
            p.error(f"--{key} must be positive, got {getattr(args, key)}")
    if not 0.0 <= args.min_confidence <= 1.0:
        p.error(f"--min_confidence must be a probability in [0, 1], got {args.min_confidence}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Serve the demo until Ctrl-C; returns the exit status (1: the model cannot be loaded)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clf = load_for_cli(args.model, args.device, not args.uncalibrated, args.min_confidence)
    if clf is None:
        return 1
    folder = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
    metrics = clf.meta.get("metrics") or metrics_summary(read_metrics(folder))
    demo = build_demo(clf, metrics, args.top_k, args.max_mb, args.max_minutes, args.concurrency, args.queue_size)
    demo.launch(**launch_options(args.host, args.port, args.share, args.max_mb), prevent_thread_lock=True, quiet=True)
    where = "this machine only; --host=0.0.0.0 to serve the network" if args.host == "127.0.0.1" else f"on {args.host}"
    print(f"{args.model}: open {demo.local_url} ({where})"
          + (f"\npublic link (anyone who has it can use the demo): {demo.share_url}" if demo.share_url else "")
          + "\nCtrl-C stops the server.", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
