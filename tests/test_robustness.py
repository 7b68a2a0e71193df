"""Bad inputs: every kind of broken or unusual file gets the right reaction and a message naming the file."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from conftest import make_tree, tiny_overrides, write_wav
from data import DataError, prepare_data
from data.audio import AudioError, load_audio
from data.features import LogMel
from data.index import build_index, read_index
from data.windows import random_crop

SR = 8000


def logmel():
    return LogMel(sample_rate=SR, n_fft=256, hop_length=80, n_mels=32)


def data_cfg(tmp_path, root, **extra):
    cfg = dict(data_root=str(root), csv_path=str(tmp_path / "index.csv"), rebuild_index=True, split="tutorial",
               val_size=0.2, test_size=0.1, split_seed=42, cache_dir=str(tmp_path / "cache"))
    return cfg | extra


# ---------------------------------------------------------------- files that cannot be used as audio
def corrupt_truncated(path):
    write_wav(path, 1.0)
    data = path.read_bytes()
    path.write_bytes(data[:30])  # a header cut in the middle


def corrupt_zero(path):
    path.write_bytes(b"")


def corrupt_text(path):
    path.write_text("this is not audio\n" * 20)


def corrupt_image(path):
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(path, format="png")
    plt.close(fig)


def corrupt_garbage_body(path):
    write_wav(path, 1.0)
    data = bytearray(path.read_bytes())
    data[44:] = np.random.default_rng(0).integers(0, 256, len(data) - 44, dtype=np.uint8).tobytes()
    data[20:22] = b"\x07\x00"  # format tag 7 (mu-law) with a 16-bit sample size: inconsistent header
    path.write_bytes(bytes(data))


UNUSABLE = {"truncated": corrupt_truncated, "zero_bytes": corrupt_zero, "text_as_wav": corrupt_text,
            "png_as_wav": corrupt_image}


@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_unusable_file_is_skipped_while_indexing_and_named(tmp_path, kind):
    root = make_tree(tmp_path / "audio", classes=("a", "b"), per_class=3)
    bad = root / "a" / f"bad_{kind}.wav"
    UNUSABLE[kind](bad)
    with pytest.warns(UserWarning, match="skipped 1 unusable") as record:
        index = build_index(root, tmp_path / "index.csv", show_progress=False)
    assert str(bad) in str(record[0].message)
    assert len(index.df) == 6 and str(bad) not in set(index.df.path)
    assert index.skipped[0][0] == str(bad)
    with pytest.raises(AudioError, match=f"bad_{kind}.wav"):
        load_audio(bad, SR)


def test_clip_that_breaks_during_an_epoch_is_skipped_and_counted(tmp_path, monkeypatch):
    """A clip whose cached spectrogram and source both vanish mid-run: the epoch goes on, the log counts it."""
    import train
    from conftest import swanlab_metrics
    root = make_tree(tmp_path / "audio", per_class=6)
    victim = []

    class BrokenCache:  # the real cache, except that the first training clip asked for can no longer be read
        def __init__(self, cache):
            self.cache = cache

        def get(self, path, entry=None):
            victim[:] = victim or [path]
            if path == victim[0]:
                raise AudioError(path, "file not found", "check the path")
            return self.cache.get(path, entry)

    class BrokenClips(train.ClipDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cache = BrokenCache(self.cache)

    monkeypatch.setattr(train, "ClipDataset", BrokenClips)
    train.main(tiny_overrides(tmp_path, root, num_epochs=1))
    history = pd.read_csv(tmp_path / "runs" / "tiny" / "history.csv")
    assert history["data/skipped_clips"].tolist() == [1]
    assert swanlab_metrics(tmp_path / "swanlog")["tiny"]["data/skipped_clips"] == [(1, 1)]


# ---------------------------------------------------------------- unusual but valid audio
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_bit_depths_decode_to_the_same_signal(tmp_path, subtype):
    ref = write_wav(tmp_path / "ref.wav", 0.5, subtype="FLOAT")
    path = write_wav(tmp_path / f"{subtype}.wav", 0.5, subtype=subtype)
    x, y = load_audio(ref, SR), load_audio(path, SR)
    assert x.shape == y.shape == (SR // 2,) and y.dtype == torch.float32
    assert float((x - y).abs().max()) < (0.02 if subtype == "PCM_U8" else 1e-3)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000])
def test_any_sample_rate_is_resampled(tmp_path, rate):
    path = write_wav(tmp_path / f"{rate}.wav", 0.5, sample_rate=rate, subtype="PCM_24")
    x = load_audio(path, 22050)
    assert abs(len(x) - 11025) <= 1 and torch.isfinite(x).all()  # 0.5 s at 11025 Hz is 5512 frames


@pytest.mark.parametrize("channels", [1, 2, 6, 8])
def test_any_channel_count_is_down_mixed(tmp_path, channels):
    path = write_wav(tmp_path / f"{channels}ch.wav", 0.5, channels=channels)
    samples, _ = sf.read(path, dtype="float32", always_2d=True)
    x = load_audio(path, SR)
    assert x.shape == (SR // 2,)
    np.testing.assert_allclose(x.numpy(), samples.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("ext,fmt", [("flac", "FLAC"), ("ogg", "OGG"), ("mp3", "MP3"), ("au", "AU")])
def test_compressed_and_other_containers(tmp_path, ext, fmt):
    path = write_wav(tmp_path / f"clip.{ext}", 1.0, sample_rate=16000, format=fmt)
    x = load_audio(path, SR)
    assert abs(len(x) - SR) <= 0.1 * SR  # mp3 adds encoder padding
    assert x.abs().max() > 0.05 and torch.isfinite(x).all()


def test_silent_clip_gives_finite_log_mel(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR)
    mel = logmel()(load_audio(path, SR))
    assert mel.shape[0] == 32 and torch.isfinite(mel).all()


def test_clip_shorter_than_the_crop_is_padded():
    mel = np.random.default_rng(0).standard_normal((32, 7)).astype(np.float32)
    crop = random_crop(mel, 20, np.random.default_rng(1))
    assert crop.shape == (32, 20)
    assert np.isfinite(crop).all()


def test_too_short_file_is_rejected_with_its_length(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, np.ones(10, dtype=np.float32) * 0.1, SR)
    with pytest.raises(AudioError, match=r"blip.wav: is only 0.001 s long"):
        load_audio(path, SR)


# ---------------------------------------------------------------- index / CSV problems
def test_csv_row_pointing_to_a_missing_file_is_dropped_with_a_warning(tmp_path):
    root = make_tree(tmp_path / "audio", classes=("a", "b"), per_class=2)
    csv = tmp_path / "index.csv"
    build_index(root, csv, show_progress=False)
    (root / "a" / "a_00.wav").unlink()
    with pytest.warns(UserWarning, match="a_00.wav"):
        index = read_index(csv)
    assert len(index.df) == 3


@pytest.mark.parametrize("header", ["file,genre", "path", "label,other"])
def test_csv_with_wrong_columns_names_the_fix(tmp_path, header):
    csv = tmp_path / "index.csv"
    csv.write_text(f"{header}\nx.wav,rock\n")
    with pytest.raises(DataError, match="needs the columns 'path' and 'label'.*--rebuild_index=True"):
        read_index(csv)


def test_label_unknown_to_the_checkpoint(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=3)
    with pytest.raises(DataError, match=r"\['tone'\].*not among the checkpoint's classes"):
        prepare_data(data_cfg(tmp_path, root), logmel(), label_names=["chirp", "pulses"], show_progress=False)


def test_empty_class_folder_is_ignored_with_a_warning(tmp_path):
    root = make_tree(tmp_path / "audio", classes=("a", "b"), per_class=3)
    (root / "empty").mkdir()
    with pytest.warns(UserWarning, match="without audio files ignored: empty"):
        index = build_index(root, tmp_path / "index.csv", show_progress=False)
    assert set(index.df.label) == {"a", "b"}


def test_single_class_stops_before_training(tmp_path):
    root = make_tree(tmp_path / "audio", classes=("only",), per_class=5)
    with pytest.raises(DataError, match=r"only one class \(only\).*Add another <label>/ folder"):
        prepare_data(data_cfg(tmp_path, root), logmel(), show_progress=False)


def test_no_audio_at_all_stops_with_the_expected_layout(tmp_path):
    (tmp_path / "audio" / "a").mkdir(parents=True)
    (tmp_path / "audio" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="Expected layout"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_index(tmp_path / "audio", tmp_path / "index.csv", show_progress=False)


@pytest.mark.skipif(os.name == "nt", reason="POSIX byte file names")
def test_non_utf8_file_names_survive_index_csv_and_cache(tmp_path):
    root = make_tree(tmp_path / "audio", classes=("a", "b"), per_class=3)
    raw = os.path.join(os.fsencode(root / "a"), b"caf\xe9_latin1.wav")  # Latin-1 byte, invalid UTF-8
    os.rename(write_wav(tmp_path / "plain.wav", 1.0, seed=7), raw)
    data = prepare_data(data_cfg(tmp_path, root), logmel(), show_progress=False)
    paths = pd.concat(data.splits.values()).path
    assert os.fsdecode(raw) in set(paths)
    assert len(paths) == 7
    reread = read_index(Path(tmp_path / "index.csv"))
    assert os.fsdecode(raw) in set(reread.df.path)
