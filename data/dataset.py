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
from torch.utils.data import Dataset, DistributedSampler, Sampler

from data.cache import FeatureCache
from data.windows import cut_windows, random_crop


class Skipped(NamedTuple):
    """A clip left out of a batch, with the reason."""
    path: str
    reason: str


class _Tracks(Dataset):
    def __init__(self, paths: list[str], labels: list[int], cache: FeatureCache, entries: list[Path] | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.cache = list(paths), [int(y) for y in labels], cache
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

    ``dataset[(index, epoch)]`` (what :class:`EpochSampler` yields) draws the crop, and the augmentation of
    ``input_transform`` when given, from ``(seed, epoch, index)``: identical for any number of workers and on resume.
    ``dataset[index]`` means epoch 0.

    Returns ``(x, label)``: x float32 [1, n_mels, clip_frames], or the model input (e.g. [3, H, W]) when ``input_transform`` (e.g. a MelImage,
    applied per item on the CPU) is given; label int. A clip that cannot be read returns :class:`Skipped`.
    """

    def __init__(self, paths, labels, cache, clip_frames: int, seed: int = 0, input_transform=None, entries=None):
        super().__init__(paths, labels, cache, entries)
        self.clip_frames, self.seed, self.input_transform = int(clip_frames), int(seed), input_transform

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        mel = self.load(index)
        if isinstance(mel, Skipped):
            return mel
        rng = np.random.default_rng([self.seed, epoch, index])
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


class EpochSampler(Sampler):
    """Shuffled order of one epoch, sharded across ranks (torch's DistributedSampler with ``seed + epoch``;
    one rank when not distributed), yielded as ``(index, epoch)`` keys for :class:`ClipDataset`.

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` items, which is how a run
    resumed mid-epoch continues with exactly the batches it had not seen.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.base = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self):
        for i, index in enumerate(self.base):
            if i >= self.start:
                yield index, self.epoch

    def __len__(self):
        return max(len(self.base) - self.start, 0)


def collate_clips(batch):
    """-> (x [B, ...], labels long [B], skipped list). B may be 0 when every clip was skipped."""
    skipped = [b for b in batch if isinstance(b, Skipped)]
    good = [b for b in batch if not isinstance(b, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), skipped


def collate_tracks(batch):
    """-> (windows [N, 1, n_mels, W], labels long [B], track_index long [N] in 0..B-1,
    dataset indices long [B], skipped list)."""
    skipped = [b for b in batch if isinstance(b, Skipped)]
    good = [b for b in batch if not isinstance(b, Skipped)]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0), empty, empty, empty, skipped
    windows = torch.cat([w for w, _, _ in good])
    track_index = torch.cat([torch.full((len(w),), i, dtype=torch.long) for i, (w, _, _) in enumerate(good)])
    labels = torch.tensor([y for _, y, _ in good])
    indices = torch.tensor([i for _, _, i in good])
    return windows, labels, track_index, indices, skipped
