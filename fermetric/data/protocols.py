"""Evaluation protocols: which images train, select and test, per fold.

``holdout``: one stratified split by ``test_fraction``; ``split``: a column of the dataset names the split
(FER2013's ``usage``); ``kfold``: ``folds`` stratified folds. With ``group_by`` (``"subject"`` by default when the
dataset has subject ids) no group ever sits on both sides of a split (scikit-learn's ``StratifiedGroupKFold``),
so frames of one person, and of one sequence, never leak from training into test. Validation (model
selection, early stopping) is always carved from the training side, grouped the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from fermetric.data.pipeline import Prepared
from fermetric.errors import FermetricError, RecipeError


@dataclass
class Fold:
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def groups_of(prepared: Prepared, group_by: str) -> np.ndarray | None:
    """The group id of every sample, or None for ungrouped splits."""
    if group_by in ("none", ""):
        return None
    if group_by == "auto":
        if all(s.subject for s in prepared.samples):
            group_by = "subject"
        else:
            return None
    if group_by == "subject":
        missing = sum(1 for s in prepared.samples if not s.subject)
        if missing:
            raise RecipeError(
                f"eval.group_by = \"subject\", but {missing} of {len(prepared.samples)} images have no subject id; give the"
                " dataset subject ids (a manifest's subject column; for a folders dataset subject_level = true or a"
                " subjects_file) or set eval.group_by = \"none\""
            )
        return np.array([s.subject for s in prepared.samples])
    missing = [s.key for s in prepared.samples if not s.meta.get(group_by)]
    if missing:
        raise RecipeError(f"eval.group_by = {group_by!r}: {len(missing)} images have no such column value, e.g. {missing[0]}")
    return np.array([s.meta[group_by] for s in prepared.samples])


def _splitter(n_splits: int, groups: np.ndarray | None, seed: int):
    if groups is not None:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _carve(indices: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (keep, held) with about ``fraction`` held out, grouped and stratified."""
    if fraction <= 0 or len(indices) < 4:
        return indices, indices[:0]
    n_splits = max(2, int(round(1 / fraction)))
    sub_groups = groups[indices] if groups is not None else None
    if sub_groups is not None:
        n_groups = len(np.unique(sub_groups))
        if n_groups < 2:  # one person left: nothing can be held out without sharing them
            return indices, indices[:0]
        n_splits = min(n_splits, n_groups)
    n_splits = min(n_splits, max(2, np.bincount(labels[indices]).max()))
    keep, held = next(_splitter(n_splits, sub_groups, seed).split(indices, labels[indices], sub_groups))
    return indices[keep], indices[held]


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def make_folds(prepared: Prepared, eval_cfg: dict[str, Any], val_fraction: float, seed: int) -> list[Fold]:
    labels = prepared.labels.numpy()
    all_idx = np.arange(len(labels))
    groups = groups_of(prepared, eval_cfg["group_by"])
    protocol = eval_cfg["protocol"]
    if protocol == "split":
        column = eval_cfg["split_column"]
        values = np.array([s.meta.get(column, "") for s in prepared.samples])
        if not (values != "").any():
            raise RecipeError(f"eval.protocol = \"split\": the dataset has no column {column!r} (set eval.split_column)")
        train = all_idx[np.isin(values, _as_list(eval_cfg["train_split"]))]
        test = all_idx[np.isin(values, _as_list(eval_cfg["test_split"]))]
        if np.intersect1d(train, test).size:
            raise RecipeError(f"eval.train_split {eval_cfg['train_split']!r} and eval.test_split {eval_cfg['test_split']!r} share images")
        val_names = _as_list(eval_cfg["val_split"])
        if val_names:
            val = all_idx[np.isin(values, val_names)]
            train = np.setdiff1d(train, val)
            if np.intersect1d(val, test).size:
                raise RecipeError(f"eval.val_split {eval_cfg['val_split']!r} overlaps eval.test_split {eval_cfg['test_split']!r}:"
                                  " validation must never come from the test data")
        else:
            train, val = _carve(train, labels, groups, val_fraction, seed)
        if groups is not None:
            # A given split can put one person on both sides; with grouping asked for, that is leakage to refuse.
            for name, part in (("training", train), ("validation", val)):
                shared = sorted(set(groups[part]) & set(groups[test]))
                if shared:
                    raise RecipeError(
                        f"eval.protocol = \"split\" with group_by = {eval_cfg['group_by']!r}: {len(shared)} groups are in both"
                        f" the {name} and the test split (e.g. {', '.join(map(str, shared[:3]))}); fix the split column,"
                        " or set eval.group_by = \"none\" to accept it"
                    )
        if not len(train) or not len(test):
            raise RecipeError(
                f"eval.protocol = \"split\": {len(train)} training and {len(test)} test images with {column} in"
                f" {eval_cfg['train_split']!r} / {eval_cfg['test_split']!r} (values present: {', '.join(sorted(set(values)))})"
            )
        return [Fold(0, train, val, test)]
    if protocol == "holdout":
        train, test = _carve(all_idx, labels, groups, eval_cfg["test_fraction"], seed)
        train, val = _carve(train, labels, groups, val_fraction, seed + 1)
        return [Fold(0, train, val, test)]
    k = eval_cfg["folds"]
    if k < 2:
        raise RecipeError(f"eval.folds = {k}: k-fold needs at least 2 folds (use protocol = \"holdout\" for one split)")
    if groups is not None and len(np.unique(groups)) < k:
        raise FermetricError(f"eval.folds = {k} but only {len(np.unique(groups))} groups ({eval_cfg['group_by']})")
    folds = []
    for i, (train, test) in enumerate(_splitter(k, groups, seed).split(all_idx, labels, groups)):
        train, val = _carve(train, labels, groups, val_fraction, seed + 1 + i)
        folds.append(Fold(i, train, val, test))
    return folds
