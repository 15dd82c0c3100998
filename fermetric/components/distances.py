"""Distances, registered through ``register_distances``: pytorch-metric-learning distance objects by recipe name.

A loss or miner parameter named ``distance`` takes a registered distance's name (``distance = "cosine"``) or a
table (``distance = { name = "euclidean", normalize_embeddings = false }``); the engine builds it and passes the
object, so PML's losses and miners, EMLF and third-party losses all receive a ``BaseDistance``.
Every use gets a fresh object: PML distances record statistics.
"""

from pytorch_metric_learning import distances

import fermetric
from fermetric.errors import ParameterError


def euclidean(normalize_embeddings: bool = True) -> distances.LpDistance:
    """``||a - b||`` between (by default L2-normalised) embeddings."""
    return distances.LpDistance(p=2, power=1, normalize_embeddings=normalize_embeddings)


def squared_euclidean(normalize_embeddings: bool = True) -> distances.LpDistance:
    """``||a - b||^2`` between (by default L2-normalised) embeddings."""
    return distances.LpDistance(p=2, power=2, normalize_embeddings=normalize_embeddings)


def cosine() -> distances.CosineSimilarity:
    """Cosine similarity (a similarity: larger is closer; PML's losses know, EMLF uses ``1 - cos``)."""
    return distances.CosineSimilarity()


def dot(normalize_embeddings: bool = False) -> distances.DotProductSimilarity:
    """Dot product; of L2-normalised vectors it is the cosine, so unnormalised by default."""
    return distances.DotProductSimilarity(normalize_embeddings=normalize_embeddings)


def lp(p: float = 2.0, power: float = 1.0, normalize_embeddings: bool = True) -> distances.LpDistance:
    """PML's LpDistance with every option."""
    return distances.LpDistance(p=p, power=power, normalize_embeddings=normalize_embeddings)


def snr(normalize_embeddings: bool = True) -> distances.SNRDistance:
    """Signal-to-noise-ratio distance (PML's SNRDistance)."""
    return distances.SNRDistance(normalize_embeddings=normalize_embeddings)


DISTANCES = {
    "euclidean": euclidean,
    "squared_euclidean": squared_euclidean,
    "cosine": cosine,
    "dot": dot,
    "lp": lp,
    "snr": snr,
}


def make_distance(name: str, **params) -> distances.BaseDistance:
    """A fresh distance by recipe name, for code that builds losses directly (the engine uses the registry)."""
    if name not in DISTANCES:
        raise ParameterError(f"unknown distance {name!r}; valid: {', '.join(sorted(DISTANCES))}")
    return DISTANCES[name](**params)


@fermetric.hookimpl
def register_distances(register):
    for name, factory in DISTANCES.items():
        register(name, factory)
