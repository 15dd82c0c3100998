"""Losses with one learnable centre per class: center loss and island loss.

The centres are ordinary ``nn.Parameter``s updated by the optimizer, so the engine gives them their own
parameter group: set their learning rate with the ``lr`` key of the loss's ``[[loss]]`` table. Wen et al.
move each centre by a fraction alpha = 0.5 of its mean offset per step, far faster than plain gradient
descent on the same loss would: the centre's gradient is scaled by the recipe ``weight`` and by the share
n_c/B of the batch in its class. With SGD, ``lr ~ alpha * B / (weight * n_c)`` reproduces the paper's rate
(hundreds for weight 0.01); with Adam/AdamW the step is ~``lr`` whatever that scale, i.e. how far a centre
moves per step in embedding units.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): ``1/(2B) * sum_i ||x_i - c_{y_i}||^2``.

    It only pulls each embedding to its class centre; the separation between classes is left to the
    classification loss it is paired with. The recipe ``weight`` is the paper's lambda (small, e.g. 0.01).
    ``normalize`` L2-normalises the embeddings first (not in the paper; useful next to cosine-based losses).
    """

    def __init__(self, num_classes: int, embedding_size: int, normalize: bool = False):
        super().__init__()
        # Random rather than zero centres: island loss needs their directions from the first step, and the
        # two should start the same way to be comparable.
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_size))
        self.normalize = normalize

    def center_term(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings, dim=1) if self.normalize else embeddings
        return 0.5 * (x - self.centers.to(x.dtype)[labels]).pow(2).sum(dim=1).mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with full_precision(embeddings) as x:
            return self.center_term(x, labels)


class IslandLoss(CenterLoss):
    """Island loss (Cai et al., FG 2018): center loss plus a penalty on the similarity of the centres,

    ``L = 1/(2B) sum_i ||x_i - c_{y_i}||^2 + lambda1 * sum_{j != k} (cos(c_j, c_k) + 1)``

    over all ordered pairs of distinct class centres (not only those in the batch), as in the paper; the
    ``+ 1`` makes each pair's penalty non-negative, zero for opposite centres. ``lambda1 = 10`` is the
    value used with the paper's formulation; the recipe ``weight`` is the paper's lambda.
    """

    def __init__(self, num_classes: int, embedding_size: int, lambda1: float = 10.0, normalize: bool = False):
        super().__init__(num_classes, embedding_size, normalize=normalize)
        self.lambda1 = lambda1

    def island_term(self) -> torch.Tensor:
        c = F.normalize(self.centers, dim=1)
        cos = c @ c.t()
        off_diagonal = ~torch.eye(len(c), dtype=torch.bool, device=c.device)
        return (cos[off_diagonal] + 1).sum()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with full_precision(embeddings) as x:
            return self.center_term(x, labels) + self.lambda1 * self.island_term().to(x.dtype)


@contextlib.contextmanager
def full_precision(embeddings: torch.Tensor):
    """Under AMP, compute in float32: squared norms of raw features overflow float16."""
    with torch.autocast(embeddings.device.type, enabled=False):
        yield embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings
