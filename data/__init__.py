"""Data pipeline: index (audio_dataset.csv) -> splits -> cached whole-track spectrograms -> datasets.

``prepare_data`` is the one entry point used by train.py and evaluate.py. The index comes from a folder of
``<label>/<audio files>`` (``data_root``), a CSV, or a Hugging Face dataset (``hf_dataset``, ``data.hf_dataset``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from torch import nn

from data.cache import FeatureCache
from data.hf_dataset import hf_index, open_dataset
from data.index import DataError, Index, find_data_root, load_or_build_index, read_index, warn_skipped
from data.splits import GROUP, assign_groups, split_tracks
from data.splits import label_names as sorted_label_names


@dataclass
class PreparedData:
    """Splits ready for datasets: each DataFrame has ``path``, ``label``, ``y`` (class id), ``entry`` (the
    cache file) and, when the data has groups, ``group``. ``unusable`` lists (path, reason) for files dropped
    while indexing or decoding; ``group_source`` says where the groups came from ("" when there are none)."""
    data_root: Path
    index: Index
    splits: dict[str, pd.DataFrame]
    label_names: list[str]
    cache: FeatureCache
    unusable: list = field(default_factory=list)
    group_source: str = ""

    def track_lists(self) -> dict[str, list[str]]:
        """{split name: its tracks' paths relative to ``data_root``, in split order}: what a checkpoint
        records so that ``evaluate.py`` can check it rebuilt the very split the model was trained with."""
        return {name: [os.path.relpath(p, self.data_root) for p in part.path] for name, part in self.splits.items()}

    def split_record(self) -> dict[str, dict]:
        """JSON-able record of the splits for ``metrics.json`` and checkpoints: {split name: {``tracks``: paths
        relative to ``data_root`` in split order, ``groups``: the sorted distinct groups in it ([] without
        groups), ``class_counts``: {label: tracks} for every label name, 0 included}}."""
        lists = self.track_lists()
        return {name: dict(tracks=lists[name],
                           groups=sorted(set(part[GROUP])) if GROUP in part.columns else [],
                           class_counts={n: int((part.label == n).sum()) for n in self.label_names})
                for name, part in self.splits.items()}


def check_data_source(cfg: dict) -> None:
    """Fail early when the run's data is missing: the folder ``data_root`` (see ``find_data_root``) or the Hugging
    Face dataset ``hf_dataset`` (opened: offline, a dataset that is not cached fails here). Raises DataError."""
    if cfg.get("hf_dataset"):
        open_dataset(cfg["hf_dataset"], cfg.get("hf_config", ""))
    else:
        find_data_root(cfg["data_root"])


def prepare_data(cfg: dict, frontend: nn.Module, is_main: bool = True, barrier=lambda: None,
                 label_names: list[str] | None = None, num_workers: int = 0, show_progress: bool = True,
                 index: Index | None = None) -> PreparedData:
    """Index ``cfg["data_root"]``, split it, and cache every clip's features, computed by ``frontend`` (any
    front end of ``data.frontends``, e.g. from ``data.features.build_features``).

    Rank 0 (``is_main``) writes the index and fills the cache while the other ranks wait at ``barrier``;
    then every rank reads them. ``index`` (e.g. ``read_index`` of a user's CSV) replaces that step; paths are
    then relative to the CSV's folder. With ``cfg["hf_dataset"]`` the index is that dataset's
    (``data.hf_dataset.hf_index``: its audio extracted under ``cache_dir``, its splits in a ``split`` column and its
    ClassLabel order as the class ids). ``label_names`` (from a checkpoint) fixes the class ids; a label in
    the data that it does not contain is an error that lists both sets.
    Groups come from the index's ``group`` column or ``cfg["group_pattern"]``, and the parts from
    ``data.splits.split_tracks(cfg)``: k-fold when ``cfg["folds"]`` >= 2 (fold ``cfg["fold"]``), else
    ``cfg["split"]``. Keys added after the first release are read with ``cfg.get`` and their defaults.

    Raises:
        DataError: no data, one class, an empty split, every clip of a split unusable, unknown labels, a group
        pattern that matches nothing, groups with split=tutorial, split=all for training.
    """
    if index is None and cfg.get("hf_dataset"):
        index = hf_index(cfg, is_main, barrier, show_progress)
    if index is None:
        data_root = find_data_root(cfg["data_root"])
        csv_path = Path(cfg["csv_path"])
        if is_main:
            index = load_or_build_index(data_root, csv_path, cfg["rebuild_index"], show_progress)
        barrier()
        if not is_main:
            index = read_index(csv_path)
    else:
        data_root = index.csv_path.parent
    names = list(label_names if label_names is not None else index.label_names or sorted_label_names(index.df.label))
    unknown = sorted(set(index.df.label) - set(names))
    if unknown:
        raise DataError(f"label(s) {unknown} in {index.csv_path} are not among the checkpoint's classes {names} "
                        f"(the data's labels: {sorted_label_names(index.df.label)}). Evaluate on data with the "
                        "model's classes (labels are matched by name), or train a new model.")
    df, group_source = assign_groups(index.df, cfg.get("group_pattern", ""))
    splits = split_tracks(df, cfg)
    if "train" not in splits and label_names is None:
        raise DataError(f"split={cfg.get('split')} has no training part; it is for evaluate.py. Train with "
                        "split=tutorial, stratified or fault_filtered.")

    cache = FeatureCache(cfg["cache_dir"], frontend)
    paths = sorted({p for part in splits.values() for p in part.path})
    if is_main:
        entries, errors = cache.build(paths, num_workers, show_progress)
    barrier()
    if not is_main:
        entries, errors = cache.build(paths, 0, show_progress=False)
    if errors and is_main:
        warn_skipped(errors, "while decoding")
    entry_of = dict(zip(paths, entries))
    out = {}
    for name, part in splits.items():
        part = part.assign(entry=pd.Series([entry_of[p] for p in part.path], index=part.index, dtype=object),
                           y=part.label.map({n: i for i, n in enumerate(names)}))  # no map over paths: pandas 3
        # would index them as Arrow strings, which reject non-UTF-8 file names
        part = part[part.entry.notna()].reset_index(drop=True)
        if part.empty:
            raise DataError(f"every clip of the {name} split failed to decode (see the warning above)")
        out[name] = part
    if "train" in out and out["train"].label.nunique() < 2:
        raise DataError("the training split has fewer than two usable classes; add data")
    lost = set(names) - set(out["train"].label) if "train" in out else set()
    if lost and label_names is None:
        warnings.warn(f"class(es) {sorted(lost)} have no usable training clip", stacklevel=2)
    return PreparedData(data_root, index, out, names, cache, list(index.skipped) + list(errors), group_source)
