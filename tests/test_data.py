"""Data pipeline: label ids, the tutorial split, dataset items, decoding (resampling, down-mix) and the
MelImage transform (per item == batched; the tutorial's power recipe)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

import train
from augment import SpectrogramAugment
from conftest import make_tree, write_wav
from data import prepare_data
from data.audio import load_audio
from data.cache import FeatureCache
from data.dataset import ClipDataset, TrackDataset, collate_clips, collate_tracks
from data.features import LogMel, MelImage, build_features, window_frames
from data.splits import make_splits
from data.windows import window_starts

SR, N_FFT, HOP, N_MELS = 8000, 256, 80, 32


def data_config(tmp_path, root, **extra) -> dict:
    """train.CONFIG with tiny features, reading ``root`` and writing under ``tmp_path``."""
    return dict(train.CONFIG, data_root=str(root), csv_path=str(tmp_path / "index.csv"),
                cache_dir=str(tmp_path / "cache"), sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS,
                clip_seconds=0.5, eval_hop_seconds=0.25, resize=32) | extra


def prepared(tmp_path, root, label_names=None, **extra):
    """(cfg, logmel, PreparedData) for ``root``."""
    cfg = data_config(tmp_path, root, **extra)
    logmel, _ = build_features(cfg)
    return cfg, logmel, prepare_data(cfg, logmel, label_names=label_names, show_progress=False)


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory):
    """(tmp, cfg, logmel, data): 4 classes x 5 one-second clips, names not in creation order."""
    tmp = tmp_path_factory.mktemp("four")
    root = make_tree(tmp / "audio", classes=("zeta", "Alpha", "mid", "beta"), per_class=5)
    return (tmp, *prepared(tmp, root))


# ---------------------------------------------------------------- labels and splits
def test_label_ids_are_sorted_names_and_the_same_in_every_split(four_classes):
    _, _, _, data = four_classes
    assert data.label_names == ["Alpha", "beta", "mid", "zeta"]
    for part in data.splits.values():
        assert [data.label_names[y] for y in part.y] == list(part.label)
    train_ids = dict(zip(data.splits["train"].label, data.splits["train"].y))
    val_ids = dict(zip(data.splits["val"].label, data.splits["val"].y))
    assert train_ids == val_ids == {"Alpha": 0, "beta": 1, "mid": 2, "zeta": 3}


def test_label_names_from_a_checkpoint_fix_the_ids(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=5, seconds=0.3)
    _, _, data = prepared(tmp_path, root, label_names=["tone", "chirp", "pulses"])
    assert data.label_names == ["tone", "chirp", "pulses"]
    for part in data.splits.values():
        assert dict(zip(part.label, part.y)) == {"tone": 0, "chirp": 1, "pulses": 2}


def tutorial_expected(df: pd.DataFrame, test_size=0.2, seed=42) -> tuple[set, set]:
    """The SwanLab tutorial's split computed independently: per label, sklearn on the sorted files."""
    train_set, val_set = set(), set()
    for label in sorted(set(df.label)):
        files = sorted(df.path[df.label == label])
        a, b = train_test_split(files, test_size=test_size, random_state=seed)
        train_set |= set(a)
        val_set |= set(b)
    return train_set, val_set


def test_tutorial_split_matches_sklearn_per_label_exactly():
    rng = np.random.default_rng(0)
    rows = [(f"/data/{g}/{g}.{i:05d}.wav", g) for g, n in (("rock", 100), ("jazz", 99), ("pop", 13), ("blues", 7))
            for i in range(n)]
    df = pd.DataFrame(rows, columns=["path", "label"]).iloc[rng.permutation(len(rows))]  # any listing order
    parts = make_splits(df, "tutorial", 0.2, 0.1, 42)
    assert set(parts) == {"train", "val"}
    expected_train, expected_val = tutorial_expected(df)
    assert set(parts["train"].path) == expected_train
    assert set(parts["val"].path) == expected_val
    assert parts["val"].label.value_counts().to_dict() == {"rock": 20, "jazz": 20, "pop": 3, "blues": 2}
    for part in parts.values():  # sorted by (label, path)
        assert list(zip(part.label, part.path)) == sorted(zip(part.label, part.path))
    # deterministic, and another seed gives another split
    again = make_splits(df.sample(frac=1, random_state=1), "tutorial", 0.2, 0.1, 42)
    assert again["val"].equals(parts["val"])
    assert set(make_splits(df, "tutorial", 0.2, 0.1, 7)["val"].path) != expected_val


def test_prepare_data_uses_the_tutorial_split(four_classes):
    _, _, _, data = four_classes
    expected_train, expected_val = tutorial_expected(data.index.df)
    assert set(data.splits["train"].path) == expected_train
    assert set(data.splits["val"].path) == expected_val
    assert len(data.splits["train"]) == 16 and len(data.splits["val"]) == 4


# ---------------------------------------------------------------- dataset items
def test_clip_items_shape_dtype_label_and_reproducible_crops(four_classes):
    _, cfg, logmel, data = four_classes
    part = data.splits["train"]
    clip_frames, _ = window_frames(cfg, logmel)
    assert clip_frames == 1 + int(0.5 * SR) // HOP
    ds = ClipDataset(part.path, part.y, data.cache, clip_frames, seed=3, entries=part.entry)
    assert len(ds) == 16
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, N_MELS, clip_frames) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
        assert type(y) is int and y == part.y[i]
    assert torch.equal(ds[(2, 5)][0], ds[(2, 5)][0])  # (index, epoch) fixes the crop
    assert any(not torch.equal(ds[(2, 0)][0], ds[(2, e)][0]) for e in range(1, 6))  # epochs differ
    x, y, skipped = collate_clips([ds[i] for i in range(5)])
    assert x.shape == (5, 1, N_MELS, clip_frames) and y.dtype == torch.long and skipped == []


def test_clip_items_as_images_per_item(four_classes):
    _, cfg, logmel, data = four_classes
    part = data.splits["train"]
    _, image = build_features(cfg, mean=-40.0, std=15.0)
    ds = ClipDataset(part.path, part.y, data.cache, window_frames(cfg, logmel)[0], input_transform=image, entries=part.entry)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])


def test_track_items_cover_the_whole_track(four_classes):
    _, cfg, logmel, data = four_classes
    part = data.splits["val"]
    width, hop = window_frames(cfg, logmel)
    assert hop == 25
    frames = 1 + SR // HOP  # one-second clips
    n = len(window_starts(frames, width, hop))
    assert n == 3
    ds = TrackDataset(part.path, part.y, data.cache, width, hop, entries=part.entry)
    windows, label, index = ds[1]
    assert windows.shape == (n, 1, N_MELS, width) and windows.dtype == torch.float32
    assert type(label) is int and label == part.y[1] and index == 1
    mel = data.cache.get(part.path[1])
    assert mel.shape == (N_MELS, frames)
    assert torch.equal(windows[-1, 0], torch.from_numpy(mel[:, -width:]))  # the last window ends at the end
    w, labels, track_index, indices, skipped = collate_tracks([ds[0], ds[1]])
    assert w.shape == (2 * n, 1, N_MELS, width)
    assert track_index.tolist() == [0] * n + [1] * n and indices.tolist() == [0, 1] and skipped == []


# ---------------------------------------------------------------- decoding
def test_a_44k_file_is_resampled_to_the_configured_rate(tmp_path):
    rate, seconds, freq = 44100, 0.75, 1000.0
    t = np.arange(int(rate * seconds)) / rate
    path = tmp_path / "sine44k.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="FLOAT")
    wave = load_audio(path, SR)
    assert wave.dtype == torch.float32 and wave.shape == (int(SR * seconds),)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert np.fft.rfftfreq(len(wave), 1 / SR)[spectrum.argmax()] == pytest.approx(freq, abs=2)
    assert float(wave[200:-200].abs().max()) == pytest.approx(0.5, abs=0.02)  # amplitude kept
    mel = LogMel(SR, N_FFT, HOP, N_MELS)(wave)
    assert mel.shape == (N_MELS, 1 + int(SR * seconds) // HOP)
    cached = FeatureCache(tmp_path / "cache", LogMel(SR, N_FFT, HOP, N_MELS)).get(str(path))
    assert cached.shape == (N_MELS, 1 + int(SR * seconds) // HOP) and cached.dtype == np.float32
    assert np.allclose(cached, mel.numpy(), atol=1e-4)


def test_stereo_gives_the_spectrogram_of_its_mono_downmix(tmp_path):
    stereo = write_wav(tmp_path / "stereo.wav", 0.5, channels=2, kind="chirp", subtype="FLOAT")
    samples, rate = sf.read(stereo, dtype="float32", always_2d=True)
    assert samples.shape[1] == 2 and not np.allclose(samples[:, 0], samples[:, 1])
    mono = tmp_path / "mono.wav"
    sf.write(mono, samples.mean(axis=1), rate, subtype="FLOAT")
    logmel = LogMel(SR, N_FFT, HOP, N_MELS)
    a, b = logmel(load_audio(stereo, SR)), logmel(load_audio(mono, SR))
    assert a.shape == b.shape == (N_MELS, 1 + 4000 // HOP)
    assert torch.allclose(a, b, atol=1e-4)


# ---------------------------------------------------------------- MelImage
def augmenter() -> SpectrogramAugment:
    """Strong augmentation, to show that eval mode switches it off."""
    return SpectrogramAugment(time_mask=20, freq_mask=10, noise_std=3.0, noise_p=1.0, gain_min=0.5, gain_max=2.0,
                              gain_p=1.0, scale="db")


@pytest.mark.parametrize("scale", ["db", "power"])
def test_mel_image_batched_equals_per_item_in_eval_mode(scale):
    torch.manual_seed(0)
    x = torch.randn(4, 1, N_MELS, 51) * 12 - 40 if scale == "db" else torch.rand(4, 1, N_MELS, 51) ** 4
    image = MelImage(32, scale, augment=augmenter(), mean=-40.0 if scale == "db" else 0.0,
                     std=12.0 if scale == "db" else 1.0).eval()
    batch = image(x)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    items = torch.stack([image(x[i]) for i in range(4)])
    assert items.shape == (4, 3, 32, 32)
    assert torch.allclose(batch, items, atol=1e-4)
    plain = MelImage(32, scale, mean=image.mean, std=image.std)
    assert torch.allclose(batch, plain(x), atol=1e-6)  # eval mode: no augmentation
    image.train()
    assert not torch.allclose(image(x), batch, atol=1e-3)  # training mode does augment


def test_mel_image_normalises_with_the_given_statistics():
    image = MelImage(16, "db", mean=-30.0, std=5.0).eval()
    out = image(torch.full((1, N_MELS, 40), -25.0))
    assert torch.allclose(out, torch.ones(3, 16, 16), atol=1e-5)
    with pytest.raises(ValueError):
        MelImage(16, "db", mean=0.0, std=0.0)


def test_power_recipe_is_the_tutorials_clamped_average_pool():
    x = torch.rand(2, 1, 64, 64) - 0.25  # some negative values, as after noise
    out = MelImage(32, "power").eval()(x)
    expected = F.adaptive_avg_pool2d(x.clamp(min=0), (32, 32)).repeat(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert (out >= 0).all()


def test_power_and_db_logmel_agree(tmp_path):
    wave = load_audio(write_wav(tmp_path / "tone.wav", 0.5, kind="tone"), SR)
    power = LogMel(SR, N_FFT, HOP, N_MELS, scale="power")(wave)
    db = LogMel(SR, N_FFT, HOP, N_MELS, scale="db", top_db=80.0)(wave)
    assert (power >= 0).all() and power.shape == db.shape
    expected = 10 * torch.log10(power.clamp(min=1e-10))
    expected = expected.clamp(min=expected.max() - 80.0)
    assert torch.allclose(db, expected, atol=1e-3)


def test_power_scale_pipeline_end_to_end(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=5, seconds=0.6)
    cfg, logmel, data = prepared(tmp_path, root, scale="power", augment=True, noise_std=0.01, gain_min=0.8,
                                 gain_max=1.2)
    part = data.splits["train"]
    mel = data.cache.get(part.path[0], part.entry[0])
    assert mel.dtype == np.float32 and (mel >= 0).all() and mel.shape == (N_MELS, 1 + int(0.6 * SR) // HOP)
    from augment import build_augment
    _, image = build_features(cfg, augment=build_augment(cfg))
    ds = ClipDataset(part.path, part.y, data.cache, window_frames(cfg, logmel)[0], input_transform=image, entries=part.entry)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all() and (x >= 0).all()
    assert torch.equal(x, ds[0][0])  # the per-item augmentation is reproducible
