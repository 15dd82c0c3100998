"""Miners, registered through ``register_miners``: pytorch-metric-learning miners by recipe name.

A ``[[loss]]`` table's ``miner`` key names one (``miner = "batch_hard"``) or gives a table
(``miner = { name = "multi_similarity", epsilon = 0.1 }``); the engine builds it and calls the loss as
``loss(embeddings, labels, indices_tuple=miner(embeddings, labels))``. A miner's own ``distance`` is a registered
distance like a loss's.
"""

from pytorch_metric_learning import miners

import fermetric
from fermetric.errors import ParameterError

def batch_hard(distance=None) -> miners.BatchEasyHardMiner:
    """PML's BatchHardMiner (hardest positive and hardest negative per anchor). Registered as a function because
    the class fixes its strategies but passes ``**kwargs`` on to a base whose ``pos_strategy``/``neg_strategy`` it
    would then receive twice: the recipe must not see those as parameters."""
    return miners.BatchHardMiner(**({"distance": distance} if distance is not None else {}))


MINERS: dict[str, type] = {
    "triplet_margin": miners.TripletMarginMiner,
    "multi_similarity": miners.MultiSimilarityMiner,
    "batch_hard": batch_hard,
    "batch_easy_hard": miners.BatchEasyHardMiner,
    "pair_margin": miners.PairMarginMiner,
    "angular": miners.AngularMiner,
    "distance_weighted": miners.DistanceWeightedMiner,
    "hdc": miners.HDCMiner,
    "uniform_histogram": miners.UniformHistogramMiner,
}


def make_miner(name: str, **params) -> miners.BaseMiner:
    """A miner by recipe name, for code that builds losses directly (the engine uses the registry)."""
    if name not in MINERS:
        raise ParameterError(f"unknown miner {name!r}; valid: {', '.join(sorted(MINERS))}")
    return MINERS[name](**params)


@fermetric.hookimpl
def register_miners(register):
    for name, factory in MINERS.items():
        register(name, factory)
