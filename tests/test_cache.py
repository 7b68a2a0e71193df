"""The speed features: spectrogram cache (hits, misses, invalidation), transforms built once, DataLoader
settings, batched evaluation, per-item CPU features equal to batched features on the device; bench.py runs."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torchaudio.transforms as T
from torch.utils.data import DataLoader

import data.cache
from conftest import make_tree, tiny_overrides, write_wav
from data.cache import FeatureCache
from data.dataset import ClipDataset, EpochSampler, TrackDataset, collate_clips, collate_tracks
from data.features import LogMel, MelImage
from evaluation import predict_tracks
from experiment.checkpoint import load_checkpoint
from models import build_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread, results do not depend on it


def small_logmel(**changes) -> LogMel:
    params = dict(sample_rate=8000, n_fft=256, hop_length=80, n_mels=32) | changes
    return LogMel(**params)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Paths the cache decoded (misses), in order."""
    seen = []
    real = data.cache.load_audio

    def counting(path, sample_rate):
        seen.append(os.fspath(path))
        return real(path, sample_rate)

    monkeypatch.setattr(data.cache, "load_audio", counting)
    return seen


def test_cache_hits_misses_and_invalidation(tmp_path, decodes):
    path = write_wav(tmp_path / "a.wav", seconds=1.0, kind="tone")
    cache = FeatureCache(tmp_path / "cache", small_logmel())

    first = cache.get(str(path))  # miss: decoded, stored
    assert decodes == [str(path)]
    assert first.dtype == np.float32 and first.shape == (32, 1 + 8000 // 80)
    entry = cache.entry(str(path))
    assert entry.is_file() and entry.parent.parent == tmp_path / "cache" / "features"
    np.testing.assert_array_equal(np.load(entry), first)

    again = FeatureCache(tmp_path / "cache", small_logmel()).get(str(path))  # a later run: hit
    assert len(decodes) == 1
    np.testing.assert_array_equal(again, first)

    # the file is replaced by other audio: a new key, recomputed
    write_wav(path, seconds=1.5, kind="chirp")
    assert cache.entry(str(path)) != entry
    changed = cache.get(str(path))
    assert len(decodes) == 2 and changed.shape == (32, 1 + 12000 // 80)

    # same bytes, newer modification time: also recomputed (the key holds size and mtime)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    np.testing.assert_array_equal(cache.get(str(path)), changed)
    assert len(decodes) == 3

    # other feature parameters: another entry beside the first, which still hits
    for other in (small_logmel(n_mels=16), small_logmel(hop_length=160), small_logmel(scale="power")):
        other_cache = FeatureCache(tmp_path / "cache", other)
        assert other_cache.entry(str(path)) != cache.entry(str(path))
        mel = other_cache.get(str(path))
        assert mel.shape == (other.n_mels, other.num_frames(12000))
    assert len(decodes) == 6
    cache.get(str(path))
    assert len(decodes) == 6
    assert len(list((tmp_path / "cache" / "features").rglob("*.npy"))) == 6  # 3 of this setting, 3 others


def test_unreadable_entry_is_recomputed_and_build_reports_bad_files(tmp_path, decodes):
    good = [write_wav(tmp_path / f"{i}.wav", seconds=0.5, seed=i) for i in range(3)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF but not audio")
    cache = FeatureCache(tmp_path / "cache", small_logmel())
    paths = [str(p) for p in good] + [str(bad)]

    entries, errors = cache.build(paths, num_workers=0, show_progress=False)
    assert entries[:3] == [cache.entry(p) for p in paths[:3]] and entries[3] is None
    assert [p for p, _ in errors] == [str(bad)] and "cannot be decoded" in errors[0][1]
    assert decodes == paths  # every file decoded once

    assert cache.build(paths[:3], num_workers=0, show_progress=False) == (entries[:3], [])
    assert len(decodes) == 4  # all hits

    entries[0].write_bytes(entries[0].read_bytes()[:40])  # truncated by a crash of another tool
    expected = cache.compute(paths[0])
    np.testing.assert_array_equal(cache.get(paths[0]), expected)
    np.testing.assert_array_equal(np.load(entries[0]), expected)  # and written back whole
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_no_transform_is_built_per_item_or_per_epoch(tmp_path, monkeypatch, decodes):
    """The tutorial builds a MelSpectrogram in every __getitem__; ours are built once per process."""
    root = make_tree(tmp_path / "audio", per_class=2)
    paths = sorted(str(p) for p in root.rglob("*.wav"))
    labels = [i % 3 for i in range(len(paths))]
    cache = FeatureCache(tmp_path / "cache", small_logmel())
    built = []
    real_init = T.MelSpectrogram.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(T.MelSpectrogram, "__init__", counting_init)
    entries, errors = cache.build(paths, num_workers=0, show_progress=False)  # 6 misses
    assert len(decodes) == 6 and not errors

    clips = ClipDataset(paths, labels, cache, 40, seed=0, entries=entries)
    sampler = EpochSampler(len(clips), seed=0)
    loader = DataLoader(clips, batch_size=4, sampler=sampler, collate_fn=collate_clips)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sum(len(y) for _, y, _ in loader) == 6
    tracks = DataLoader(TrackDataset(paths, labels, cache, 40, 20, entries=entries), batch_size=4,
                        collate_fn=collate_tracks)
    assert sum(len(y) for _, y, _, _, _ in tracks) == 6
    assert built == [] and len(decodes) == 6  # no transform built, nothing decoded again


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", ["db", "power"])
def test_per_item_cpu_features_equal_batched_features_on_the_device(tmp_path, scale, device):
    root = make_tree(tmp_path / "audio", per_class=2, seconds=1.3)
    paths = sorted(str(p) for p in root.rglob("*.wav"))
    logmel = small_logmel(scale=scale)
    cache = FeatureCache(tmp_path / "cache", logmel)
    mean, std = (-40.0, 20.0) if scale == "db" else (0.0, 1.0)
    image = MelImage(32, scale, None, mean, std).eval()
    kw = dict(labels=[0] * len(paths), cache=cache, clip_frames=logmel.seconds_to_frames(0.5), seed=7)

    per_item = ClipDataset(paths, input_transform=image, **kw)  # features_on=item: the image is made in the Dataset
    batched = ClipDataset(paths, **kw)                 # features_on=device: crops, imaged per batch
    keys = [(i, 3) for i in range(len(paths))]
    expected, _, _ = collate_clips([per_item[k] for k in keys])
    crops, _, _ = collate_clips([batched[k] for k in keys])
    with torch.no_grad():
        got = image.to(device)(crops.to(device)).cpu()
    assert expected.shape == got.shape == (len(paths), 3, 32, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_evaluation_runs_whole_batches_of_tracks_and_matches_track_by_track(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=2, seconds=1.2)
    paths = sorted(str(p) for p in root.rglob("*.wav"))
    labels = [i // 2 for i in range(len(paths))]
    cache = FeatureCache(tmp_path / "cache", small_logmel())
    tracks = TrackDataset(paths, labels, cache, window_frames=40, hop_frames=20)
    image = MelImage(32, "db", None, -40.0, 20.0)
    torch.manual_seed(0)
    model = build_model("resnet18", 3, pretrained=False)
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))

    one_batch = predict_tracks(model, image, DataLoader(tracks, batch_size=8, collate_fn=collate_tracks),
                               torch.device("cpu"))
    windows = sum(len(tracks[i][0]) for i in range(len(tracks)))
    assert calls == [windows] and windows > len(tracks)  # one forward for every window of all 6 tracks
    calls.clear()
    by_track = predict_tracks(model, image, DataLoader(tracks, batch_size=1, collate_fn=collate_tracks),
                              torch.device("cpu"))
    assert len(calls) == len(tracks)
    assert one_batch["indices"].tolist() == by_track["indices"].tolist() == list(range(6))
    torch.testing.assert_close(one_batch["logits"], by_track["logits"], rtol=0, atol=1e-4)


def test_loader_settings():
    import train
    cfg = dict(num_workers=-1)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert train.loader_settings(cfg, cpu) == dict(num_workers=0, pin_memory=False, persistent_workers=False)
    auto = min(8, torch.multiprocessing.cpu_count())
    assert train.loader_settings(cfg, cuda) == dict(num_workers=auto, pin_memory=True, persistent_workers=True)
    assert train.loader_settings(dict(num_workers=3), cpu) == dict(num_workers=3, pin_memory=False,
                                                                   persistent_workers=True)


def test_a_worker_process_trains_exactly_as_the_main_process(tmp_path, monkeypatch):
    """train.py with --num_workers=1: every loader gets the worker (kept across epochs) and the run equals
    one that loads in the main process (crops and augmentation come from seeds, not from the process).
    Both runs use the same number of threads: that changes oneDNN's sums in the last bits."""
    import train
    root = make_tree(tmp_path / "audio", per_class=6)
    made = []

    class RecordingLoader(DataLoader):
        def __init__(self, dataset, **kwargs):
            made.append(kwargs)
            super().__init__(dataset, **kwargs)

    monkeypatch.setattr(train, "DataLoader", RecordingLoader)
    runs = {}
    for workers in (0, 1):
        out = tmp_path / f"workers-{workers}"
        train.main(tiny_overrides(out, root, num_workers=workers, num_epochs=1, swanlab_mode="disabled"))
        runs[workers] = out / "runs" / "tiny"
    assert len(made) == 4  # train and val loaders of each run
    for kwargs in made[2:]:
        assert (kwargs["num_workers"], kwargs["persistent_workers"], kwargs["pin_memory"]) == (1, True, False)
        assert kwargs["batch_size"] == 8  # evaluation in batches of tracks, not one by one

    keys = ["train/loss", "train/acc", "val/loss", "val/acc", "train/lr"]
    got, expected = (pd.read_csv(runs[w] / "history.csv")[keys] for w in (1, 0))
    pd.testing.assert_frame_equal(got, expected, rtol=1e-6)
    a, b = (load_checkpoint(runs[w] / "last.pt")["model"] for w in (1, 0))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_bench_measures_every_pipeline_and_ends_with_the_summary_line(tmp_path, capsys):
    import bench
    root = make_tree(tmp_path / "audio", per_class=4)
    rates = bench.main([f"--data_root={root}", f"--cache_dir={tmp_path / 'cache'}", "--resize=32",
                        "--batch_size=4", "--steps=2", "--rounds=2", "--device=cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == (f"summary: data_speedup={rates['data_speedup']:.1f}x "
                       f"step_efficiency={rates['step_efficiency']:.2f} device=cpu")
    assert rates["data_speedup"] == pytest.approx(rates["ours_plain"] / rates["tutorial"])  # same work
    assert all(rates[k] > 0 for k in ("tutorial", "ours", "ours_plain", "model", "full"))
    table = [line for line in out if line.startswith(("(a)", "(b)", "(c)", "    ours"))]
    assert len(table) == 5 and all(line.split()[-1] == str(n) for line, n in zip(table, (16, 64, 64, 8, 8)))


def test_bench_batches_continue_across_blocks_and_epochs():
    from bench import StepKeys
    keys = StepKeys(size=10, seed=3, batch_size=4)
    keys.select(0, 5)
    stream = list(keys)  # 20 keys: all of epoch 0, all of epoch 1
    assert len(stream) == 20 and sorted(i for i, e in stream if e == 0) == list(range(10))
    assert [e for _, e in stream] == [0] * 10 + [1] * 10
    pieces = []
    for first, count in ((0, 2), (2, 1), (3, 2)):
        keys.select(first, count)
        pieces += list(keys)
    assert pieces == stream
