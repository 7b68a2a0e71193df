"""Label mapping and train/val/test splits, always by track (a file is one track).

* ``tutorial``: per label, ``train_test_split(test_size=val_size, random_state=split_seed)`` -> train/val.
  This is the SwanLab tutorial's split (0.2, 42), with files sorted instead of in ``os.listdir`` order
  (which differs between file systems), so results are comparable with its 71.5% / 87.5%.
* ``stratified``: stratified train/val/test with ``val_size`` and ``test_size``.
* ``fault_filtered``: the artist-filtered, fault-filtered GTZAN split of Kereliuk, Sturm & Larsen (2015),
  443/197/290 tracks, as shipped by ``torchaudio.datasets.gtzan`` (the standard protocol in MIR papers).
"""
from __future__ import annotations

import os
import warnings

import pandas as pd
from sklearn.model_selection import train_test_split

from data.index import DataError

# The parts each split makes: evaluate.py checks a requested part before loading any audio.
PARTS = {"tutorial": ("train", "val"), "stratified": ("train", "val", "test"),
         "fault_filtered": ("train", "val", "test")}
SPLITS = tuple(PARTS)


def label_names(labels) -> list[str]:
    """Sorted class names; the id of a class is its position. One mapping for every split, saved in checkpoints."""
    return sorted(set(labels))


def _check_classes(df: pd.DataFrame, minimum: int, what: str) -> None:
    counts = df.label.value_counts()
    if len(counts) < 2:
        raise DataError(f"only one class ({', '.join(counts.index)}) in the data: a classifier needs at least two "
                        "label folders. Add another <label>/ folder with audio files.")
    small = counts[counts < minimum]
    if len(small):
        raise DataError(f"{what} needs at least {minimum} clips per class, but "
                        + ", ".join(f"'{k}' has {v}" for k, v in small.items())
                        + ". Add clips to those classes or remove their folders.")


def split_tutorial(df: pd.DataFrame, val_size: float = 0.2, split_seed: int = 42) -> dict[str, pd.DataFrame]:
    """Per-label ``train_test_split(test_size=val_size, random_state=split_seed)`` on sorted files."""
    _check_classes(df, 2, "the tutorial split")
    train, val = [], []
    for label in label_names(df.label):
        part = df[df.label == label].sort_values("path")
        a, b = train_test_split(part, test_size=val_size, random_state=split_seed)
        train.append(a)
        val.append(b)
    return {"train": pd.concat(train), "val": pd.concat(val)}


def split_stratified(df: pd.DataFrame, val_size: float = 0.1, test_size: float = 0.1,
                     split_seed: int = 42) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test; ``val_size`` and ``test_size`` are fractions of all tracks.

    Raises DataError for sizes outside (0, 1), fewer than 3 tracks in a class, or a held-out part smaller
    than the number of classes."""
    if not (0 < val_size < 1 and 0 < test_size < 1 and val_size + test_size < 1):
        raise DataError(f"val_size={val_size} and test_size={test_size} must be in (0, 1) with a sum below 1")
    _check_classes(df, 3, "the stratified split")
    df = df.sort_values(["label", "path"])
    try:
        rest, test = train_test_split(df, test_size=test_size, stratify=df.label, random_state=split_seed)
        train, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=rest.label,
                                      random_state=split_seed)
    except ValueError as err:  # e.g. fewer held-out tracks than classes
        raise DataError(f"split=stratified with val_size={val_size}, test_size={test_size} on {len(df)} tracks: "
                        f"{err}. Val and test each need at least one track per class: raise --val_size/--test_size "
                        "or add data.") from None
    return {"train": train, "val": val, "test": test}


def gtzan_id(path: str) -> str:
    """``.../jazz/jazz.00054.wav`` -> ``jazz.00054`` (the ids of the published GTZAN split lists)."""
    return os.path.splitext(os.path.basename(path))[0]


def split_fault_filtered(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The fault-filtered GTZAN split (443/197/290) from ``torchaudio.datasets.gtzan``.

    Ids missing from the data (or skipped as unreadable, like the Kaggle copy's ``jazz.00054``) are dropped
    with one warning. Raises DataError when the data is not GTZAN (no id matches).
    """
    from torchaudio.datasets import gtzan

    lists = {"train": gtzan.filtered_train, "val": gtzan.filtered_valid, "test": gtzan.filtered_test}
    ids = df.path.map(gtzan_id)
    if ids.duplicated().any():
        raise DataError("split=fault_filtered: several files share a GTZAN id (e.g. "
                        f"{ids[ids.duplicated()].iloc[0]}); index one copy of GTZAN only")
    by_id = df.assign(id=ids).set_index("id")
    out, missing = {}, []
    for name, wanted in lists.items():
        present = [i for i in wanted if i in by_id.index]
        missing += [i for i in wanted if i not in by_id.index]
        out[name] = by_id.loc[present].reset_index(drop=True)
    if all(part.empty for part in out.values()):
        raise DataError("split=fault_filtered needs GTZAN files named like blues.00029.wav; none were found. "
                        "Use split=tutorial or split=stratified for other data.")
    if missing:
        warnings.warn(f"fault_filtered split: {len(missing)} listed track(s) missing or unreadable and dropped: "
                      + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""), stacklevel=2)
    return out


def make_splits(df: pd.DataFrame, split: str, val_size: float = 0.2, test_size: float = 0.1,
                split_seed: int = 42) -> dict[str, pd.DataFrame]:
    """Dispatch on ``split``; every returned part is non-empty, disjoint and sorted by (label, path).

    Raises:
        DataError: unknown split name, too few clips per class, an empty part, or a class absent from train.
    """
    if split == "tutorial":
        parts = split_tutorial(df, val_size, split_seed)
    elif split == "stratified":
        parts = split_stratified(df, val_size, test_size, split_seed)
    elif split == "fault_filtered":
        parts = split_fault_filtered(df)
    else:
        raise DataError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    for name, part in parts.items():
        if part.empty:
            raise DataError(f"the {name} split is empty; use more data or other split sizes")
    missing = set(df.label) - set(parts["train"].label)
    if missing:
        raise DataError(f"class(es) {sorted(missing)} have no training clip in split={split}")
    return {k: v.sort_values(["label", "path"]).reset_index(drop=True) for k, v in parts.items()}
