"""The objective: the weighted sum of the recipe's loss terms, and what each term is fed.

Metric losses see the embeddings (with a miner's indices tuple when the term has a miner); a loss with
``uses_logits = True`` sees the classifier's logits. Every term is computed in float32, whatever autocast did to
the network's outputs: squared hinges and softmax lose too much in half precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LossTerm:
    """One ``[[loss]]`` table: the loss module, its weight, its miner and its own learning rate."""

    name: str
    weight: float
    module: torch.nn.Module
    miner: Any = None
    lr: float | None = None

    @property
    def uses_logits(self) -> bool:
        return bool(getattr(self.module, "uses_logits", False))

    def __call__(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.uses_logits:
            return self.module(logits.float(), labels)
        embeddings = embeddings.float()
        if self.miner is not None:
            return self.module(embeddings, labels, indices_tuple=self.miner(embeddings, labels))
        return self.module(embeddings, labels)


class Objective:
    """``objective(embeddings, logits, labels) -> (total, parts)``: the weighted sum and each term's value."""

    def __init__(self, terms: list[LossTerm]):
        self.terms = terms
        names = [t.name for t in terms]
        # history columns: the loss name, numbered when a recipe uses one loss twice
        self.labels = [t.name if names.count(t.name) == 1 else f"{t.name}_{i}" for i, t in enumerate(terms)]

    def __call__(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        parts = [term(embeddings, logits, labels) for term in self.terms]
        total = sum(t.weight * p for t, p in zip(self.terms, parts))
        return total, parts

    def to(self, device: torch.device) -> Objective:
        for term in self.terms:
            term.module.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        for term in self.terms:
            term.module.train(mode)

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """One optimizer group per loss with learnable parameters (centres, proxies): they often want another
        learning rate (the table's ``lr``) and no weight decay."""
        groups = []
        for term in self.terms:
            params = [p for p in term.module.parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": float(term.lr if term.lr is not None else lr), "weight_decay": 0.0,
                               "name": f"loss:{term.name}"})
        return groups

    def state_dict(self) -> list[dict[str, Any]]:
        return [t.module.state_dict() for t in self.terms]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for term, state in zip(self.terms, states):
            term.module.load_state_dict(state)
