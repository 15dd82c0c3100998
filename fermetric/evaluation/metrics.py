"""Metrics of a trained model on test data: classification, embedding geometry, aggregation over folds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, recall_score


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the confusion matrix of class ids against ``classes``.

    A class absent from ``y_true`` (support 0, e.g. no test image of it in a k-fold fold) has no recall: its
    ``per_class_recall`` is None (JSON null), not 0.0, and it is left out of ``macro_f1``, which averages the F1
    of the classes present in ``y_true`` only (predictions of an absent class still count against the class the
    image belongs to). The confusion matrix keeps every class. No test image at all: accuracy and macro-F1 NaN.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(classes)))
    present = [i for i in labels if np.any(y_true == i)]
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0) if len(y_true) else [0.0] * len(labels)
    macro = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)) if present else math.nan
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else math.nan,
        "macro_f1": macro,
        "per_class_recall": {c: (float(r) if i in present else None) for i, (c, r) in enumerate(zip(classes, recalls))},
        "confusion_matrix": {"classes": classes, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
        "n_test": int(len(y_true)),
    }


def distance_stats(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean Euclidean distance between L2-normalised embeddings of the same and of different expressions."""
    e = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    y = torch.as_tensor(labels)
    d = torch.cdist(e, e)
    same = y[:, None] == y[None, :]
    off_diag = ~torch.eye(len(y), dtype=torch.bool)
    intra_mask, inter_mask = same & off_diag, ~same
    intra = float(d[intra_mask].mean()) if intra_mask.any() else math.nan
    inter = float(d[inter_mask].mean()) if inter_mask.any() else math.nan
    return {"intra_class_distance": intra, "inter_class_distance": inter, "intra_inter_ratio": intra / inter if inter else math.nan}


def knn_metrics(query: np.ndarray, query_labels: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray) -> dict[str, float]:
    """k-NN retrieval quality of test embeddings against the training embeddings (pytorch-metric-learning)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu"))
    result = calc.get_accuracy(
        torch.as_tensor(query), torch.as_tensor(query_labels), torch.as_tensor(reference), torch.as_tensor(reference_labels),
        ref_includes_query=False,
    )
    return {"knn_precision_at_1": float(result["precision_at_1"]), "knn_map_at_r": float(result["mean_average_precision_at_r"])}


def aggregate(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over folds of every number in the fold metrics (nested keys dotted).

    None (a class's recall in a fold without it) and NaN are missing values: the mean and std are over the folds
    that have the number (``n`` of them); a key no fold has a number for gets mean and std None, and one with a
    single value (one fold run, or only one fold of several has it) gets std None: there is no spread to report.
    """
    flat = [_flatten(m) for m in per_fold]
    keys = [k for k in flat[0] if all(_is_number(f.get(k)) or f.get(k) is None for f in flat)
            and any(_is_number(f.get(k)) for f in flat)]
    out: dict[str, Any] = {}
    for key in keys:
        values = np.array([math.nan if f[key] is None else f[key] for f in flat], dtype=float)
        finite = values[~np.isnan(values)]
        mean = float(finite.mean()) if len(finite) else None
        # A spread needs two values: one fold (--fold K) has none to report, not a spread of 0.
        std = float(finite.std(ddof=1)) if len(finite) > 1 else None
        out[key] = {"mean": mean, "std": std, "values": [None if math.isnan(v) else v for v in values.tolist()],
                    "n": int(len(finite))}
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k == "confusion_matrix":
            continue
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
