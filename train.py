"""Train a classifier of labelled audio (GTZAN by default): an ImageNet ResNet/ResNeXt on log-mel images, or an
audio-pretrained backbone (PANNs CNN14, AST, wav2vec2 / HuBERT / DistilHuBERT) on the input it was pretrained on.

    python train.py                                  # ./GTZAN (Kaggle genres_original/ or marsyas genres/)
    python train.py --preset=demo                    # built-in synthetic audio, offline, about a minute on a CPU
    python train.py --arch=cnn14                     # the backbone sets its front end (32 kHz PANNs log-mel)
    python train.py --preset=demo,distilhubert       # demo's data with DistilHuBERT's published recipe
    python train.py --data_root=my_audio --arch=resnet50 --resize=320 --learning_rate=3e-4
    python train.py --hf_dataset=user/name           # a Hugging Face dataset (Hub id or local copy), its own splits
    python train.py --arch=hf:facebook/wav2vec2-base # any Hugging Face audio-classification checkpoint (id or folder)
    python train.py --resume=runs/<run>              # continue from runs/<run>/last.pt
    python train.py --csv_path=tags.csv --split=stratified   # multi-label when label cells hold dog;rain
    python train.py --preset=esc50 --data_root=ESC-50-master # a benchmark download, its 5 predefined folds
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, one process per GPU

Presets: data presets (demo, fsdd, gtzan_mini; esc50, urbansound8k, fsd50k: the benchmarks' protocols) and the
tutorial's runs (resnet18, resnext101_32x8d) set data and recipe; the recipe presets of the audio backbones
(cnn14, ast, distilhubert) set only model, optimisation and augmentation keys, so --preset=DATA,RECIPE combines
them (applied in order, a later one wins). A backbone with a pretrained front end (see models/registry.py) sets
the feature keys over any preset; setting one of them on the command line to another value is an error.

The task (experiment/tasks.py: single_label, or multilabel with BCE, mAP and per-class thresholds) decides the
loss, the validation metrics, the metric choosing best.pt and the final report.
Every epoch goes to SwanLab and to runs/<run>/history.csv; best.pt and last.pt are written atomically.
Ctrl-C saves last.pt (mid-epoch) and exits 130; --resume continues exactly where the run stopped. Under
torchrun a Ctrl-C that reaches one rank stops every rank at the next sync; a rank that dies or hangs stops
the others with an error within --dist_timeout seconds; a full disk stops the run with the space it needs.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from augment import AUGMENTATIONS, build_augment, speed_factors
from augment import check_config as check_augment
from data import DataError, check_data_source, prepare_data
from data.cache import FeatureCache
from data.dataset import (ClipDataset, EpochSampler, TrackDataset, class_balance_weights, collate_clips,
                          collate_tracks)
from data.demo import make_demo_dataset
from data.features import build_features, build_input_transform, normalisation_for, window_frames
from data.hf_dataset import default_split
from data.index import warn_skipped
from data.labels import TASK_SETTINGS, label_counts
from evaluation import predict_tracks
from evaluation.cross_validation import fold_finished, fold_run_dirs, format_summary, summarize_folds
from evaluation.metrics import BOOTSTRAP_RESAMPLES, close
from experiment import distributed
from experiment.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, store_entry
from experiment.config import ConfigError, explicit_keys, format_help, key_comments, parse_config
from experiment.ema import build_ema, ema_checkpoint, evaluated, restore_ema
from experiment.engine import (MIN_BATCH_CLIPS, PendingSteps, Runtime, backward, build_model_and_optimizer,
                               loader_settings, mixup, optimizer_step, prepare_batch, setup_runtime, step_seed)
from experiment.hooks import EpochHook, StopTraining
from experiment.model_card import write_model_card
from experiment.progress import progress as progress_bar
from experiment.resume import ResumeState, StopRequest, Stopped, Terminated
from experiment.tracking import MODES, Tracker
from experiment.schedules import get_schedule
from experiment.tasks import Task, get_task
from models import PretrainedWeightsError, backbone_record, build_model, resolve_frontend


CONFIG = dict(
    # --- data ---
    data_root="",                  # <label>/<audio> folder or a benchmark download; empty: ./GTZAN or --csv_path's folder
    csv_path="audio_dataset.csv",  # the index (path,label[,group,fold,split]); rebuilt when it does not match data_root
    task="auto",                   # auto: multilabel when a label cell holds ';' | single_label | multilabel
    rebuild_index=False,           # rescan data_root even when csv_path matches it
    split="tutorial",              # tutorial (per-label 80/20) | stratified | unseen_test | fault_filtered | predefined
    val_size=0.2,                  # validation fraction (tutorial: of each label; stratified: of all tracks)
    test_size=0.1,                 # test fraction (split=stratified)
    split_seed=42,                 # random_state of the splits (the tutorial's 42)
    group_pattern="",              # regex on the path, 1st capture group = group (speaker, artist); never in two splits
    folds=0,                       # 0: off | K >= 2: K-fold CV (group-, label-stratified; the fold column if any)
    fold=-1,                       # -1: run the K folds one after another | i: fold i only (with experiment_name)
    balanced_sampler=False,        # class-balanced draws (WeightedRandomSampler: 1 / class count; multilabel: PSLA's)
    hf_dataset="",                 # Hugging Face dataset (Hub id or local copy) instead of data_root; split: predefined
    hf_config="",                  # its configuration (subset) name; empty: the default one
    hf_audio_column="",            # its audio column; empty: the one Audio column
    hf_label_column="",            # its label column; empty: the one ClassLabel column (its order gives the class ids)
    hf_splits="",                  # which of its splits are train/val/test, e.g. train=train,val=dev; empty: by name
    final_test=True,               # score best.pt on the test split at the end; False: on val (sweep.py's trials)
    # --- features ---
    sample_rate=22050,             # Hz; every file is down-mixed to mono and resampled to it
    n_fft=2048,                    # STFT size, samples
    hop_length=512,                # STFT hop, samples
    n_mels=128,                    # mel bands
    f_min=0.0,                     # lowest mel band edge, Hz
    f_max=0.0,                     # highest mel band edge, Hz (0: sample_rate / 2)
    scale="db",                    # db: log-mel normalised with train-set statistics | power: the tutorial's power mel
    top_db=80.0,                   # dynamic range kept below each track's maximum, dB (scale=db)
    clip_seconds=10.0,             # training crop (random position every epoch) and evaluation window, seconds
    eval_hop_seconds=5.0,          # hop between evaluation windows, seconds; logits are averaged over the track
    resize=224,                    # side of the square image fed to the CNN, pixels
    features_on="device",          # device: images + augmentation per batch on the device | item: on CPU workers
    frontend="logmel",             # logmel | panns_logmel | kaldi_fbank | waveform; a pretrained --arch sets its own
    input_layout="image",          # image: 3 x resize x resize (ImageNet CNNs) | spectrogram | waveform; set by --arch
    normalization="auto",          # auto (dB: train stats; power: none) | train | fixed | none | per_clip | per_band
    norm_mean=0.0,                 # mean subtracted with normalization=fixed (AST: -4.2677393)
    norm_std=1.0,                  # std divided by with normalization=fixed (AST: 9.1379948)
    # --- augmentation (training only; each: a probability per clip and a strength; sources in augment/) ---
    augment=True,                  # master switch of everything below but mixup
    speed_p=0.0,                   # speed perturbation (Ko et al. 2015): crops of cached copies at 1 -/+ speed_factor
    speed_factor=0.1,              # speed change of the two cached copies (Kaldi: 0.9 and 1.1)
    time_stretch_p=0.0,            # time stretch without pitch change (spectrogram frames resampled)
    time_stretch=0.2,              # largest rate change: rate ~ U(1 - x, 1 + x)
    vtlp_p=0.0,                    # vocal-tract length perturbation (Jaitly & Hinton 2013): warp of the mel axis
    vtlp_warp=0.1,                 # largest warp: alpha ~ U(1 - x, 1 + x) (the paper: 0.9-1.1)
    pitch_shift_p=0.0,             # pitch shift: mel axis scaled by 2^(n/12)
    pitch_shift=2.0,               # largest shift n, semitones (+/-)
    reverb_p=0.0,                  # reverberation by a room impulse response
    reverb_rt60=0.8,               # longest synthetic reverberation time (RT60), seconds (from 0.1)
    rir_dir="",                    # folder of impulse responses to use instead of synthetic ones
    background_p=0.0,              # a background mixed in: another training clip (any class) or noise_dir
    background_snr_min=5.0,        # lowest signal-to-background ratio, dB
    background_snr_max=20.0,       # highest signal-to-background ratio, dB
    noise_dir="",                  # folder of noise recordings for the background instead of training clips
    band_gain_p=0.0,               # random equalisation: gains on 2-5 random bands (FilterAugment, Nam et al. 2022)
    band_gain_db=6.0,              # largest band gain, dB (+/-)
    time_mask=40,                  # widest time mask, frames
    time_mask_p=1.0,               # probability of a time mask per clip
    freq_mask=20,                  # widest frequency mask, mel bands
    freq_mask_p=1.0,               # probability of a frequency mask per clip
    noise_std=1.0,                 # Gaussian noise std, input units (dB for scale=db)
    noise_p=0.5,                   # probability of noise per clip
    gain_min=0.5,                  # random gain range on the power spectrogram (0.5..2 = -3..+3 dB)
    gain_max=2.0,                  # upper end of the random gain (power factor)
    gain_p=0.5,                    # probability of a gain change per clip
    mixup_alpha=0.2,               # mixup Beta(alpha, alpha) on images and labels; 0 disables
    # --- model ---
    arch="resnet18",               # resnet18/50..., cnn14, ast, distilhubert... (models/registry.py) | hf:<id or folder>
    pretrained=True,               # start from the published weights (ImageNet, AudioSet...; downloaded once)
    weights="",                    # local weights file (ImageNet, CNN14) or Hugging Face folder; empty: download
    freeze_backbone=False,         # train only the new head (a linear probe; BatchNorm statistics kept)
    freeze_feature_encoder=False,  # wav2vec2 family: keep the convolutional feature encoder fixed
    # --- optimisation ---
    batch_size=16,                 # clips per micro-batch (per GPU under torchrun)
    grad_accum_steps=1,            # micro-batches per optimiser step (effective batch = batch_size x this)
    learning_rate=1e-4,            # peak learning rate (AdamW) of the pretrained body
    head_lr_multiplier=1.0,        # the new head's learning rate = learning_rate x this
    weight_decay=0.01,             # AdamW decoupled weight decay (0: plain Adam, as in the tutorial)
    label_smoothing=0.0,           # cross-entropy label smoothing (Szegedy et al. 2016; 0.1 is common)
    ema_decay=0.0,                 # EMA of the weights (evaluated, chosen, saved); 0: off; averages ~1/(1-decay) steps
    num_epochs=30,                 # epochs
    warmup_epochs=5,               # linear warmup: lr * (epoch + 1) / warmup_epochs for the first epochs
    lr_step_size=10,               # then StepLR: multiply by lr_gamma every lr_step_size epochs (0: constant)
    lr_gamma=0.1,                  # StepLR decay factor
    lr_schedule="step",            # step: warmup_epochs + StepLR per epoch | cosine: warmup_ratio, then cosine per step
    warmup_ratio=0.1,              # lr_schedule=cosine: fraction of the optimiser steps in linear warmup
    early_stopping_patience=0,     # epochs without the selection metric (val top-1; multilabel: mAP) improving; 0: off
    early_stopping_min_delta=0.0,  # improvement that counts, percentage points of that metric
    # --- system ---
    device="auto",                 # auto: cuda, else mps, else cpu; or e.g. cpu, cuda:1
    num_workers=-1,                # DataLoader workers; -1: auto (0 on CPU, up to 8 on a GPU machine)
    amp=True,                      # mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)
    channels_last=True,            # channels_last memory format on CUDA
    compile=False,                 # torch.compile the model
    dist_timeout=600.0,            # seconds a rank waits for the others (dead or hung) before it stops with an error
    sync_every=0,                  # micro-batches between loss read-backs (and Ctrl-C agreement); 0: 10 on CUDA, else 1
    seed=42,                       # everything random derives from it (and the epoch and step)
    cache_dir=".cache",            # spectrogram cache and the demo dataset
    out_dir="runs",                # run folders (best.pt, last.pt, history.csv, metrics.json, PNGs)
    resume="",                     # run folder (or .pt file) to continue from its last.pt
    # --- logging ---
    swanlab_project="",            # empty: "<dataset>-classification"
    experiment_name="",            # empty: built from arch, resize, learning rate, preset and time
    swanlab_group="",              # SwanLab experiment group (sweep.py: the study); empty: none (K-fold: the parent)
    swanlab_mode="",               # empty: SwanLab's own (cloud if logged in) | cloud | local | offline | disabled
    swanlab_logdir="swanlog",      # where local/offline runs are written
    confusion_every=5,             # val confusion matrix (multilabel: per-class AP chart) every N epochs; 0: end only
    preset="",                     # set by --preset=NAME or --preset=DATA,RECIPE (applied in order)
)

# The tutorial's two runs (DESIGN: SwanLab audio-classification tutorial) and two small offline presets.
TUTORIAL = dict(scale="power", hop_length=640, clip_seconds=30.0, eval_hop_seconds=30.0, mixup_alpha=0.0,
                weight_decay=0.0, seed=42)
PRESETS = {
    "resnet18": dict(TUTORIAL, arch="resnet18", resize=224, learning_rate=1e-4, num_epochs=20, warmup_epochs=0,
                     lr_step_size=0, augment=False),
    "resnext101_32x8d": dict(TUTORIAL, arch="resnext101_32x8d", resize=512, learning_rate=1e-4, num_epochs=30,
                             warmup_epochs=5, lr_step_size=10, lr_gamma=0.1, augment=True, time_mask=20,
                             freq_mask=20, noise_std=0.01, noise_p=0.5, gain_min=0.8, gain_max=1.2, gain_p=0.5),
    "demo": dict(data_root=".cache/demo", csv_path=".cache/demo/audio_dataset.csv", sample_rate=16000, n_fft=512,
                 hop_length=160, n_mels=64, clip_seconds=2.0, eval_hop_seconds=1.0, resize=64, time_mask=20,
                 freq_mask=8, pretrained=False, batch_size=16, learning_rate=1e-3, num_epochs=6, warmup_epochs=1,
                 lr_step_size=4, swanlab_mode="local"),
    # Spoken digits, speaker split (test: jackson, never heard). Per-clip normalisation (the speakers' levels
    # differ by 18 dB), time stretch (speaking rate), an EMA of the weights and strong random equalisation (band
    # gains of +/-12 dB at p 0.8: each speaker's microphone and voice colour the bands differently): 87.2 +/- 0.7%
    # test top-1 over seeds 0-2 (95% CI 84.3-90.1), 2 min a run on 2 cores; 83.8 +/- 1.7% without the band gains,
    # 75.7 +/- 1.2% without any of them (README, Generalising: the ablation).
    "fsdd": dict(data_root="../shared/fsdd", csv_path=".cache/fsdd_dataset.csv", split="stratified",
                 group_pattern=r"_([a-z]+)_\d+\.wav$", sample_rate=8000, n_fft=256,
                 hop_length=80, n_mels=64, clip_seconds=1.0, eval_hop_seconds=0.5, resize=64, time_mask=12,
                 freq_mask=8, pretrained=False, batch_size=32, learning_rate=1e-3, num_epochs=8, warmup_epochs=1,
                 lr_step_size=5, normalization="per_clip", time_stretch_p=0.5, ema_decay=0.98,
                 band_gain_p=0.8, band_gain_db=12.0),
    # The 50 GTZAN tracks of ../shared/gtzan-mini from scratch, 5-fold cross-validation (a fold: 30 training, 10
    # val, 10 test tracks), 30 epochs. Crops and evaluation windows of 3 s, not 10 (three times as many different
    # crops of a track; its logits averaged over 19 windows, not 5): 62.7 +/- 4.2% 5-fold test top-1 over seeds
    # 0-2 against 50.0 +/- 4.0% with 10 s (README, Generalising: GTZAN-mini).
    "gtzan_mini": dict(data_root="../shared/gtzan-mini/genres_original", csv_path=".cache/gtzan-mini.csv", folds=5,
                       pretrained=False, resize=96, batch_size=8, learning_rate=1e-3, num_epochs=30,
                       warmup_epochs=1, lr_step_size=20, clip_seconds=3.0, eval_hop_seconds=1.5),
    # The benchmarks' own protocols (data/benchmarks.py reads their metadata): --data_root=<the unpacked
    # download>. ESC-50 and UrbanSound8K: the predefined folds, fold mean ± std; FSD50K: dev train/val, eval as
    # test, multi-label (mAP), PSLA's balanced sampler (Gong et al. 2021). Combine with a recipe:
    # --preset=esc50,cnn14.
    "esc50": dict(data_root="ESC-50-master", csv_path=".cache/esc50_dataset.csv", folds=5, fold=-1,
                  clip_seconds=5.0, eval_hop_seconds=2.5),
    "urbansound8k": dict(data_root="UrbanSound8K", csv_path=".cache/urbansound8k_dataset.csv", folds=10, fold=-1,
                         clip_seconds=4.0, eval_hop_seconds=2.0),
    "fsd50k": dict(data_root="FSD50K", csv_path=".cache/fsd50k_dataset.csv", split="predefined",
                   task="multilabel", clip_seconds=10.0, eval_hop_seconds=5.0, balanced_sampler=True),
    # Fine-tuning recipes of the audio-pretrained backbones. They set only the model, optimisation and
    # augmentation keys (the backbone sets its own front end), so they combine with a data preset:
    # --preset=demo,cnn14 (the presets apply in order). --preset=demo --arch=cnn14 is CNN14 with demo's recipe.
    # qiuqiangkong/panns_transfer_to_gtzan (main.py, runme.sh): Adam lr 1e-4 (no weight decay, constant lr),
    # batch 32, mixup alpha 1.0; SpecAugmentation in audioset_tagging_cnn models.py: 2 time stripes of width
    # 64 frames, 2 frequency stripes of width 8 bins, no noise or gain.
    "cnn14": dict(arch="cnn14", learning_rate=1e-4, weight_decay=0.0, batch_size=32, mixup_alpha=1.0,
                  warmup_epochs=0, lr_step_size=0, lr_schedule="step", augment=True, time_mask=64, freq_mask=8,
                  noise_p=0.0, gain_p=0.0),
    # YuanGongND/ast egs/esc50/run-esc.sh (lr 1e-5, mixup 0, freqm 24, timem 96) and its issue #62 (GTZAN-size
    # fine-tuning); masks only: RandomGain's dB step does not suit Kaldi's natural-log fbank values.
    "ast": dict(arch="ast", learning_rate=1e-5, mixup_alpha=0.0, augment=True, freq_mask=24, time_mask=96,
                noise_p=0.0, gain_p=0.0),
    # Hugging Face audio course, chapter 4 (fine-tuning DistilHuBERT on GTZAN): TrainingArguments with
    # learning_rate 5e-5, per-device batch 8, 10 epochs, warmup_ratio 0.1
    # (the course keeps the Trainer's default linear decay; this preset uses the cosine schedule planned for it in
    # issue 11), no weight decay (the Trainer's default), no mixup.
    "distilhubert": dict(arch="distilhubert", learning_rate=5e-5, batch_size=8, num_epochs=10, lr_schedule="cosine",
                         warmup_ratio=0.1, weight_decay=0.0, mixup_alpha=0.0),
}
# Keys that define the data, features and model: a resumed run keeps them.
LOCKED_ON_RESUME = ("data_root", "csv_path", "task", "split", "val_size", "test_size", "split_seed", "group_pattern", "folds",
                    "fold", "hf_dataset", "hf_config", "hf_audio_column", "hf_label_column", "hf_splits",
                    "sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "scale", "top_db",
                    "clip_seconds", "resize", "arch", "frontend", "input_layout", "normalization", "norm_mean",
                    "norm_std", "freeze_backbone", "freeze_feature_encoder", "head_lr_multiplier", "grad_accum_steps",
                    "lr_schedule", "warmup_ratio")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); checkpoints on disk are intact."""


def main(argv: list[str] | None = None) -> dict:
    """Train with the command line's config; returns the final summary dict. See the module docstring and CONFIG."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(CONFIG, PRESETS, __doc__, key_comments(Path(__file__).read_text())))
        return {}
    cfg, resumed = read_config(argv)
    if cfg["folds"] and cfg["fold"] < 0:
        return run_folds(cfg, argv)
    return run_training(cfg, resumed)


def run_folds(cfg: dict, argv: list[str]) -> dict:
    """K-fold cross-validation (``folds`` = K >= 2, ``fold`` = -1): fold i trains as its own run in
    ``<out_dir>/<exp>/fold<i>/`` (SwanLab experiment ``<exp>-fold<i>`` in group ``<exp>``), one after another.
    A fold whose report exists is skipped and one with a last.pt resumes, so running the same command again
    (same ``--experiment_name``) completes an interrupted cross-validation. Then rank 0 writes the summary
    (``<out_dir>/<exp>/cv_summary.json``, ``confusion_matrix_cv.png``; see evaluation.cross_validation) and
    prints mean ± std. Returns the summary dict and ``run_dir`` (``<out_dir>/<exp>``)."""
    experiment = cfg["experiment_name"] or default_names(cfg, Path())[1]
    parent = Path(cfg["out_dir"]) / experiment
    try:
        for i in range(cfg["folds"]):
            fold_dir = parent / f"fold{i}"
            if fold_finished(fold_dir):
                print(f"fold {i}: finished earlier, report in {fold_dir / 'metrics.json'}")
            elif (fold_dir / "last.pt").exists():
                run_training(*read_config([f"--resume={fold_dir}"]))
            else:
                run_training(*read_config([*argv, f"--experiment_name={experiment}", f"--fold={i}"]))
    except KeyboardInterrupt:
        again = [a for a in argv if not a.startswith("--experiment_name=")] + [f"--experiment_name={experiment}"]
        print(f"Or continue all {cfg['folds']} folds: python train.py {' '.join(again)}")
        raise
    if int(os.environ.get("RANK", "0")):
        return {"run_dir": str(parent)}
    summary = summarize_folds(fold_run_dirs(parent), parent)
    print(f"\n{format_summary(summary)}\nsummary: {parent / 'cv_summary.json'}\n"
          f"{'pooled confusion matrix' if 'pooled_confusion' in summary else 'per-fold mAP'}: {summary['png']}")
    return summary | {"run_dir": str(parent)}


def read_config(argv: list[str]) -> tuple[dict, dict | None]:
    """(config, checkpoint to resume or None): CONFIG with ``--preset`` and the ``--key=value`` overrides; with
    ``--resume``, the checkpoint's config with this command's overrides, which may not change LOCKED_ON_RESUME.

    Raises:
        ConfigError: unknown key, bad value or choice, a locked key changed on resume.
        FileNotFoundError, CheckpointError: ``--resume`` names no readable checkpoint.
    """
    cfg = parse_config(argv, CONFIG, PRESETS)
    resumed = None
    if cfg["resume"]:
        path = Path(cfg["resume"])
        resumed = load_checkpoint(path / "last.pt" if path.is_dir() else path)
        saved = {**CONFIG, **resumed["config"]}  # keys newer than the checkpoint take today's defaults
        given = parse_config(argv, saved, {})  # the checkpoint's config + this command's overrides
        changed = [k for k in LOCKED_ON_RESUME if given[k] != saved[k]]
        if changed:
            raise ConfigError(f"--resume keeps the data, features and model of the run; cannot change {changed}")
        cfg = {**given, "resume": cfg["resume"]}
    else:
        cfg = default_split(resolve_frontend(cfg, explicit_keys(argv)), explicit_keys(argv))
        if not cfg["data_root"] and "csv_path" in explicit_keys(argv) and Path(cfg["csv_path"]).is_file():
            cfg["data_root"] = str(Path(cfg["csv_path"]).resolve().parent)  # a CSV alone: its paths' folder
    if cfg["swanlab_mode"] not in MODES:
        raise ConfigError(f"--swanlab_mode={cfg['swanlab_mode']}: choose one of {', '.join(m or '(empty)' for m in MODES)}")
    if cfg["features_on"] not in ("device", "item"):
        raise ConfigError(f"--features_on={cfg['features_on']}: choose device or item")
    if cfg["task"] not in TASK_SETTINGS:
        raise ConfigError(f"--task={cfg['task']}: choose one of {', '.join(TASK_SETTINGS)}")
    check_folds(cfg)
    check_augment(cfg)
    if not (0.0 <= cfg["label_smoothing"] < 1.0 and 0.0 <= cfg["ema_decay"] < 1.0):
        raise ConfigError(f"--label_smoothing={cfg['label_smoothing']}, --ema_decay={cfg['ema_decay']}: both must be "
                          "in [0, 1) (0: off; e.g. 0.1 and 0.99)")
    get_schedule(cfg["lr_schedule"])
    if cfg["grad_accum_steps"] < 1:
        raise ConfigError(f"--grad_accum_steps={cfg['grad_accum_steps']}: use 1 (no accumulation) or more")
    if cfg["batch_size"] < MIN_BATCH_CLIPS:
        raise ConfigError(f"--batch_size={cfg['batch_size']}: BatchNorm trains on batches of {MIN_BATCH_CLIPS} "
                          f"clips or more; use --batch_size={MIN_BATCH_CLIPS} or larger")
    return cfg, resumed


def check_folds(cfg: dict) -> None:
    """Raises ConfigError for folds = 1 or < 0, a fold outside -1..folds-1, a fold without folds, and
    ``--fold=i`` without ``experiment_name`` (the K separately started folds must share ``<out_dir>/<exp>/``)."""
    folds, fold = cfg["folds"], cfg["fold"]
    if folds < 0 or folds == 1:
        raise ConfigError(f"--folds={folds}: use 0 (no cross-validation) or K >= 2 folds")
    if not -1 <= fold < max(folds, 1) or (fold >= 0 and not folds):
        raise ConfigError(f"--fold={fold}: use -1 (all folds) or 0..K-1 together with --folds=K")
    if fold >= 0 and not cfg["experiment_name"] and not cfg["resume"]:
        raise ConfigError(f"--fold={fold} runs one fold into <out_dir>/<experiment_name>/fold{fold}/: give "
                          "--experiment_name=NAME, the same for every fold, so a later command can gather them")


def run_training(cfg: dict, resumed: dict | None = None, on_epoch: EpochHook | None = None) -> dict:
    """One run: runtime -> data -> model and optimiser -> tracker -> epochs (train, evaluate, log and
    checkpoint) -> final report. ``cfg`` as read_config returns it, ``resumed`` the checkpoint to continue.
    Returns the summary scalars and ``run_dir``. Ctrl-C saves last.pt and raises KeyboardInterrupt.
    ``on_epoch(epoch, metrics)`` (experiment/hooks.py) runs on rank 0 after each epoch is logged and saved; a
    StopTraining it raises ends the run there with that status (no final report) and propagates."""
    cfg = dict(cfg)  # the stages fill in the resolved data paths and the SwanLab names
    runtime = setup_runtime(cfg)
    data = load_data(cfg, runtime, resumed)
    model, ema, optimizer, scheduler, scaler = build_optimisation(cfg, runtime, len(data.label_names),
                                                                  optimizer_steps(len(data.train_loader), cfg), resumed)
    train_model = wrap_model(model, cfg, runtime)
    progress = ResumeState.restore(resumed)
    tracker, run_dir = start_tracker(cfg, runtime, data, resumed)
    run = Run(cfg, runtime, data, model, ema, train_model, optimizer, scheduler, scaler, tracker, run_dir,
              SkipLog(runtime.dist.is_main))
    advice = f"{run_dir / 'last.pt'} holds the last saved state; continue with --resume={run_dir}"
    stop = StopRequest(announce=runtime.dist.is_main, advice=advice).install()
    where = lambda: f"epoch {progress.epoch + 1}, step {progress.step}"  # noqa: E731
    epoch = progress.epoch
    try:
        with distributed.peer_failures(runtime.dist, where, advice):
            for epoch in range(progress.epoch, cfg["num_epochs"]):
                started, lr = time.time(), optimizer.param_groups[0]["lr"]
                if train_one_epoch(run, progress, stop):  # mid-epoch: save where we are, so --resume continues
                    if runtime.dist.is_main:               # with the next batch
                        save_checkpoint(checkpoint_state(run, progress), run_dir / "last.pt")
                    distributed.barrier(runtime.dist)  # no rank exits (and so has torchrun stop rank 0) before that
                    raise Stopped
                if get_schedule(cfg["lr_schedule"]).per == "epoch":
                    scheduler.step()
                val = evaluate(run, "val")
                end_of_epoch(run, progress, val, lr, started)
                if distributed.all_reduce_sum([float(stop.requested)], runtime.dist)[0]:
                    raise Stopped  # Ctrl-C during evaluation: last.pt of this epoch is already saved
                distributed.barrier(runtime.dist)
                epoch_hook(run, on_epoch)
                if early_stop(run):
                    break
    except BaseException as err:
        stop.ending()
        end_early(run, err, epoch)
        stop.restore()
        raise
    stop.restore()
    summary = final_report(run, progress.best)
    tracker.finish("success")
    distributed.cleanup(runtime.dist)
    return summary | {"run_dir": str(run_dir)}


def end_early(run: Run, err: BaseException, epoch: int) -> None:
    """A run that stops before its final report: say how to continue after Ctrl-C, or what stopped it after an
    ``on_epoch`` hook's StopTraining (rank 0, with ``summary/<status>_epoch``), close the SwanLab run as aborted
    (Ctrl-C), the hook's status or crashed, and leave the process group: together after an agreed stop
    (:class:`Stopped`, StopTraining: every rank waits for the others, so torchrun stops none of them early),
    at once otherwise (a peer may be gone). ``epoch``: the 0-based epoch in progress."""
    dist, run_dir = run.runtime.dist, run.run_dir
    if isinstance(err, KeyboardInterrupt) and dist.is_main:
        print(f"Interrupted in epoch {epoch + 1}; {run_dir / 'last.pt'} holds the last complete step.\n"
              f"Continue with: python train.py --resume={run_dir}", flush=True)
    if isinstance(err, StopTraining):
        if dist.is_main:
            print(f"stopped after epoch {epoch + 1} ({err.status}): {err.reason}", flush=True)
            run.tracker.log({f"summary/{err.status}_epoch": epoch + 1}, step=epoch + 1)
        run.tracker.finish(err.status)
    elif isinstance(err, KeyboardInterrupt):
        run.tracker.finish("aborted")
    else:
        run.tracker.finish("crashed", f"{type(err).__name__}: {err}")
    (distributed.leave_together if isinstance(err, (Stopped, StopTraining)) else distributed.cleanup)(dist)


def fetch_weights(cfg: dict) -> None:
    """Download (or read) the pretrained weights before the spectrograms are computed, so that offline a run fails
    at once with the weights message instead of after minutes of features. Costs one extra model build.

    Raises:
        PretrainedWeightsError: the weights cannot be downloaded or read (the message says where to put them).
    """
    build_model(cfg["arch"], 2, pretrained=True, weights=cfg["weights"] or None)


@dataclass
class RunData:
    """The data of a run: class names, splits (DataFrames with path, label, y, entry), the track lists that
    checkpoints record, the split record (tracks, groups and class counts per split, PreparedData.split_record)
    and where the groups came from, front-end parameters and normalisation (``features``), the input transform (e.g. a MelImage
    on the device: crops -> augmented in train mode, normalised, resized 3-channel images), the loaders, the
    task (experiment/tasks.py) and the predefined folds of the index's fold column ([] without)."""
    label_names: list[str]
    splits: dict[str, pd.DataFrame]
    track_lists: dict[str, list[str]]
    unusable: int
    features: dict
    input_transform: nn.Module
    sampler: EpochSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    split_record: dict
    group_source: str
    task: Task
    fold_values: list


def load_data(cfg: dict, runtime: Runtime, resumed: dict | None) -> RunData:
    """Index -> splits -> cached spectrograms (rank 0 builds, the others wait; with speed perturbation also the
    training tracks' speed copies) -> normalisation -> augmentation -> loaders.

    The training loader yields this rank's shard of each epoch (class-balanced with ``balanced_sampler``), in
    batches of ``batch_size`` random crops (wider when the augmentation stretches time); the evaluation loaders
    (val, and test when the split has one) this rank's share of the tracks. Writes the resolved ``data_root``
    and ``csv_path`` and the resolved ``task`` into ``cfg`` (checkpoints record them).
    Raises:
        DataError: no usable data (see data.prepare_data).
        ConfigError: a bad augmentation setting or folder (noise_dir, rir_dir).
    """
    dist, main_rank = runtime.dist, runtime.dist.is_main
    loader_kw = loader_settings(cfg, runtime.device)
    if "demo" in cfg["preset"].split(",") and main_rank:
        make_demo_dataset(cfg["data_root"])
    if cfg["pretrained"] and not resumed and main_rank:
        check_data_source(cfg)  # a missing dataset is reported first
        fetch_weights(cfg)
    frontend, _ = build_features(cfg)  # also checks the layout and normalisation before minutes of features
    clip_frames, hop_frames = window_frames(cfg, frontend)
    notes = []  # augmentations that do not apply to this front end
    augment = build_augment(cfg, frontend, clip_frames, FeatureCache(cfg["cache_dir"], frontend).get, notes)
    if main_rank:
        print(f"front end ({cfg['arch']}): {describe_frontend(cfg)}", flush=True)
        print(f"augmentation: {describe_augment(cfg, augment, notes)}", flush=True)
    prepared = prepare_data(cfg, frontend, main_rank, functools.partial(distributed.wait_for_main, dist),
                            resumed["label_names"] if resumed else None, show_progress=main_rank,
                            num_workers=max(loader_kw["num_workers"], torch.multiprocessing.cpu_count() or 1))
    cfg["data_root"], cfg["csv_path"], cfg["task"] = str(prepared.data_root), str(prepared.index.csv_path), prepared.task
    train = prepared.splits["train"]
    norm = resumed["features"]["norm"] if resumed else train_normalisation(cfg, prepared, frontend, dist)
    input_transform = build_input_transform(cfg, frontend, norm["mean"], norm["std"], augment)
    input_transform = input_transform.to(runtime.device)
    splits, cache = prepared.splits, prepared.cache

    copies = {}
    if speed_factors(cfg):  # Kaldi's speed perturbation: two more cached copies of every training track
        build = functools.partial(cache.build_speed_copies, list(train.path), speed_factors(cfg))
        copies = build(loader_kw["num_workers"], main_rank) if main_rank else {}
        distributed.wait_for_main(dist)
        copies = copies or build(0, False)
    crop = augment.input_frames(clip_frames) if augment is not None else clip_frames
    train_set = ClipDataset(train.path, train.y, cache, crop, cfg["seed"], entries=train.entry,
                            input_transform=input_transform if cfg["features_on"] == "item" else None,
                            speed_copies=copies, speed_p=cfg["speed_p"])
    weights = class_balance_weights(train.y) if cfg["balanced_sampler"] else None
    sampler = EpochSampler(len(train_set), cfg["seed"], dist.rank, dist.world_size, weights)
    train_loader = DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler, collate_fn=collate_clips,
                              **loader_kw)
    eval_loaders = {}
    for name in ("val", "test"):
        if name in splits:
            part = splits[name]
            tracks = TrackDataset(part.path, part.y, cache, clip_frames, hop_frames, entries=part.entry)
            shard = Subset(tracks, range(dist.rank, len(tracks), dist.world_size))
            eval_loaders[name] = DataLoader(shard, batch_size=cfg["batch_size"], collate_fn=collate_tracks, **loader_kw)
    return RunData(prepared.label_names, splits, prepared.track_lists(), len(prepared.unusable),
                   dict(params=frontend.params(), norm=norm), input_transform, sampler, train_loader, eval_loaders,
                   prepared.split_record(), prepared.group_source, get_task(prepared.task), prepared.fold_values)


def train_normalisation(cfg: dict, prepared, frontend: nn.Module, dist: distributed.Dist) -> dict:
    """The normalisation statistics (data.features.normalisation_for) of the training split, worked out by
    rank 0 and sent to every rank, so all normalise alike. A clip that cannot be read any more (deleted or
    corrupted since the cache was built, its entry gone or never written) is left out with a warning."""
    norm, skipped = None, []
    if dist.is_main:
        train = prepared.splits["train"]
        norm = normalisation_for(cfg, prepared.cache.readable(train.path, train.entry, skipped), frontend)
        if skipped:
            warn_skipped(skipped, "while computing the normalisation statistics")
    return distributed.broadcast_from_main(norm, dist)


def describe_augment(cfg: dict, augment: nn.Module | None, notes: list[str]) -> str:
    """One line on the training augmentation: the entries in use (registry order), mixup, what does not apply."""
    names = (["speed"] if speed_factors(cfg) else []) + [
        name for name, entry in AUGMENTATIONS.items()
        if entry.where == "device" and augment is not None and cfg.get(entry.keys[0]) and name not in notes]
    line = ", ".join(names) or "none"
    line += f"; mixup alpha {cfg['mixup_alpha']:g}" if cfg["mixup_alpha"] > 0 else "; no mixup"
    return line + (f" (not for the {cfg['frontend']} front end: {', '.join(notes)})" if notes else "")


def describe_frontend(cfg: dict) -> str:
    """One line on the run's input: front end, its parameters, layout and normalisation (printed once)."""
    keys = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max") if cfg["frontend"] != "waveform" else (
        "sample_rate",)
    size = f", resize {cfg['resize']}" if cfg["input_layout"] == "image" else ""
    return (f"{cfg['frontend']} " + ", ".join(f"{k}={cfg[k]:g}" for k in keys)
            + f"; {cfg['input_layout']} layout{size}, normalization {cfg['normalization']}, "
              f"windows of {cfg['clip_seconds']:g} s")


def build_optimisation(cfg: dict, runtime: Runtime, num_classes: int, steps_per_epoch: int, resumed: dict | None):
    """(model, ema, optimizer, scheduler, scaler): the bare model (pretrained weights when ``pretrained`` and not
    resuming; a resumed run rebuilds the checkpoint's backbone record), frozen as the config says, the EMA of its
    weights (``ema_decay``; None when 0, experiment/ema.py), AdamW over its parameter groups, the
    ``lr_schedule`` (``steps_per_epoch``: optimiser steps) and the GradScaler, with their states from ``resumed``."""
    model, optimizer, scaler = build_model_and_optimizer(cfg, num_classes, runtime, cfg["pretrained"] and not resumed,
                                                         record=resumed.get("backbone") if resumed else None)
    ema = build_ema(model, cfg["ema_decay"])
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    if resumed:
        restore_ema(ema, model, resumed)
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
    return model, ema, optimizer, scheduler, scaler


def make_scheduler(optimizer, cfg: dict, steps_per_epoch: int = 1):
    """The ``lr_schedule`` of ``cfg`` (experiment/schedules.py) for ``optimizer``; ``steps_per_epoch``: optimiser
    steps per epoch (what a per-step schedule needs). ``step`` is the tutorial's per-epoch warmup + StepLR."""
    return get_schedule(cfg["lr_schedule"]).build(optimizer, cfg, steps_per_epoch)


def wrap_model(model: nn.Module, cfg: dict, runtime: Runtime) -> nn.Module:
    """What trains: ``model`` compiled (``compile``) and, under torchrun, in DistributedDataParallel."""
    if cfg["compile"]:
        model = torch.compile(model)
    if runtime.dist.enabled:
        cuda = runtime.device.type == "cuda"
        model = DistributedDataParallel(model, device_ids=[runtime.device.index] if cuda else None)
    return model


def start_tracker(cfg: dict, runtime: Runtime, data: RunData, resumed: dict | None) -> tuple[Tracker, Path]:
    """(tracker, run folder): the SwanLab experiment started (or resumed) with the whole config and the
    environment, history.csv continued from the checkpoint; rank 0 creates the folder and prints the run's
    first line. Writes the SwanLab project and experiment name into ``cfg``."""
    project, experiment = default_names(cfg, Path(cfg["data_root"]))
    if resumed:
        project, experiment = resumed["swanlab_project"], resumed["experiment_name"]
        resume_path = Path(cfg["resume"])
        run_dir = resume_path if resume_path.is_dir() else resume_path.parent
    else:
        run_dir = Path(cfg["out_dir"]) / experiment
        if cfg["folds"]:  # one parent folder and one SwanLab group for the K folds
            run_dir, experiment = run_dir / f"fold{cfg['fold']}", f"{experiment}-fold{cfg['fold']}"
    cfg["swanlab_project"], cfg["experiment_name"] = project, experiment
    tracker = Tracker(run_dir, enabled=runtime.dist.is_main, history=resumed["history"] if resumed else None)
    tracker.start(project, experiment, {**cfg, "environment": environment(runtime, data)}, cfg["swanlab_mode"],
                  cfg["swanlab_logdir"], run_id=resumed.get("swanlab_run_id") if resumed else None,
                  group=cfg["swanlab_group"] or (run_dir.parent.name if cfg["folds"] else None))
    if runtime.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        splits, dist = data.splits, runtime.dist
        print(f"{experiment}: {len(splits['train'])} train / "
              + " / ".join(f"{len(splits[n])} {n}" for n in data.eval_loaders)
              + f" clips, {len(data.label_names)} classes ({data.task.name}), {cfg['arch']} on {runtime.device}"
              + (f" x{dist.world_size}" if dist.enabled else "") + f", run folder {run_dir}")
    return tracker, run_dir


def default_names(cfg, data_root: Path) -> tuple[str, str]:
    """(SwanLab project, experiment name) when the config leaves them empty."""
    dataset = data_root.parent.name if data_root.name in ("genres_original", "genres") else data_root.name
    tag = f"-{cfg['preset']}" if cfg["preset"] and cfg["preset"] != cfg["arch"] else ""
    size = f"-{cfg['resize']}px" if cfg["input_layout"] == "image" else ""
    name = f"{cfg['arch']}{size}-lr{cfg['learning_rate']:g}{tag}-{datetime.now():%m%d-%H%M%S}"
    return cfg["swanlab_project"] or f"{dataset}-classification", cfg["experiment_name"] or name


def environment(runtime: Runtime, data: RunData) -> dict:
    """What the run ran on and with, logged beside the config: versions, device, precision, the data."""
    amp = str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off"
    counts = {n: label_counts(part.label, data.task.name == "multilabel") for n, part in data.splits.items()}
    env = dict(torch=torch.__version__, device=str(runtime.device), world_size=runtime.dist.world_size, amp=amp,
               label_names=data.label_names, clips={n: len(p) for n, p in data.splits.items()}, class_counts=counts,
               unusable_files=data.unusable, norm_mean=data.features["norm"]["mean"],
               norm_std=data.features["norm"]["std"])
    try:
        import torchaudio
        env["torchaudio"] = torchaudio.__version__
    except ImportError:
        pass
    return env


@dataclass
class Run:
    """What the stages of one run share. ``model`` is the bare module being trained; ``ema`` the average of its
    weights (None without ``ema_decay``), which is then what is evaluated and what checkpoints hold as ``model``;
    ``train_model`` is what trains: ``model`` compiled and/or wrapped in DistributedDataParallel."""
    cfg: dict
    runtime: Runtime
    data: RunData
    model: nn.Module
    ema: nn.Module | None
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    tracker: Tracker
    run_dir: Path
    skips: SkipLog

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation runs: the EMA's average, else ``train_model`` outside DDP (a DDP forward may be a
        collective, it broadcasts buffers, and ranks evaluate different numbers of windows, none at all when
        their tracks are skipped)."""
        if self.ema is not None:
            return self.ema.module
        return self.train_model.module if self.runtime.dist.enabled else self.train_model


class SkipLog:
    """What training leaves out, said on rank 0 (``enabled``): each unreadable clip once per run, and the
    first step that every rank skipped because a batch held fewer than MIN_BATCH_CLIPS readable clips."""

    def __init__(self, enabled: bool):
        self.enabled, self.warned, self.noted_step = enabled, set(), False

    def clips(self, skipped) -> int:
        """Warn about clips not warned about before; returns how many ``skipped`` holds."""
        for s in skipped:
            if s.path not in self.warned and self.enabled:
                self.warned.add(s.path)
                tqdm.write(f"warning: skipped {s.path}: {s.reason}")
        return len(skipped)

    def step(self, epoch: int, step: int) -> None:
        """Note the first skipped step (0-based ``epoch`` and ``step``)."""
        if self.enabled and not self.noted_step:
            self.noted_step = True
            tqdm.write(f"note: skipped training step {step + 1} of epoch {epoch + 1}: a batch held fewer than "
                       f"{MIN_BATCH_CLIPS} readable clips, and BatchNorm trains on {MIN_BATCH_CLIPS} or more; later "
                       f"such steps are skipped without a note")


def optimizer_steps(batches: int, cfg: dict) -> int:
    """Optimiser steps of an epoch of ``batches`` micro-batches: one per ``grad_accum_steps`` (the last one
    may take fewer)."""
    return -(-batches // cfg["grad_accum_steps"])


def train_one_epoch(run: Run, progress: ResumeState, stop: StopRequest) -> bool:
    """Train epoch ``progress.epoch`` from batch ``progress.step`` on, until it ends or a rank asked to stop;
    ``progress.step`` and ``progress.epoch_totals()`` follow along. Returns whether the ranks agreed to stop.

    Every ``grad_accum_steps`` micro-batches make one optimiser step (the epoch's last group may be shorter):
    each micro-batch's loss is scaled by 1 / (micro-batches in its group), so the gradient is that of the
    group's mean loss; under DDP the non-final micro-batches skip the gradient all-reduce (``no_sync``).
    A micro-batch trains only when every rank has at least MIN_BATCH_CLIPS readable clips (a collective under
    DDP: a rank that stepped alone would wait for the others in the gradient all-reduce); otherwise every
    rank skips it. Steps are read back every ``sync_every`` micro-batches and at the end, always on an
    optimiser-step boundary (see :func:`sync_steps`), so a mid-epoch checkpoint never holds half a group.
    Whether to sync depends on step counts only, the same on every rank: a Ctrl-C that reached one rank is
    agreed at the next sync (a rank that synced on its own flag would wait in a collective the others never
    join); a single process syncs at once.
    """
    cfg, runtime, data = run.cfg, run.runtime, run.data
    epoch, totals, started = progress.epoch, progress.epoch_totals(), time.time()
    data.sampler.set_epoch(epoch, start=progress.step * cfg["batch_size"])
    run.train_model.train()
    data.input_transform.train()
    pending = PendingSteps(runtime.sync_every, data.task)
    last_step, accum = progress.step + len(data.train_loader), cfg["grad_accum_steps"]
    bar = progress_bar(data.train_loader, desc=f"epoch {epoch + 1}/{cfg['num_epochs']}", unit="batch", leave=False,
                       disable=not runtime.dist.is_main, initial=progress.step, total=last_step)
    stepped, stopped = 0, False  # micro-batches with gradients in the current group; the ranks agreed to stop
    for x, y, skipped in bar:
        totals.skipped += run.skips.clips(skipped)
        group_end = min(progress.step - progress.step % accum + accum, last_step)
        if distributed.all_true(len(y) >= MIN_BATCH_CLIPS, runtime.dist):
            logits, loss = train_micro_batch(run, x, y, epoch, progress.step, group_end)
            pending.add(progress.step, logits, loss, y)
            stepped += 1
        else:
            run.skips.step(epoch, progress.step)
        progress.step += 1
        if progress.step == group_end:
            if stepped:
                optimizer_step(run.optimizer, run.scaler)
                if run.ema is not None:
                    run.ema.update_parameters(run.model)
                if get_schedule(cfg["lr_schedule"]).per == "step":
                    run.scheduler.step()
            stepped = 0
            due = pending.due() or progress.step >= last_step or (stop.requested and not runtime.dist.enabled)
            if due and sync_steps(run, progress, pending, stop):
                stopped = True
                break
            if runtime.dist.is_main and totals.batches:
                bar.set_postfix(**{"loss": f"{totals.loss_sum / totals.batches:.3f}",
                                   data.task.train_words: f"{100 * totals.correct / max(totals.seen, 1):.1f}%"})
    bar.close()
    totals.train_seconds += time.time() - started
    return stopped


def train_micro_batch(run: Run, x, y, epoch: int, step: int, group_end: int):
    """Forward and backward of micro-batch ``step`` (its seed, device transfer, input transform, mixup), the
    loss scaled by 1 / (micro-batches of its optimiser step, which ends before ``group_end``); the gradient
    all-reduce under DDP only on the group's last micro-batch. Returns (logits, unscaled loss), not synced."""
    cfg, runtime = run.cfg, run.runtime
    torch.manual_seed(step_seed(cfg["seed"], runtime.dist.rank, epoch, step))
    x, y = prepare_batch(x, y, runtime, run.data.input_transform if cfg["features_on"] == "device" else None)
    if epoch == 0 and step == 0 and runtime.dist.is_main:
        log_example_inputs(run.tracker, x, [run.data.task.describe(t, run.data.label_names) for t in y[:8]])
    x, y_a, y_b, lam = mixup(x, y, cfg["mixup_alpha"])
    group = group_end - (step - step % cfg["grad_accum_steps"])
    last = step + 1 == group_end
    sync = contextlib.nullcontext() if last or not runtime.dist.enabled else run.train_model.no_sync()
    with sync:
        return backward(run.train_model, run.scaler, x, y_a, y_b, lam, runtime, loss_scale=1.0 / group,
                        label_smoothing=cfg["label_smoothing"], task=run.data.task)


def sync_steps(run: Run, progress: ResumeState, pending: PendingSteps, stop: StopRequest) -> bool:
    """Read the queued steps into the epoch's totals, then agree with every rank on non-finite loss and Ctrl-C.
    Returns True when some rank asked to stop (``stop`` is then requested on every rank).

    Raises:
        TrainingError: a rank's loss was not finite (the checkpoints on disk hold the last good state).
    """
    bad_step = pending.read(progress.epoch_totals())
    flags = distributed.all_reduce_sum([float(stop.requested), float(bad_step is not None)], run.runtime.dist)
    if flags[1]:
        lr = run.optimizer.param_groups[0]["lr"]
        raise TrainingError(
            f"non-finite loss at epoch {progress.epoch + 1}, step {bad_step if bad_step is not None else '?'} "
            f"(learning rate {lr:.2e}). Training stopped; the checkpoints in {run.run_dir} hold the last "
            f"good state. Lower --learning_rate or check the input data.")
    if flags[0]:
        stop.request()
    return bool(flags[0])


def log_example_inputs(tracker: Tracker, images, titles: list[str]) -> None:
    """Up to 8 training inputs (after augmentation) to SwanLab: what the network sees. ``images``: [B, C, H, W]
    images or spectrograms (channel 0 shown), or waveforms [B, 1, 1, samples] (plotted as waves); ``titles``:
    their labels as text."""
    import matplotlib.pyplot as plt
    n, wave = min(8, len(images)), images.shape[-2] == 1
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), dpi=100, squeeze=False)
    for ax, img, title in zip(axes[0], images[:n], titles[:n]):
        values = img[0].float().cpu().numpy()
        if wave:
            ax.plot(values[0], linewidth=0.3)
        else:
            ax.imshow(values, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    what = "x: sample, y: amplitude" if wave else "channel 0; x: time, y: mel band"
    fig.suptitle(f"training inputs (after augmentation; {what})", fontsize=9)
    fig.tight_layout()
    tracker.log_figure("train/example_inputs", fig, 1, "what the network sees")
    close(fig)


def evaluate(run: Run, split: str, resamples: int = 0, record: dict | None = None) -> dict:
    """Track-level metrics of ``split`` over all ranks (a collective): loss, the task's full metrics dict
    (experiment/tasks.py: top-1 and macro-F1, or mAP, mAUC and d'), its history scalars (``scalars``, %,
    ``<split>/...``), the skipped tracks, and the track ``logits`` float32 [N, K] and targets ``labels`` (long
    [N], or multi-hot float32 [N, K]; cpu). Every rank evaluates with rank 0's BatchNorm statistics.
    ``resamples`` > 0 adds bootstrap intervals; the per-epoch validation skips them. ``record``: the task's
    decision rule (multilabel: the thresholds its F1 needs)."""
    dist, runtime, task = run.runtime.dist, run.runtime, run.data.task
    distributed.broadcast_buffers(evaluated(run.ema, run.model), dist)
    out = predict_tracks(run.eval_model, run.data.input_transform, run.data.eval_loaders[split], runtime.device,
                         runtime.amp_dtype, runtime.channels_last)
    parts = distributed.gather((out["logits"], out["labels"], out["indices"], out["skipped"]), dist)
    logits, labels = torch.cat([p[0] for p in parts if len(p[1])]), torch.cat([p[1] for p in parts])
    m = task.metrics(logits, labels, run.data.label_names, resamples, record)
    return dict(loss=task.track_loss(logits, labels), metrics=m, scalars=task.scalars(m, split),
                skipped=[s for p in parts for s in p[3]], logits=logits, labels=labels)


def end_of_epoch(run: Run, progress: ResumeState, val: dict, lr: float, started: float) -> None:
    """The epoch's metrics over all ranks and the best so far (on the task's selection metric); on rank 0:
    history.csv and SwanLab, the validation figure (confusion matrix, or per-class AP) every ``confusion_every``
    epochs and at the end, last.pt (and best.pt when validation improved), the console line. ``lr``: the
    epoch's learning rate; ``started``: its start time. Leaves ``progress`` at the start of the next epoch."""
    cfg, totals, epoch, task = run.cfg, progress.epoch_totals(), progress.epoch + 1, run.data.task
    total = distributed.all_reduce_sum([totals.loss_sum, totals.batches, totals.correct, totals.seen, totals.skipped],
                                       run.runtime.dist)
    totals.seconds += time.time() - started
    metrics = {
        "train/epoch": epoch,
        "train/loss": total[0] / max(total[1], 1),
        task.train_metric: 100 * total[2] / max(total[3], 1),
        "val/loss": val["loss"],
        **val["scalars"],
        "train/lr": lr,
        "train/epoch_seconds": totals.seconds,
        "train/clips_per_second": total[3] / max(totals.train_seconds, 1e-9),
        "data/skipped_clips": int(total[4]) + run.skips.clips(val["skipped"]),
    }
    improved = progress.record_best(epoch, val["scalars"][task.selection], val["loss"], task.best_key)
    progress.next_epoch()
    if run.runtime.dist.is_main:
        run.tracker.log_epoch(metrics, step=epoch)
        every = cfg["confusion_every"]
        if (every and epoch % every == 0) or epoch == cfg["num_epochs"]:
            fig = task.figure(val["metrics"], run.data.label_names, f"val, epoch {epoch}")
            run.tracker.log_figure(f"val/{task.figure_name}", fig, epoch, f"epoch {epoch}")
            close(fig)
        state = checkpoint_state(run, progress)
        save_checkpoint(state, run.run_dir / "last.pt")
        if improved:
            save_checkpoint(state, run.run_dir / "best.pt")
        print(f"epoch {epoch:3d}/{cfg['num_epochs']} | train loss {metrics['train/loss']:.4f} "
              f"{task.train_words} {metrics[task.train_metric]:5.1f}% | val loss {val['loss']:.4f} "
              f"{task.scalars_text(val['scalars'], 'val')} | lr {lr:.1e} | {totals.seconds:.0f} s, "
              f"{metrics['train/clips_per_second']:.1f} clips/s" + (" *" if improved else ""), flush=True)


def checkpoint_state(run: Run, progress: ResumeState) -> dict:
    """What a checkpoint (last.pt, best.pt) holds: the evaluated weights (``model``: the EMA's average with
    ``ema_decay``, else the trained weights; ``ema``: the trained weights and the steps averaged, or None,
    experiment/ema.py), the optimiser, schedule and scaler states; where
    the run stands (epoch, step, accum, best); what rebuilds the model for evaluation and prediction
    (config, label_names, features: the front end's params and the normalisation, backbone: the
    architecture record of ``models.backbone_record``); history, splits (and ``split_record``: their groups
    and class counts) and the SwanLab run. Plain types only."""
    cfg, tracker = run.cfg, run.tracker
    weights, ema = ema_checkpoint(run.ema, run.model)
    return dict(model=weights, ema=ema, optimizer=run.optimizer.state_dict(),
                scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(), **progress.checkpoint_fields(),
                config=cfg, label_names=run.data.label_names, features=run.data.features,
                backbone=backbone_record(cfg["arch"], run.model), history=tracker.history,
                splits=run.data.track_lists, split_record=run.data.split_record, swanlab_run_id=tracker.run_id,
                swanlab_project=cfg["swanlab_project"], experiment_name=cfg["experiment_name"])


def epoch_hook(run: Run, on_epoch: EpochHook | None) -> None:
    """``on_epoch(epoch, the epoch's history row)`` on rank 0; a StopTraining it raises is raised on every rank
    (broadcast from rank 0, a collective only when ``on_epoch`` is given)."""
    if on_epoch is None:
        return
    stop = None
    if run.runtime.dist.is_main:
        row = run.tracker.history[-1]
        try:
            on_epoch(int(row["train/epoch"]), dict(row))
        except StopTraining as err:
            stop = err
    stop = distributed.broadcast(stop, run.runtime.dist)
    if stop is not None:
        raise stop


def early_stop(run: Run) -> bool:
    """Whether to stop after this epoch (``early_stopping_patience`` > 0): rank 0 decides from the history
    (so a resumed run decides as the uninterrupted one would), every rank agrees; the reason is printed and
    logged to SwanLab as ``summary/early_stopped_epoch``."""
    cfg, dist, task = run.cfg, run.runtime.dist, run.data.task
    if cfg["early_stopping_patience"] <= 0:
        return False
    reason = stalled(run.tracker.history, cfg["early_stopping_patience"], cfg["early_stopping_min_delta"],
                     task.selection, task.selection_words) if dist.is_main else None
    if reason and dist.is_main:
        epoch = int(run.tracker.history[-1]["train/epoch"])
        print(f"early stopping after epoch {epoch}: {reason}", flush=True)
        run.tracker.log({"summary/early_stopped_epoch": epoch}, step=epoch)
    return distributed.all_reduce_sum([float(reason is not None)], dist)[0] > 0


def stalled(history: list[dict], patience: int, min_delta: float, key: str = "val/acc",
            words: str = "val top-1") -> str | None:
    """Why training should stop, or None: the last ``patience`` epochs of ``history`` (rows with
    ``train/epoch`` and ``key``, the task's selection metric in %, named ``words`` in the message) did not raise
    it by more than ``min_delta`` points above the best before them (a best is only replaced by an improvement
    of more than ``min_delta``, as Keras does)."""
    best, best_epoch = -math.inf, 0
    for row in history:
        if row[key] > best + min_delta:
            best, best_epoch = row[key], int(row["train/epoch"])
    last = int(history[-1]["train/epoch"]) if history else 0
    if last - best_epoch < patience:
        return None
    return (f"{words} has not improved by more than {min_delta:g} points for {last - best_epoch} epoch(s) "
            f"(last improvement: {best:.1f}% at epoch {best_epoch}; early_stopping_patience={patience})")


def final_report(run: Run, best: dict) -> dict:
    """best.pt evaluated on the test split (val when there is none), with 95% bootstrap intervals, and the
    task's decision rule fitted on the val split (experiment/tasks.py; single_label: the temperature,
    evaluation.calibration, stored in best.pt as ``calibration``; multilabel: per-class F1-optimal thresholds,
    stored as ``thresholds``, at which the test F1 is measured): on rank 0 the report files (metrics.json also
    records the protocol, the task, the splits with their groups, the fold and whether the folds were
    predefined, and the decision rule: ECE before/after and the coverage table, or the thresholds), the final
    figure (confusion matrix, or per-class AP), the reliability diagram, the summary scalars to SwanLab, the
    console report, the model card (README.md). Returns the summary scalars."""
    cfg, dist, run_dir, names, task = run.cfg, run.runtime.dist, run.run_dir, run.data.label_names, run.data.task
    if (run_dir / "best.pt").exists() or not dist.is_main:
        distributed.barrier(dist)
        best_weights = load_checkpoint(run_dir / "best.pt", map_location=run.runtime.device)["model"]
        evaluated(run.ema, run.model).load_state_dict(best_weights)
    final_split = "test" if "test" in run.data.eval_loaders and cfg["final_test"] else "val"
    final = evaluate(run, final_split)
    val = final if final_split == "val" else evaluate(run, "val")
    record = task.fit_decision(val["logits"], val["labels"], names)
    metrics = task.metrics(final["logits"], final["labels"], names, BOOTSTRAP_RESAMPLES, record)
    decision = task.decision_report(record, final["logits"], final["labels"], names, final_split)
    minutes = (sum(r["train/epoch_seconds"] for r in run.tracker.history) / 60) if dist.is_main else 0.0
    protocol = ("held-out test split, checkpoint chosen on val" if final_split == "test" else
                "val split, also used to choose the checkpoint: optimistic"
                + (", the tutorial's protocol" if cfg["final_test"] else " (final_test=False: test left unseen)"))
    summary = {f"summary/best_{task.best_key}": best[task.best_key], "summary/best_epoch": best["epoch"],
               **task.summary(metrics, final_split), "summary/total_minutes": minutes, **decision.summary()}
    folds = {"fold": cfg["fold"], "folds": cfg["folds"]} if cfg["folds"] else {}
    if run.data.fold_values:
        folds["predefined_folds"] = run.data.fold_values
    if dist.is_main:
        png, fig = task.save_report(run_dir, final_split, metrics, names,
                                    f"{cfg['experiment_name']}\n{final_split} (best.pt, epoch {best['epoch']}): "
                                    f"{task.headline(metrics)}",
                                    extra=dict(protocol=protocol, checkpoint="best.pt", epoch=best["epoch"],
                                               task=task.name, splits=run.data.split_record,
                                               group_source=run.data.group_source, **folds, **decision.metrics))
        run.tracker.log_figure(f"{final_split}/{task.figure_name}_final", fig, cfg["num_epochs"], protocol)
        close(fig)
        if (run_dir / "best.pt").exists():
            store_entry(run_dir / "best.pt", task.decision_key, record)
        reliability, fig = decision.save_figure(run_dir, f"{cfg['experiment_name']}: {final_split}, best.pt")
        if fig is not None:
            run.tracker.log_figure(f"{final_split}/reliability", fig, cfg["num_epochs"], "temperature fitted on val")
            close(fig)
        run.tracker.log(summary, step=cfg["num_epochs"])
        print(f"\n{metrics['report']}")
        print(f"best {task.selection_words} {best[task.best_key]:.1f}% at epoch {best['epoch']} (selected on val)")
        print(f"{final_split} {task.headline(metrics)} ({protocol}); {task.interval_text(metrics)}")
        print(decision.text() + (f"\nreliability diagram: {reliability}" if reliability else ""))
        print(f"{task.figure_name.replace('_', ' ')}: {png}\nrun folder: {run_dir}  ({minutes:.1f} min)")
        print(f"model card: {write_model_card(run_dir)}")
    return summary


def exit_status(err: BaseException) -> int:
    """The command's exit status for ``err`` out of :func:`main`, its message printed (stderr) where it has one
    for the user: 130 Ctrl-C, 143 SIGTERM, 2 a bad config, 1 another known failure. Raises ``err`` again for a
    bug (its traceback is what helps then). SIGTERM is ignored from here on: the process is ending, and
    torchrun sends SIGTERM to every rank as soon as one of them exits."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, distributed.PeerFailure):
        return 1  # its message is out already (distributed.peer_failures)
    if isinstance(err, (Terminated, ConfigError, DataError, PretrainedWeightsError, CheckpointError, TrainingError,
                        FileNotFoundError)):
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 143 if isinstance(err, Terminated) else 2 if isinstance(err, ConfigError) else 1
    raise err


if __name__ == "__main__":
    try:
        main()
    except BaseException as err:  # every way out goes through exit_status
        sys.exit(exit_status(err))
