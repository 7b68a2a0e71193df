"""What train.py and bench.py both run: the runtime (process group, device, precision, memory format),
DataLoader settings, model + optimiser + scaler construction, batch preparation on the device, mixup, the
optimisation step, and the per-step scalars read back every few steps.

One step, as bench.py runs it (train.py runs train_step's halves, backward per micro-batch and
optimizer_step per ``grad_accum_steps``, and adds the checks between steps)::

    torch.manual_seed(step_seed(seed, rank, epoch, step))
    x, y = prepare_batch(x, y, runtime, input_transform)     # device, input transform, channels_last
    logits, loss = train_step(model, optimizer, scaler, *mixup(x, y, alpha), runtime)
    pending.add(step, logits, loss, y)                       # read back every runtime.sync_every steps
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evaluation import autocast
from experiment import distributed
from experiment.tasks import TASKS, Task
from models import build_model, freeze_backbone, freeze_feature_encoder, param_groups

# Clips a training batch needs: BatchNorm in training mode needs more than one value per channel, and a
# 1-clip batch at small image sizes has exactly one after the last stage (1x1); mixup needs two as well.
MIN_BATCH_CLIPS = 2


@dataclass
class Runtime:
    """Where and how this process trains.

    ``dist``: rank, world size and device (:mod:`experiment.distributed`); ``amp_dtype``: the autocast dtype
    on CUDA (bfloat16, or float16 with loss scaling) or None (tests also run CPU bfloat16 autocast through
    it); ``channels_last``: the memory format of model and inputs; ``sync_every``: micro-batches between
    reading the losses back (0: 10 on CUDA, so the host queues work ahead of the GPU; else 1).
    """
    dist: distributed.Dist
    amp_dtype: torch.dtype | None
    channels_last: bool
    sync_every: int = 0

    def __post_init__(self):
        self.sync_every = self.sync_every or (10 if self.device.type == "cuda" else 1)

    @property
    def device(self) -> torch.device:
        return self.dist.device


def setup_runtime(cfg: dict) -> Runtime:
    """The process group (under torchrun) and this rank's device (``cfg["device"]``), then
    ``torch.manual_seed(cfg["seed"])``. On CUDA: autocast in bfloat16 where supported, else float16
    (``cfg["amp"]``), channels_last (``cfg["channels_last"]``) and ``cudnn.benchmark``; none of them elsewhere.
    ``cfg["dist_timeout"]`` (seconds) is the process group's timeout, ``cfg["sync_every"]`` the runtime's.

    Raises:
        RuntimeError: ``cfg["device"]`` names CUDA on a machine without it.
    """
    dist = distributed.setup(cfg["device"], cfg.get("dist_timeout", distributed.DEFAULT_TIMEOUT))
    torch.manual_seed(cfg["seed"])
    cuda = dist.device.type == "cuda"
    amp_dtype = None
    if cuda and cfg["amp"]:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cuda:
        torch.backends.cudnn.benchmark = True
    return Runtime(dist, amp_dtype, cuda and cfg["channels_last"], cfg.get("sync_every", 0))


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


def build_model_and_optimizer(cfg: dict, num_classes: int, runtime: Runtime, pretrained: bool,
                              record: dict | None = None):
    """``models.build_model(cfg["arch"], num_classes, pretrained, weights=cfg["weights"], record=record)`` with
    the fine-tuning controls ``freeze_backbone`` (linear probe) and ``freeze_feature_encoder`` (wav2vec2 family)
    applied, on the device (channels_last when the runtime says so), its optimiser (:func:`make_optimizer`) and a
    GradScaler, enabled for float16 autocast only. ``record``: a checkpoint's backbone record (rebuilds that exact
    architecture; None: the registry's). Returns (model, optimizer, scaler).

    Raises:
        models.PretrainedWeightsError: ``pretrained`` and the weights cannot be downloaded or read.
        ValueError: ``freeze_feature_encoder`` for a model without a feature encoder.
    """
    model = build_model(cfg["arch"], num_classes, pretrained, weights=cfg.get("weights") or None, record=record)
    if cfg.get("freeze_backbone"):
        freeze_backbone(model, cfg["arch"])
    if cfg.get("freeze_feature_encoder"):
        freeze_feature_encoder(model)
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    return model, make_optimizer(model, cfg), scaler


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019, decoupled weight decay) over the trainable parameters, in the groups of
    ``models.param_groups``: the body at ``cfg["learning_rate"]``, the new head at ``learning_rate *
    head_lr_multiplier``, all with ``cfg["weight_decay"]`` (0: plain Adam, the tutorial's optimiser). With a
    multiplier of 1 it is one group in the model's parameter order, as before the head had its own rate, so
    older checkpoints' optimiser states still load."""
    multiplier = cfg.get("head_lr_multiplier", 1.0)
    if multiplier == 1.0:
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad], name="all")]
    else:
        groups = param_groups(model, cfg["arch"], cfg["learning_rate"], multiplier)
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])


def step_seed(*parts: int) -> int:
    """A 63-bit seed from (seed, rank, epoch, step): every step's randomness is reproducible on resume."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def prepare_batch(x: torch.Tensor, y: torch.Tensor, runtime: Runtime, input_transform: nn.Module | None = None):
    """A collated batch, ready for the model on the runtime's device.

    Args:
        x: float32 [B, 1, n_mels, frames] (or [B, 1, 1, samples]) crops, or model inputs when the DataLoader
            workers made them (``features_on=item``: pass no ``input_transform``); y: long [B] labels, or
            float [B, K] multi-hot targets.
        input_transform: the run's input transform (data.features: augmentation in train mode,
            normalisation, and the layout's shaping, e.g. MelImage's resize to 3 channels), run without
            gradients.
    Returns:
        (x, the model input, e.g. float [B, 3, H, W] in channels_last when the runtime uses it; y as given),
        on the device.
    """
    x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
    if input_transform is not None:
        with torch.no_grad():
            x = input_transform(x)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def mixup(x, y, alpha: float):
    """Mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]`` with lam ~ Beta(alpha, alpha); the task's
    loss blends the targets y_a = y and y_b = y[perm] with the same lam (class ids or multi-hot rows).
    Returns (x, y_a, y_b, lam); identity when ``alpha`` is 0."""
    if alpha <= 0 or len(y) < 2:
        return x, y, y, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)  # the original label stays dominant, so train/acc stays meaningful
    perm = torch.randperm(len(y), device=y.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def train_step(model, optimizer, scaler, x, y_a, y_b, lam: float, runtime: Runtime, label_smoothing: float = 0.0,
               ema=None, task: Task | None = None):
    """One optimisation step on a (mixed-up) batch: :func:`backward` then :func:`optimizer_step`, then the
    EMA of the weights (``ema``: experiment/ema.py, or None) takes the new weights in.

    Args: x float [B, C, H, W] on the device; y_a, y_b long [B] (or multi-hot float [B, K] for the multilabel
    ``task``). Returns (logits [B, K], loss scalar), not synced.
    """
    optimizer.zero_grad(set_to_none=True)
    logits, loss = backward(model, scaler, x, y_a, y_b, lam, runtime, label_smoothing=label_smoothing, task=task)
    optimizer_step(optimizer, scaler)
    if ema is not None:
        ema.update_parameters(model)
    return logits, loss


def backward(model, scaler, x, y_a, y_b, lam: float, runtime: Runtime, loss_scale: float = 1.0,
             label_smoothing: float = 0.0, task: Task | None = None):
    """Forward (autocast when the runtime has an AMP dtype), the ``task``'s mixup loss (experiment/tasks.py;
    default single_label: ``lam * CE(y_a) + (1 - lam) * CE(y_b)`` with ``label_smoothing``, Szegedy et al. 2016:
    the target puts that much mass uniformly on all classes; multilabel: BCE with logits on the blended
    multi-hot targets), and backward of ``loss * loss_scale`` through ``scaler``: the gradients add to those
    already in the parameters (gradient accumulation passes ``loss_scale = 1 / micro-batches``).

    Args: x float [B, C, H, W] on the device; y_a, y_b long [B] or float [B, K]. Returns (logits [B, K], the
    unscaled loss), not synced.
    """
    task = task or TASKS["single_label"]
    with autocast(runtime.device, runtime.amp_dtype):
        logits = model(x)
        loss = task.loss(logits, y_a, y_b, lam, label_smoothing)
    scaler.scale(loss * loss_scale).backward()
    return logits, loss


def optimizer_step(optimizer, scaler) -> None:
    """Step the optimiser on the accumulated gradients through ``scaler`` (once per optimiser step, however many
    micro-batches), update the loss scale, and clear the gradients."""
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class EpochTotals:
    """Running totals of one rank's training epoch: what train/loss, train/acc, clips/s and
    data/skipped_clips come from. A mid-epoch checkpoint holds them as a dict (key ``accum``)."""
    loss_sum: float = 0.0  # sum of the step losses
    batches: int = 0  # steps trained
    correct: int = 0  # clips the task's training score counts right (top-1 is their unmixed label, or one of them)
    seen: int = 0  # clips trained on
    skipped: int = 0  # unreadable clips left out of batches
    seconds: float = 0.0  # wall time of the epoch, evaluation included
    train_seconds: float = 0.0  # wall time of its training steps


class PendingSteps:
    """Per-step loss and correct count (``task.hits``: top-1 right, or among the labels) left on the device
    until :meth:`read` (every ``sync_every`` steps), so that the host does not wait for the device after every
    step."""

    def __init__(self, sync_every: int, task: Task | None = None):
        self.sync_every, self.steps, self.task = sync_every, [], task or TASKS["single_label"]

    def add(self, step: int, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        """Queue step ``step``: logits [B, K], loss scalar, targets y long [B] or float [B, K] (on the device)."""
        self.steps.append((step, loss.detach().float(), self.task.hits(logits, y), len(y)))

    def due(self) -> bool:
        return len(self.steps) >= self.sync_every

    def read(self, totals: EpochTotals) -> int | None:
        """Add the queued steps to ``totals`` and empty the queue (waits for the device). Returns the first
        queued step whose loss is not finite, or None."""
        bad_step = None
        for step, loss, correct, n in self.steps:
            loss = loss.item()
            if not math.isfinite(loss) and bad_step is None:
                bad_step = step
            totals.loss_sum += loss
            totals.batches += 1
            totals.correct += int(correct)
            totals.seen += n
        self.steps = []
        return bad_step
