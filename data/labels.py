"""Label cells of the index and the task they imply: one label per track, or several (multi-label tagging).

A track's ``label`` cell holds one class name (``dog``), or, for multi-label data, several separated by
:data:`SEPARATOR` (``dog;rain;speech``; spaces around each name are stripped, empty names and repeats are
dropped). The ``task`` config key says how to read the cells:

* ``auto``: ``multilabel`` when any cell holds the separator, else ``single_label``;
* ``single_label``: each cell is one class name, whatever it contains (one class id per track);
* ``multilabel``: each cell is a set of class names (a multi-hot vector per track), even when every track
  happens to have one label.

The class names are sorted and a class id is its position (:func:`label_names`), for both tasks; the list is
saved in checkpoints as before. :func:`encode` turns cells into what a task trains on: class ids int64 [N], or
multi-hot float32 [N, K].
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

SEPARATOR = ";"  # between the labels of one track in the index CSV's label cell
TASK_SETTINGS = ("auto", "single_label", "multilabel")  # the values of the ``task`` config key


def split_cell(cell: str) -> list[str]:
    """The labels of one multi-label cell: ``" dog; rain;;dog"`` -> ``["dog", "rain"]`` (order of first
    appearance, stripped, no empty or repeated names)."""
    return list(dict.fromkeys(part.strip() for part in str(cell).split(SEPARATOR) if part.strip()))


def resolve_task(setting: str, cells: Iterable[str]) -> str:
    """The task of a run: ``setting`` itself when explicit, else (``auto``) ``multilabel`` when any label
    cell holds :data:`SEPARATOR` and ``single_label`` otherwise.

    Raises:
        ValueError: ``setting`` is not one of :data:`TASK_SETTINGS`.
    """
    if setting not in TASK_SETTINGS:
        raise ValueError(f"task={setting!r}: choose one of {', '.join(TASK_SETTINGS)}")
    if setting != "auto":
        return setting
    return "multilabel" if any(SEPARATOR in str(c) for c in cells) else "single_label"


def label_sets(cells: Iterable[str], multilabel: bool) -> list[list[str]]:
    """Each track's labels: one-element lists for single-label cells, :func:`split_cell` for multi-label."""
    return [split_cell(c) for c in cells] if multilabel else [[c] for c in cells]


def label_names(cells: Iterable[str], multilabel: bool = False) -> list[str]:
    """Sorted class names of the cells (every name of every cell when ``multilabel``); the id of a class is
    its position. One mapping for every split, saved in checkpoints."""
    return sorted({name for labels in label_sets(cells, multilabel) for name in labels})


def label_counts(cells: Iterable[str], multilabel: bool = False) -> dict[str, int]:
    """{class name: tracks carrying it}, sorted by name (a multi-label track counts once for each label)."""
    counts: dict[str, int] = {}
    for labels in label_sets(cells, multilabel):
        for name in labels:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def multi_hot(cells: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """float32 [N, K]: 1 where track n carries class k (``names[k]``), from multi-label cells.

    Raises:
        KeyError: a cell names a class that is not in ``names``.
    """
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(cells), len(names)), dtype=np.float32)
    for row, cell in enumerate(cells):
        for name in split_cell(cell):
            out[row, index[name]] = 1.0
    return out


def encode(cells: Sequence[str], names: Sequence[str], multilabel: bool) -> np.ndarray:
    """What a task trains on: class ids int64 [N] (single-label: the position of each cell in ``names``), or
    :func:`multi_hot` float32 [N, K]. Raises KeyError for a name not in ``names``."""
    if multilabel:
        return multi_hot(cells, names)
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[c] for c in cells], dtype=np.int64)
