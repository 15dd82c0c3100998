"""The network every recipe trains: backbone -> embedding -> linear classifier.

Metric losses see the embedding; ``cross_entropy`` sees the classifier's logits, computed from that same
embedding, so the joint objective shapes one space.
"""

from __future__ import annotations

import torch
from torch import nn


class FERModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 128, dropout: float = 0.0, in_chans: int = 1):
        super().__init__()
        if not isinstance(getattr(backbone, "num_features", None), int):
            raise TypeError(f"backbone {type(backbone).__name__} has no int attribute num_features")
        self.backbone = backbone
        self.in_chans = in_chans
        self.embedding = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, embedding_dim), nn.BatchNorm1d(embedding_dim))
        self.classifier = nn.Linear(embedding_dim, num_classes)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, H, W) -> float in [-1, 1]."""
        return images.float().div(127.5).sub(1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float (B, 1, H, W) from :meth:`normalize`. Returns (embeddings, logits)."""
        if self.in_chans != x.shape[1]:
            x = x.expand(-1, self.in_chans, -1, -1)
        embeddings = self.embedding(self.backbone(x))
        return embeddings, self.classifier(embeddings)
