"""Splits (tutorial, stratified, fault_filtered) are by track, disjoint, deterministic and the right size;
evaluation windows cover whole tracks; window logits are averaged per track."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torchaudio.datasets import gtzan

from conftest import write_wav
from data.index import DataError, build_index
from data.splits import PARTS, make_splits
from data.windows import average_logits, cut_windows, window_starts


def labelled(counts: dict[str, int]) -> pd.DataFrame:
    """An index with ``counts[label]`` tracks per label, rows in a scrambled order."""
    rows = [(f"/data/{label}/{label}.{i:05d}.wav", label) for label, n in counts.items() for i in range(n)]
    df = pd.DataFrame(rows, columns=["path", "label"])
    return df.sample(frac=1.0, random_state=7).reset_index(drop=True)


def assert_disjoint(parts: dict[str, pd.DataFrame], df: pd.DataFrame) -> None:
    seen = [set(p.path) for p in parts.values()]
    for i in range(len(seen)):
        for j in range(i + 1, len(seen)):
            assert not seen[i] & seen[j], "a track is in two sets"
    assert set().union(*seen) <= set(df.path)


def test_stratified_sizes_disjoint_and_per_class():
    df = labelled({"a": 20, "b": 20, "c": 20, "d": 20})  # 80 tracks
    parts = make_splits(df, "stratified", val_size=0.2, test_size=0.1, split_seed=3)
    assert set(parts) == set(PARTS["stratified"]) == {"train", "val", "test"}
    # scikit-learn rounds the held-out part up: test ceil(0.1 * 80) = 8, val ceil(0.2 / 0.9 * 72) = 16
    assert {k: len(v) for k, v in parts.items()} == {"train": 56, "val": 16, "test": 8}
    assert_disjoint(parts, df)
    assert sum(len(p) for p in parts.values()) == len(df)  # every track used once
    assert parts["test"].label.value_counts().to_dict() == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert parts["val"].label.value_counts().to_dict() == {"a": 4, "b": 4, "c": 4, "d": 4}


@pytest.mark.parametrize("split", ["tutorial", "stratified"])
def test_same_seed_same_split_whatever_the_row_order(split):
    df = labelled({"a": 15, "b": 12, "c": 9})
    first = make_splits(df, split, val_size=0.2, test_size=0.2, split_seed=42)
    again = make_splits(df.sample(frac=1.0, random_state=1), split, val_size=0.2, test_size=0.2, split_seed=42)
    other = make_splits(df, split, val_size=0.2, test_size=0.2, split_seed=43)
    assert set(first) == set(PARTS[split])
    for name in first:
        assert list(first[name].path) == list(again[name].path)
    assert any(set(first[n].path) != set(other[n].path) for n in first)
    assert_disjoint(first, df)


def test_tutorial_split_is_per_label_80_20():
    df = labelled({"a": 10, "b": 7, "c": 5})
    parts = make_splits(df, "tutorial", val_size=0.2, split_seed=42)
    assert parts["val"].label.value_counts().to_dict() == {"a": 2, "b": 2, "c": 1}  # ceil(0.2 * n)
    assert len(parts["train"]) + len(parts["val"]) == len(df)
    assert_disjoint(parts, df)


def test_split_errors_are_data_errors():
    with pytest.raises(DataError, match="unknown"):
        make_splits(labelled({"a": 5, "b": 5}), "random")
    with pytest.raises(DataError, match="at least 3 clips per class"):
        make_splits(labelled({"a": 5, "b": 2}), "stratified")
    ten_classes = labelled({c: 5 for c in "abcdefghij"})  # test_size 0.1 of 50 tracks: 5 < 10 classes
    with pytest.raises(DataError, match="at least one track per class: raise --val_size/--test_size"):
        make_splits(ten_classes, "stratified", val_size=0.2, test_size=0.1)
    assert len(make_splits(ten_classes, "stratified", val_size=0.2, test_size=0.2)["test"]) == 10


def test_fault_filtered_split_keeps_present_ids_and_warns_about_missing(tmp_path):
    lists = {"train": gtzan.filtered_train, "val": gtzan.filtered_valid, "test": gtzan.filtered_test}
    assert [len(v) for v in lists.values()] == [443, 197, 290]
    pick = {name: [i for i in ids if i.startswith("blues.")][:n] + [i for i in ids if i.startswith("jazz.")][:n]
            for (name, ids), n in zip(lists.items(), (3, 2, 2))}  # 6 train, 4 val, 4 test ids
    root = tmp_path / "genres_original"
    for ids in pick.values():
        for gid in ids:
            write_wav(root / gid.split(".")[0] / f"{gid}.wav", seconds=0.2, seed=hash(gid) % 1000)
    corrupt = pick["train"][0]  # listed, but unreadable: dropped while indexing, then missing from the split
    (root / corrupt.split(".")[0] / f"{corrupt}.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    listed = set().union(*lists.values())
    unlisted = next(f"jazz.{n:05d}" for n in range(100) if f"jazz.{n:05d}" not in listed)  # filtered out: ignored
    write_wav(root / "jazz" / f"{unlisted}.wav", seconds=0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(root, tmp_path / "index.csv", show_progress=False)
        parts = make_splits(index.df, "fault_filtered")
    present = {name: [i for i in ids if i != corrupt] for name, ids in pick.items()}
    assert {k: len(v) for k, v in parts.items()} == {k: len(v) for k, v in present.items()} == {
        "train": 5, "val": 4, "test": 4}
    for name, part in parts.items():
        assert sorted(part.path.map(lambda p: p.rsplit("/", 1)[1][:-4])) == sorted(present[name])
    assert_disjoint(parts, index.df)
    missing = 930 - sum(len(v) for v in present.values())
    message = next(str(w.message) for w in caught if str(w.message).startswith("fault_filtered split:"))
    assert f"{missing} listed track(s) missing or unreadable" in message
    assert corrupt in message  # the first listed id that is absent is named
    assert unlisted in set(index.df.path.map(lambda p: p.rsplit("/", 1)[1][:-4]))
    assert unlisted not in set(pd.concat(parts.values()).path.map(lambda p: p.rsplit("/", 1)[1][:-4]))


def test_fault_filtered_split_of_non_gtzan_data_is_a_clear_error():
    with pytest.raises(DataError, match="named like blues.00029.wav"):
        make_splits(labelled({"a": 5, "b": 5}), "fault_filtered")


@pytest.mark.parametrize("frames,width,hop", [(100, 10, 5), (101, 10, 5), (431, 431, 215), (7752, 431, 215),
                                              (37, 8, 3), (40, 8, 8), (9, 10, 4), (1, 10, 10)])
def test_windows_cover_every_frame(frames, width, hop):
    starts = window_starts(frames, width, hop)
    mel = np.arange(frames, dtype=np.float32)[None].repeat(4, 0)  # [n_mels=4, frames], value = frame index
    windows = cut_windows(mel, width, hop)
    assert windows.shape == (len(starts), 1, 4, width) and windows.dtype == torch.float32
    if frames <= width:
        assert starts == [0]
    else:
        assert starts[0] == 0 and starts[-1] == frames - width
        assert all(0 < b - a <= hop for a, b in zip(starts, starts[1:]))
        assert len(starts) == math.ceil((frames - width) / hop) + 1
    covered = np.zeros(frames, bool)
    for s in starts:
        covered[s:s + width] = True
    assert covered.all()
    seen = set(windows[:, 0, 0].flatten().tolist())
    assert seen >= set(range(frames))  # every frame's value appears in some window


def test_a_hop_wider_than_the_window_samples_sparsely_but_keeps_both_ends():
    assert window_starts(50, 10, 100) == [0, 40]
    assert window_starts(100, 10, 30) == [0, 30, 60, 90]


def test_short_track_is_padded_to_one_centred_window():
    mel = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)  # 3 frames, window 8
    windows = cut_windows(mel, 8, 4)
    assert windows.shape == (1, 1, 2, 8)
    expected = [[1, 1, 1, 2, 3, 1, 1, 1], [1, 1, 4, 5, 6, 1, 1, 1]]  # padded with the minimum, centred
    np.testing.assert_array_equal(windows[0, 0].numpy(), np.array(expected, np.float32))


def test_average_logits_by_hand():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, -10.0], [0.0, 4.0], [2.0, 2.0]])
    track_index = torch.tensor([0, 0, 1, 2, 2])
    out = average_logits(logits, track_index, 3)
    assert out.dtype == torch.float32 and out.shape == (3, 2)
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.0], [10.0, -10.0], [1.0, 3.0]]))
    assert average_logits(logits[:1], torch.tensor([1]), 2)[0].tolist() == [0.0, 0.0]  # a track with no window


def test_windows_of_a_real_length_recording_match_the_features():
    """The window count of a 3-minute 22.05 kHz recording with the default 10 s / 5 s settings."""
    from data.features import LogMel
    logmel = LogMel(22050, 2048, 512, 128)
    width = logmel.seconds_to_frames(10.0)
    frames = logmel.num_frames(180 * 22050)
    assert (width, frames) == (431, 7752)
    assert len(window_starts(frames, width, round(5 * 22050 / 512))) == 36  # 35 on the grid + 1 for the tail
