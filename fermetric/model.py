"""The network every recipe trains: backbone -> embedding -> linear classifier.

Metric losses see the embedding; ``cross_entropy`` sees the classifier's logits, computed from that same
embedding, so the joint objective shapes one space.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FERModel(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 128, dropout: float = 0.0, in_chans: int = 1):
        super().__init__()
        if not isinstance(getattr(backbone, "num_features", None), int):
            raise TypeError(f"backbone {type(backbone).__name__} has no int attribute num_features")
        self.backbone = backbone
        self.in_chans = in_chans
        self.embedding_dim = int(embedding_dim)
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
