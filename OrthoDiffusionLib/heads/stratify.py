"""Multi-label iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML 2011) through the
``iterative-stratification`` package, label-fraction subsets and patient-level aggregation.
Deterministic for a given seed.

Labels are [N, K] with 1 = positive; 0, NaN or any other value count as "not positive".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _positives(labels) -> np.ndarray:
    y = np.asarray(labels, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    # NaN must become "not positive" here: the package casts labels to bool, where NaN is True
    return np.nan_to_num(y, nan=0.0) == 1.0


def iterative_stratification(labels, proportions: Sequence[float], seed: int = 0) -> np.ndarray:
    """Assign each of N examples to one of len(proportions) subsets -> int array [N].

    Rarest label first: its examples go to the subset that still wants most of that label
    (ties: the subset that wants most examples overall, then random). Examples without any
    positive label fill the subsets that still want most examples.
    """
    # The package's function, not its KFold/ShuffleSplit classes: those refuse a single label column
    # and take two subsets at most. Imported here so that predict and finetune (Slicer) never load
    # scikit-learn. Compared with our former implementation in bench/README.md ("Stratification").
    from iterstrat.ml_stratifiers import IterativeStratification
    from sklearn.utils import check_random_state

    y = _positives(labels)
    r = np.asarray(proportions, dtype=float)
    if (r <= 0).any():
        raise ValueError("proportions must be positive")
    rng = check_random_state(seed)
    order = rng.permutation(len(y))  # as the package's classes do: random order within a label
    fold = IterativeStratification(labels=y[order], r=r / r.sum(), random_state=rng)
    return fold[np.argsort(order)].astype(int)


def stratified_kfold(labels, n_folds: int = 5, seed: int = 0, groups: Sequence | None = None) -> np.ndarray:
    """Fold id [N] per example. With ``groups`` (e.g. patient ids) a group's examples share one
    fold; groups are stratified on the union (max) of their examples' labels."""
    y = _positives(labels)
    if groups is None:
        return iterative_stratification(y, [1.0] * n_folds, seed)
    keys, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    group_labels = np.zeros((len(keys), y.shape[1]), dtype=bool)
    np.logical_or.at(group_labels, inverse, y)
    return iterative_stratification(group_labels, [1.0] * n_folds, seed)[inverse]


def stratified_split(labels, fraction: float, seed: int = 0, groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(selected, rest) index arrays, ``selected`` holding about ``fraction`` of the examples with
    label proportions preserved."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = _positives(labels)
    if groups is None:
        fold = iterative_stratification(y, [fraction, 1.0 - fraction], seed)
    else:
        keys, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        group_labels = np.zeros((len(keys), y.shape[1]), dtype=bool)
        np.logical_or.at(group_labels, inverse, y)
        fold = iterative_stratification(group_labels, [fraction, 1.0 - fraction], seed)[inverse]
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


def label_fraction_subset(labels, label_fraction: float, seed: int = 0, groups: Sequence | None = None) -> np.ndarray:
    """Indices of the labelled subset for a label-efficiency run (e.g. 0.1 = 10 % of the labels)."""
    if label_fraction >= 1.0:
        return np.arange(len(np.asarray(labels)))
    return stratified_split(labels, label_fraction, seed, groups)[0]


def aggregate_by_patient(probabilities, patient_ids: Sequence, how: str = "max") -> tuple[list, np.ndarray]:
    """Case probabilities [N, K] -> (patient ids in first-seen order, [P, K]) by max or mean."""
    if how not in ("max", "mean"):
        raise ValueError(f"how must be 'max' or 'mean', got '{how}'")
    p = np.asarray(probabilities, dtype=float)
    ids = list(dict.fromkeys(patient_ids))
    index = {pid: i for i, pid in enumerate(ids)}
    rows = np.array([index[pid] for pid in patient_ids])
    if how == "max":
        out = np.full((len(ids),) + p.shape[1:], -np.inf)
        np.maximum.at(out, rows, p)
    else:
        out = np.zeros((len(ids),) + p.shape[1:])
        np.add.at(out, rows, p)
        out /= np.bincount(rows, minlength=len(ids)).reshape(-1, *([1] * (p.ndim - 1)))
    return ids, out
