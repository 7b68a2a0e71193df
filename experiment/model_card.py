"""The model card: ``README.md`` in a run folder, the whole story of a run on one page.

``write_model_card(run_dir)`` reads only the files in the folder (``best.pt`` through
:func:`experiment.checkpoint.load_checkpoint`, ``metrics.json``, ``history.csv``, ``confusion_matrix_*.png``),
so train.py calls it once at the end of training, and ``python -m experiment.model_card runs/<experiment>``
writes it again for any run (e.g. one trained before cards existed). The card is
readable on its own and upload-ready as a Hugging Face model card: YAML front matter with
``library_name``, ``tags``, ``datasets`` (when the data is recognised), ``metrics`` and ``model-index``
(https://huggingface.co/docs/hub/model-cards). :func:`render_export_card` is the same story for a
``transformers`` model folder (``export.py --format hf``): ``library_name: transformers``, the base model, and
how ``pipeline("audio-classification")`` uses it.
"""
from __future__ import annotations

import csv
import json
import platform
import sys
from collections import Counter
from pathlib import Path

import yaml

from augment import AUGMENTATIONS
from experiment.checkpoint import load_checkpoint, write_atomic

CARD = "README.md"
GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
SPLIT_PROTOCOLS = {
    "tutorial": "per-label train/val split (the SwanLab tutorial's `train_test_split` per genre, test_size="
                "{val_size}, random_state={split_seed}); no test split, and the checkpoint is chosen on val, so "
                "val numbers are optimistic",
    "stratified": "stratified train/val/test split by track (val_size={val_size}, test_size={test_size}, "
                  "random_state={split_seed}); the checkpoint is chosen on val, test is held out",
    "stratified+groups": "stratified train/val/test split by group (scikit-learn StratifiedGroupKFold, val_size="
                         "{val_size}, test_size={test_size}, random_state={split_seed}); the checkpoint is chosen on "
                         "val, test is held out",
    "unseen_test+groups": "test = whole groups never heard in training (scikit-learn StratifiedGroupKFold, "
                          "test_size={test_size}); val = a label-stratified val_size={val_size} of the other "
                          "groups' tracks, so val is optimistic; random_state={split_seed}; the checkpoint is "
                          "chosen on val, test is held out",
    "fault_filtered": "the artist-filtered, fault-filtered GTZAN split of Kereliuk, Sturm & Larsen (2015) "
                      "(443/197/290 tracks); the checkpoint is chosen on val, test is held out",
    "predefined": "the data's own train/validation/test splits (the index's `split` column, e.g. FSD50K's dev "
                  "train/val and eval as test; a val part missing from the data is drawn from train: "
                  "val_size={val_size}, random_state={split_seed}); the checkpoint is chosen on val",
}
# front end -> (what the card's first line says the network reads, its Hub tags)
INPUTS = {"logmel": ("log-mel spectrogram images", ["log-mel", "spectrogram"]),
          "panns_logmel": ("PANNs log-mel spectrograms", ["log-mel", "spectrogram"]),
          "kaldi_fbank": ("Kaldi fbank spectrograms", ["fbank", "spectrogram"]),
          "waveform": ("raw waveforms", ["waveform"])}
KEY_CONFIG = ("arch", "pretrained", "sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "scale",
              "top_db", "clip_seconds", "eval_hop_seconds", "resize", "augment", "mixup_alpha", "batch_size",
              "learning_rate", "weight_decay", "label_smoothing", "ema_decay", "balanced_sampler", "num_epochs",
              "warmup_epochs", "lr_step_size", "lr_gamma", "seed", "amp")
HISTORY_COLUMNS = (("train/epoch", "epoch", "{:.0f}"), ("train/loss", "train loss", "{:.4f}"),
                   ("train/acc", "train top-1 %", "{:.1f}"), ("train/precision_at_1", "train p@1 %", "{:.1f}"),
                   ("val/loss", "val loss", "{:.4f}"), ("val/acc", "val top-1 %", "{:.1f}"),
                   ("val/macro_f1", "val macro-F1 %", "{:.1f}"), ("val/mAP", "val mAP %", "{:.1f}"),
                   ("val/mAUC", "val mAUC %", "{:.1f}"), ("val/d_prime", "val d'", "{:.2f}"),
                   ("train/lr", "lr", "{:.2e}"), ("train/epoch_seconds", "seconds", "{:.0f}"))
MULTILABEL_KEYS = ("mAP", "mAUC", "d_prime", "micro_f1", "mAP_ci")  # headline numbers of a multi-label split


def read_metrics(folder) -> dict:
    """``metrics.json`` of a run folder ({split: {top1, macro_f1, n, protocol, confusion, ...}}); {} when absent."""
    try:
        data = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def metrics_summary(metrics: dict) -> dict:
    """Per split, the headline numbers only: top1, macro_f1 (fractions), n, protocol, epoch and intervals; for a
    multi-label split (``mAP`` in it) also mAP, mAUC, d_prime, micro_f1 and mAP_ci."""
    keys = ("top1", "macro_f1", "n", "protocol", "epoch", "checkpoint", "top1_ci", "macro_f1_ci", *MULTILABEL_KEYS)
    return {split: {k: m[k] for k in keys if k in m} for split, m in metrics.items()
            if isinstance(m, dict) and ("top1" in m or "mAP" in m)}


def dataset_name(cfg: dict) -> str:
    """The data folder's name, as train.py names SwanLab projects (``GTZAN/genres_original`` -> ``GTZAN``)."""
    root = Path(cfg.get("data_root") or "GTZAN")
    return root.parent.name if root.name in ("genres_original", "genres") else root.name


def hub_dataset(label_names: list[str], cfg: dict | None = None) -> str | None:
    """The Hugging Face dataset id: the run's ``hf_dataset`` when it is a Hub id (not a local folder), else
    ``marsyas/gtzan`` when the labels are GTZAN's ten genres, else None."""
    source = (cfg or {}).get("hf_dataset")
    if source and not Path(source).expanduser().is_dir():
        return source
    return "marsyas/gtzan" if sorted(label_names) == GTZAN_GENRES else None


def class_counts(splits: dict | None, label_names: list[str], record: dict | None = None) -> dict[str, Counter]:
    """{split: Counter(label: tracks)}: the exact counts of the checkpoint's split ``record`` (``split_record``,
    saved since group-aware splits) when given, else read from its track lists (paths relative to data_root,
    whose first folder is the label), where tracks outside a label folder (a CSV index) count as ``?``."""
    if record and all("class_counts" in part for part in record.values()):
        return {split: Counter({n: c for n, c in part["class_counts"].items() if c}) for split, part in record.items()}

    def label(path: str) -> str:
        folder = Path(path).parts[0] if Path(path).parts else ""
        return folder if folder in label_names else "?"
    return {split: Counter(label(p) for p in paths) for split, paths in (splits or {}).items()}


def input_of(cfg: dict) -> tuple[str, list[str]]:
    """(words for what the network reads, Hub tags) of the run's front end (``logmel`` for older configs)."""
    return INPUTS.get(cfg.get("frontend", "logmel"), ("spectrograms", ["spectrogram"]))


def percent(x) -> str:
    """A fraction as a percentage with one decimal: ``0.8333`` -> ``83.3%``."""
    return f"{100 * float(x):.1f}%"


def interval(ci) -> str:
    """`` (95% CI 61.2-78.0%)`` from ``[low, high]`` or ``{"low", "high", "level"}`` (fractions); "" otherwise."""
    if isinstance(ci, dict):
        low, high, level = ci.get("low"), ci.get("high"), ci.get("level", 0.95)
    elif isinstance(ci, (list, tuple)) and len(ci) == 2:
        (low, high), level = ci, 0.95
    else:
        return ""
    if low is None or high is None:
        return ""
    return f" ({100 * float(level):g}% CI {100 * float(low):.1f}-{100 * float(high):.1f}%)"


def arch_tag(arch: str) -> str:
    """The Hub tag of a backbone: its name, or for ``hf:<model id or folder>`` the last part of the id or path."""
    return arch[3:].rstrip("/").split("/")[-1] if arch.startswith("hf:") else arch


def front_matter(state: dict, summary: dict, dataset: str, library: str = "pytorch",
                 base_model: str | None = None) -> str:
    """The Hugging Face YAML header: library, base model (when given), tags, dataset, metrics and model-index
    results (percent)."""
    cfg, name = state["config"], state.get("experiment_name") or "model"
    hub = hub_dataset(state["label_names"], cfg)
    results = []
    for split, m in summary.items():
        if "mAP" in m:
            metrics = [dict(type="map", name=f"{split} mAP (%)", value=round(100 * m["mAP"], 2)),
                       dict(type="roc_auc", name=f"{split} mAUC (%)", value=round(100 * m["mAUC"], 2))]
        else:
            metrics = [dict(type="accuracy", name=f"{split} top-1 accuracy (%)", value=round(100 * m["top1"], 2))]
        if "macro_f1" in m:
            metrics.append(dict(type="f1", name=f"{split} macro-F1 (%)", value=round(100 * m["macro_f1"], 2),
                                args=dict(average="macro")))
        results.append(dict(task=dict(type="audio-classification", name="Audio Classification"),
                            dataset=dict(name=dataset, type=hub or dataset,
                                         split=split), metrics=metrics))
    multilabel = cfg.get("task") == "multilabel"
    meta = dict(library_name=library, pipeline_tag="audio-classification",
                tags=["audio-classification", *(["multi-label"] if multilabel else []), *input_of(cfg)[1],
                      arch_tag(cfg.get("arch", "model")), "mel-classifier"])
    if base_model:
        meta["base_model"] = base_model
    if hub:
        meta["datasets"] = [hub]
    meta["metrics"] = ["map", "roc_auc", "f1"] if multilabel else ["accuracy", "f1"]
    meta["model-index"] = [dict(name=name, results=results)]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def results_section(state: dict, summary: dict, run_dir: Path) -> list[str]:
    """Markdown lines: metrics.json's numbers per split with their protocol, best val, the confusion PNGs."""
    best, cfg = state.get("best") or {}, state["config"]
    if cfg.get("task") == "multilabel":
        return multilabel_results(state, summary, run_dir)
    lines = ["## Results", "", "| split | top-1 | macro-F1 | tracks | protocol |", "|---|---:|---:|---:|---|"]
    for split, m in summary.items():
        f1 = percent(m["macro_f1"]) + interval(m.get("macro_f1_ci")) if "macro_f1" in m else "-"
        lines.append(f"| {split} | {percent(m['top1'])}{interval(m.get('top1_ci'))} | {f1} | {m.get('n', '-')} | "
                     f"{m.get('protocol', '-')} ({m.get('checkpoint', 'best.pt')}, epoch {m.get('epoch', '?')}) |")
    if not summary:
        lines.append("| - | - | - | - | no metrics.json in the run folder: run `python evaluate.py` |")
    if "val_acc" in best:
        lines += ["", f"Best val top-1 during training: **{best['val_acc']:.1f}%** at epoch {best.get('epoch', '?')} "
                      f"of {cfg.get('num_epochs', '?')} (this epoch's weights are `best.pt`; the same val split "
                      f"chose it, so it is optimistic). Accuracy is per track: each recording is cut into "
                      f"{cfg.get('clip_seconds', '?'):g} s windows every {cfg.get('eval_hop_seconds', '?'):g} s and "
                      f"the window logits are averaged."]
    for png in sorted(run_dir.glob("confusion_matrix_*.png")):
        lines += ["", f"![confusion matrix, {png.stem.rsplit('_', 1)[-1]}]({png.name})"]
    return lines + [""]


def multilabel_results(state: dict, summary: dict, run_dir: Path) -> list[str]:
    """Markdown lines of a multi-label run: mAP (with its interval), mAUC, d', micro/macro-F1 at the thresholds
    tuned on val, per split with its protocol; best val mAP; the per-class AP charts."""
    best, cfg = state.get("best") or {}, state["config"]
    lines = ["## Results", "", "Multi-label tagging: each label has its own sigmoid probability. mAP is the mean over "
             "the classes with a positive track of scikit-learn's average precision; d' = sqrt(2) Phi^-1(mAUC); "
             "F1 counts a label as predicted when its probability reaches its class's threshold (F1-optimal on "
             "val).", "", "| split | mAP | mAUC | d' | micro-F1 | macro-F1 | tracks | protocol |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for split, m in summary.items():
        ci = f" (95% CI {m['mAP_ci'][0]:.3f}-{m['mAP_ci'][1]:.3f})" if m.get("mAP_ci") else ""
        f1 = [percent(m[k]) if k in m else "-" for k in ("micro_f1", "macro_f1")]
        lines.append(f"| {split} | {m['mAP']:.3f}{ci} | {m['mAUC']:.3f} | {m['d_prime']:.2f} | {f1[0]} | {f1[1]} | "
                     f"{m.get('n', '-')} | {m.get('protocol', '-')} ({m.get('checkpoint', 'best.pt')}, epoch "
                     f"{m.get('epoch', '?')}) |")
    if not summary:
        lines.append("| - | - | - | - | - | - | - | no metrics.json in the run folder: run `python evaluate.py` |")
    if "val_mAP" in best:
        lines += ["", f"Best val mAP during training: **{best['val_mAP']:.1f}%** at epoch {best.get('epoch', '?')} "
                      f"of {cfg.get('num_epochs', '?')} (this epoch's weights are `best.pt`; chosen on val, so "
                      f"optimistic). Metrics are per track: window logits averaged, then the sigmoid."]
    for png in sorted(run_dir.glob("average_precision_*.png")):
        lines += ["", f"![per-class average precision, {png.stem.rsplit('_', 1)[-1]}]({png.name})"]
    return lines + [""]


def thresholds_section(state: dict, metrics: dict) -> list[str]:
    """Markdown lines of a multi-label run's decision rule: where the thresholds were tuned, and the per-class
    table (AP, support, threshold, F1) of each evaluated split; [] without thresholds."""
    record = state.get("thresholds")
    if not record:
        return []
    lines = ["## Decision thresholds", "", f"A label is answered when its sigmoid probability reaches its class's "
             f"threshold, {record['rule']}, tuned on {record['tracks']} {record['fitted_on']} tracks. `predict.py`, "
             f"`Classifier`, the demo and exports apply them (`--min_confidence=P` raises every threshold below P "
             f"to P; `none` when no label reaches its threshold). No temperature is fitted: softmax calibration "
             f"does not apply to independent labels.", ""]
    for split, m in metrics.items():
        rows = m.get("per_class") if isinstance(m, dict) and "mAP" in m else None
        if not rows:
            continue
        lines += [f"On {split}:", "", "| class | AP | support | threshold | F1 |", "|---|---:|---:|---:|---:|"]
        for name in state["label_names"]:
            r = rows.get(name, {})
            cells = [f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in ("ap", "threshold", "f1")]
            lines.append(f"| {name} | {cells[0]} | {r.get('support', '-')} | {cells[1]} | {cells[2]} |")
        lines.append("")
    return lines


def calibration_section(state: dict, metrics: dict, run_dir: Path) -> list[str]:
    """Markdown lines: the temperature (fitted on val), ECE before/after per evaluated split, the reliability
    diagrams, and the selective-classification table that tells how to choose ``--min_confidence``; [] for a
    run without calibration (trained before it existed and not evaluated since)."""
    record = state.get("calibration")
    splits = {split: m for split, m in metrics.items() if isinstance(m, dict) and "calibration" in m}
    if not record and not splits:
        return []
    lines = ["## Calibration and \"unknown\"", ""]
    if record:
        lines += [f"Probabilities are calibrated by temperature scaling (Guo et al. 2017): the logits are divided by "
                  f"**T = {record['temperature']:.3f}**, fitted by maximum likelihood on the {record['tracks']} "
                  f"{record['fitted_on']} tracks (ECE there {percent(record['ece_before'])} raw, "
                  f"{percent(record['ece_after'])} calibrated). `predict.py`, `Classifier`, the demo and exports "
                  f"apply it (`--uncalibrated`: the raw softmax); top-1 is the same either way.", ""]
    for split, m in splits.items():
        c = m["calibration"]
        lines += [f"On {split}: expected calibration error ({c.get('bins', 15)} equal-width bins) "
                  f"**{percent(c['ece_before'])} raw -> {percent(c['ece_after'])} calibrated**, negative "
                  f"log-likelihood {c['nll_before']:.4f} -> {c['nll_after']:.4f}.", ""]
        if m.get("selective"):
            lines += [f"Answering only when the top calibrated probability reaches P (`--min_confidence=P`; "
                      f"below it the answer is `unknown`), on {split}:", "",
                      "| coverage | tracks answered | top-1 on them | P |", "|---:|---:|---:|---:|"]
            lines += [f"| {100 * r['coverage']:.0f}% | {r['tracks']} | {percent(r['top1'])} | "
                      f"{r['min_confidence']:.3f} |" for r in m["selective"]]
            lines.append("")
    for png in sorted(run_dir.glob("reliability_*.png")):
        lines += [f"![reliability diagram, {png.stem.rsplit('_', 1)[-1]}]({png.name})", ""]
    return lines


def data_section(state: dict, dataset: str, metrics: dict | None = None) -> list[str]:
    """Markdown lines: dataset, labels, split protocol (predefined folds when ``metrics``' reports say so) and
    tracks per class and split (a multi-label track counts once for each of its labels)."""
    cfg, names = state["config"], state["label_names"]
    predefined = next((m["predefined_folds"] for m in (metrics or {}).values()
                       if isinstance(m, dict) and m.get("predefined_folds")), None)
    how = (f"the data's predefined folds (the index's `fold` column: {', '.join(map(str, predefined))}), never "
           f"reshuffled" if predefined else f"group- and label-stratified, random_state={cfg.get('split_seed', '?')}")
    counts = class_counts(state.get("splits"), names, state.get("split_record"))
    groups = group_lines(state)
    protocol = SPLIT_PROTOCOLS.get(f"{cfg.get('split')}{'+groups' if groups else ''}",
                                   SPLIT_PROTOCOLS.get(cfg.get("split"), "split={split}, random_state={split_seed}"))
    protocol = protocol.format(**{k: cfg.get(k, "?") for k in ("split", "val_size", "test_size", "split_seed")})
    source = (f"Hugging Face dataset `{cfg['hf_dataset']}`" + (f", config `{cfg['hf_config']}`" if cfg.get("hf_config")
                                                                 else "") + f", audio extracted to `{cfg.get('data_root')}`"
              if cfg.get("hf_dataset") else f"`data_root`: `{cfg.get('data_root') or './GTZAN'}`")
    lines = ["## Data", "", f"- Dataset: **{dataset}** ({source}), "
             f"{len(names)} classes: {', '.join(f'`{n}`' for n in names)}.",
             f"- Split `{cfg.get('split', '?')}`: {protocol}." if not cfg.get("folds") else
             f"- Fold {cfg.get('fold')} of {cfg.get('folds')}-fold cross-validation ({how}): test is this fold, "
             "val comes from the other folds and chooses the checkpoint.", *groups]
    if counts:
        splits = list(counts)
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        lines += [f"| {n} | " + " | ".join(str(counts[s].get(n, 0)) for s in splits) + " |"
                  for n in [*names, "?"] if any(counts[s].get(n) for s in splits)]
        lines.append("| **total** | " + " | ".join(str(sum(counts[s].values())) for s in splits) + " |")
    else:
        lines.append("- The checkpoint records no track lists (trained before they were saved).")
    return lines + [""]


def group_lines(state: dict) -> list[str]:
    """Markdown line naming the groups (speakers, artists) of each split, when the checkpoint records them, and
    whether any group is in two splits (possible when the data brings its own splits: split=predefined)."""
    record = state.get("split_record") or {}
    if not any(part.get("groups") for part in record.values()):
        return []
    pattern = state["config"].get("group_pattern")
    source = f"file names matched by `{pattern}`" if pattern else "the index's group column"
    parts = "; ".join(f"{name}: {', '.join(map(str, part['groups'][:8]))}"
                      + (f" (+{len(part['groups']) - 8} more)" if len(part["groups"]) > 8 else "")
                      for name, part in record.items())
    seen = Counter(g for part in record.values() for g in set(part.get("groups", [])))
    shared = sorted(str(g) for g, n in seen.items() if n > 1)
    if shared:
        return [f"- Groups from {source} ({parts}); {len(shared)} of them are in more than one split "
                f"({', '.join(shared[:8])}{' ...' if len(shared) > 8 else ''}), so test does not measure unseen "
                "groups only."]
    return [f"- Groups from {source}, none in two splits ({parts}), so test measures unseen groups."]


def model_section(state: dict) -> list[str]:
    """Markdown lines: backbone, front end (Hz, samples, mel bands), input transform and windows (seconds)."""
    cfg, feats = state["config"], state.get("features") or {}
    norm, layout = feats.get("norm") or {}, cfg.get("input_layout", "image")
    f_max = cfg.get("f_max") or cfg.get("sample_rate", 0) / 2
    transform = (f"normalised with the training split's mean {norm.get('mean', 0):.4g} and std "
                 f"{norm.get('std', 1):.4g}, resized to {cfg.get('resize')} x {cfg.get('resize')}, 3 channels"
                 if layout == "image" else f"layout `{layout}`, normalisation `{cfg.get('normalization', 'auto')}` "
                                           f"(mean {norm.get('mean', 0):.4g}, std {norm.get('std', 1):.4g})")
    return ["## Model and input", "",
            f"- Network: `{cfg.get('arch')}`, " + ("pretrained weights fine-tuned" if cfg.get("pretrained")
                                                   else "trained from scratch")
            + f", new head for {len(state['label_names'])} classes.",
            f"- Front end `{cfg.get('frontend', 'logmel')}`: mono, resampled to {cfg.get('sample_rate')} Hz; "
            f"n_fft {cfg.get('n_fft')}, hop_length {cfg.get('hop_length')}, {cfg.get('n_mels')} mel bands, "
            f"{cfg.get('f_min', 0):g}-{f_max:g} Hz, scale `{cfg.get('scale')}`"
            + (f" (top_db {cfg.get('top_db')})" if cfg.get("scale") == "db" else "") + ".",
            f"- Input transform: {transform}.",
            f"- Windows: {cfg.get('clip_seconds')} s (random crops in training), every {cfg.get('eval_hop_seconds')} s "
            f"in evaluation and prediction, logits averaged per recording.", ""]


def history_section(history: list[dict]) -> list[str]:
    """Markdown lines: history.csv as a table in a collapsed block (none without history)."""
    if not history:
        return []
    cols = [c for c in HISTORY_COLUMNS if c[0] in history[0]]
    lines = ["## Training curve", "", "<details><summary>history.csv, one row per epoch</summary>", "",
             "| " + " | ".join(c[1] for c in cols) + " |", "|" + "---:|" * len(cols)]
    for row in history:
        cells = []
        for key, _, fmt in cols:
            try:
                cells.append(fmt.format(float(row[key])))
            except (TypeError, ValueError):
                cells.append(str(row.get(key, "")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "</details>", ""]


def augmentation_text(cfg: dict) -> str:
    """The augmentations a config trained with, in the registry's order with their keys (``augment``), e.g.
    ``vtlp (vtlp_p=0.5, vtlp_warp=0.1); time_mask (...)``, or "none"."""
    if not cfg.get("augment"):
        return "none"
    used = [f"{name} ({', '.join(f'{k}={cfg[k]}' for k in entry.keys if k in cfg and cfg[k] != '')})"
            for name, entry in AUGMENTATIONS.items() if cfg.get(entry.keys[0])]
    return "; ".join(used) or "none"


def config_section(cfg: dict, writer: str) -> list[str]:
    """Markdown lines: the keys that matter, the full config (collapsed) and the library versions of the
    process that writes the card (``writer`` says which)."""
    import torch
    try:
        import torchaudio
        audio = f", torchaudio {torchaudio.__version__}"
    except ImportError:
        audio = ""
    rows = [f"| `{k}` | `{cfg[k]}` |" for k in KEY_CONFIG if k in cfg]
    rows.append(f"| augmentations | {augmentation_text(cfg)} |")
    return ["## Configuration and environment", "", "| key | value |", "|---|---|", *rows, "",
            "<details><summary>full training config</summary>", "", "```json",
            json.dumps(cfg, indent=2, default=str), "```", "", "</details>", "",
            f"Environment of the process that wrote this card ({writer}): "
            f"torch {torch.__version__}{audio}, Python {platform.python_version()}, {platform.system()} "
            f"{platform.machine()}; device setting `{cfg.get('device', 'auto')}`.", ""]


def usage_section(run_dir: Path) -> list[str]:
    """Markdown lines: the commands that evaluate, predict with, serve and export this run."""
    run = run_dir.as_posix()
    return ["## Use it", "", "From the mel-classifier project's folder, after `pip install -r requirements.txt`:",
            "", "```bash",
            f"python evaluate.py {run}                          # metrics, per-class table, confusion matrix",
            f"python predict.py {run} song.mp3 --top_k=3        # classify your own files",
            f"python predict.py {run} mix.wav --timeline --min_confidence=0.5   # what plays when; unknown below P",
            f"python app.py {run}                               # web demo on http://127.0.0.1:7860",
            f"python export.py {run} --format onnx              # ONNX network + export.json",
            f"python predict.py {run}/export_onnx song.mp3      # the exported folder alone (onnxruntime)",
            "```", "", "```python", "from evaluation.classifier import Classifier", "",
            f'clf = Classifier.from_checkpoint("{run}")', 'clf.predict("song.mp3", top_k=3)', "```", ""]


def transformers_section(state: dict, model: str, window_samples: int) -> list[str]:
    """Markdown lines: how ``pipeline("audio-classification")`` loads the exported ``model`` (a Hub id or
    folder) and when it gives the trainer's probabilities (``window_samples``: the clip length, in samples at
    the model's rate, that fills exactly one window)."""
    cfg = state["config"]
    rate, fbank = cfg.get("sample_rate"), cfg.get("frontend") == "kaldi_fbank"
    return ["## Use it with transformers", "", "```python", "import soundfile as sf",
            "from transformers import pipeline", "",
            f'classifier = pipeline("audio-classification", model="{model}")',
            'audio, rate = sf.read("clip.wav", dtype="float32")  # a decoded waveform: no ffmpeg needed',
            'classifier({"raw": audio.mean(axis=1) if audio.ndim > 1 else audio, "sampling_rate": rate}, top_k=None)',
            "```", "",
            f"pipeline() resamples to {rate} Hz and classifies one window. On a clip of exactly {window_samples} "
            f"samples at {rate} Hz ({window_samples / rate:.3f} s: one {cfg.get('clip_seconds')} s training window) it "
            "gives the probabilities of the trainer's `Classifier` (to 1e-4), which the Results were computed "
            f"with. A longer clip: pipeline() {'reads only its first window' if fbank else 'reads it whole'}, where "
            f"`Classifier` averages the logits of {cfg.get('clip_seconds')} s windows every "
            f"{cfg.get('eval_hop_seconds')} s. A shorter clip: pipeline() "
            f"{'pads it at the end' if fbank else 'reads it unpadded'}, where `Classifier` centres it in a padded "
            "window, so the probabilities differ a little.", ""]


def render_model_card(run_dir: Path, state: dict, metrics: dict, history: list[dict],
                      export: dict | None = None) -> str:
    """The card's Markdown text (see the module docstring) from the run's files, already read.

    ``export``: for a transformers model folder, ``{"folder", "model", "base_model", "window_samples"}``
    (see :func:`render_export_card`); the card then describes that folder.
    """
    cfg, names = state["config"], state["label_names"]
    summary, dataset = metrics_summary(metrics), dataset_name(cfg)
    name = state.get("experiment_name") or run_dir.name
    epoch = state.get("epoch", "?")
    if export:
        folder, extra_files = Path(export["folder"]), {"export.json"}  # export.py writes it after the card
        head = front_matter(state, summary, dataset, "transformers", export.get("base_model"))
        holds = (f"this folder holds the weights of its epoch {epoch} as a transformers model. Every number below "
                 "comes from the run's files")
        first, last = transformers_section(state, export["model"], export["window_samples"]), []
        writer = "export.py --format hf wrote it"
    else:
        folder, extra_files, head = run_dir, set(), front_matter(state, summary, dataset)
        holds = f"`best.pt` holds epoch {epoch}. Every number below comes from this folder's files"
        first, last = [], usage_section(run_dir)
        writer = "train.py writes it at the end of training"
    tracked = (f" SwanLab: project `{state['swanlab_project']}`, experiment `{name}`."
               if state.get("swanlab_project") and cfg.get("swanlab_mode") != "disabled" else "")
    kind = "A multi-label audio tagger (any number of labels per recording)" if cfg.get("task") == "multilabel" \
        else "An audio classifier"
    intro = (f"# {name}\n\n{kind} for {len(names)} classes of {dataset} "
             f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}): a `{cfg.get('arch')}` on "
             f"{input_of(cfg)[0]}, trained for {cfg.get('num_epochs', '?')} epochs with the mel-classifier trainer "
             f"(`train.py`); {holds}.{tracked}\n")
    files = sorted({p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} | extra_files)
    parts = [head, intro, *first, *results_section(state, summary, folder),
             *([] if export else [*calibration_section(state, metrics, run_dir), *thresholds_section(state, metrics)]),
             *data_section(state, dataset, metrics),
             *model_section(state), *history_section(history), *config_section(cfg, writer), *last, "## Files", "",
             *[f"- `{f}`" for f in files if f != CARD], ""]
    return "\n".join(parts)


def render_export_card(run_dir, state: dict, folder, model: str, base_model: str | None,
                       window_samples: int) -> str:
    """The model card of a transformers model folder exported from ``run_dir`` (``export.py --format hf``):
    the run's card with ``library_name: transformers``, ``base_model`` (the Hub model it was fine-tuned from,
    when there is one), the pipeline() usage for ``model`` (a Hub id or folder) first, and ``folder``'s files
    and figures. ``state``: the checkpoint's entries (config, label_names, features, splits, epoch...)."""
    run_dir = Path(run_dir)
    return render_model_card(run_dir, state, read_metrics(run_dir), read_history(run_dir / "history.csv"),
                             dict(folder=folder, model=model, base_model=base_model, window_samples=window_samples))


def read_history(path: Path) -> list[dict]:
    """Rows of ``history.csv`` as dicts of strings; [] when absent."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def write_model_card(run_dir) -> Path:
    """Write ``run_dir/README.md`` (atomically) from the run's files; returns its path.

    Raises FileNotFoundError / CheckpointError when ``run_dir/best.pt`` is missing or unreadable.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "best.pt")
    text = render_model_card(run_dir, state, read_metrics(run_dir), read_history(run_dir / "history.csv"))
    path = run_dir / CARD
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


if __name__ == "__main__":
    print(write_model_card(sys.argv[1] if len(sys.argv) > 1 else "."))
