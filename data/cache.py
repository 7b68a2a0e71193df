"""On-disk cache of whole-track features: decode + resample + front end once per file, reuse every epoch
and every later run.

An entry is ``<cache_dir>/features/<aa>/<sha1>.npy`` holding the front end's output for the whole track
(``data.frontends``), always float32:

* ``logmel``: [n_mels, frames], dB or power mel (torchaudio MelSpectrogram);
* ``panns_logmel``: [n_mels, frames], PANNs log-mel in dB (Slaney mel, 10*log10, floor -100 dB);
* ``kaldi_fbank``: [n_mels, frames], AST's Kaldi log filter bank (natural log, mean-removed waveform);
* ``waveform``: [1, samples], the decoded, mono, resampled waveform itself.

Speed perturbation (``augment``'s ``speed`` entry) caches whole extra copies of a track played at another
speed (``speed`` 0.9, 1.1, ...): their keys add the factor, so the ordinary entries keep their keys.

The key hashes the file's absolute path, size and modification time with the front end's ``params()``
(its name, sample_rate and every setting that changes its output; ``logmel``'s parameters are the ones
this cache always used, so its old entries stay valid), so editing a file or a feature setting misses the
cache, and two front ends or settings never share an entry. Entries are written atomically (temp file +
``os.replace``), so workers or ranks that race on one entry, or a killed process, never leave a torn file.
Stale entries are never read; ``rm -r <cache_dir>`` reclaims their space.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.audio import AudioError, change_speed, load_audio
from experiment.progress import progress

CACHE_VERSION = 1


class FeatureCache:
    """Whole-track features keyed by (file, size, mtime, front-end parameters).

    Args:
        cache_dir: folder for entries (created on demand).
        logmel: the front end (any of ``data.frontends.FRONTENDS``) that computes missing entries on the CPU;
            also reachable as ``frontend``.
    """

    def __init__(self, cache_dir, logmel: torch.nn.Module):
        self.dir = Path(cache_dir) / "features"
        self.logmel = logmel.cpu().eval()
        self.params = logmel.params()
        self.write_failed = False  # an entry could not be written (a full or read-only disk)

    @property
    def frontend(self) -> torch.nn.Module:
        return self.logmel

    @property
    def pad_value(self) -> float | None:
        """What crops and windows of a track shorter than them are padded with (None: the track's minimum)."""
        return self.logmel.pad_value

    def entry(self, path: str, speed: float = 1.0) -> Path:
        """Cache file for ``path`` (played at ``speed``). Raises AudioError when ``path`` does not exist."""
        try:
            st = os.stat(path)
        except OSError:
            raise AudioError(path, "file not found",
                             "check the path, or rebuild the index with --rebuild_index=True") from None
        key = [CACHE_VERSION, os.path.abspath(path), st.st_size, st.st_mtime_ns, self.params]
        blob = json.dumps(key if speed == 1.0 else key + [dict(speed=float(speed))])
        key = hashlib.sha1(blob.encode("utf-8", "surrogateescape")).hexdigest()
        return self.dir / key[:2] / f"{key}.npy"

    def compute(self, path: str, speed: float = 1.0) -> np.ndarray:
        """Front end of the whole decoded, mono, resampled file (played at ``speed``, data.audio.change_speed):
        float32 [n_mels, frames] ([1, samples] for ``waveform``). Raises AudioError."""
        rate = self.params["sample_rate"]
        with torch.no_grad():
            return self.logmel(change_speed(load_audio(path, rate), rate, speed)).numpy()

    def get(self, path: str, entry: Path | None = None, speed: float = 1.0) -> np.ndarray:
        """The cached features of ``path`` (see :meth:`compute`), computed and stored on a miss (or an
        unreadable entry). ``entry``: its cache file when known (saves a stat).

        Raises:
            AudioError: the audio file is missing or cannot be decoded.
        """
        entry = entry or self.entry(path, speed)
        try:
            return np.load(entry)
        except Exception:  # missing, truncated or foreign file: recompute
            pass
        mel = self.compute(path, speed)
        self._save(entry, mel)
        return mel

    def readable(self, paths, entries, skipped: list):
        """Yield the features of each of ``paths`` (cache files ``entries``, None where unknown) that can still
        be read, in order: a file deleted or corrupted since the cache was built, whose entry is gone or was
        never written (a full disk), is left out and appended to ``skipped`` as (path, reason)."""
        for path, entry in zip(paths, entries):
            try:
                yield self.get(path, entry)
            except Exception as err:  # AudioError, or anything the decoder raises on a damaged file
                skipped.append((path, getattr(err, "reason", f"{type(err).__name__}: {err}")))

    def _save(self, entry: Path, mel: np.ndarray) -> None:
        """Store ``mel`` at ``entry`` atomically. A full or read-only disk costs speed, not the run: the
        entry is left out (its partial temp file removed) and the first failure of this process is reported."""
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp.npy")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp, mel)
            os.replace(tmp, entry)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self.write_failed:
                print(f"warning: could not write the feature cache entry {entry} ({err}); computing features on the "
                      f"fly, which is slower (later failures are not reported). Free space in {self.dir} or set "
                      f"--cache_dir to a disk with room.", flush=True)
            self.write_failed = True

    def build(self, paths: list[str], num_workers: int = 0, show_progress: bool = True,
              desc: str = "Computing spectrograms", speed: float = 1.0
              ) -> tuple[list[Path | None], list[tuple[str, str]]]:
        """Make sure every file has an entry (of the copy played at ``speed``), computing misses in
        ``num_workers`` processes with a progress bar.

        Returns:
            (entries, errors): ``entries[i]`` is the cache file of ``paths[i]`` or None when it failed;
            ``errors`` lists (path, reason) for the failures (unreadable, empty, too short audio).
        """
        entries: list[Path | None] = [None] * len(paths)
        errors = []
        loader = DataLoader(_BuildItems(self, paths, speed), batch_size=None, num_workers=num_workers)
        with progress(total=len(paths), desc=desc, unit="clip", disable=not show_progress, leave=False) as bar:
            for i, entry, error in loader:
                entries[i] = entry
                if error:
                    errors.append((paths[i], error))
                bar.update()
        return entries, errors

    def build_speed_copies(self, paths: list[str], factors, num_workers: int = 0, show_progress: bool = True
                           ) -> dict[float, list[Path | None]]:
        """Entries of every file played at each speed of ``factors`` (the cached copies of speed perturbation),
        built like :meth:`build`: {factor: entries, None where it failed}."""
        return {f: self.build(paths, num_workers, show_progress, f"Speed copies x{f:g}", speed=f)[0]
                for f in factors}


class _BuildItems(Dataset):
    """Items for FeatureCache.build: (index, entry or None, error message or None)."""

    def __init__(self, cache: FeatureCache, paths: list[str], speed: float = 1.0):
        self.cache, self.paths, self.speed = cache, paths, speed

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            entry = self.cache.entry(path, self.speed)
            if not entry.exists():
                self.cache.get(path, entry, self.speed)
            return i, entry, None
        except AudioError as err:
            return i, None, err.reason
        except Exception as err:  # anything else libsndfile/torch raise on hostile input
            return i, None, f"{type(err).__name__}: {err}"
