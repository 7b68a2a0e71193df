"""Shared fixtures: tiny synthetic audio trees, fast training overrides, and readers for what a run leaves.

Everything is offline and small (8 kHz, half-second crops, 32x32 images, ``pretrained=False``) so the
whole suite stays within a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (full measurements, e.g. torch.compile of the demo)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a full measurement, minutes on a CPU; runs only with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: a full measurement; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
sys.path.insert(0, str(ROOT))

from data.demo import _clip  # noqa: E402

GTZAN_MINI = ROOT.parent / "shared" / "gtzan-mini" / "genres_original"
TINY_CLASSES = ("chirp", "pulses", "tone")


def write_wav(path, seconds: float = 1.0, sample_rate: int = 8000, channels: int = 1, kind: str = "tone",
              seed: int = 0, subtype: str | None = None, format: str | None = None) -> Path:
    """A synthetic clip of one of the demo classes (chirp, hum, pulses, tone) written with soundfile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _clip(kind, np.random.default_rng(seed), sample_rate, seconds)
    if channels > 1:
        x = np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)
    sf.write(path, x, sample_rate, subtype=subtype, format=format)
    return path


def make_tree(root, classes=TINY_CLASSES, per_class: int = 6, seconds: float = 1.0, sample_rate: int = 8000) -> Path:
    """``root/<class>/<class>_NN.wav``: a learnable labelled tree. A class named like a demo kind (chirp,
    hum, pulses, tone) gets that sound; other names get the kinds in turn."""
    root = Path(root)
    kinds = ("chirp", "pulses", "tone", "hum")
    for n, c in enumerate(classes):
        kind = c if c in kinds else kinds[n % len(kinds)]
        for i in range(per_class):
            write_wav(root / c / f"{c}_{i:02d}.wav", seconds, sample_rate, kind=kind, seed=1000 * n + i)
    return root


def tiny_overrides(tmp_path, data_root, **extra) -> list[str]:
    """Command-line overrides for a run that takes seconds on a CPU; everything written under tmp_path."""
    tmp_path = Path(tmp_path)
    cfg = dict(data_root=data_root, csv_path=tmp_path / "index.csv", cache_dir=tmp_path / "cache",
               out_dir=tmp_path / "runs", swanlab_mode="local", swanlab_logdir=tmp_path / "swanlog",
               sample_rate=8000, n_fft=256, hop_length=80, n_mels=32, clip_seconds=0.5, eval_hop_seconds=0.25,
               resize=32, pretrained=False, batch_size=8, learning_rate=1e-3, num_epochs=2, warmup_epochs=0,
               lr_step_size=0, num_workers=0, time_mask=5, freq_mask=4, experiment_name="tiny")
    cfg.update(extra)
    return [f"--{k}={v}" for k, v in cfg.items()]


def swanlab_metrics(log_dir) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """What SwanLab's local mode wrote: {experiment name: {key: [(step, value), ...]}}.

    Reads ``<log_dir>/runs.swanlab`` (SQLite: experiment and tag tables map keys to folders) and the
    JSON-lines files ``<log_dir>/<run>/logs/<folder>/*.log``.
    """
    log_dir = Path(log_dir)
    db = sqlite3.connect(log_dir / "runs.swanlab")
    try:
        experiments = db.execute("select id, run_id, name from experiment").fetchall()
        out = {}
        for exp_id, run_id, name in experiments:
            keys = {}
            for key, folder, kind in db.execute("select name, folder, type from tag where experiment_id=?", (exp_id,)):
                if kind != "line":
                    continue
                rows = []
                for log in sorted((log_dir / run_id / "logs" / folder).glob("*.log")):
                    rows += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
                keys[key] = [(r["index"], r["data"]) for r in rows]
            out[name] = keys
        return out
    finally:
        db.close()


class FullDiskFile:
    """A file opened for writing on a disk with ``free`` bytes left: what fits is written, then ``write``
    raises OSError(ENOSPC) as a full disk does (the partial file stays behind for the caller to clean up)."""

    def __init__(self, f, free: int):
        self.f, self.free = f, free

    def write(self, b) -> int:
        if len(b) > self.free:
            self.f.write(bytes(b)[:self.free])
            self.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.free -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def full_disk_open(free: int, after: int = 0):
    """A replacement for ``open`` in a module under test: the first ``after`` files open normally, later
    ones are written to a disk with ``free`` bytes left (:class:`FullDiskFile`). ``.opened`` counts the calls."""
    def fake_open(path, mode="r", *args, **kwargs):
        fake_open.opened += 1
        f = open(path, mode, *args, **kwargs)
        return f if fake_open.opened <= after or "w" not in mode else FullDiskFile(f, free)
    fake_open.opened = 0
    return fake_open


@pytest.fixture
def tiny_tree(tmp_path):
    """3 learnable classes x 6 one-second 8 kHz mono WAVs."""
    return make_tree(tmp_path / "audio")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny 2-epoch run shared by tests that only read its outputs: (summary dict, tmp folder)."""
    import train
    tmp = tmp_path_factory.mktemp("trained")
    root = make_tree(tmp / "audio", per_class=8)
    summary = train.main(tiny_overrides(tmp, root))
    return summary, tmp


@pytest.fixture
def one_thread():
    """torch on one intra-op thread during the test (restored after): on 2 shared cores more threads only
    oversubscribe, which makes small CPU models several times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
