"""fermetric's losses, registered through the ``register_losses`` hook.

Ours: ``cross_entropy`` (on logits), ``emlf`` (the expression metric loss), ``center`` and ``island``.
pytorch-metric-learning's supervised losses are registered as they are (see :data:`PML_LOSSES`). Distances
and miners are components of their own (:mod:`fermetric.components.distances`, :mod:`~.miners`).
"""

import fermetric
from fermetric.components.losses.centers import CenterLoss, IslandLoss
from fermetric.components.losses.classification import CrossEntropyLoss
from fermetric.components.losses.emlf import EMLF
from fermetric.components.losses.pml import PML_LOSSES, ParameterError

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
    "EMLF",
    "IslandLoss",
    "LOSSES",
    "PML_LOSSES",
    "ParameterError",
    "register_losses",
]
