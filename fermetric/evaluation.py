"""Metrics and plots of a trained model on test data: classification, embedding geometry, aggregation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, recall_score

from .model import FERModel


@torch.no_grad()
def predict(model: FERModel, images: torch.Tensor, device: torch.device, batch_size: int = 256, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits (float32 numpy) for uint8 images, with optional test-time augmentation."""
    model.eval()
    embs, logits = [], []
    for start in range(0, len(images), batch_size):
        x = FERModel.normalize(images[start : start + batch_size].to(device))
        views = _tta_views(x, tta)
        e_sum, l_sum = 0, 0
        for view in views:
            e, lg = model(view)
            e_sum, l_sum = e_sum + e.float(), l_sum + lg.float().softmax(1)
        embs.append((e_sum / len(views)).cpu())
        logits.append((l_sum / len(views)).log().cpu())
    return torch.cat(embs).numpy(), torch.cat(logits).numpy()


def _tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(-1)]
    # ten_crop: four corners and the centre at 90% size, each scaled back up, and their mirror images
    h, w = x.shape[-2:]
    ch, cw = int(round(h * 0.9)), int(round(w * 0.9))
    offsets = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    crops = [torch.nn.functional.interpolate(x[..., i : i + ch, j : j + cw], size=(h, w), mode="bilinear", align_corners=False) for i, j in offsets]
    return crops + [c.flip(-1) for c in crops]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    labels = list(range(len(classes)))
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_recall": {c: float(r) for c, r in zip(classes, recalls)},
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


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tsne(embeddings: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, title: str, max_points: int, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = np.arange(len(labels)) if len(labels) <= max_points else np.sort(rng.choice(len(labels), max_points, replace=False))
    if len(idx) < 5:
        return
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(idx) - 1) / 3), init="pca", random_state=seed).fit_transform(embeddings[idx])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10")
    for c, name in enumerate(classes):
        mask = labels[idx] == c
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, color=cmap(c % 10), label=name, alpha=0.8)
    ax.legend(markerscale=2, fontsize=8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def aggregate(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over folds of every number in the fold metrics (nested keys dotted)."""
    flat = [_flatten(m) for m in per_fold]
    keys = [k for k in flat[0] if all(isinstance(f.get(k), (int, float)) and not isinstance(f.get(k), bool) for f in flat)]
    out: dict[str, Any] = {}
    for key in keys:
        values = np.array([f[key] for f in flat], dtype=float)
        out[key] = {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0, "values": values.tolist()}
    return out


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
