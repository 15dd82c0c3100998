"""fermetric-example-training: a distance, a miner and a callback for fermetric, registered through the hooks.

Each is a few lines because each builds on a contract: a pytorch-metric-learning ``BaseDistance`` / ``BaseMiner``
(what fermetric passes to losses), and :class:`fermetric.contracts.Callback` (what the training loop calls).
"""

from __future__ import annotations

import csv
from importlib.metadata import PackageNotFoundError, version

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

import fermetric
from fermetric.contracts import Callback
from fermetric.errors import ParameterError

try:
    __version__ = version("fermetric-example-training")
except PackageNotFoundError:  # imported from a source tree that was not pip-installed
    __version__ = "0+unknown"


def manhattan(normalize_embeddings: bool = True) -> LpDistance:
    """Sum of absolute differences between embeddings, by default normalised to unit L1 norm (PML's LpDistance
    normalises with its own p)."""
    return LpDistance(p=1, power=1, normalize_embeddings=normalize_embeddings)


class NearestNegativeMiner(BaseMiner):
    """Every (anchor, positive) pair with the anchor's nearest negative: the hardest triplet per pair.

    ``distance`` (a fermetric distance, given by name in the recipe) decides "nearest"; for a similarity the
    most similar negative is the nearest.
    """

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        mat = self.distance(embeddings, ref_emb)
        same = labels[:, None] == ref_labels[None, :]
        if embeddings is ref_emb or (embeddings.shape == ref_emb.shape and torch.equal(embeddings, ref_emb)):
            same = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        anchors, positives = torch.where(same)
        neg_mask = labels[:, None] != ref_labels[None, :]
        if not neg_mask.any() or not len(anchors):
            empty = torch.empty(0, dtype=torch.long, device=labels.device)
            return empty, empty, empty
        worst = float("-inf") if self.distance.is_inverted else float("inf")
        masked = torch.where(neg_mask, mat, torch.full_like(mat, worst))
        nearest = masked.argmax(1) if self.distance.is_inverted else masked.argmin(1)
        keep = neg_mask[anchors].any(1)
        anchors, positives = anchors[keep], positives[keep]
        return anchors, positives, nearest[anchors]


class GradNorm(Callback):
    """Mean and max L2 norm of the network's gradients per epoch, in ``grad_norm.csv`` beside history.csv.

    every: measure every N-th batch (reading a norm synchronises a GPU with the host, so not every step).
    """

    def __init__(self, every: int = 1):
        if int(every) < 1:
            raise ParameterError(f"grad_norm: every = {every}, at least 1")
        self.every = int(every)
        self._norms: list[torch.Tensor] = []

    def on_epoch_start(self, loop) -> None:
        self._norms = []

    def on_batch_end(self, loop) -> None:
        if loop.step % self.every:
            return
        grads = [p.grad.detach().flatten() for p in loop.model.parameters() if p.grad is not None]
        if grads:
            self._norms.append(torch.linalg.vector_norm(torch.cat(grads)))

    def on_epoch_end(self, loop) -> None:
        if not self._norms:
            return
        norms = torch.stack(self._norms)
        path = loop.folder.root / "grad_norm.csv"
        if loop.epoch == 0 or not path.exists():
            path.write_text("epoch,mean_grad_norm,max_grad_norm\n")
        elif loop.epoch == loop.start_epoch:
            # resumed: drop rows of epochs after the checkpoint, as history.csv does
            rows = [r for r in csv.DictReader(path.open()) if int(r["epoch"]) <= loop.epoch]
            path.write_text("epoch,mean_grad_norm,max_grad_norm\n" + "".join(
                f"{r['epoch']},{r['mean_grad_norm']},{r['max_grad_norm']}\n" for r in rows))
        with path.open("a") as f:
            f.write(f"{loop.epoch + 1},{float(norms.mean()):.6g},{float(norms.max()):.6g}\n")


@fermetric.hookimpl
def register_distances(register):
    register("manhattan", manhattan)


@fermetric.hookimpl
def register_miners(register):
    register("nearest_negative", NearestNegativeMiner)


@fermetric.hookimpl
def register_callbacks(register):
    register("grad_norm", GradNorm)


__all__ = ["GradNorm", "NearestNegativeMiner", "manhattan", "__version__"]
