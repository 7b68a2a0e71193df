"""Iterative stratification of multi-label data into folds, group-aware (Sechidis, Tsoumakas & Vlahavas 2011).

scikit-learn's ``StratifiedGroupKFold`` stratifies one label per track; with several labels per track there is
no single class to stratify on. Sechidis et al. ("On the Stratification of Multi-Label Data", ECML PKDD 2011,
Algorithm 1) deal tracks out greedily, rarest label first:

1. every part j wants ``r_j * N`` tracks and, for every label i, ``r_j * N_i`` tracks carrying it;
2. take the label with the fewest tracks still to deal (at least one); deal each of its tracks to the part
   that still wants most of that label (ties: the part that still wants most tracks; then at random);
   a dealt track lowers its part's wants for each of its labels and for tracks by one;
3. repeat until only tracks without labels remain; deal those to the part that wants most tracks.

Dealing the rarest labels first is what keeps them spread over every part: a label with 5 tracks and 5 folds
gets one per fold, where a random split would often leave a fold without it.

Groups (speaker, recording session; no group may be in two parts) are dealt as units: a group carries the sum
of its tracks' multi-hot vectors and its number of tracks, and the wants go down by those amounts. With one
track per group this is exactly the published algorithm. scikit-multilearn, which implements the original, is
no longer maintained; this is a short re-implementation of Algorithm 1 with the group extension.
"""
from __future__ import annotations

import numpy as np


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> int:
    """One index among ``candidates`` (a non-empty index array), at random when there are several."""
    return int(candidates[0] if len(candidates) == 1 else rng.choice(candidates))


def iterative_folds(labels: np.ndarray, groups, n_splits: int, seed: int = 0) -> np.ndarray:
    """The fold (0..n_splits-1) of every track, by group-aware iterative stratification.

    Args:
        labels: multi-hot float or int [N, K] (1: track n carries label k).
        groups: N group names (hashable); every track of a group gets the same fold. Pass the paths (or
            ``range(N)``) for no groups.
        n_splits: folds, each wanting 1 / n_splits of the tracks and of every label.
        seed: tie-breaking (numpy ``default_rng``); the same inputs and seed give the same folds.
    Returns:
        int64 [N], fold of each track. A fold can end up empty only when there are fewer groups than folds.
    Raises:
        ValueError: ``n_splits`` < 2, or ``labels`` and ``groups`` of different lengths.
    """
    labels = np.asarray(labels, dtype=np.float64)
    keys = [str(g) for g in groups]
    if n_splits < 2 or labels.ndim != 2 or len(keys) != len(labels):
        raise ValueError(f"iterative_folds needs n_splits >= 2 and labels [N, K] with N groups, got n_splits="
                         f"{n_splits}, labels {labels.shape}, {len(keys)} groups")
    names, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    counts = np.zeros((len(names), labels.shape[1]))
    np.add.at(counts, inverse, labels > 0)
    sizes = np.bincount(inverse, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    want_tracks = np.full(n_splits, sizes.sum() / n_splits)
    want_label = np.tile(counts.sum(0) / n_splits, (n_splits, 1))
    fold_of_group = np.full(len(names), -1, dtype=np.int64)
    left = np.ones(len(names), dtype=bool)
    order = rng.permutation(len(names))  # the order groups are dealt in within one label

    def deal(group: int, label: int | None) -> None:
        best = np.flatnonzero(want_tracks == want_tracks.max())
        if label is not None:
            by_label = want_label[:, label]
            best = np.flatnonzero(by_label == by_label.max())
            best = best[want_tracks[best] == want_tracks[best].max()]
        fold = _pick(best, rng)
        fold_of_group[group], left[group] = fold, False
        want_label[fold] -= counts[group]
        want_tracks[fold] -= sizes[group]

    while left.any():
        remaining = counts[left].sum(0)
        if not remaining.any():  # only groups without labels are left
            for group in order[left[order]]:
                deal(int(group), None)
            break
        present = np.flatnonzero(remaining > 0)
        label = _pick(present[remaining[present] == remaining[present].min()], rng)
        for group in order[left[order] & (counts[order, label] > 0)]:
            deal(int(group), label)
    return fold_of_group[inverse]
