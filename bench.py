"""Throughput of our training pipeline against the SwanLab tutorial's per-item pipeline and the model-only limit.

    python bench.py                                   # resnet18, 224 px, batch 16, on the GPU if there is one
    python bench.py --device=cuda --batch_size=64 --num_workers=8
    python bench.py --arch=resnext101_32x8d --resize=512 --steps=24

Data: --data_root, else ../shared/gtzan-mini/genres_original when it exists, else synthetic 30 s tracks at
22050 Hz written once under <cache_dir>/bench-audio. Features, augmentation and loader settings are train.py's
defaults. One process, the same tracks (the training split) for every measurement:

  (a) data pipeline alone, clips/s, from audio files to model-ready image batches on the device:
      tutorial-style: a Dataset whose __getitem__ decodes the whole file with soundfile, builds a new
        torchaudio MelSpectrogram (n_fft 2048, hop 640, 128 mels, power), clamp(min=0), 3 channels,
        AdaptiveAvgPool2d to resize x resize; DataLoader(shuffle=True, num_workers=0). No augmentation.
      ours: warm FeatureCache -> ClipDataset random crops -> DataLoader with train.py's settings ->
        MelImage on each batch on the device: augmentation, normalisation, resize, 3 channels. A second row
        leaves the augmentation out, for a like-for-like comparison with the tutorial.
  (b) model-only training step (the limit): train.py's train_step (forward, mixup cross-entropy, backward,
      AdamW) on one fixed batch of (a, ours), after mixup, already on the device.
  (c) full training step: train.py's loop body: next batch from our loader, per-step reseed, copy to the
      device, MelImage with augmentation, mixup, and the same train_step on a model built the same way.
(b) and (c) share batch size, precision (AMP on CUDA) and memory format (channels_last on CUDA) with train.py;
CUDA work is synchronised before each clock reading.

On a small shared CPU a training step varies by +-10% from one step to the next and the load drifts, so the
measurements alternate: --rounds rounds, each running every measurement once as a block (order reversed every
other round); each block of (b) and (c) starts with --warmup untimed steps, and our loader starts a new
iterator per block (as train.py does per epoch), so no block gets batches prepared while another measurement
ran. A rate is the clips of all timed blocks over their time; the ratios come with their standard error over
the rounds (on 2 CPU cores about +-0.03 for the step efficiency at the default --steps: raise --steps to
narrow it). Our loader draws from a stream of epochs: every batch is full.

The last line is machine-readable:  summary: data_speedup=<ours/tutorial, both without augmentation>x step_efficiency=<c/b> device=<type>
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import time
from pathlib import Path

import soundfile as sf
import torch
import torchaudio
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

import train
from augment import build_augment
from data import prepare_data
from data.audio import sf_path
from data.dataset import ClipDataset, EpochSampler, collate_clips
from data.demo import make_demo_dataset
from data.features import build_features, normalisation_stats, window_frames
from experiment.distributed import pick_device
from models import build_model

ROOT = Path(__file__).resolve().parent
GTZAN_MINI = ROOT.parent / "shared" / "gtzan-mini" / "genres_original"


class TutorialDataset(Dataset):
    """The tutorial's per-item pipeline (soundfile instead of torchaudio.load, which needs torchcodec).

    Returns (image float32 [3, resize, resize], label int): the whole file's power mel, pooled. Only the
    first channel is kept, so that a stereo file gives 3 channels too (GTZAN is mono: the same work).
    """

    def __init__(self, paths: list[str], labels: list[int], resize: int):
        self.paths, self.labels, self.resize = list(paths), list(labels), resize

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        samples, sample_rate = sf.read(sf_path(self.paths[i]), dtype="float32", always_2d=True)
        waveform = torch.from_numpy(samples.T.copy())  # [channels, T], as torchaudio.load returns
        transform = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=2048, hop_length=640,
                                                         n_mels=128)
        mel = torch.clamp(transform(waveform), min=0)[:1].repeat(3, 1, 1)
        return nn.AdaptiveAvgPool2d((self.resize, self.resize))(mel), self.labels[i]


class StepKeys(Sampler):
    """The keys of training steps ``[first, first + count)`` of an endless run over ``size`` clips: the
    :class:`EpochSampler` order of epoch 0, then epoch 1, ..., cut into batches of ``batch_size``."""

    def __init__(self, size: int, seed: int, batch_size: int):
        self.epochs, self.size, self.batch_size = EpochSampler(size, seed), size, batch_size
        self.first, self.count = 0, 0

    def select(self, first: int, count: int) -> None:
        """Yield the keys of steps ``[first, first + count)`` from the next ``iter()``."""
        self.first, self.count = first, count

    def __iter__(self):
        start, stop = self.first * self.batch_size, (self.first + self.count) * self.batch_size
        epoch, offset = divmod(start, self.size)
        while start < stop:
            self.epochs.set_epoch(epoch, start=offset)
            for key in self.epochs:
                if start == stop:
                    return
                yield key
                start += 1
            epoch, offset = epoch + 1, 0

    def __len__(self):
        return self.count * self.batch_size


class OurBatches:
    """train.py's training DataLoader over :class:`StepKeys`; ``block(n)`` yields the next ``n`` batches
    as ``(step, (x, y, skipped))`` from a new iterator."""

    def __init__(self, dataset: ClipDataset, cfg: dict, loader_kw: dict):
        self.keys = StepKeys(len(dataset), cfg["seed"], cfg["batch_size"])
        self.loader = DataLoader(dataset, batch_size=cfg["batch_size"], sampler=self.keys, collate_fn=collate_clips,
                                 **loader_kw)
        self.step = 0

    def block(self, n: int):
        """The next ``n`` batches, from a new iterator (train.py starts one per epoch)."""
        self.keys.select(self.step, n)
        for batch in self.loader:
            yield self.step, batch
            self.step += 1


class Meter:
    """Clips and seconds of the timed blocks of one measurement; reads the clock with CUDA work finished."""

    def __init__(self, device: torch.device):
        self.cuda, self.clips, self.seconds = device.type == "cuda", 0, 0.0
        self.block_rates: list[float] = []

    def now(self) -> float:
        """perf_counter seconds, after the queued CUDA work is done."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, clips: int, started: float) -> None:
        """Count a timed block of ``clips`` clips that began at ``started`` (a :meth:`now` reading)."""
        seconds = self.now() - started
        self.clips += clips
        self.seconds += seconds
        self.block_rates.append(clips / seconds)

    @property
    def rate(self) -> float:
        """Clips per second."""
        return self.clips / self.seconds


def ratio_error(num: Meter, den: Meter) -> float:
    """Standard error of ``num.rate / den.rate`` from the spread of the per-round ratios (nan for one round)."""
    ratios = [a / b for a, b in zip(num.block_rates, den.block_rates)]
    return statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else math.nan


def drain(pending: list) -> list:
    """Read the device's (loss, correct) scalars back as train.py does every ``sync_every`` steps; returns []."""
    for loss, correct in pending:
        loss.item(), int(correct)
    return []


class Trainer:
    """A model, AdamW and GradScaler built exactly as train.py builds them, and train.py's step."""

    def __init__(self, cfg: dict, num_classes: int, device: torch.device, amp_dtype, channels_last: bool):
        torch.manual_seed(cfg["seed"])
        self.model = build_model(cfg["arch"], num_classes, pretrained=False).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["learning_rate"],
                                           weight_decay=cfg["weight_decay"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.device, self.amp_dtype = device, amp_dtype
        self.sync_every = 10 if device.type == "cuda" else 1
        self.pending = []

    def step(self, x, y, y_a, y_b, lam: float) -> None:
        """train.py's step on x [B, 3, H, W] (mixed up from labels y_a, y_b with weight lam; y long [B]
        for the accuracy count), syncing every ``sync_every`` steps as train.py does."""
        logits, loss = train.train_step(self.model, self.optimizer, self.scaler, x, y_a, y_b, lam, self.device,
                                        self.amp_dtype)
        self.pending.append((loss.detach().float(), (logits.argmax(1) == y).sum()))
        if len(self.pending) >= self.sync_every:
            self.pending = drain(self.pending)

    def flush(self) -> None:
        """Wait for every queued step (reads their scalars back)."""
        self.pending = drain(self.pending)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see ``python bench.py --help``); exits with a usage error on invalid counts."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default="", help="folder of <label>/<audio>; default gtzan-mini or synthetic")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--resize", type=int, default=224, help="image side, pixels")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=24, help="timed training steps of (b) and of (c), over all rounds")
    p.add_argument("--rounds", type=int, default=4, help="alternations of the measurements")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (batches) at the start of each block")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--num_workers", type=int, default=-1, help="our DataLoader workers; -1: train.py's auto rule")
    p.add_argument("--cache_dir", default=".cache", help="feature cache (shared with train.py) and synthetic audio")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < args.rounds or args.warmup < 0:
        p.error("need --rounds >= 1, --steps >= --rounds and --warmup >= 0")
    return args


def bench_config(args) -> dict:
    """train.py's default config with this benchmark's data, model and loader settings."""
    data_root = args.data_root
    if not data_root:
        if GTZAN_MINI.is_dir():
            data_root = str(GTZAN_MINI)
        else:
            data_root = str(make_demo_dataset(Path(args.cache_dir) / "bench-audio", clips_per_class=10,
                                              sample_rate=22050, seconds=30.0))
    return dict(train.CONFIG, data_root=data_root, csv_path=str(Path(args.cache_dir) / "bench_index.csv"),
                cache_dir=args.cache_dir, arch=args.arch, resize=args.resize, batch_size=args.batch_size,
                device=args.device, num_workers=args.num_workers, pretrained=False)


def main(argv=None) -> dict:
    """Run the benchmark and print the table. Returns {measurement: clips/s, data_speedup, step_efficiency}."""
    args = parse_args(argv)
    started = time.perf_counter()
    cfg = bench_config(args)
    device = pick_device(args.device)
    cfg["device"] = str(device)
    cuda = device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda and cfg["amp"] else None
    channels_last = cuda and cfg["channels_last"]
    if cuda:
        torch.backends.cudnn.benchmark = True
    loader_kw = train.loader_settings(cfg, device)
    bs, rounds, warmup = cfg["batch_size"], args.rounds, args.warmup
    steps_per_block = args.steps // rounds

    # the training split, its cache filled before any clock runs
    logmel, _ = build_features(cfg)
    data = prepare_data(cfg, logmel, num_workers=torch.multiprocessing.cpu_count() or 1, show_progress=False)
    part = data.splits["train"]
    paths, labels, entries = list(part.path), [int(y) for y in part.y], list(part.entry)
    mean, std = normalisation_stats(data.cache.get(p, e) for p, e in zip(paths, entries))
    _, image = build_features(cfg, mean, std, build_augment(cfg))
    _, plain_image = build_features(cfg, mean, std)
    image, plain_image = image.to(device).train(), plain_image.to(device).train()
    clip_frames, _ = window_frames(cfg, logmel)
    dataset = ClipDataset(paths, labels, data.cache, clip_frames, cfg["seed"], entries=entries)
    cache_bytes = sum(Path(e).stat().st_size for e in entries)
    num_classes = len(data.label_names)

    print(f"bench: {cfg['arch']} {cfg['resize']}x{cfg['resize']}, batch {bs}, {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"amp {str(amp_dtype).replace('torch.', '') if amp_dtype else 'off'}, channels_last {channels_last}); "
          f"our loader: {loader_kw['num_workers']} workers, pin_memory {loader_kw['pin_memory']}")
    print(f"data: {len(paths)} training tracks of {cfg['data_root']}; cache {cache_bytes / 2 ** 20:.1f} MiB "
          f"({cache_bytes / len(paths) / 2 ** 20:.2f} MiB per track) in {data.cache.dir}")
    print(f"{rounds} rounds; per round: (a) {2 * bs} + {8 * bs} + {8 * bs} clips, (b) and (c) {warmup} + "
          f"{steps_per_block} steps each", flush=True)

    meters = {name: Meter(device) for name in ("tutorial", "ours", "ours_plain", "model", "full")}

    # (a) tutorial-style: one untimed batch first (lazy initialisation), then 2 batches per round
    tutorial_set = TutorialDataset(paths, labels, cfg["resize"])
    tutorial_loader = DataLoader(tutorial_set, batch_size=bs, num_workers=0,
                                 sampler=RandomSampler(tutorial_set, num_samples=(1 + 2 * rounds) * bs))
    tutorial_batches = iter(tutorial_loader)
    next(tutorial_batches)

    def tutorial_block():
        t0, clips = meters["tutorial"].now(), 0
        for _ in range(2):
            x, _ = next(tutorial_batches)
            clips += len(x.to(device))
        meters["tutorial"].add(clips, t0)

    # (a) ours, with and without augmentation: 8 batches per round after the block's warmup
    def ours_block(stream: OurBatches, mel_image, meter: Meter):
        t0, clips = meter.now(), 0
        for i, (step, (x, _, _)) in enumerate(stream.block(warmup + 8)):
            if i == warmup:
                t0, clips = meter.now(), 0
            torch.manual_seed(train.step_seed(cfg["seed"], 0, 0, step))
            with torch.no_grad():
                x = mel_image(x.to(device, non_blocking=True))
            clips += len(x)
        meter.add(clips, t0)

    ours_stream, plain_stream = OurBatches(dataset, cfg, loader_kw), OurBatches(dataset, cfg, loader_kw)

    # (b) model-only: one fixed batch from our pipeline, mixed up as in (c)
    _, (x, y, _) = next(OurBatches(dataset, cfg, loader_kw).block(1))
    torch.manual_seed(train.step_seed(cfg["seed"], 0, 0, 0))
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        x = image(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_mixed, y_a, y_b, lam = train.mixup(x, y, cfg["mixup_alpha"])
    fixed = (x_mixed, y, y_a, y_b, lam)
    limit = Trainer(cfg, num_classes, device, amp_dtype, channels_last)

    def model_block():
        x, y, y_a, y_b, lam = fixed
        for i in range(warmup + steps_per_block):
            if i == warmup:
                limit.flush()
                t0 = meters["model"].now()
            limit.step(x, y, y_a, y_b, lam)
        limit.flush()
        meters["model"].add(steps_per_block * len(y), t0)

    # (c) full step: train.py's loop body
    full = Trainer(cfg, num_classes, device, amp_dtype, channels_last)
    full_stream = OurBatches(dataset, cfg, loader_kw)

    def full_block():
        t0, clips = meters["full"].now(), 0
        for i, (step, (x, y, _)) in enumerate(full_stream.block(warmup + steps_per_block)):
            if i == warmup:
                full.flush()
                t0, clips = meters["full"].now(), 0
            torch.manual_seed(train.step_seed(cfg["seed"], 0, 0, step))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                x = image(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x, y_a, y_b, lam = train.mixup(x, y, cfg["mixup_alpha"])
            full.step(x, y, y_a, y_b, lam)
            clips += len(y)
        full.flush()
        meters["full"].add(clips, t0)

    blocks = [tutorial_block, lambda: ours_block(ours_stream, image, meters["ours"]),
              lambda: ours_block(plain_stream, plain_image, meters["ours_plain"]), model_block, full_block]
    for r in range(rounds):
        for block in (blocks if r % 2 == 0 else blocks[::-1]):
            block()

    rate = {name: m.rate for name, m in meters.items()}
    # Same work on both sides: the tutorial-style pipeline has no augmentation (its baseline run), so the
    # headline speedup compares it with ours without augmentation; ours with augmentation is shown beside it.
    speedup, efficiency = rate["ours_plain"] / rate["tutorial"], rate["full"] / rate["model"]
    rows = [("(a) data only, tutorial-style per item (30 s tracks)", "tutorial"),
            ("(a) data only, ours (warm cache, batched image, no augmentation)", "ours_plain"),
            ("    ours with SpecAugment, noise and gain (what train.py runs)", "ours"),
            ("(b) model-only training step (the limit)", "model"),
            ("(c) full training step, ours", "full")]
    print(f"\n{'':66s}{'clips/s':>10s}{'ms/batch':>11s}{'timed clips':>13s}")
    for label, name in rows:
        print(f"{label:66s}{rate[name]:10.1f}{1000 * bs / rate[name]:11.1f}{meters[name].clips:13d}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = meters
    print(f"\ndata speedup (ours / tutorial-style, same work): {speedup:.1f}x "
          f"+- {ratio_error(m['ours_plain'], m['tutorial']):.1f} "
          f"(ours with augmentation, doing more work: {rate['ours'] / rate['tutorial']:.1f}x)\n"
          f"step efficiency (full / model-only):  {efficiency:.3f} +- {ratio_error(m['full'], m['model']):.3f}\n"
          f"(+- one standard error over the {rounds} rounds)\n"
          f"peak RSS {peak:.0f} MiB, {time.perf_counter() - started:.0f} s in all")
    print(f"summary: data_speedup={speedup:.1f}x step_efficiency={efficiency:.2f} device={device.type}")
    return dict(rate, data_speedup=speedup, step_efficiency=efficiency)


if __name__ == "__main__":
    main()
