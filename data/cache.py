"""On-disk cache of whole-track spectrograms: decode + resample + LogMel once per file, reuse every epoch
and every later run.

An entry is ``<cache_dir>/features/<aa>/<sha1>.npy`` (float32 [n_mels, frames]). The key hashes the file's
absolute path, size and modification time with every LogMel parameter (sample_rate, n_fft, hop_length,
n_mels, f_min, f_max, scale, top_db), so editing a file or a feature setting misses the cache, and two
settings never share an entry. Entries are written atomically (temp file + ``os.replace``), so workers or
ranks that race on one entry, or a killed process, never leave a torn file. Stale entries are never read;
``rm -r <cache_dir>`` reclaims their space.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.audio import AudioError, load_audio
from data.features import LogMel

CACHE_VERSION = 1


class FeatureCache:
    """Whole-track spectrograms keyed by (file, size, mtime, LogMel parameters).

    Args:
        cache_dir: folder for entries (created on demand).
        logmel: the CPU LogMel that computes missing entries.
    """

    def __init__(self, cache_dir, logmel: LogMel):
        self.dir = Path(cache_dir) / "features"
        self.logmel = logmel.cpu().eval()
        self.params = logmel.params()

    def entry(self, path: str) -> Path:
        """Cache file for ``path``. Raises AudioError when ``path`` does not exist."""
        try:
            st = os.stat(path)
        except OSError:
            raise AudioError(path, "file not found", "check the path, or rebuild the index with --rebuild_index=True") from None
        blob = json.dumps([CACHE_VERSION, os.path.abspath(path), st.st_size, st.st_mtime_ns, self.params])
        key = hashlib.sha1(blob.encode("utf-8", "surrogateescape")).hexdigest()
        return self.dir / key[:2] / f"{key}.npy"

    def compute(self, path: str) -> np.ndarray:
        """LogMel of the whole decoded, mono, resampled file: float32 [n_mels, frames]. Raises AudioError."""
        with torch.no_grad():
            return self.logmel(load_audio(path, self.params["sample_rate"])).numpy()

    def get(self, path: str, entry: Path | None = None) -> np.ndarray:
        """The cached spectrogram of ``path``, computed and stored on a miss (or an unreadable entry).

        Raises:
            AudioError: the audio file is missing or cannot be decoded.
        """
        entry = entry or self.entry(path)
        try:
            return np.load(entry)
        except Exception:  # missing, truncated or foreign file: recompute
            pass
        mel = self.compute(path)
        self._save(entry, mel)
        return mel

    def _save(self, entry: Path, mel: np.ndarray) -> None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, mel)
            os.replace(tmp, entry)
        except OSError as err:  # a full or read-only disk costs speed, not the run
            print(f"warning: could not write the feature cache entry {entry} ({err}); computing on the fly")

    def build(self, paths: list[str], num_workers: int = 0, show_progress: bool = True,
              desc: str = "Computing spectrograms") -> tuple[list[Path | None], list[tuple[str, str]]]:
        """Make sure every file has an entry, computing misses in ``num_workers`` processes with a progress bar.

        Returns:
            (entries, errors): ``entries[i]`` is the cache file of ``paths[i]`` or None when it failed;
            ``errors`` lists (path, reason) for the failures (unreadable, empty, too short audio).
        """
        entries: list[Path | None] = [None] * len(paths)
        errors = []
        loader = DataLoader(_BuildItems(self, paths), batch_size=None, num_workers=num_workers)
        with tqdm(total=len(paths), desc=desc, unit="clip", disable=not show_progress, leave=False) as bar:
            for i, entry, error in loader:
                entries[i] = entry
                if error:
                    errors.append((paths[i], error))
                bar.update()
        return entries, errors


class _BuildItems(Dataset):
    """Items for FeatureCache.build: (index, entry or None, error message or None)."""

    def __init__(self, cache: FeatureCache, paths: list[str]):
        self.cache, self.paths = cache, paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            entry = self.cache.entry(path)
            if not entry.exists():
                self.cache.get(path, entry)
            return i, entry, None
        except AudioError as err:
            return i, None, err.reason
        except Exception as err:  # anything else libsndfile/torch raise on hostile input
            return i, None, f"{type(err).__name__}: {err}"
