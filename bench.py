"""Throughput of our training pipeline against the SwanLab tutorial's per-item pipeline and the model-only limit.

    python bench.py                                   # resnet18, 224 px, batch 16, on the GPU if there is one
    python bench.py --device=cuda --batch_size=64 --num_workers=8
    python bench.py --arch=resnext101_32x8d --resize=512 --steps=24
    python bench.py --backbones=all --batch_size=2 --steps=2 --rounds=1   # one line per backbone: (b) and (c)

Data: --data_root, else ../shared/gtzan-mini/genres_original when it exists, else synthetic 30 s tracks at
22050 Hz written once under <cache_dir>/bench-audio. Features, augmentation and loader settings are train.py's
defaults (read from train.py's CONFIG; bench does not import the trainer). The set-up, batch preparation
and step are experiment/engine.py's, which train.py runs. One process, the same tracks (the training
split) for every measurement:

  (a) data pipeline alone, clips/s, from audio files to model-ready image batches on the device:
      tutorial-style: a Dataset whose __getitem__ decodes the whole file with soundfile, builds a new
        torchaudio MelSpectrogram (n_fft 2048, hop 640, 128 mels, power), clamp(min=0), 3 channels,
        AdaptiveAvgPool2d to resize x resize; DataLoader(shuffle=True, num_workers=0). No augmentation.
      ours: warm FeatureCache -> ClipDataset random crops -> DataLoader with train.py's settings ->
        MelImage on each batch on the device: augmentation, normalisation, resize, 3 channels (then
        channels_last on CUDA). A second row leaves the augmentation out, for a like-for-like comparison
        with the tutorial.
  (b) model-only training step (the limit): the engine's train_step (forward, mixup cross-entropy, backward,
      AdamW) on one fixed batch of (a, ours), after mixup, already on the device.
  (c) full training step: train.py's loop body at grad_accum_steps=1: next batch from our loader, per-step
      reseed, prepare_batch (copy to the device, the input transform with augmentation), mixup, and the same
      train_step (train.py runs its two halves, backward and optimizer_step, to allow accumulation) on a
      model built the same way (the engine's build_model_and_optimizer).
(b) and (c) share batch size, precision (AMP on CUDA) and memory format (channels_last on CUDA) with train.py;
CUDA work is synchronised before each clock reading.

On a small shared CPU a training step varies by +-10% from one step to the next and the load drifts, so the
measurements alternate: --rounds rounds, each running every measurement once as a block (order reversed every
other round); each block of (b) and (c) starts with --warmup untimed steps, and our loader starts a new
iterator per block (as train.py does per epoch), so no block gets batches prepared while another measurement
ran. A rate is the clips of all timed blocks over their time; the ratios come with their standard error over
the rounds (on 2 CPU cores about +-0.03 for the step efficiency at the default --steps: raise --steps to
narrow it). Our loader draws from a stream of epochs: every batch is full.

--augment_costs measures instead what each augmentation of the registry costs alone (probability 1) on batches
of training crops, in ms per batch and as a share of (b): python bench.py --augment_costs. --set=key=value,...
overrides train.py's config (e.g. --set=vtlp_p=0.5,ema_decay=0.99 to time a recipe's full step).

--backbones=all (or a comma list of --arch names) measures instead, for each backbone at its own input (the
front end and window its registry entry sets, train.py's defaults otherwise), only (b) and (c), and prints one
line per backbone: input shape, model-only and full-step clips/s, and their ratio.

The last line is machine-readable:  summary: data_speedup=<ours/tutorial, both without augmentation>x step_efficiency=<c/b> device=<type>
"""
from __future__ import annotations

import argparse
import functools
import math
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torchaudio
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from augment import AUGMENTATIONS, build_augment, speed_factors
from data import prepare_data
from data.audio import sf_path
from data.dataset import ClipDataset, EpochSampler, collate_clips
from data.demo import make_demo_dataset
from data.features import build_frontend, build_input_transform, normalisation_for, window_frames
from experiment.config import literal_config, parse_config
from experiment.ema import build_ema
from models import BACKBONES, resolve_frontend
from experiment.engine import (EpochTotals, PendingSteps, Runtime, build_model_and_optimizer, loader_settings, mixup,
                               prepare_batch, setup_runtime, step_seed, train_step)

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


class Trainer:
    """A model, AdamW, GradScaler and EMA of the weights (``ema_decay``) built as train.py builds them (the
    engine's build_model_and_optimizer), stepped by the engine's train_step (with ``label_smoothing``), its
    scalars read back every ``sync_every`` steps as train.py does."""

    def __init__(self, cfg: dict, num_classes: int, runtime: Runtime):
        torch.manual_seed(cfg["seed"])
        self.model, self.optimizer, self.scaler = build_model_and_optimizer(cfg, num_classes, runtime, pretrained=False)
        self.ema, self.label_smoothing = build_ema(self.model, cfg["ema_decay"]), cfg["label_smoothing"]
        self.model.train()
        self.runtime, self.steps = runtime, 0
        self.pending, self.totals = PendingSteps(runtime.sync_every), EpochTotals()

    def step(self, x, y, y_a, y_b, lam: float) -> None:
        """One step on x [B, 3, H, W] mixed up from labels y_a, y_b with weight lam (y long [B]: the labels
        before mixup, for the accuracy count)."""
        logits, loss = train_step(self.model, self.optimizer, self.scaler, x, y_a, y_b, lam, self.runtime,
                                  self.label_smoothing, self.ema)
        self.pending.add(self.steps, logits, loss, y)
        self.steps += 1
        if self.pending.due():
            self.pending.read(self.totals)

    def flush(self) -> None:
        """Wait for every queued step (reads their scalars back)."""
        self.pending.read(self.totals)


@dataclass
class BenchData:
    """The training split, its cache filled before any clock runs: the crops dataset, its tracks, and the
    input transform with augmentation (what train.py runs) and without (like the tutorial's pipeline)."""
    dataset: ClipDataset
    paths: list[str]
    labels: list[int]
    num_classes: int
    input_transform: nn.Module
    plain_transform: nn.Module
    cache_bytes: int
    cache_dir: Path
    clip_frames: int


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see ``python bench.py --help``); exits with a usage error on invalid counts."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default="", help="folder of <label>/<audio>; default gtzan-mini or synthetic")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--backbones", default="", help="all, or a comma list of --arch names: (b) and (c) per backbone")
    p.add_argument("--resize", type=int, default=224, help="image side, pixels")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=24, help="timed training steps of (b) and of (c), over all rounds")
    p.add_argument("--rounds", type=int, default=4, help="alternations of the measurements")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (batches) at the start of each block")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--num_workers", type=int, default=-1, help="our DataLoader workers; -1: train.py's auto rule")
    p.add_argument("--cache_dir", default=".cache", help="feature cache (shared with train.py) and synthetic audio")
    p.add_argument("--augment_costs", action="store_true",
                   help="instead: what each augmentation of the registry costs alone, per batch, against (b)")
    p.add_argument("--set", default="", help="train.py config overrides, e.g. --set=vtlp_p=0.5,ema_decay=0.99")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.steps < args.rounds or args.warmup < 0:
        p.error("need --rounds >= 1, --steps >= --rounds and --warmup >= 0")
    return args


def bench_config(args) -> dict:
    """train.py's CONFIG (read from its source) with this benchmark's data, model and loader settings."""
    data_root = args.data_root
    if not data_root:
        if GTZAN_MINI.is_dir():
            data_root = str(GTZAN_MINI)
        else:
            data_root = str(make_demo_dataset(Path(args.cache_dir) / "bench-audio", clips_per_class=10,
                                              sample_rate=22050, seconds=30.0))
    cfg = dict(literal_config((ROOT / "train.py").read_text()), data_root=data_root,
               csv_path=str(Path(args.cache_dir) / "bench_index.csv"), cache_dir=args.cache_dir, arch=args.arch,
               resize=args.resize, batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
               pretrained=False)
    for pair in filter(None, args.set.split(",")):
        key, value = pair.split("=", 1)
        cfg.update(parse_config([f"--{key}={value}"], cfg, {}))
    return resolve_frontend(cfg)


def main(argv=None) -> dict:
    """Run the benchmark and print the table. Returns {measurement: clips/s, data_speedup, step_efficiency}."""
    args = parse_args(argv)
    if args.backbones:
        return bench_backbones(args)
    if args.augment_costs:
        return augment_costs(args)
    started = time.perf_counter()
    cfg = bench_config(args)
    runtime = setup_runtime(cfg)
    cfg["device"] = str(runtime.device)
    loader_kw = loader_settings(cfg, runtime.device)
    data = load_bench_data(cfg, runtime.device)
    print_setup(cfg, args, runtime, loader_kw, data)
    meters = {name: Meter(runtime.device) for name in ("tutorial", "ours", "ours_plain", "model", "full")}
    blocks = make_blocks(cfg, args, runtime, loader_kw, data, meters)
    for r in range(args.rounds):
        for block in (blocks if r % 2 == 0 else blocks[::-1]):
            block()
    return print_results(meters, cfg["batch_size"], args.rounds, runtime.device, started)


def bench_backbones(args) -> dict:
    """One line per backbone of ``args.backbones``: (b) model-only and (c) full step at the backbone's own input
    (its front end and window), alternated over ``args.rounds`` as in the main table. Returns {arch: (b, c)}."""
    names = list(BACKBONES) if args.backbones == "all" else args.backbones.split(",")
    results = {}
    print(f"{'backbone':18s}{'input':>22s}{'(b) model clips/s':>19s}{'(c) full clips/s':>18s}{'c/b':>7s}", flush=True)
    for arch in names:
        args.arch = arch
        cfg = bench_config(args)
        runtime = setup_runtime(cfg)
        loader_kw = loader_settings(cfg, runtime.device)
        data = load_bench_data(cfg, runtime.device)
        meters = {name: Meter(runtime.device) for name in ("model", "full")}
        batch = fixed_batch(OurBatches(data.dataset, cfg, loader_kw), cfg, runtime, data.input_transform)
        steps = args.steps // args.rounds
        blocks = [functools.partial(model_block, Trainer(cfg, data.num_classes, runtime), batch, meters["model"],
                                    args.warmup, steps),
                  functools.partial(full_block, Trainer(cfg, data.num_classes, runtime),
                                    OurBatches(data.dataset, cfg, loader_kw), data.input_transform, cfg, runtime,
                                    meters["full"], args.warmup, steps)]
        for r in range(args.rounds):
            for block in (blocks if r % 2 == 0 else blocks[::-1]):
                block()
        b, c = meters["model"].rate, meters["full"].rate
        shape = "x".join(map(str, batch[0].shape[1:]))
        print(f"{arch:18s}{shape:>22s}{b:19.2f}{c:18.2f}{c / b:7.2f}  ({runtime.device.type}, batch "
              f"{cfg['batch_size']})", flush=True)
        results[arch] = (b, c)
    return results


def augment_costs(args) -> dict:
    """What each device-side augmentation of the registry costs alone (probability 1, its default strength) on
    batches of training crops, in ms per batch and as a share of (b) the model-only step, alternated over
    ``args.rounds``. Returns {name: ms per batch, "model": ms per (b) step}."""
    cfg = bench_config(args)
    runtime = setup_runtime(cfg)
    data = load_bench_data(cfg, runtime.device)
    frontend = build_frontend(cfg)
    modules = {}
    for name, entry in AUGMENTATIONS.items():
        if entry.where == "device" and frontend.units in entry.units:
            one = dict(cfg, augment=True) | {e.keys[0]: 0.0 for e in AUGMENTATIONS.values()} | {entry.keys[0]: 1.0}
            modules[name] = build_augment(one, frontend, data.clip_frames, data.dataset.cache.get).to(runtime.device).train()
    data.dataset.clip_frames = max(m.input_frames(data.clip_frames) for m in modules.values())  # the widest crop
    stream = OurBatches(data.dataset, cfg, loader_settings(cfg, runtime.device))
    _, (crops, y, _) = next(stream.block(1))
    crops = crops.to(runtime.device)
    batch = fixed_batch(stream, cfg, runtime, data.input_transform)
    trainer, steps = Trainer(cfg, data.num_classes, runtime), max(1, args.steps // args.rounds)
    meters = {name: Meter(runtime.device) for name in [*modules, "model"]}
    for _ in range(args.rounds):
        model_block(trainer, batch, meters["model"], args.warmup, steps)
        for name, module in modules.items():
            x = crops[..., :module.input_frames(data.clip_frames)]
            t0 = meters[name].now()
            for _ in range(steps):
                module(x, 0.0)
            meters[name].add(steps * len(x), t0)
    per_batch = {name: 1000 * cfg["batch_size"] / m.rate for name, m in meters.items()}
    print(f"cost of each augmentation alone on batches of {cfg['batch_size']} crops {tuple(crops.shape[1:])} "
          f"({runtime.device}); (b) model-only step: {per_batch['model']:.1f} ms")
    for name in modules:
        print(f"  {name:14s}{per_batch[name]:8.2f} ms/batch  {100 * per_batch[name] / per_batch['model']:6.1f}% of (b)")
    return per_batch


def load_bench_data(cfg: dict, device: torch.device) -> BenchData:
    """The training split of ``cfg["data_root"]`` with every spectrogram (and speed copy) cached, normalised on
    itself, and its crops as wide as the augmentation takes them in."""
    frontend = build_frontend(cfg)
    data = prepare_data(cfg, frontend, num_workers=torch.multiprocessing.cpu_count() or 1, show_progress=False)
    part = data.splits["train"]
    paths, labels, entries = list(part.path), [int(y) for y in part.y], list(part.entry)
    norm = normalisation_for(cfg, (data.cache.get(p, e) for p, e in zip(paths, entries)), frontend)
    mean, std = norm["mean"], norm["std"]
    clip_frames, _ = window_frames(cfg, frontend)
    augment = build_augment(cfg, frontend, clip_frames, data.cache.get)
    augmented = build_input_transform(cfg, frontend, mean, std, augment)
    plain = build_input_transform(cfg, frontend, mean, std)
    copies = data.cache.build_speed_copies(paths, speed_factors(cfg), show_progress=False)
    crop = augment.input_frames(clip_frames) if augment is not None else clip_frames
    dataset = ClipDataset(paths, labels, data.cache, crop, cfg["seed"], entries=entries, speed_copies=copies,
                          speed_p=cfg["speed_p"])
    return BenchData(dataset, paths, labels, len(data.label_names), augmented.to(device).train(),
                     plain.to(device).train(), sum(Path(e).stat().st_size for e in entries), data.cache.dir,
                     clip_frames)


def print_setup(cfg: dict, args, runtime: Runtime, loader_kw: dict, data: BenchData) -> None:
    """The benchmark's first lines: model, device, precision, loader, data and the work of each round."""
    bs, amp = cfg["batch_size"], str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off"
    print(f"bench: {cfg['arch']} {cfg['resize']}x{cfg['resize']}, batch {bs}, {runtime.device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"amp {amp}, channels_last {runtime.channels_last}); "
          f"our loader: {loader_kw['num_workers']} workers, pin_memory {loader_kw['pin_memory']}")
    print(f"data: {len(data.paths)} training tracks of {cfg['data_root']}; cache {data.cache_bytes / 2 ** 20:.1f} MiB "
          f"({data.cache_bytes / len(data.paths) / 2 ** 20:.2f} MiB per track) in {data.cache_dir}")
    print(f"{args.rounds} rounds; per round: (a) {2 * bs} + {8 * bs} + {8 * bs} clips, (b) and (c) {args.warmup} + "
          f"{args.steps // args.rounds} steps each", flush=True)


def make_blocks(cfg: dict, args, runtime: Runtime, loader_kw: dict, data: BenchData, meters: dict) -> list:
    """One timed block of each measurement, as callables in table order: (a) tutorial-style, ours, ours
    without augmentation, (b) model-only, (c) full step. Each has its own batch stream and model."""
    bs, steps, warmup = cfg["batch_size"], args.steps // args.rounds, args.warmup
    tutorial_set = TutorialDataset(data.paths, data.labels, cfg["resize"])
    tutorial = iter(DataLoader(tutorial_set, batch_size=bs, num_workers=0,
                               sampler=RandomSampler(tutorial_set, num_samples=(1 + 2 * args.rounds) * bs)))
    next(tutorial)  # one untimed batch first (lazy initialisation)
    stream = functools.partial(OurBatches, data.dataset, cfg, loader_kw)
    return [functools.partial(tutorial_block, tutorial, runtime.device, meters["tutorial"]),
            functools.partial(ours_block, stream(), data.input_transform, cfg, runtime, meters["ours"], warmup),
            functools.partial(ours_block, stream(), data.plain_transform, cfg, runtime, meters["ours_plain"], warmup),
            functools.partial(model_block, Trainer(cfg, data.num_classes, runtime),
                              fixed_batch(stream(), cfg, runtime, data.input_transform), meters["model"], warmup,
                              steps),
            functools.partial(full_block, Trainer(cfg, data.num_classes, runtime), stream(), data.input_transform,
                              cfg, runtime, meters["full"], warmup, steps)]


def tutorial_block(batches, device: torch.device, meter: Meter) -> None:
    """(a) tutorial-style: 2 batches of the per-item pipeline, copied to the device."""
    t0, clips = meter.now(), 0
    for _ in range(2):
        x, _ = next(batches)
        clips += len(x.to(device))
    meter.add(clips, t0)


def ours_block(stream: OurBatches, input_transform: nn.Module, cfg: dict, runtime: Runtime, meter: Meter,
               warmup: int) -> None:
    """(a) ours: ``warmup`` untimed, then 8 timed batches from our loader to model-ready images on the device."""
    t0, clips = meter.now(), 0
    for i, (step, (x, y, _)) in enumerate(stream.block(warmup + 8)):
        if i == warmup:
            t0, clips = meter.now(), 0
        torch.manual_seed(step_seed(cfg["seed"], 0, 0, step))
        x, _ = prepare_batch(x, y, runtime, input_transform)
        clips += len(x)
    meter.add(clips, t0)


def fixed_batch(stream: OurBatches, cfg: dict, runtime: Runtime, input_transform: nn.Module) -> tuple:
    """(b)'s batch: the first of our pipeline, mixed up as in (c). Returns (x, y, y_a, y_b, lam) on the device."""
    _, (x, y, _) = next(stream.block(1))
    torch.manual_seed(step_seed(cfg["seed"], 0, 0, 0))
    x, y = prepare_batch(x, y, runtime, input_transform)
    x_mixed, y_a, y_b, lam = mixup(x, y, cfg["mixup_alpha"])
    return x_mixed, y, y_a, y_b, lam


def model_block(trainer: Trainer, batch: tuple, meter: Meter, warmup: int, steps: int) -> None:
    """(b) model-only: ``warmup`` untimed, then ``steps`` timed training steps on the same batch."""
    x, y, y_a, y_b, lam = batch
    for i in range(warmup + steps):
        if i == warmup:
            trainer.flush()
            t0 = meter.now()
        trainer.step(x, y, y_a, y_b, lam)
    trainer.flush()
    meter.add(steps * len(y), t0)


def full_block(trainer: Trainer, stream: OurBatches, input_transform: nn.Module, cfg: dict, runtime: Runtime,
               meter: Meter, warmup: int, steps: int) -> None:
    """(c) full step, train.py's loop body: ``warmup`` untimed, then ``steps`` timed steps from our loader."""
    t0, clips = meter.now(), 0
    for i, (step, (x, y, _)) in enumerate(stream.block(warmup + steps)):
        if i == warmup:
            trainer.flush()
            t0, clips = meter.now(), 0
        torch.manual_seed(step_seed(cfg["seed"], 0, 0, step))
        x, y = prepare_batch(x, y, runtime, input_transform)
        x_mixed, y_a, y_b, lam = mixup(x, y, cfg["mixup_alpha"])
        trainer.step(x_mixed, y, y_a, y_b, lam)
        clips += len(y)
    trainer.flush()
    meter.add(clips, t0)


def print_results(meters: dict, batch_size: int, rounds: int, device: torch.device, started: float) -> dict:
    """The table, the two ratios with their standard errors and the machine-readable summary line.
    Returns {measurement: clips/s, data_speedup, step_efficiency}."""
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
        print(f"{label:66s}{rate[name]:10.1f}{1000 * batch_size / rate[name]:11.1f}{meters[name].clips:13d}")
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
