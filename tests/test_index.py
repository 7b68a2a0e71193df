"""The dataset index (audio_dataset.csv): layouts, relative sorted deterministic paths, unusable files,
reuse versus rebuild, and the real GTZAN clips in ../shared/gtzan-mini."""
from __future__ import annotations

import os
import warnings

import pandas as pd
import pytest

from conftest import GTZAN_MINI, make_tree, write_wav
from data.index import DataError, build_index, find_data_root, load_or_build_index, read_index

GENRES = ("blues", "jazz", "rock")


def gtzan_tree(root, sub: str = "genres_original", ext: str = ".wav", per_genre: int = 3):
    """``root/<sub>/<genre>/<genre>.0000N<ext>`` for three genres, as in the Kaggle or marsyas GTZAN."""
    for g, genre in enumerate(GENRES):
        for i in range(per_genre):
            write_wav(root / sub / genre / f"{genre}.{i:05d}{ext}", 0.3, kind=("tone", "chirp", "pulses")[g],
                      seed=10 * g + i)
    return root


def csv_rows(csv_path) -> pd.DataFrame:
    """The CSV as written on disk (paths not resolved)."""
    return pd.read_csv(csv_path, dtype=str, keep_default_na=False)


def test_kaggle_layout_is_found_and_indexed_with_relative_sorted_paths(tmp_path, monkeypatch):
    gtzan_tree(tmp_path / "GTZAN")
    (tmp_path / "GTZAN" / "images_original" / "blues").mkdir(parents=True)  # Kaggle ships spectrogram PNGs too
    (tmp_path / "GTZAN" / "images_original" / "blues" / "blues00000.png").write_bytes(b"\x89PNG")
    monkeypatch.chdir(tmp_path)
    root = find_data_root("")  # empty data_root means ./GTZAN
    assert root == (tmp_path / "GTZAN" / "genres_original").resolve()
    csv = tmp_path / "meta" / "index.csv"
    index = build_index(root, csv, show_progress=False)

    rows = csv_rows(csv)
    assert list(rows.columns) == ["path", "label"]
    assert len(rows) == 9 and sorted(set(rows.label)) == list(GENRES)
    assert (rows.label.value_counts() == 3).all()
    # relative to the CSV's folder, and they resolve to the real files
    assert not any(os.path.isabs(p) for p in rows.path)
    assert rows.path.iloc[0] == os.path.join("..", "GTZAN", "genres_original", "blues", "blues.00000.wav")
    for p in rows.path:
        assert (csv.parent / p).is_file()
    # sorted by label, then path
    assert list(zip(rows.label, rows.path)) == sorted(zip(rows.label, rows.path))
    # the returned index has absolute paths, identical to what reading the CSV back gives
    assert all(os.path.isabs(p) for p in index.df.path)
    assert index.df.equals(read_index(csv).df)
    assert index.skipped == []


def test_marsyas_layout_with_au_files(tmp_path):
    gtzan_tree(tmp_path / "GTZAN", sub="genres", ext=".au")
    root = find_data_root(tmp_path / "GTZAN")
    assert root == (tmp_path / "GTZAN" / "genres").resolve()
    index = build_index(root, tmp_path / "index.csv", show_progress=False)
    assert len(index.df) == 9
    assert set(index.df.label) == set(GENRES)
    assert all(p.endswith(".au") for p in index.df.path)


def test_genres_original_wins_over_genres(tmp_path):
    gtzan_tree(tmp_path / "GTZAN", sub="genres_original", per_genre=1)
    gtzan_tree(tmp_path / "GTZAN", sub="genres", ext=".au", per_genre=1)
    assert find_data_root(tmp_path / "GTZAN").name == "genres_original"


def test_generic_tree_with_nested_folders_and_hidden_files(tmp_path):
    root = make_tree(tmp_path / "audio", classes=("dog", "cat"), per_class=2, seconds=0.3)
    write_wav(root / "cat" / "more" / "deep.wav", 0.3)  # label folders are scanned recursively
    (root / "cat" / "._cat_00.wav").write_bytes(b"\0\0 macOS resource fork")  # ignored, not even a warning
    (root / "cat" / "notes.txt").write_text("not audio")
    (root / ".hidden_label").mkdir()
    write_wav(root / ".hidden_label" / "x.wav", 0.3)
    assert find_data_root(root) == root.resolve()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(root.resolve(), tmp_path / "index.csv", show_progress=False)
    assert not [str(w.message) for w in caught if "skipped" in str(w.message) or "ignored" in str(w.message)]
    rows = csv_rows(tmp_path / "index.csv")
    assert rows.values.tolist() == [
        [os.path.join("audio", "cat", "cat_00.wav"), "cat"],
        [os.path.join("audio", "cat", "cat_01.wav"), "cat"],
        [os.path.join("audio", "cat", "more", "deep.wav"), "cat"],
        [os.path.join("audio", "dog", "dog_00.wav"), "dog"],
        [os.path.join("audio", "dog", "dog_01.wav"), "dog"],
    ]
    assert len(index.df) == 5


def test_building_twice_gives_identical_bytes_whatever_the_creation_order(tmp_path):
    a = make_tree(tmp_path / "a" / "audio", classes=("x", "y", "z"), per_class=3, seconds=0.3)
    # the same files created in the opposite order (directory listing order may differ)
    b = tmp_path / "b" / "audio"
    for c in ("z", "y", "x"):
        for i in reversed(range(3)):
            (b / c).mkdir(parents=True, exist_ok=True)
            (b / c / f"{c}_{i:02d}.wav").write_bytes((a / c / f"{c}_{i:02d}.wav").read_bytes())
    build_index(a.resolve(), tmp_path / "a" / "one.csv", show_progress=False)
    build_index(a.resolve(), tmp_path / "a" / "two.csv", show_progress=False)
    build_index(b.resolve(), tmp_path / "b" / "one.csv", show_progress=False)
    one = (tmp_path / "a" / "one.csv").read_bytes()
    assert one == (tmp_path / "a" / "two.csv").read_bytes()
    assert one == (tmp_path / "b" / "one.csv").read_bytes()  # relative paths: the folder can move
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp" in p.name]  # atomic write left no temp file


def test_corrupt_and_empty_files_are_skipped_in_one_warning(tmp_path):
    root = make_tree(tmp_path / "audio", per_class=2, seconds=0.3)
    garbage = root / "tone" / "garbage.wav"
    garbage.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"not audio at all " * 12)
    truncated = write_wav(root / "chirp" / "truncated.wav", 0.3)
    truncated.write_bytes(truncated.read_bytes()[:30])  # header cut in the middle
    empty = root / "pulses" / "empty.wav"
    empty.write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(root.resolve(), tmp_path / "index.csv", show_progress=False)
    skipped_warnings = [w for w in caught if "skipped" in str(w.message)]
    assert len(skipped_warnings) == 1, [str(w.message) for w in caught]
    message = str(skipped_warnings[0].message)
    assert "skipped 3 unusable audio file(s)" in message
    for bad in (garbage, truncated, empty):
        assert bad.name in message
    assert "empty file (0 bytes)" in message
    assert sorted(os.path.basename(p) for p, _ in index.skipped) == ["empty.wav", "garbage.wav", "truncated.wav"]
    assert len(index.df) == 6 and len(csv_rows(tmp_path / "index.csv")) == 6
    assert not {"garbage.wav", "truncated.wav", "empty.wav"} & {os.path.basename(p) for p in index.df.path}


def test_existing_csv_is_reused_when_it_matches_and_rebuilt_otherwise(tmp_path, capsys):
    root = make_tree(tmp_path / "audio", per_class=2, seconds=0.3).resolve()
    csv = tmp_path / "index.csv"
    first = load_or_build_index(root, csv, show_progress=False)
    assert len(first.df) == 6
    write_wav(root / "tone" / "tone_99.wav", 0.3)  # a new file: a reused index does not see it
    capsys.readouterr()

    reused = load_or_build_index(root, csv, show_progress=False)
    assert "Using index" in capsys.readouterr().out
    assert len(reused.df) == 6

    rebuilt = load_or_build_index(root, csv, rebuild=True, show_progress=False)
    assert len(rebuilt.df) == 7
    assert any(p.endswith("tone_99.wav") for p in rebuilt.df.path)

    other = make_tree(tmp_path / "other", classes=("a", "b"), per_class=2, seconds=0.3).resolve()
    capsys.readouterr()
    switched = load_or_build_index(other, csv, show_progress=False)
    assert "does not index" in capsys.readouterr().out
    assert sorted(set(switched.df.label)) == ["a", "b"]
    assert all(p.startswith(str(other) + os.sep) for p in switched.df.path)
    assert set(csv_rows(csv).label) == {"a", "b"}


def test_a_broken_csv_is_rebuilt(tmp_path, capsys):
    root = make_tree(tmp_path / "audio", per_class=2, seconds=0.3).resolve()
    csv = tmp_path / "index.csv"
    csv.write_text("file,genre\nx.wav,tone\n")
    index = load_or_build_index(root, csv, show_progress=False)
    assert "Rebuilding the index" in capsys.readouterr().out
    assert len(index.df) == 6
    assert list(csv_rows(csv).columns) == ["path", "label"]


def test_missing_data_root_explains_how_to_get_gtzan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        find_data_root("")
    text = str(err.value)
    assert "GTZAN" in text and "genres_original" in text and "--preset=demo" in text and "--data_root" in text
    with pytest.raises(DataError, match="nowhere"):
        find_data_root(tmp_path / "nowhere")


@pytest.mark.skipif(not GTZAN_MINI.is_dir(), reason="../shared/gtzan-mini is not present")
def test_real_gtzan_mini_gives_50_clips_of_10_genres(tmp_path):
    root = find_data_root(GTZAN_MINI.parent)
    assert root == GTZAN_MINI.resolve()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(root, tmp_path / "index.csv", show_progress=False)
    assert not [str(w.message) for w in caught if "skipped" in str(w.message)]  # all 50 real clips are usable
    assert index.skipped == []
    assert len(index.df) == 50
    assert index.df.label.nunique() == 10
    assert (index.df.label.value_counts() == 5).all()
    assert sorted(set(index.df.label)) == ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal",
                                           "pop", "reggae", "rock"]
    assert os.path.basename(index.df.path.iloc[0]) == "blues.00000.wav"
