"""Datasets over cached whole-track features (spectrograms [n_mels, frames] or waveforms [1, samples]),
a reproducible epoch sampler and the collate functions.

A clip that cannot be read during an epoch (deleted, corrupted since indexing) becomes a
:class:`Skipped` item: the collate functions drop it and report it with the batch, so an epoch never
crashes on one bad file and the loop can count and log what was skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, WeightedRandomSampler

from data.cache import FeatureCache
from data.windows import cut_windows, random_crop


class Skipped(NamedTuple):
    """A clip left out of a batch, with the reason."""
    path: str
    reason: str


def _target(y):
    """A track's target as a dataset item holds it: a class id int, or a multi-hot float32 [K] array."""
    return np.asarray(y, dtype=np.float32) if np.ndim(y) else int(y)


def stack_targets(targets) -> torch.Tensor:
    """Targets of a batch -> long [B] (class ids) or float32 [B, K] (multi-hot rows)."""
    if targets and isinstance(targets[0], np.ndarray):
        return torch.from_numpy(np.stack(targets))
    return torch.tensor(targets)


class _Tracks(Dataset):
    """``labels``: per track a class id, or a multi-hot [K] vector (multi-label tagging)."""

    def __init__(self, paths: list[str], labels: list, cache: FeatureCache, entries: list[Path] | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.cache = list(paths), [_target(y) for y in labels], cache
        self.entries = list(entries) if entries is not None else [None] * len(self.paths)
        self.pad_value = cache.pad_value  # the front end's silence, for tracks shorter than a crop or window

    def __len__(self):
        return len(self.paths)

    def load(self, index: int) -> np.ndarray | Skipped:
        """The whole-track spectrogram float32 [n_mels, frames], or Skipped."""
        try:
            return self.cache.get(self.paths[index], self.entries[index])
        except Exception as err:
            return Skipped(self.paths[index], str(err))


class ClipDataset(_Tracks):
    """Training items: a random ``clip_frames``-frame crop of each track.

    ``dataset[(index, epoch)]`` (what :class:`EpochSampler` yields) draws the crop, the speed copy and the
    augmentation of ``input_transform`` when given, from ``(seed, epoch, index)``: identical for any number of
    workers and on resume. ``dataset[index]`` means epoch 0.

    Speed perturbation: with ``speed_copies`` ({factor: cache entries of the tracks played at that speed, or
    None}, from ``FeatureCache.build_speed_copies``), a crop comes with probability ``speed_p`` from one of those
    copies (each factor equally likely; the original when that copy failed to decode), else from the original.

    Returns ``(x, label)``: x float32 [1, n_mels, clip_frames], or the model input (e.g. [3, H, W]) when
    ``input_transform`` (e.g. a MelImage, applied per item on the CPU) is given; label int (or float32 [K]
    multi-hot). A clip that cannot be read returns :class:`Skipped`.
    """

    def __init__(self, paths, labels, cache, clip_frames: int, seed: int = 0, input_transform=None, entries=None,
                 speed_copies: dict | None = None, speed_p: float = 0.0):
        super().__init__(paths, labels, cache, entries)
        self.clip_frames, self.seed, self.input_transform = int(clip_frames), int(seed), input_transform
        self.speed_copies = dict(speed_copies or {})
        self.speed_factors, self.speed_p = sorted(self.speed_copies), float(speed_p) if speed_copies else 0.0

    def load_copy(self, index: int, rng: np.random.Generator) -> np.ndarray | Skipped:
        """The track, or with probability ``speed_p`` one of its speed copies (draws from ``rng`` only then)."""
        if self.speed_p and rng.random() < self.speed_p:
            factor = self.speed_factors[int(rng.integers(len(self.speed_factors)))]
            entry = self.speed_copies[factor][index]
            if entry is not None:
                try:
                    return self.cache.get(self.paths[index], entry, factor)
                except Exception:  # the copy became unreadable: the original is still a valid crop
                    pass
        return self.load(index)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        mel = self.load_copy(index, rng)
        if isinstance(mel, Skipped):
            return mel
        x = torch.from_numpy(np.ascontiguousarray(random_crop(mel, self.clip_frames, rng, self.pad_value)))[None]
        if self.input_transform is not None:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(int(rng.integers(2 ** 62)))
                x = self.input_transform(x)
        return x, self.labels[index]


class TrackDataset(_Tracks):
    """Evaluation items: every ``window_frames`` window of a track, ``hop_frames`` apart, covering it all.

    Returns ``(windows, label, index)``: windows float32 [N, 1, n_mels, window_frames], or Skipped.
    """

    def __init__(self, paths, labels, cache, window_frames: int, hop_frames: int, entries=None):
        super().__init__(paths, labels, cache, entries)
        self.window_frames, self.hop_frames = int(window_frames), int(hop_frames)

    def __getitem__(self, index):
        mel = self.load(index)
        if isinstance(mel, Skipped):
            return mel
        return cut_windows(mel, self.window_frames, self.hop_frames, self.pad_value), self.labels[index], index


def class_balance_weights(labels) -> list[float]:
    """Sampling weight of each clip for a class-balanced epoch (the weights of ``WeightedRandomSampler``).

    Class ids [N]: 1 / (clips of its class), so every class is drawn equally often. Multi-hot rows [N, K]: the
    PSLA weight (Gong, Chung & Glass 2021, "PSLA: Improving Audio Tagging with Pretraining, Sampling, Labeling,
    and Aggregation", section III-B; AST's AudioSet recipe): the sum over the clip's labels of 1 / (clips
    carrying that label), so clips of rare labels are drawn about as often as clips of common ones; a clip
    without labels gets the smallest weight of a labelled one (it is still drawn, rarely)."""
    labels = list(labels)
    if len(labels) and np.ndim(labels[0]):
        hot = np.stack([np.asarray(y, dtype=np.float64) for y in labels]) > 0
        weights = (hot / np.maximum(hot.sum(0), 1)).sum(1)
        floor = weights[weights > 0].min() if (weights > 0).any() else 1.0
        return np.where(weights > 0, weights, floor).tolist()
    labels = np.asarray(labels)
    counts = {y: int((labels == y).sum()) for y in np.unique(labels)}
    return [1.0 / counts[y] for y in labels]


class EpochSampler(Sampler):
    """Shuffled order of one epoch, sharded across ranks (torch's DistributedSampler with ``seed + epoch``;
    one rank when not distributed), yielded as ``(index, epoch)`` keys for :class:`ClipDataset`.

    With ``weights`` (e.g. :func:`class_balance_weights`) an epoch is instead as many draws with replacement
    from torch's ``WeightedRandomSampler`` (generator seeded with ``seed + epoch``), dealt out to the ranks in
    turn: a class-balanced epoch of the same length.

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` items, which is how a run
    resumed mid-epoch continues with exactly the batches it had not seen.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, weights=None):
        self.base = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        """This rank's indices of the current epoch."""
        if self.weights is None:
            return list(self.base)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = list(WeightedRandomSampler(self.weights, len(self.base) * self.world_size, replacement=True,
                                           generator=generator))
        return drawn[self.rank::self.world_size]

    def __iter__(self):
        for i, index in enumerate(self.order()):
            if i >= self.start:
                yield index, self.epoch

    def __len__(self):
        return max(len(self.base) - self.start, 0)


def collate_clips(batch):
    """-> (x [B, ...], labels long [B] or multi-hot float32 [B, K], skipped list). B may be 0 when every clip
    was skipped."""
    skipped = [b for b in batch if isinstance(b, Skipped)]
    good = [b for b in batch if not isinstance(b, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in good]), stack_targets([y for _, y in good]), skipped


def collate_tracks(batch):
    """-> (windows [N, 1, n_mels, W], labels long [B] or multi-hot float32 [B, K], track_index long [N] in
    0..B-1, dataset indices long [B], skipped list)."""
    skipped = [b for b in batch if isinstance(b, Skipped)]
    good = [b for b in batch if not isinstance(b, Skipped)]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0), empty, empty, empty, skipped
    windows = torch.cat([w for w, _, _ in good])
    track_index = torch.cat([torch.full((len(w),), i, dtype=torch.long) for i, (w, _, _) in enumerate(good)])
    labels = stack_targets([y for _, y, _ in good])
    indices = torch.tensor([i for _, _, i in good])
    return windows, labels, track_index, indices, skipped
