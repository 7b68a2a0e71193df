"""Fuzz (hypothesis, bounded): random bytes and valid headers with garbage bodies, fed to the index builder,
the training Dataset and the Classifier behind predict.py. Only clean per-file errors, never a crash or hang."""
from __future__ import annotations

import io
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_tree
from data.audio import AudioError
from data.cache import FeatureCache
from data.dataset import ClipDataset, Skipped
from data.features import LogMel
from data.index import DataError, build_index

FUZZ = settings(max_examples=25, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def wav_header(body: bytes, channels: int, rate: int, bits: int, fmt: int) -> bytes:
    """A RIFF/WAVE header that claims ``body`` is ``channels`` x ``bits``-bit audio in format ``fmt``."""
    block = max(channels * bits // 8, 1)
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block) % 2**32, block, bits)
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt_chunk
            + b"data" + struct.pack("<I", len(body)) + body)


def container_header(body: bytes, fmt: str) -> bytes:
    """The first bytes of a real FLAC/OGG/MP3 file followed by ``body``."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, dtype=np.float32), 8000, format=fmt)
    return buf.getvalue()[:64] + body


random_files = st.one_of(
    st.binary(min_size=0, max_size=4096),
    st.builds(wav_header, st.binary(max_size=4096), st.integers(0, 12), st.sampled_from([0, 1, 8000, 44100, 2**31]),
              st.sampled_from([0, 3, 8, 16, 24, 32, 64]), st.sampled_from([1, 3, 6, 7, 0xFFFE, 0x55])),
    st.builds(container_header, st.binary(max_size=4096), st.sampled_from(["FLAC", "OGG", "MP3"])),
)

LOGMEL = LogMel(sample_rate=8000, n_fft=256, hop_length=80, n_mels=32)


@pytest.fixture(scope="module")
def good_tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("fuzz") / "audio", classes=("a", "b"), per_class=2)


def check_dataset(path: Path, cache_dir: Path) -> None:
    """The Dataset gives a finite item or a Skipped naming the file, nothing else."""
    item = ClipDataset([str(path)], [0], FeatureCache(cache_dir, LOGMEL), clip_frames=20)[0]
    if isinstance(item, Skipped):
        assert item.path == str(path) and item.reason
    else:
        x, y = item
        assert x.shape == (1, 32, 20) and np.isfinite(x.numpy()).all() and y == 0


@FUZZ
@given(data=random_files, ext=st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".au"]))
def test_index_builder_and_dataset_survive_random_files(good_tree, data, ext):
    with tempfile.TemporaryDirectory() as tmp:
        bad = good_tree / "a" / f"fuzz{ext}"
        bad.write_bytes(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                index = build_index(good_tree, Path(tmp) / "index.csv", show_progress=False)
            listed = str(bad) in set(index.df.path)
            assert listed or any(str(bad) in str(w.message) for w in caught)  # kept, or skipped by name
            assert len(index.df) >= 4
            check_dataset(bad, Path(tmp) / "cache")
        finally:
            bad.unlink()


@pytest.fixture(scope="module")
def classifier(trained_run):
    from evaluation.classifier import Classifier
    return Classifier.from_checkpoint(trained_run[0]["run_dir"], device="cpu")


@FUZZ
@given(data=random_files, ext=st.sampled_from([".wav", ".flac", ".mp3"]))
def test_predict_classifier_survives_random_files(classifier, data, ext):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{ext}"
        path.write_bytes(data)
        try:
            top = classifier.predict(path, top_k=2, min_seconds=0.5)
        except AudioError as err:
            assert str(path) in str(err)
        else:
            assert len(top) == 2 and all(np.isfinite(p) and 0 <= p <= 1 for _, p in top)


def test_data_error_is_the_only_index_failure_for_an_all_garbage_tree(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.wav").write_bytes(b"RIFF\x00\x00")
    with pytest.raises(DataError, match="none of the 2 audio files could be decoded"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_index(tmp_path, tmp_path / "index.csv", show_progress=False)
