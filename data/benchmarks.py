"""Readers of the standard benchmarks' own metadata: point ``--data_root`` at an unpacked download and it works.

Each :data:`BENCHMARKS` entry names the metadata file that identifies the benchmark under the data root and
turns it into an index (``data.index``): absolute ``path``, ``label`` (``;``-joined for several labels) and
the protocol's columns (``fold``: predefined cross-validation folds; ``split``: a predefined train/val/test;
``group``: recordings that must stay on one side when val is drawn). Adding a benchmark is one entry.

* ``esc50`` (Piczak 2015; github.com/karolpiczak/ESC-50): ``meta/esc50.csv`` with columns filename, fold,
  target, category, esc10, src_file, take; audio in ``audio/<filename>``. label = category, fold = fold
  (5 folds), group = src_file (the clips cut from one Freesound recording; the authors keep them in one
  fold). Protocol: 5-fold cross-validation on the predefined folds, mean accuracy (``--folds=5``).
* ``urbansound8k`` (Salamon, Jacoby & Bello 2014): ``metadata/UrbanSound8K.csv`` with columns
  slice_file_name, fsID, start, end, salience, fold, classID, class; audio in ``audio/fold<fold>/``.
  label = class, fold = fold (10 folds, which its authors say never to reshuffle: slices of one recording
  would leak across folds), group = fsID (the Freesound recording). Protocol: 10-fold, mean accuracy.
* ``fsd50k`` (Fonseca et al. 2022): ``FSD50K.ground_truth/dev.csv`` (fname, labels, mids, split) and
  ``eval.csv`` (fname, labels, mids); audio in ``FSD50K.dev_audio/<fname>.wav`` and
  ``FSD50K.eval_audio/<fname>.wav``. labels = the comma-separated ``labels`` joined with ``;`` (multi-label,
  200 classes), split = dev's train/val and ``test`` for eval. Protocol: choose on val, report mAP on eval
  (``--split=predefined``).

Rows whose audio file is missing or unreadable are dropped with one warning (as a folder scan does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from data.index import Index, DataError, read_index, write_index
from data.labels import SEPARATOR


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """The metadata CSV as text columns. Raises DataError naming the file when it is unreadable or lacks
    one of ``columns``."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except Exception as err:
        raise DataError(f"{path}: cannot be read as CSV ({type(err).__name__}: {err})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing the column(s) {missing} of this benchmark's metadata (has "
                        f"{list(df.columns)}). Is the download complete and unmodified?")
    return df


def read_esc50(root: Path) -> pd.DataFrame:
    """ESC-50's ``meta/esc50.csv`` -> path, label (category), group (src_file), fold."""
    meta = _read_csv(root / "meta" / "esc50.csv", ("filename", "fold", "category", "src_file"))
    return pd.DataFrame({"path": [str(root / "audio" / f) for f in meta.filename], "label": meta.category.values,
                         "group": meta.src_file.values, "fold": meta.fold.str.strip().values}, dtype=object)


def read_urbansound8k(root: Path) -> pd.DataFrame:
    """UrbanSound8K's ``metadata/UrbanSound8K.csv`` -> path (audio/fold<k>/), label (class), group (fsID), fold."""
    meta = _read_csv(root / "metadata" / "UrbanSound8K.csv", ("slice_file_name", "fsID", "fold", "class"))
    folds = meta.fold.str.strip()
    return pd.DataFrame({"path": [str(root / "audio" / f"fold{k}" / f) for k, f in zip(folds, meta.slice_file_name)],
                         "label": meta["class"].values, "group": meta.fsID.values, "fold": folds.values}, dtype=object)


def read_fsd50k(root: Path) -> pd.DataFrame:
    """FSD50K's ``FSD50K.ground_truth/{dev,eval}.csv`` -> path, label (``;``-joined), split (train/val/test)."""
    truth = root / "FSD50K.ground_truth"
    dev = _read_csv(truth / "dev.csv", ("fname", "labels", "split"))
    evaluation = _read_csv(truth / "eval.csv", ("fname", "labels"))
    bad = sorted(set(dev.split.str.strip()) - {"train", "val"})
    if bad:
        raise DataError(f"{truth / 'dev.csv'}: the split column holds {bad}; FSD50K's dev set has train and val only")
    parts = []
    for meta, folder, split in ((dev, "FSD50K.dev_audio", dev.split.str.strip().values),
                                (evaluation, "FSD50K.eval_audio", "test")):
        parts.append(pd.DataFrame({
            "path": [str(root / folder / f"{name}.wav") for name in meta.fname],
            "label": [SEPARATOR.join(x.strip() for x in cell.split(",") if x.strip()) for cell in meta.labels],
            "split": split}, dtype=object))
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``metadata`` (path under the data root that identifies it), ``read(root)`` -> DataFrame of
    absolute path, label and its protocol columns, and ``protocol`` (one line for messages and the README)."""
    metadata: str
    read: Callable[[Path], pd.DataFrame]
    protocol: str


BENCHMARKS = {
    "esc50": Benchmark("meta/esc50.csv", read_esc50, "5 predefined folds (--folds=5), mean top-1 over folds"),
    "urbansound8k": Benchmark("metadata/UrbanSound8K.csv", read_urbansound8k,
                              "10 predefined folds (--folds=10), never reshuffled, mean top-1 over folds"),
    "fsd50k": Benchmark("FSD50K.ground_truth/dev.csv", read_fsd50k,
                        "predefined dev train/val and eval as test (--split=predefined), mAP on eval"),
}


def find_benchmark(root: Path) -> str | None:
    """The :data:`BENCHMARKS` name whose metadata file exists under ``root``, or None."""
    return next((name for name, b in BENCHMARKS.items() if (Path(root) / b.metadata).is_file()), None)


def load_benchmark_index(root: Path, csv_path: Path, rebuild: bool = False, show_progress: bool = True
                         ) -> Index | None:
    """The index of a benchmark download at ``root``; None when ``root`` is no benchmark (:func:`find_benchmark`).

    Reuses ``csv_path`` when it is newer than the metadata and every row lies under ``root`` (``rebuild``:
    never); else reads the metadata, probes every file once and writes ``csv_path``
    (:func:`data.index.write_index`). Raises DataError for unreadable metadata or no usable audio file.
    """
    root, csv_path = Path(root).resolve(), Path(csv_path).resolve()
    name = find_benchmark(root)
    if name is None:
        return None
    bench = BENCHMARKS[name]
    if csv_path.exists() and not rebuild and csv_path.stat().st_mtime >= (root / bench.metadata).stat().st_mtime:
        try:
            index = read_index(csv_path)
        except DataError as err:
            print(f"Rebuilding the index: {err}")
        else:
            if all(p.startswith(str(root) + os.sep) for p in index.df.path):
                print(f"Using index {csv_path} ({len(index.df)} clips of {name}; --rebuild_index=True rereads "
                      f"{root / bench.metadata})")
                return index
    print(f"{root}: {name} ({bench.protocol}); indexing from {bench.metadata}")
    return write_index(bench.read(root), csv_path, root, show_progress)
