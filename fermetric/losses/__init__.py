"""fermetric's losses, registered through the ``register_losses`` hook.

Ours: ``cross_entropy`` (on logits), ``emlf`` (the expression metric loss), ``center`` and ``island``.
pytorch-metric-learning's supervised losses are registered as they are (see :data:`PML_LOSSES`). The
engine uses :func:`make_distance` and :func:`make_miner` to turn a recipe's ``distance``/``miner`` strings
into PML objects.
"""

import fermetric
from fermetric.losses.centers import CenterLoss, IslandLoss
from fermetric.losses.classification import CrossEntropyLoss
from fermetric.losses.emlf import EMLF
from fermetric.losses.pml import DISTANCES, MINERS, PML_LOSSES, ParameterError, make_distance, make_miner

LOSSES: dict[str, type] = {
    "cross_entropy": CrossEntropyLoss,
    "emlf": EMLF,
    "center": CenterLoss,
    "island": IslandLoss,
    **PML_LOSSES,
}


@fermetric.hookimpl
def register_losses(register):
    for name, factory in LOSSES.items():
        register(name, factory)


__all__ = [
    "CenterLoss",
    "CrossEntropyLoss",
    "DISTANCES",
    "EMLF",
    "IslandLoss",
    "LOSSES",
    "MINERS",
    "PML_LOSSES",
    "ParameterError",
    "make_distance",
    "make_miner",
    "register_losses",
]
