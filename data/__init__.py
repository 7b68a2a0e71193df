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

from data.benchmarks import load_benchmark_index
from data.cache import FeatureCache
from data.hf_dataset import hf_index, open_dataset
from data.index import DataError, Index, find_data_root, load_or_build_index, read_index, warn_skipped
from data.labels import encode, label_counts, resolve_task
from data.labels import label_names as sorted_label_names
from data.splits import GROUP, assign_groups, fold_values, split_tracks


@dataclass
class PreparedData:
    """Splits ready for datasets: each DataFrame has ``path``, ``label``, ``y`` (the target: a class id int, or
    for ``task`` multilabel a multi-hot float32 [K] array), ``entry`` (the cache file) and, when the data has
    groups, ``group``. ``unusable`` lists (path, reason) for files dropped while indexing or decoding;
    ``group_source`` says where the groups came from ("" when there are none); ``task`` is the run's task
    (``single_label`` or ``multilabel``, :func:`data.labels.resolve_task`); ``fold_values`` the predefined folds
    of the index's ``fold`` column when cross-validation uses them, else []."""
    data_root: Path
    index: Index
    splits: dict[str, pd.DataFrame]
    label_names: list[str]
    cache: FeatureCache
    unusable: list = field(default_factory=list)
    group_source: str = ""
    task: str = "single_label"
    fold_values: list = field(default_factory=list)

    def track_lists(self) -> dict[str, list[str]]:
        """{split name: its tracks' paths relative to ``data_root``, in split order}: what a checkpoint
        records so that ``evaluate.py`` can check it rebuilt the very split the model was trained with."""
        return {name: [os.path.relpath(p, self.data_root) for p in part.path] for name, part in self.splits.items()}

    def split_record(self) -> dict[str, dict]:
        """JSON-able record of the splits for ``metrics.json`` and checkpoints: {split name: {``tracks``: paths
        relative to ``data_root`` in split order, ``groups``: the sorted distinct groups in it ([] without
        groups), ``class_counts``: {label: tracks} for every label name, 0 included}}."""
        lists, multilabel = self.track_lists(), self.task == "multilabel"
        counts = {name: label_counts(part.label, multilabel) for name, part in self.splits.items()}
        return {name: dict(tracks=lists[name],
                           groups=sorted(set(part[GROUP])) if GROUP in part.columns else [],
                           class_counts={n: counts[name].get(n, 0) for n in self.label_names})
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
    ``cfg["split"]``. The task comes from ``cfg["task"]`` (``auto``: multi-label when a label cell holds ``;``).
    A benchmark download (``data.benchmarks``: ESC-50, UrbanSound8K, FSD50K) is indexed from its own metadata.
    Keys added after the first release are read with ``cfg.get`` and their defaults.

    Raises:
        DataError: no data, one class, an empty split, every clip of a split unusable, unknown labels, a group
        pattern that matches nothing, groups with split=tutorial, split=all for training, an unknown task.
    """
    if index is None and cfg.get("hf_dataset"):
        index = hf_index(cfg, is_main, barrier, show_progress)
    if index is None:
        data_root = find_data_root(cfg["data_root"])
        csv_path = Path(cfg["csv_path"])
        if is_main:
            index = (load_benchmark_index(data_root, csv_path, cfg["rebuild_index"], show_progress)
                     or load_or_build_index(data_root, csv_path, cfg["rebuild_index"], show_progress))
        barrier()
        if not is_main:
            index = read_index(csv_path)
    else:
        data_root = index.csv_path.parent
    try:
        task = resolve_task(cfg.get("task", "auto"), index.df.label)
    except ValueError as err:
        raise DataError(str(err)) from None
    multilabel = task == "multilabel"
    data_names = sorted_label_names(index.df.label, multilabel)
    names = list(label_names) if label_names is not None else (index.label_names or data_names)
    unknown = sorted(set(data_names) - set(names))
    if unknown:
        raise DataError(f"label(s) {unknown} in {index.csv_path} are not among the checkpoint's classes {names} "
                        f"(the data's labels: {data_names}). Evaluate on data with the "
                        "model's classes (labels are matched by name), or train a new model.")
    df, group_source = assign_groups(index.df, cfg.get("group_pattern", ""))
    splits = split_tracks(df, cfg, multilabel)
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
        targets = encode(list(part.label), names, multilabel)
        part = part.assign(entry=pd.Series([entry_of[p] for p in part.path], index=part.index, dtype=object),
                           y=pd.Series(list(targets), index=part.index, dtype=object if multilabel else "int64"))
        # no map over paths: pandas 3 would index them as Arrow strings, which reject non-UTF-8 file names
        part = part[part.entry.notna()].reset_index(drop=True)
        if part.empty:
            raise DataError(f"every clip of the {name} split failed to decode (see the warning above)")
        out[name] = part
    trained = set(sorted_label_names(out["train"].label, multilabel)) if "train" in out else set()
    if "train" in out and len(trained) < 2:
        raise DataError("the training split has fewer than two usable classes; add data")
    lost = set(names) - trained if "train" in out else set()
    if lost and label_names is None:
        warnings.warn(f"class(es) {sorted(lost)} have no usable training clip", stacklevel=2)
    folds = fold_values(df) if int(cfg.get("folds", 0) or 0) >= 2 else []
    return PreparedData(data_root, index, out, names, cache, list(index.skipped) + list(errors), group_source,
                        task, folds)
