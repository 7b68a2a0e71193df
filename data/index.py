"""The dataset index: ``audio_dataset.csv`` with columns ``path,label`` and, optionally, ``group``, ``fold`` and
``split``.

Layouts found under a data root (the first that exists wins):
    <root>/genres_original/<label>/*.wav   (Kaggle GTZAN)
    <root>/genres/<label>/*.au|*.wav       (marsyas GTZAN)
    <root>/<label>/**/<audio>              (any labelled tree; GTZAN's own folders are this too)

Paths are stored relative to the CSV's folder when possible, so a project folder can move.
A ``group`` column (speaker, artist, session; written by the user, never by the scan) is kept when the CSV is
read and makes the splits group-aware (``data.splits``); rebuilding the index rescans the folders and drops it.
A ``fold`` column (predefined cross-validation folds) and a ``split`` column (a predefined train/val/test
split) are kept the same way; the benchmark readers (``data.benchmarks``) write them. A ``label`` cell may hold
several labels separated by ``;`` (multi-label tagging, ``data.labels``).
A ``split`` column is also what ``data.hf_dataset`` writes for a Hugging Face dataset's own splits.
File names that are not valid UTF-8 survive the round trip (written with ``surrogateescape``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf
from experiment.progress import progress

from data.audio import AUDIO_EXTENSIONS, MIN_SECONDS, sf_path

GTZAN_HELP = """\
No dataset found. Either
  * get GTZAN: download the Kaggle dataset "gtzan-dataset-music-genre-classification"
    (https://www.kaggle.com/datasets/andradaolteanu/gtzan-dataset-music-genre-classification) and unzip it
    here so that ./GTZAN/genres_original/<genre>/*.wav exists (the marsyas ./GTZAN/genres/ layout works too);
  * or point at any folder of labelled audio: python train.py --data_root=/path/to/<label>/<audio files>;
  * or at an unpacked benchmark download: python train.py --preset=esc50 --data_root=ESC-50-master (also
    --preset=urbansound8k, --preset=fsd50k; see the README's Benchmarks section);
  * or try the whole pipeline offline on built-in synthetic audio: python train.py --preset=demo"""

ENCODING = dict(encoding="utf-8", errors="surrogateescape")


EXTRA_COLUMNS = ("group", "fold", "split")  # optional index columns kept when a CSV is read


class DataError(Exception):
    """The data cannot be used for training or evaluation; the message says why and how to fix it."""


@dataclass
class Index:
    """A loaded index. ``df`` has columns ``path`` (absolute), ``label`` and those of :data:`EXTRA_COLUMNS`
    the CSV has; ``skipped`` lists (path, reason). ``label_names``: the class names in the data's own order (a
    Hugging Face ``ClassLabel``); None: sorted labels."""
    df: pd.DataFrame
    csv_path: Path
    skipped: list = field(default_factory=list)
    label_names: list[str] | None = None


def find_data_root(data_root: str | os.PathLike | None, default: str = "GTZAN") -> Path:
    """Resolve the folder whose sub-folders are the labels.

    ``data_root`` empty means ``./GTZAN``. Inside it, ``genres_original/`` and ``genres/`` are preferred.
    Raises:
        DataError: nothing usable exists (the message explains how to get GTZAN or run the demo).
    """
    root = Path(data_root or default).expanduser()
    if not root.is_dir():
        if data_root:
            raise DataError(f"--data_root={data_root}: folder not found.\n{GTZAN_HELP}")
        raise DataError(GTZAN_HELP)
    for sub in ("genres_original", "genres"):
        if (root / sub).is_dir():
            return (root / sub).resolve()
    return root.resolve()


def scan(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """List ``(file, label)`` for every audio file under ``root/<label>/`` (recursively), sorted.

    Hidden files (``.``-prefixed, e.g. macOS ``._x.wav``) are ignored. Returns also the names of label
    folders that hold no audio file.
    """
    items, empty = [], []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in label_dir.rglob("*")
                       if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(label_dir).parts))
        if not files:
            empty.append(label_dir.name)
        items.extend((f, label_dir.name) for f in files)
    return items, empty


def probe(path: Path) -> str | None:
    """Read the file's header with soundfile. Returns None when usable, else the reason it is not."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        info = sf.info(sf_path(path))
    except Exception as err:
        return f"cannot be decoded as audio ({type(err).__name__}: {err})"
    if info.frames <= 0 or info.samplerate <= 0:
        return "contains no audio samples"
    if info.frames < MIN_SECONDS * info.samplerate:
        return f"only {info.frames / info.samplerate:.3f} s long"
    return None


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def build_index(data_root: Path, csv_path: Path, show_progress: bool = True) -> Index:
    """Scan ``data_root``, probe every file once, write ``csv_path`` and return the index.

    Unusable files are skipped and listed in one warning (GTZAN's Kaggle copy ships an undecodable
    ``jazz.00054.wav``). Raises DataError when no usable file is found.
    """
    items, empty = scan(data_root)
    if empty:
        warnings.warn(f"{data_root}: label folder(s) without audio files ignored: {', '.join(empty)}", stacklevel=2)
    if not items:
        raise DataError(f"{data_root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in <label>/ sub-folders.\n"
                        f"Expected layout: {data_root}/<label>/<file>.wav\n{GTZAN_HELP}")
    df = pd.DataFrame([(str(p), label) for p, label in items], columns=["path", "label"], dtype=object)
    return write_index(df, csv_path, data_root, show_progress)


def write_index(df: pd.DataFrame, csv_path: Path, data_root: Path, show_progress: bool = True) -> Index:
    """Probe every file of ``df`` (``path`` absolute, ``label``, maybe :data:`EXTRA_COLUMNS`) once, drop the
    unusable ones with one warning, write the rest to ``csv_path`` atomically (paths relative to its folder) and
    return the index. Raises DataError when no file is usable."""
    keep, skipped = [], []
    for i, path in enumerate(progress(df.path, desc=f"Indexing {data_root.name}", unit="file",
                                      disable=not show_progress, leave=False)):
        reason = probe(Path(path))
        if reason:
            skipped.append((str(path), reason))
        else:
            keep.append(i)
    if skipped:
        warn_skipped(skipped, "while indexing")
    if not keep:
        raise DataError(f"{data_root}: none of the {len(df)} audio files could be decoded.")
    csv_path = Path(csv_path).resolve()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    df = df.iloc[keep].reset_index(drop=True).astype(object)  # object: paths may hold surrogate escapes
    out = df.assign(path=pd.Series([_relative(Path(p), csv_path.parent) for p in df.path], dtype=object))
    tmp = csv_path.with_name(f".{csv_path.name}.tmp{os.getpid()}")
    out.to_csv(tmp, index=False, **ENCODING)
    os.replace(tmp, csv_path)
    return Index(df, csv_path, skipped)


def warn_skipped(skipped: list, when: str) -> None:
    """One warning listing every skipped file with its reason."""
    lines = "\n".join(f"  {p}: {r}" for p, r in skipped)
    warnings.warn(f"skipped {len(skipped)} unusable audio file(s) {when}:\n{lines}", stacklevel=3)


def read_index(csv_path: Path) -> Index:
    """Read an index CSV; paths are resolved against the CSV's folder.

    Rows whose file no longer exists are dropped with one warning. The :data:`EXTRA_COLUMNS` (``group``,
    ``fold``, ``split``) are kept; other columns are not.
    Raises:
        DataError: the CSV is unreadable, lacks ``path``/``label`` columns, or lists no existing file.
    """
    csv_path = Path(csv_path).resolve()
    try:
        df = pd.read_csv(csv_path, dtype=object, keep_default_na=False, encoding="utf-8",
                         encoding_errors="surrogateescape")
    except Exception as err:
        raise DataError(f"{csv_path}: cannot be read as CSV ({err}). Delete it or pass --rebuild_index=True.") from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise DataError(f"{csv_path}: needs the columns 'path' and 'label' but has {list(df.columns)} "
                        f"(missing {sorted(missing)}). Fix the header, or pass --rebuild_index=True to regenerate it.")
    df = df[[c for c in ("path", "label", *EXTRA_COLUMNS) if c in df.columns]]
    blank = (df.path.str.strip() == "") | (df.label.str.strip() == "")
    if blank.any():
        warnings.warn(f"{csv_path}: {int(blank.sum())} row(s) with an empty path or label ignored", stacklevel=2)
        df = df[~blank]
    paths = [p if os.path.isabs(p) else os.path.normpath(csv_path.parent / p) for p in df.path]
    columns = {"path": paths, "label": df.label.values} | {c: df[c].values for c in EXTRA_COLUMNS if c in df}
    df = pd.DataFrame(columns, dtype=object)  # pandas 3's Arrow strings reject the surrogate escapes of
    exists = df.path.map(os.path.exists)      # non-UTF-8 file names; object columns keep them
    skipped = [(p, "listed in the CSV but the file does not exist") for p in df.path[~exists]]
    if skipped:
        warn_skipped(skipped, f"listed in {csv_path.name}")
    df = df[exists].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{csv_path}: lists no existing audio file. Pass --rebuild_index=True to rescan the data.")
    return Index(df, csv_path, skipped)


def load_or_build_index(data_root: Path, csv_path: Path, rebuild: bool = False, show_progress: bool = True) -> Index:
    """Reuse ``csv_path`` when it indexes ``data_root``: every row lies under it, and either every label is a
    folder there (a scan of the tree) or none is (a CSV written by hand or a script, whose labels, ``;``-joined
    sets included, are not folders); else (or with ``rebuild``) rescan. Returns the :class:`Index`."""
    csv_path = Path(csv_path).resolve()
    if csv_path.exists() and not rebuild:
        try:
            index = read_index(csv_path)
        except DataError as err:
            print(f"Rebuilding the index: {err}")
        else:
            root = str(data_root) + os.sep
            labels = {p.name for p in data_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            names = {n.strip() for cell in index.df.label for n in cell.split(";")}
            if all(p.startswith(root) for p in index.df.path) and (set(index.df.label) <= labels
                                                                     or not names & labels):
                print(f"Using index {csv_path} ({len(index.df)} clips; --rebuild_index=True rescans {data_root})")
                return index
            print(f"Rebuilding the index: {csv_path} does not index {data_root}")
    return build_index(data_root, csv_path, show_progress)
