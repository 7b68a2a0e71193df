"""Train an ImageNet ResNet/ResNeXt on log-mel spectrogram images of labelled audio (GTZAN by default).

    python train.py                                  # ./GTZAN (Kaggle genres_original/ or marsyas genres/)
    python train.py --preset=demo                    # built-in synthetic audio, offline, about a minute on a CPU
    python train.py --data_root=my_audio --arch=resnet50 --resize=320 --learning_rate=3e-4
    python train.py --resume=runs/<run>              # continue from runs/<run>/last.pt
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, one process per GPU

Every epoch goes to SwanLab and to runs/<run>/history.csv; best.pt and last.pt are written atomically.
Ctrl-C saves last.pt (mid-epoch) and exits 130; --resume continues exactly where the run stopped.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

CONFIG = dict(
    # --- data ---
    data_root="",                  # folder of <label>/<audio files>; empty: ./GTZAN (its genres_original/ or genres/)
    csv_path="audio_dataset.csv",  # the index (path,label); rebuilt when it does not match data_root
    rebuild_index=False,           # rescan data_root even when csv_path matches it
    split="tutorial",              # tutorial: per-label 80/20 train/val (the reference's) | stratified | fault_filtered
    val_size=0.2,                  # validation fraction (tutorial: of each label; stratified: of all tracks)
    test_size=0.1,                 # test fraction (split=stratified)
    split_seed=42,                 # random_state of the splits (the tutorial's 42)
    # --- features ---
    sample_rate=22050,             # Hz; every file is down-mixed to mono and resampled to it
    n_fft=2048,                    # STFT size, samples
    hop_length=512,                # STFT hop, samples
    n_mels=128,                    # mel bands
    f_min=0.0,                     # lowest mel band edge, Hz
    f_max=0.0,                     # highest mel band edge, Hz (0: sample_rate / 2)
    scale="db",                    # db: log-mel normalised with train-set statistics | power: the tutorial's raw power mel
    top_db=80.0,                   # dynamic range kept below each track's maximum, dB (scale=db)
    clip_seconds=10.0,             # training crop (random position every epoch) and evaluation window, seconds
    eval_hop_seconds=5.0,          # hop between evaluation windows, seconds; logits are averaged over the track
    resize=224,                    # side of the square image fed to the CNN, pixels
    features_on="device",          # device: images + augmentation built per batch on the training device | item: per item on CPU workers
    # --- augmentation (training only) ---
    augment=True,                  # SpecAugment masks, noise and gain
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
    arch="resnet18",               # resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d
    pretrained=True,               # start from ImageNet weights (downloaded once by torchvision)
    # --- optimisation ---
    batch_size=16,                 # clips per step (per GPU under torchrun)
    learning_rate=1e-4,            # peak learning rate (AdamW)
    weight_decay=0.01,             # AdamW decoupled weight decay (0: plain Adam, as in the tutorial)
    num_epochs=30,                 # epochs
    warmup_epochs=5,               # linear warmup: lr * (epoch + 1) / warmup_epochs for the first epochs
    lr_step_size=10,               # then StepLR: multiply by lr_gamma every lr_step_size epochs (0: constant)
    lr_gamma=0.1,                  # StepLR decay factor
    # --- system ---
    device="auto",                 # auto: cuda, else mps, else cpu; or e.g. cpu, cuda:1
    num_workers=-1,                # DataLoader workers; -1: auto (0 on CPU, up to 8 on a GPU machine)
    amp=True,                      # mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)
    channels_last=True,            # channels_last memory format on CUDA
    compile=False,                 # torch.compile the model
    seed=42,                       # everything random derives from it (and the epoch and step)
    cache_dir=".cache",            # spectrogram cache and the demo dataset
    out_dir="runs",                # run folders (best.pt, last.pt, history.csv, metrics.json, PNGs)
    resume="",                     # run folder (or .pt file) to continue from its last.pt
    # --- logging ---
    swanlab_project="",            # empty: "<dataset>-classification"
    experiment_name="",            # empty: built from arch, resize, learning rate, preset and time
    swanlab_mode="",               # empty: SwanLab's own (cloud if logged in) | cloud | local | offline | disabled
    swanlab_logdir="swanlog",      # where local/offline runs are written
    confusion_every=5,             # log the validation confusion matrix every N epochs (and at the end); 0: end only
    preset="",                     # set by --preset=NAME
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
    "fsdd": dict(data_root="../shared/fsdd", csv_path=".cache/fsdd_dataset.csv", sample_rate=8000, n_fft=256,
                 hop_length=80, n_mels=64, clip_seconds=1.0, eval_hop_seconds=0.5, resize=64, time_mask=12,
                 freq_mask=8, pretrained=False, batch_size=32, learning_rate=1e-3, num_epochs=8, warmup_epochs=1,
                 lr_step_size=5),
}
# Keys that define the data, features and model: a resumed run keeps them.
LOCKED_ON_RESUME = ("data_root", "csv_path", "split", "val_size", "test_size", "split_seed", "sample_rate", "n_fft",
                    "hop_length", "n_mels", "f_min", "f_max", "scale", "top_db", "clip_seconds", "resize", "arch")

from augment import build_augment  # noqa: E402
from data import DataError, prepare_data  # noqa: E402
from data.dataset import ClipDataset, EpochSampler, TrackDataset, collate_clips, collate_tracks  # noqa: E402
from data.demo import make_demo_dataset  # noqa: E402
from data.features import build_features, normalisation_stats, window_frames  # noqa: E402
from evaluation import autocast, predict_tracks, track_loss  # noqa: E402
from evaluation.metrics import classification_metrics, close, plot_confusion_matrix, save_report  # noqa: E402
from experiment import distributed  # noqa: E402
from experiment.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from experiment.config import ConfigError, format_help, key_comments, parse_config  # noqa: E402
from experiment.tracking import MODES, Tracker  # noqa: E402
from models import PretrainedWeightsError, build_model  # noqa: E402


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); checkpoints on disk are intact."""


def make_scheduler(optimizer, cfg):
    """Per-epoch schedule: linear warmup ``lr * (e + 1) / warmup_epochs`` for epochs ``e < warmup_epochs``,
    then StepLR(``lr_step_size``, ``lr_gamma``) counted from the end of warmup (the tutorial's schedule)."""
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["lr_step_size"] or 10 ** 9, gamma=cfg["lr_gamma"])
    warmup = cfg["warmup_epochs"]
    if warmup <= 0:
        return step
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0,
                                               total_iters=max(warmup - 1, 1))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, step], milestones=[warmup])


def step_seed(*parts: int) -> int:
    """A 63-bit seed from (seed, rank, epoch, step): every step's randomness is reproducible on resume."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def mixup(x, y, alpha: float):
    """Mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]`` with lam ~ Beta(alpha, alpha).
    Returns (x, y_a, y_b, lam); identity when ``alpha`` is 0."""
    if alpha <= 0 or len(y) < 2:
        return x, y, y, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)  # the original label stays dominant, so train/acc stays meaningful
    perm = torch.randperm(len(y), device=y.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def loader_settings(cfg, device: torch.device) -> dict:
    """DataLoader keyword arguments of every training and evaluation loader (train.py and bench.py).

    ``num_workers=-1`` (auto): 0 on the CPU, where the cached crops cost milliseconds per batch and a worker
    process would only compete with the model for the cores; up to 8 on an accelerator. Workers persist
    across epochs; batches are pinned for asynchronous copies on CUDA.
    """
    workers = cfg["num_workers"]
    if workers < 0:
        workers = 0 if device.type == "cpu" else min(8, torch.multiprocessing.cpu_count() or 1)
    return dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def train_step(model, optimizer, scaler, x, y_a, y_b, lam: float, device: torch.device, amp_dtype=None):
    """One optimisation step on a (mixed-up) batch: forward (autocast when ``amp_dtype``), mixup
    cross-entropy ``lam * CE(y_a) + (1 - lam) * CE(y_b)``, backward, optimizer step through ``scaler``.

    Args: x float [B, 3, H, W] on ``device``; y_a, y_b long [B]. Returns (logits [B, K], loss scalar), not synced.
    """
    with autocast(device, amp_dtype):
        logits = model(x)
        loss = lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits, loss


def example_figure(images, labels, label_names):
    """Up to 8 training inputs (after augmentation) as a matplotlib figure: what the network sees."""
    import matplotlib.pyplot as plt
    n = min(8, len(images))
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), dpi=100, squeeze=False)
    for ax, img, y in zip(axes[0], images[:n], labels[:n]):
        ax.imshow(img[0].float().cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(label_names[int(y)], fontsize=9)
        ax.axis("off")
    fig.suptitle("training inputs (channel 0, after augmentation; x: time, y: mel band)", fontsize=9)
    fig.tight_layout()
    return fig


def default_names(cfg, data_root: Path) -> tuple[str, str]:
    """(SwanLab project, experiment name) when the config leaves them empty."""
    dataset = data_root.parent.name if data_root.name in ("genres_original", "genres") else data_root.name
    tag = f"-{cfg['preset']}" if cfg["preset"] and cfg["preset"] != cfg["arch"] else ""
    name = f"{cfg['arch']}-{cfg['resize']}px-lr{cfg['learning_rate']:g}{tag}-{datetime.now():%m%d-%H%M%S}"
    return cfg["swanlab_project"] or f"{dataset}-classification", cfg["experiment_name"] or name


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the final summary dict. See the module docstring and CONFIG."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(CONFIG, PRESETS, __doc__, key_comments(Path(__file__).read_text())))
        return {}
    cfg = parse_config(argv, CONFIG, PRESETS)
    resumed = None
    if cfg["resume"]:
        path = Path(cfg["resume"])
        resumed = load_checkpoint(path / "last.pt" if path.is_dir() else path)
        given = parse_config(argv, resumed["config"], {})  # the checkpoint's config + this command's overrides
        changed = [k for k in LOCKED_ON_RESUME if given[k] != resumed["config"][k]]
        if changed:
            raise ConfigError(f"--resume keeps the data, features and model of the run; cannot change {changed}")
        cfg = {**CONFIG, **given, "resume": cfg["resume"]}
    if cfg["swanlab_mode"] not in MODES:
        raise ConfigError(f"--swanlab_mode={cfg['swanlab_mode']}: choose one of {', '.join(m or '(empty)' for m in MODES)}")
    if cfg["features_on"] not in ("device", "item"):
        raise ConfigError(f"--features_on={cfg['features_on']}: choose device or item")

    # ---- setup: process group, device, precision ----
    dist = distributed.setup(cfg["device"])
    device, main_rank = dist.device, dist.is_main
    torch.manual_seed(cfg["seed"])
    cuda = device.type == "cuda"
    amp_dtype = None
    if cuda and cfg["amp"]:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    channels_last = cuda and cfg["channels_last"]
    if cuda:
        torch.backends.cudnn.benchmark = True
    loader_kw = loader_settings(cfg, device)
    workers = loader_kw["num_workers"]

    # ---- data: index -> splits -> cached spectrograms ----
    if cfg["preset"] == "demo" and main_rank:
        make_demo_dataset(cfg["data_root"])
    logmel, _ = build_features(cfg)
    data = prepare_data(cfg, logmel, main_rank, lambda: distributed.barrier(dist),
                        resumed["label_names"] if resumed else None,
                        num_workers=max(workers, torch.multiprocessing.cpu_count() or 1), show_progress=main_rank)
    names, splits = data.label_names, data.splits
    track_lists = data.track_lists()  # saved in checkpoints: evaluate.py checks it rebuilds the same split
    cfg["data_root"], cfg["csv_path"] = str(data.data_root), str(data.index.csv_path)
    if resumed:
        norm = resumed["features"]["norm"]
    elif cfg["scale"] == "db":
        mean, std = normalisation_stats(data.cache.get(p, e) for p, e in zip(splits["train"].path, splits["train"].entry))
        norm = dict(mean=mean, std=std)
    else:
        norm = dict(mean=0.0, std=1.0)
    _, image = build_features(cfg, norm["mean"], norm["std"], build_augment(cfg))
    image = image.to(device)
    clip_frames, hop_frames = window_frames(cfg, logmel)

    train_set = ClipDataset(splits["train"].path, splits["train"].y, data.cache, clip_frames, cfg["seed"],
                            image=image if cfg["features_on"] == "item" else None, entries=splits["train"].entry)
    sampler = EpochSampler(len(train_set), cfg["seed"], dist.rank, dist.world_size)
    train_loader = DataLoader(train_set, batch_size=cfg["batch_size"], sampler=sampler, collate_fn=collate_clips, **loader_kw)
    eval_loaders = {}
    for name in ("val", "test"):
        if name in splits:
            part = splits[name]
            tracks = TrackDataset(part.path, part.y, data.cache, clip_frames, hop_frames, entries=part.entry)
            shard = Subset(tracks, range(dist.rank, len(tracks), dist.world_size))
            eval_loaders[name] = DataLoader(shard, batch_size=cfg["batch_size"], collate_fn=collate_tracks, **loader_kw)

    # ---- model, optimiser, schedule ----
    model = build_model(cfg["arch"], len(names), cfg["pretrained"] and not resumed).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_epoch, start_step, accum = 0, 0, None
    best = dict(val_acc=-1.0, val_loss=math.inf, epoch=0)
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        start_epoch, start_step, accum, best = resumed["epoch"], resumed["step"], resumed["accum"], resumed["best"]
    core = model  # un-wrapped module: what checkpoints hold
    if cfg["compile"]:
        model = torch.compile(model)
    if dist.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    # Evaluation runs the module inside DDP: a DDP forward may be a collective (it broadcasts buffers), and
    # ranks evaluate different numbers of windows (none at all when their tracks are skipped).
    eval_model = model.module if dist.enabled else model

    # ---- run folder and tracking ----
    project, experiment = default_names(cfg, data.data_root)
    if resumed:
        project, experiment = resumed["swanlab_project"], resumed["experiment_name"]
    cfg["swanlab_project"], cfg["experiment_name"] = project, experiment
    run_dir = Path(cfg["resume"]) if resumed and Path(cfg["resume"]).is_dir() else Path(cfg["out_dir"]) / experiment
    if resumed and not Path(cfg["resume"]).is_dir():
        run_dir = Path(cfg["resume"]).parent
    tracker = Tracker(run_dir, enabled=main_rank, history=resumed["history"] if resumed else None)
    counts = {n: {k: int(v) for k, v in part.label.value_counts().sort_index().items()} for n, part in splits.items()}
    environment = dict(torch=torch.__version__, device=str(device), world_size=dist.world_size,
                       amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "off", label_names=names,
                       clips={n: len(p) for n, p in splits.items()}, class_counts=counts,
                       unusable_files=len(data.unusable), norm_mean=norm["mean"], norm_std=norm["std"])
    try:
        import torchaudio
        environment["torchaudio"] = torchaudio.__version__
    except ImportError:
        pass
    tracker.start(project, experiment, {**cfg, "environment": environment}, cfg["swanlab_mode"], cfg["swanlab_logdir"],
                  run_id=resumed.get("swanlab_run_id") if resumed else None)
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"{experiment}: {len(splits['train'])} train / " + " / ".join(f"{len(splits[n])} {n}" for n in eval_loaders)
              + f" clips, {len(names)} classes, {cfg['arch']} on {device}"
              + (f" x{dist.world_size}" if dist.enabled else "") + f", run folder {run_dir}")

    def state(epoch: int, step: int, accum: dict | None) -> dict:
        return dict(model=core.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(), epoch=epoch, step=step, accum=accum, best=best, config=cfg,
                    label_names=names, features=dict(params=logmel.params(), norm=norm), history=tracker.history,
                    splits=track_lists,
                    swanlab_run_id=tracker.run_id, swanlab_project=project, experiment_name=experiment)

    def evaluate(split: str) -> dict:
        """Track-level metrics of ``split`` over all ranks: loss, top-1 %, macro-F1 %, confusion, predictions."""
        distributed.broadcast_buffers(core, dist)  # every rank evaluates rank 0's BatchNorm statistics
        out = predict_tracks(eval_model, image, eval_loaders[split], device, amp_dtype, channels_last)
        parts = distributed.gather((out["logits"], out["labels"], out["indices"], out["skipped"]), dist)
        logits, labels = torch.cat([p[0] for p in parts if len(p[1])]), torch.cat([p[1] for p in parts])
        m = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), names)
        return dict(loss=track_loss(logits, labels), acc=100 * m["top1"], macro_f1=100 * m["macro_f1"], metrics=m,
                    skipped=[s for p in parts for s in p[3]])

    # ---- Ctrl-C: finish the current step, save last.pt, exit 130 (a second Ctrl-C stops at once) ----
    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        if main_rank:
            print("\nInterrupt: stopping after this step and saving last.pt (Ctrl-C again to quit now)", flush=True)

    previous_handler = signal.signal(signal.SIGINT, on_sigint) if in_main_thread() else None
    warned = set()

    def report_skipped(skipped) -> int:
        for s in skipped:
            if s.path not in warned and main_rank:
                warned.add(s.path)
                tqdm.write(f"warning: skipped {s.path}: {s.reason}")
        return len(skipped)

    sync_every = 10 if cuda else 1
    epoch, step, status = start_epoch, start_step, "success"
    try:
        for epoch in range(start_epoch, cfg["num_epochs"]):
            # ---------------- train one epoch ----------------
            t0 = time.time()
            acc = accum or dict(loss_sum=0.0, batches=0, correct=0, seen=0, skipped=0, seconds=0.0, train_seconds=0.0)
            accum = None
            sampler.set_epoch(epoch, start=step * cfg["batch_size"])
            model.train()
            image.train()
            lr = optimizer.param_groups[0]["lr"]
            pending = []  # (step, loss, correct, n) on the device since the last sync
            last_step = step + len(train_loader)
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg['num_epochs']}", unit="batch", leave=False,
                       disable=not main_rank, initial=step, total=step + len(train_loader))
            for x, y, bad in bar:
                acc["skipped"] += report_skipped(bad)
                if len(y):
                    torch.manual_seed(step_seed(cfg["seed"], dist.rank, epoch, step))
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if cfg["features_on"] == "device":
                        with torch.no_grad():
                            x = image(x)
                    if epoch == 0 and step == 0 and main_rank:
                        fig = example_figure(x, y, names)
                        tracker.log_figure("train/example_inputs", fig, 1, "what the network sees")
                        close(fig)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    x, y_a, y_b, lam = mixup(x, y, cfg["mixup_alpha"])
                    logits, loss = train_step(model, optimizer, scaler, x, y_a, y_b, lam, device, amp_dtype)
                    pending.append((step, loss.detach().float(), (logits.argmax(1) == y).sum(), len(y)))
                step += 1
                if len(pending) >= sync_every or stop["requested"] or step >= last_step:
                    bad_step = None
                    for s, l, c, n in pending:
                        l = l.item()
                        if not math.isfinite(l) and bad_step is None:
                            bad_step = s
                        acc["loss_sum"] += l
                        acc["batches"] += 1
                        acc["correct"] += int(c)
                        acc["seen"] += n
                    pending = []
                    flags = distributed.all_reduce_sum([float(stop["requested"]), float(bad_step is not None)], dist)
                    if flags[1]:
                        raise TrainingError(
                            f"non-finite loss at epoch {epoch + 1}, step {bad_step if bad_step is not None else '?'} "
                            f"(learning rate {lr:.2e}). Training stopped; the checkpoints in {run_dir} hold the last "
                            f"good state. Lower --learning_rate or check the input data.")
                    if flags[0]:
                        stop["requested"] = True
                        break
                    if main_rank and acc["batches"]:
                        bar.set_postfix(loss=f"{acc['loss_sum'] / acc['batches']:.3f}",
                                        acc=f"{100 * acc['correct'] / max(acc['seen'], 1):.1f}%")
            bar.close()
            acc["train_seconds"] += time.time() - t0
            if stop["requested"]:  # mid-epoch: save where we are, so --resume continues with the next batch
                if main_rank:
                    save_checkpoint(state(epoch, step, acc), run_dir / "last.pt")
                raise KeyboardInterrupt
            scheduler.step()

            # ---------------- evaluate, log, checkpoint ----------------
            val = evaluate("val")
            total = distributed.all_reduce_sum([acc["loss_sum"], acc["batches"], acc["correct"], acc["seen"],
                                                acc["skipped"]], dist)
            acc["seconds"] += time.time() - t0
            metrics = {
                "train/epoch": epoch + 1,
                "train/loss": total[0] / max(total[1], 1),
                "train/acc": 100 * total[2] / max(total[3], 1),
                "val/loss": val["loss"],
                "val/acc": val["acc"],
                "val/macro_f1": val["macro_f1"],
                "train/lr": lr,
                "train/epoch_seconds": acc["seconds"],
                "train/clips_per_second": total[3] / max(acc["train_seconds"], 1e-9),
                "data/skipped_clips": int(total[4]) + report_skipped(val["skipped"]),
            }
            improved = (val["acc"], -val["loss"]) > (best["val_acc"], -best["val_loss"])
            if improved:
                best = dict(val_acc=val["acc"], val_loss=val["loss"], epoch=epoch + 1)
            if main_rank:
                tracker.log_epoch(metrics, step=epoch + 1)
                every = cfg["confusion_every"]
                if (every and (epoch + 1) % every == 0) or epoch + 1 == cfg["num_epochs"]:
                    fig = plot_confusion_matrix(val["metrics"]["confusion"], names, f"val, epoch {epoch + 1}")
                    tracker.log_figure("val/confusion_matrix", fig, epoch + 1, f"epoch {epoch + 1}")
                    close(fig)
                save_checkpoint(state(epoch + 1, 0, None), run_dir / "last.pt")
                if improved:
                    save_checkpoint(state(epoch + 1, 0, None), run_dir / "best.pt")
                print(f"epoch {epoch + 1:3d}/{cfg['num_epochs']} | train loss {metrics['train/loss']:.4f} "
                      f"acc {metrics['train/acc']:5.1f}% | val loss {val['loss']:.4f} acc {val['acc']:5.1f}% "
                      f"F1 {val['macro_f1']:5.1f}% | lr {lr:.1e} | {acc['seconds']:.0f} s, "
                      f"{metrics['train/clips_per_second']:.1f} clips/s" + (" *" if improved else ""), flush=True)
            step = 0
            if distributed.all_reduce_sum([float(stop["requested"])], dist)[0]:
                raise KeyboardInterrupt  # Ctrl-C during evaluation: last.pt of this epoch is already saved
            distributed.barrier(dist)
    except KeyboardInterrupt:
        status = "aborted"
        if main_rank:
            print(f"Interrupted in epoch {epoch + 1}; {run_dir / 'last.pt'} holds the last complete step.\n"
                  f"Continue with: python train.py --resume={run_dir}", flush=True)
        raise
    except BaseException:
        status = "crashed"
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if status != "success":
            tracker.finish(status)
            distributed.cleanup(dist)

    # ---- final report: the checkpoint chosen on val, on test when there is one ----
    if (run_dir / "best.pt").exists() or not main_rank:
        distributed.barrier(dist)
        core.load_state_dict(load_checkpoint(run_dir / "best.pt", map_location=device)["model"])
    final_split = "test" if "test" in eval_loaders else "val"
    final = evaluate(final_split)
    minutes = (sum(r["train/epoch_seconds"] for r in tracker.history) / 60) if main_rank else 0.0
    protocol = ("held-out test split, checkpoint chosen on val" if final_split == "test" else
                "val split, also used to choose the checkpoint: optimistic, the tutorial's protocol")
    summary = {"summary/best_val_acc": best["val_acc"], "summary/best_epoch": best["epoch"],
               f"summary/{final_split}_acc": final["acc"], f"summary/{final_split}_macro_f1": final["macro_f1"],
               "summary/total_minutes": minutes}
    if main_rank:
        png, fig = save_report(run_dir, final_split, final["metrics"], names,
                               f"{experiment}\n{final_split} (best.pt, epoch {best['epoch']}): "
                               f"top-1 {final['acc']:.1f}%, macro-F1 {final['macro_f1']:.1f}%",
                               extra=dict(protocol=protocol, checkpoint="best.pt", epoch=best["epoch"]))
        tracker.log_figure(f"{final_split}/confusion_matrix_final", fig, cfg["num_epochs"], protocol)
        close(fig)
        tracker.log(summary, step=cfg["num_epochs"])
        print(f"\n{final['metrics']['report']}")
        print(f"best val top-1 {best['val_acc']:.1f}% at epoch {best['epoch']} (selected on val)")
        print(f"{final_split} top-1 {final['acc']:.1f}%, macro-F1 {final['macro_f1']:.1f}% ({protocol})")
        print(f"confusion matrix: {png}\nrun folder: {run_dir}  ({minutes:.1f} min)")
    tracker.finish("success")
    distributed.cleanup(dist)
    return summary | {"run_dir": str(run_dir)}


def in_main_thread() -> bool:
    """Signal handlers can only be installed from the main thread."""
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (ConfigError, DataError, PretrainedWeightsError, CheckpointError, TrainingError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)
