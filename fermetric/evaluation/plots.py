"""Pictures of a run for people: confusion matrix, t-SNE of the embeddings, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def plot_curves(rows: list[dict[str, str]], path: Path, title: str = "") -> None:
    """Loss terms (left) and train/validation accuracy (right) per epoch, from ``history.csv`` rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])

    epochs = column("epoch")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, column("train_loss"), label="total", color="black", linewidth=2)
    for key in rows[0]:
        if key.startswith("loss_"):
            ax_loss.plot(epochs, column(key), label=key.removeprefix("loss_"), linewidth=1.2)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (epoch mean)")
    ax_loss.legend(fontsize=8)
    ax_acc.plot(epochs, column("train_accuracy"), label="train", linewidth=1.5)
    for key, label in (("val_accuracy", "validation"), ("val_macro_f1", "validation macro-F1")):
        if key in rows[0]:
            ax_acc.plot(epochs, column(key), label=label, linewidth=1.5, linestyle="-" if key == "val_accuracy" else "--")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (macro-F1 dashed)")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
