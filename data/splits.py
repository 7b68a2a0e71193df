r"""Label mapping and train/val/test splits, always by track (a file is one track), and by group when the
data has groups.

Splits (the ``split`` config key; :data:`SPLITS` is the registry, one entry per split):

* ``tutorial``: per label, ``train_test_split(test_size=val_size, random_state=split_seed)`` -> train/val.
  This is the SwanLab tutorial's split (0.2, 42), with files sorted instead of in ``os.listdir`` order
  (which differs between file systems), so results are comparable with its 71.5% / 87.5%.
* ``stratified``: stratified train/val/test with ``val_size`` and ``test_size`` (fractions of all tracks).
* ``unseen_test``: test as ``stratified`` with groups (whole groups, never heard in training); val a stratified
  ``val_size`` of the other groups' tracks, so every other group trains (:func:`split_unseen_test`). For data with
  few groups (FSDD's five speakers), where a validation group would cost a quarter of the training groups.
* ``fault_filtered``: the artist-filtered, fault-filtered GTZAN split of Kereliuk, Sturm & Larsen (2015),
  443/197/290 tracks, as shipped by ``torchaudio.datasets.gtzan`` (the standard protocol in MIR papers).
* ``predefined``: the parts the index's ``split`` column names (``train``, ``val``, ``test``): a Hugging Face
  dataset's own splits (``data.hf_dataset``, the default with ``--hf_dataset``) or a user's CSV column. Without
  ``val`` rows, val is drawn from train (:func:`split_predefined`); without ``test`` rows there is no test part.
* ``all``: every track as one part named ``all`` (``evaluate.py --split=all`` on any labelled folder or CSV);
  it has no training part, so training refuses it.
* ``predefined``: the index's ``split`` column (values train, val, test) says where each track goes, as
  benchmarks publish it (FSD50K: dev's train/val, eval as test; ``data.benchmarks``). Groups are only recorded.
* k-fold cross-validation: ``folds`` = K >= 2 replaces ``split`` (:func:`make_folds`, fold ``fold`` = i in
  0..K-1). Test = fold i of ``StratifiedGroupKFold(K, shuffle=True, random_state=split_seed)``, so the K test
  parts partition the data; val = one fold of a ``StratifiedGroupKFold`` of the rest with about ``val_size`` of
  all tracks (same seed); train = the rest. Without groups each track is its own group.
  Predefined folds: with a ``fold`` column in the index (ESC-50's 5 folds, UrbanSound8K's 10), test is exactly
  the tracks of the i-th fold value (sorted), never reshuffled, and ``folds`` must equal the number of fold
  values; val is drawn from the other folds' tracks as above (group-aware), train is the rest of them.

Multi-label data (``multilabel``, ``data.labels``) is stratified by group-aware iterative stratification
(``data.stratify``, Sechidis et al. 2011) wherever single-label data uses ``StratifiedGroupKFold``: k-fold, and
``stratified``, which then always splits in folds as it does with groups (test one of ``round(1 / test_size)``
folds, val one of ``round((1 - test_size) / val_size)`` folds of the rest). ``tutorial``'s per-label split has no
meaning for several labels per track and refuses multi-label data.

Groups (speaker, artist, session: recordings that must all stay on one side) come from a ``group`` column in
the index CSV or else from ``group_pattern``, a regular expression searched (``re.search``) in each track's path
written with ``/``: the group is the first capture group, or the whole match when the pattern has none. E.g.
FSDD's ``<digit>_<speaker>_<n>.wav``: ``_([a-z]+)_\d+\.wav$``. The column wins over the pattern (a warning says
so). A pattern that matches no path is a DataError; paths it does not match become groups of their own, with
one warning listing them. How each split treats groups (:attr:`SplitKind.groups`):

* ``stratified`` and k-fold ("split"): no group is in two parts. scikit-learn's ``StratifiedGroupKFold`` keeps
  whole groups together and the label mix of each part close to the data's. Sizes are then approximate and in
  whole groups: test is one of ``round(1 / test_size)`` group folds and val one of
  ``round((1 - test_size) / val_size)`` folds of the rest (each at most the number of groups there, at least 2).
* ``unseen_test`` ("test"): test shares no group with train or val; val shares train's groups, so its score is
  optimistic and only chooses the checkpoint (and fits the temperature).
* ``tutorial`` ("reject"): a DataError, since a per-label random split cannot keep groups apart: use
  ``split=stratified`` (or k-fold).
* ``fault_filtered`` ("ignore"): groups are ignored with a warning; the published split is already
  artist-filtered.
* ``predefined`` and ``all`` ("keep"): groups are only recorded (the data's own parts are kept as they are; a
  val part drawn from train keeps whole groups together).

Checks: a class absent from the training part is a DataError. A class absent from val or test (possible with
groups or many folds, since whole groups move) is a warning naming the part and the classes: their per-class
rows are empty and macro-F1 counts them as 0.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from data.index import DataError
from data.labels import label_counts, label_names, multi_hot
from data.stratify import iterative_folds

GROUP = "group"  # the column of a track's group, in the index CSV and in every split DataFrame that has groups
FOLD = "fold"  # the index column of predefined cross-validation folds (ESC-50, UrbanSound8K)
SPLIT = "split"  # the index column of a predefined train/val/test split (FSD50K), for split=predefined
PREDEFINED_PARTS = ("train", "val", "test")


def groups_from_pattern(paths, pattern: str) -> list[str]:
    """The group of each path: ``re.search(pattern, path)`` on the path written with ``/``; its first capture
    group, or the whole match when the pattern has none. A path it does not match is a group of its own.

    Raises:
        DataError: the pattern is not a valid regular expression, or it matches none of the paths.
    Warns about the paths it does not match (each then forms its own group).
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise DataError(f"group_pattern={pattern!r} is not a valid regular expression ({err}).") from None
    groups, unmatched = [], []
    for path in paths:
        match = regex.search(str(path).replace(os.sep, "/"))
        value = (match.group(1) if regex.groups else match.group(0)) if match else None
        if not value:
            unmatched.append(str(path))
        groups.append(value or str(path))
    if unmatched and len(unmatched) == len(groups):
        raise DataError(f"group_pattern={pattern!r} matches none of the {len(groups)} paths (e.g. {unmatched[0]}). "
                        "It is searched (re.search) in each full path written with '/', and its first capture group "
                        r"is the group; e.g. FSDD's <digit>_<speaker>_<n>.wav: '_([a-z]+)_\d+\.wav$'. Fix the "
                        "pattern, or leave it empty for no groups.")
    if unmatched:
        warnings.warn(f"group_pattern={pattern!r} does not match {len(unmatched)} of {len(groups)} path(s); each "
                      "forms a group of its own: " + ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""),
                      stacklevel=2)
    return groups


def sort_tracks(df: pd.DataFrame, by: tuple[str, ...] = ("label", "path")) -> pd.DataFrame:
    """``df`` sorted by the columns ``by`` (Python's string order), with a fresh index. Sorted in Python because
    pandas 3 sorts text columns through Arrow strings, which reject the surrogate escapes that non-UTF-8 file
    names decode to."""
    order = sorted(range(len(df)), key=lambda i: tuple(df[c].iloc[i] for c in by))
    return df.iloc[order].reset_index(drop=True)


def assign_groups(df: pd.DataFrame, pattern: str = "") -> tuple[pd.DataFrame, str]:
    """Give the index ``df`` (``path``, ``label``, maybe ``group``) its ``group`` column.

    A ``group`` column from the index CSV wins over ``pattern`` (a warning says so when both are given); its
    blank cells become groups of their own (one warning). Else ``pattern`` makes the groups
    (:func:`groups_from_pattern`). Returns ``(df, source)``: ``source`` says where the groups came from, ``""``
    (and ``df`` unchanged, without the column) when there are none. Raises DataError as groups_from_pattern.
    """
    if GROUP in df.columns:
        if pattern:
            warnings.warn(f"the index CSV has a '{GROUP}' column: it defines the groups and "
                          f"group_pattern={pattern!r} is ignored", stacklevel=2)
        blank = df[GROUP].fillna("").astype(str).str.strip() == ""
        if blank.any():
            warnings.warn(f"{int(blank.sum())} track(s) with an empty '{GROUP}' cell each form a group of their own "
                          f"(e.g. {df.path[blank].iloc[0]})", stacklevel=2)
        groups = df[GROUP].where(~blank, df.path).astype(str)
        return df.assign(**{GROUP: groups}), f"the '{GROUP}' column of the index CSV"
    if pattern:
        return df.assign(**{GROUP: groups_from_pattern(df.path, pattern)}), f"group_pattern {pattern!r}"
    return df, ""


def _check_classes(df: pd.DataFrame, minimum: int, what: str, multilabel: bool = False) -> None:
    counts = pd.Series(label_counts(df.label, True)) if multilabel else df.label.value_counts()
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
        part = sort_tracks(df[df.label == label], ("path",))
        a, b = train_test_split(part, test_size=val_size, random_state=split_seed)
        train.append(a)
        val.append(b)
    return {"train": pd.concat(train), "val": pd.concat(val)}


def _check_sizes(val_size: float, test_size: float) -> None:
    """Refuse val/test fractions outside (0, 1) or summing to 1 or more (DataError)."""
    if not (0 < val_size < 1 and 0 < test_size < 1 and val_size + test_size < 1):
        raise DataError(f"val_size={val_size} and test_size={test_size} must be in (0, 1) with a sum below 1")


def split_stratified(df: pd.DataFrame, val_size: float = 0.1, test_size: float = 0.1,
                     split_seed: int = 42, multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test; ``val_size`` and ``test_size`` are fractions of all tracks. With a ``group``
    column the parts share no group (:func:`split_stratified_groups`); multi-label data always goes that way
    (each track its own group without a column), stratified by iterative stratification.

    Raises DataError for sizes outside (0, 1), fewer than 3 tracks in a class, or a held-out part smaller
    than the number of classes."""
    _check_sizes(val_size, test_size)
    _check_classes(df, 3, "the stratified split", multilabel)
    df = sort_tracks(df)
    if GROUP in df.columns or multilabel:
        return split_stratified_groups(df.reset_index(drop=True), val_size, test_size, split_seed, multilabel)
    try:
        rest, test = train_test_split(df, test_size=test_size, stratify=df.label, random_state=split_seed)
        train, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=rest.label,
                                      random_state=split_seed)
    except ValueError as err:  # e.g. fewer held-out tracks than classes
        raise DataError(f"split=stratified with val_size={val_size}, test_size={test_size} on {len(df)} tracks: "
                        f"{err}. Val and test each need at least one track per class: raise --val_size/--test_size "
                        "or add data.") from None
    return {"train": train, "val": val, "test": test}


def _track_groups(df: pd.DataFrame) -> pd.Series:
    """The group of each track: its ``group`` column, else its path (each track its own group)."""
    return df[GROUP] if GROUP in df.columns else df.path


def _n_folds(fraction: float, groups: int) -> int:
    """Folds whose one fold holds about ``fraction`` of the tracks: ``round(1 / fraction)`` in [2, groups]."""
    return int(min(max(2, round(1 / fraction)), groups))


def _group_fold(df: pd.DataFrame, n_splits: int, fold: int, split_seed: int, what: str, multilabel: bool = False):
    """``(rest, held_out)``: held_out = fold ``fold`` of ``StratifiedGroupKFold(n_splits, shuffle=True,
    random_state=split_seed)`` over ``df`` (its ``group`` column, else each track its own group), stratified by
    label; for ``multilabel`` label cells, fold ``fold`` of :func:`data.stratify.iterative_folds` (same seed).
    ``df`` must be sorted (label, path) with a fresh index, so the result does not depend on row order."""
    groups = _track_groups(df)
    if multilabel:
        folds = iterative_folds(multi_hot(list(df.label), label_names(df.label, True)), groups, n_splits, split_seed)
        rest, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        return df.iloc[rest].reset_index(drop=True), df.iloc[held].reset_index(drop=True)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=split_seed)
    try:
        rest, held = list(splitter.split(np.zeros(len(df)), df.label, groups))[fold]
    except ValueError as err:  # e.g. more folds than groups, or than tracks of every class
        raise DataError(f"{what}: {err}. Use fewer folds, larger val/test sizes, or more data.") from None
    return df.iloc[rest].reset_index(drop=True), df.iloc[held].reset_index(drop=True)


def split_stratified_groups(df: pd.DataFrame, val_size: float, test_size: float,
                            split_seed: int, multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """Group-aware stratified train/val/test of ``df`` sorted by (label, path), with a ``group`` column (for
    ``multilabel``, without one each track is its own group).

    Test is fold 0 of ``StratifiedGroupKFold(round(1 / test_size))`` (at most one fold per group), val fold 0 of
    ``StratifiedGroupKFold(round((1 - test_size) / val_size))`` over the rest (same ``split_seed``), train the
    rest: no group is in two parts and sizes are in whole groups. ``multilabel``: iterative stratification
    instead of ``StratifiedGroupKFold`` (:func:`_group_fold`). Raises DataError for fewer than 3 groups.
    """
    groups = _track_groups(df)
    n = groups.nunique()
    if n < 3:
        raise DataError(f"split=stratified with groups needs at least 3 groups (one each for train, val and test) "
                        f"but the data has {n}: {', '.join(sorted(groups.unique()))}. Use data with more "
                        "groups, or no groups.")
    what = f"split=stratified with {n} groups"
    rest, test = _group_fold(df, _n_folds(test_size, n), 0, split_seed, what, multilabel)
    rest_groups = _track_groups(rest).nunique()
    train, val = _group_fold(rest, _n_folds(val_size / (1 - test_size), rest_groups), 0, split_seed, what,
                             multilabel)
    return {"train": train, "val": val, "test": test}


def split_unseen_test(df: pd.DataFrame, val_size: float = 0.1, test_size: float = 0.1, split_seed: int = 42,
                      multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """Test = whole groups, fold 0 of ``StratifiedGroupKFold(round(1 / test_size))`` as in
    :func:`split_stratified_groups`; val = fold 0 of ``round((1 - test_size) / val_size)`` label-stratified folds
    of the other groups' *tracks* (each track on its own, same ``split_seed``); train = the rest. Every group but
    the test's trains, and val holds tracks of the training groups: its score is optimistic (heard speakers) and
    serves to choose the checkpoint; test is the honest number. ``multilabel``: iterative stratification.

    Raises DataError for sizes outside (0, 1), fewer than 2 groups, or fewer than 3 tracks in a class."""
    _check_sizes(val_size, test_size)
    _check_classes(df, 3, "split=unseen_test", multilabel)
    df = sort_tracks(df).reset_index(drop=True)
    groups = _track_groups(df)
    n = groups.nunique()
    if n < 2:
        raise DataError(f"split=unseen_test needs at least 2 groups (the test's and the others) but the data has {n}: "
                        "set group_pattern or a group column, or use --split=stratified.")
    what = f"split=unseen_test with {n} groups"
    rest, test = _group_fold(df, _n_folds(test_size, n), 0, split_seed, what, multilabel)
    tracks = rest.drop(columns=GROUP, errors="ignore")  # val by track: every remaining group trains
    train, val = _group_fold(tracks, _n_folds(val_size / (1 - test_size), len(tracks)), 0, split_seed, what,
                             multilabel)
    if GROUP in rest.columns:  # the groups back on the tracks, for the split record
        train, val = (part.merge(rest[["path", GROUP]], on="path", how="left") for part in (train, val))
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

    if GROUP in df.columns:
        warnings.warn("split=fault_filtered ignores the groups: the published split is already artist-filtered",
                      stacklevel=3)
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


def split_predefined(df: pd.DataFrame, val_size: float = 0.2, split_seed: int = 42, multilabel: bool = False
                     ) -> dict[str, pd.DataFrame]:
    """The parts named by the ``split`` column of ``df`` (:data:`PREDEFINED_PARTS`), without that column: a Hugging
    Face dataset's own splits, or FSD50K's protocol (choose on val, report on test).

    Without ``val`` rows, val is fold 0 of ``round(1 / val_size)`` label-stratified folds of the train part
    (``StratifiedGroupKFold``, ``split_seed``; whole groups when ``df`` has them), printed as such; without
    ``test`` rows there is no test part. Rows of other parts are left out with one warning.
    Raises DataError: no ``split`` column, or no ``train`` row.
    """
    if SPLIT not in df.columns:
        raise DataError(f"split=predefined needs a '{SPLIT}' column in the index naming each track's part "
                        f"({', '.join(PREDEFINED_PARTS)}): --hf_dataset writes one, or add it to your CSV. Or "
                        "choose another --split (tutorial, stratified).")
    other = sorted(set(df[SPLIT]) - set(PREDEFINED_PARTS))
    if other:
        warnings.warn(f"split=predefined: {int((~df[SPLIT].isin(PREDEFINED_PARTS)).sum())} track(s) of "
                      f"part(s) {other} left out (parts: {', '.join(PREDEFINED_PARTS)})", stacklevel=3)
    parts = {name: df[df[SPLIT] == name].drop(columns=SPLIT) for name in PREDEFINED_PARTS}
    if parts["train"].empty:
        raise DataError(f"split=predefined: no track is in the train part (the '{SPLIT}' column holds "
                        f"{sorted(set(df[SPLIT]))})")
    if parts["val"].empty:
        train = sort_tracks(parts["train"])
        groups = _track_groups(train).nunique()
        parts["train"], parts["val"] = _group_fold(train, _n_folds(val_size, groups), 0, split_seed,
                                                   "split=predefined (val drawn from train)", multilabel)
        print(f"split=predefined: the data has no val part; val = {len(parts['val'])} of its {len(train)} train "
              f"tracks (val_size={val_size}, split_seed={split_seed})")
    return {name: part for name, part in parts.items() if not part.empty}


@dataclass(frozen=True)
class SplitKind:
    """One entry of :data:`SPLITS`.

    ``parts``: the part names it makes. ``make(df, val_size, test_size, split_seed, multilabel)`` ->
    {part: DataFrame}. ``groups``: how it treats a ``group`` column: "split" (no group in two parts), "test" (no
    group in test and another part), "reject"
    (DataError), "ignore" (warned about by ``make``), "keep" (only recorded). ``multilabel``: whether it takes
    multi-label data.
    """
    parts: tuple[str, ...]
    make: Callable[[pd.DataFrame, float, float, int, bool], dict]
    groups: str
    multilabel: bool = True


SPLITS = {
    "tutorial": SplitKind(("train", "val"), lambda df, val, test, seed, ml: split_tutorial(df, val, seed), "reject",
                          multilabel=False),
    "stratified": SplitKind(("train", "val", "test"), split_stratified, "split"),
    "unseen_test": SplitKind(("train", "val", "test"), split_unseen_test, "test"),
    "fault_filtered": SplitKind(("train", "val", "test"), lambda df, val, test, seed, ml: split_fault_filtered(df),
                                "ignore"),
    "predefined": SplitKind(PREDEFINED_PARTS, lambda df, val, test, seed, ml: split_predefined(df, val, seed, ml),
                            "keep"),
    "all": SplitKind(("all",), lambda df, val, test, seed, ml: {"all": df}, "keep"),
}
# The parts each split makes: evaluate.py checks a requested part before loading any audio.
PARTS = {name: kind.parts for name, kind in SPLITS.items()}


def make_splits(df: pd.DataFrame, split: str, val_size: float = 0.2, test_size: float = 0.1,
                split_seed: int = 42, multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """Dispatch on ``split`` (a :data:`SPLITS` name); a ``group`` column in ``df`` makes the split group-aware
    as the module docstring says; ``multilabel``: the label cells are ``;``-separated sets (``data.labels``).
    Every returned part is non-empty, disjoint and sorted by (label, path).

    Raises:
        DataError: unknown split name, too few clips per class, an empty part, a class absent from train,
        groups with split=tutorial, multi-label data with split=tutorial.
    Warns when a class is absent from val or test.
    """
    kind = SPLITS.get(split)
    if kind is None:
        raise DataError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    if multilabel and not kind.multilabel:
        raise DataError(f"split={split} splits each label on its own and cannot split multi-label tracks (label "
                        "cells with ';'): use --split=stratified (iterative stratification), --split=predefined "
                        "or --folds=K.")
    if kind.groups == "reject" and GROUP in df.columns:
        raise DataError(f"split={split} is a per-label random split and cannot keep the data's groups (its "
                        f"'{GROUP}' column or group_pattern) apart: use --split=stratified, which is group-aware, "
                        "or k-fold cross-validation (--folds=K).")
    return _checked(kind.make(df, val_size, test_size, split_seed, multilabel), df, f"split={split}", multilabel)


def fold_values(df: pd.DataFrame) -> list[str]:
    """The predefined folds of an index with a ``fold`` column: its distinct values, sorted numerically when
    they are all integers (ESC-50's 1..5, UrbanSound8K's 1..10), else as text; [] without the column."""
    if FOLD not in df.columns:
        return []
    values = sorted({str(v).strip() for v in df[FOLD]})
    return sorted(values, key=int) if all(v.lstrip("-").isdigit() for v in values) else values


def make_folds(df: pd.DataFrame, folds: int, fold: int, val_size: float = 0.2,
               split_seed: int = 42, multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """Train/val/test of fold ``fold`` (0..folds-1) of ``folds``-fold cross-validation, group- and
    label-stratified (scikit-learn's ``StratifiedGroupKFold``; iterative stratification for ``multilabel``).

    Test = fold ``fold`` of ``StratifiedGroupKFold(folds, shuffle=True, random_state=split_seed)`` over the
    ``group`` column (each track its own group without one), so the test parts of the ``folds`` folds partition
    the data. With a ``fold`` column (predefined folds, :func:`fold_values`) test is instead exactly the tracks
    of the ``fold``-th fold value, never reshuffled. Val = fold 0 of
    ``StratifiedGroupKFold(round((1 - 1/folds) / val_size))`` over the rest (about ``val_size`` of all tracks,
    same seed): always inside the training folds; train = the rest. No group is in two of train, val and the
    rest. Parts are sorted by (label, path); the result does not depend on the row order of ``df``.

    Raises:
        DataError: ``folds`` < 2, ``fold`` outside 0..folds-1, ``val_size`` outside (0, 1), fewer than 3 tracks
        in a class, fewer groups than ``folds`` (or than 2 left for train and val), a class absent from train,
        a ``fold`` column with another number of values than ``folds``.
    Warns when a class is absent from a fold's val or test.
    """
    what = f"fold {fold} of {folds}-fold cross-validation"
    if folds < 2 or not 0 <= fold < folds:
        raise DataError(f"{what}: folds must be at least 2 and fold in 0..folds-1 (fold {fold}, folds {folds})")
    if not 0 < val_size < 1:
        raise DataError(f"{what}: val_size={val_size} must be in (0, 1)")
    _check_classes(df, 3, f"{folds}-fold cross-validation", multilabel)
    df = sort_tracks(df)
    predefined = fold_values(df)
    if predefined:
        if len(predefined) != folds:
            raise DataError(f"the index's '{FOLD}' column defines {len(predefined)} folds ({', '.join(predefined)}), "
                            f"but --folds={folds}: use --folds={len(predefined)}, or drop the column to draw folds")
        held = df[FOLD].astype(str).str.strip() == predefined[fold]
        rest, test = df[~held].reset_index(drop=True), df[held].reset_index(drop=True)
        what += f" (predefined: test is the '{FOLD}' value {predefined[fold]})"
    else:
        groups = _track_groups(df).nunique()
        if groups < folds:
            raise DataError(f"{folds}-fold cross-validation needs at least {folds} groups, but the data has {groups}. "
                            "Use fewer folds.")
        rest, test = _group_fold(df, folds, fold, split_seed, what, multilabel)
    rest_groups = _track_groups(rest).nunique()
    if rest_groups < 2:
        raise DataError(f"{what}: the other folds hold {rest_groups} group, but train and val need one each. "
                        "Use data with more groups.")
    train, val = _group_fold(rest, _n_folds(val_size / (1 - 1 / folds), rest_groups), 0, split_seed, what,
                             multilabel)
    return _checked({"train": train, "val": val, "test": test}, df, what, multilabel)


def _checked(parts: dict[str, pd.DataFrame], df: pd.DataFrame, what: str,
             multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """Refuse empty parts and a training part without some class; warn about classes absent from val/test."""
    for name, part in parts.items():
        if part.empty:
            raise DataError(f"the {name} split is empty ({what}); use more data or other split sizes")
    classes = set(label_names(df.label, multilabel))
    if "train" in parts and classes - set(label_names(parts["train"].label, multilabel)):
        missing = sorted(classes - set(label_names(parts["train"].label, multilabel)))
        raise DataError(f"class(es) {missing} have no training clip in {what}")
    for name, part in parts.items():
        missing = sorted(classes - set(label_names(part.label, multilabel)))
        if name != "train" and missing:
            warnings.warn(f"the {name} part ({what}) has no track of class(es) {missing}: their per-class rows are "
                          "empty and macro-F1 counts them as 0. Whole groups move between parts: try another "
                          "split_seed, fewer folds or more data.", stacklevel=3)
    return {k: sort_tracks(v) for k, v in parts.items()}


def split_tracks(df: pd.DataFrame, cfg: dict, multilabel: bool = False) -> dict[str, pd.DataFrame]:
    """The parts a config asks for: :func:`make_folds` when ``cfg["folds"]`` >= 2, else :func:`make_splits`;
    ``multilabel``: the label cells are sets (the run's task, ``data.labels.resolve_task``).

    Reads ``folds`` (0: off), ``fold`` (0), ``split`` ("tutorial"), ``val_size`` (0.2), ``test_size`` (0.1) and
    ``split_seed`` (42) with those defaults, so configs of older checkpoints work. Raises DataError as those do,
    and for ``folds`` = 1.
    """
    folds = int(cfg.get("folds", 0) or 0)
    if folds == 1 or folds < 0:
        raise DataError(f"folds={folds}: use 0 (no cross-validation) or at least 2 folds")
    if folds:
        return make_folds(df, folds, int(cfg.get("fold", 0)), cfg.get("val_size", 0.2), cfg.get("split_seed", 42),
                          multilabel)
    return make_splits(df, cfg.get("split", "tutorial"), cfg.get("val_size", 0.2), cfg.get("test_size", 0.1),
                       cfg.get("split_seed", 42), multilabel)


def split_parts(cfg: dict) -> tuple[str, ...]:
    """The part names :func:`split_tracks` makes for ``cfg`` (empty for an unknown split name)."""
    if int(cfg.get("folds", 0) or 0) >= 2:
        return "train", "val", "test"
    return PARTS.get(cfg.get("split", "tutorial"), ())
