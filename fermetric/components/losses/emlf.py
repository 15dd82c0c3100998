"""EMLF, the expression metric loss: fermetric's interpretation of Yu & Bai (2020).

The paper's abstract only says that EMLF increases the distance between different expressions and reduces the
distance between the same expression, jointly with a classification loss. Our version, written out with the
reasons in ``docs/method.md`` section 2, is a batch-wide, class-balanced contrastive loss:

* every sample is an anchor; with ``d`` the distance between (by default L2-normalised) embeddings,
* pull: its positives (same expression) should be closer than ``pos_margin``: ``relu(d - pos_margin)^2``,
* push: its negatives (other expressions) should be farther than ``neg_margin``: ``relu(neg_margin - d)^2``,
* ``variant="mean"`` averages over an anchor's positives, and over its negatives class by class;
  ``variant="hard"`` keeps only its farthest positive and its nearest negative;
* the anchors' terms are averaged within each expression, then over expressions, so that a frequent
  expression (FER datasets are dominated by "happy" and "neutral") weighs as much as a rare one.
"""

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance, LpDistance
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from fermetric.components.losses.pml import ParameterError

VARIANTS = ("mean", "hard")

# The default negative margin, per distance: "at least 60 degrees apart" on the unit sphere (a chord of 1,
# a cosine of 0.5), the same geometric target whichever distance the recipe picks. It is reachable for any
# number of expressions once embedding_size >= number of classes - 1 (a regular simplex of 7 classes has
# chords of 1.53), and equals pytorch-metric-learning's ContrastiveLoss default, so the two compare directly.
DEFAULT_NEG_MARGIN = {"euclidean": 1.0, "squared_euclidean": 1.0, "cosine": 0.5}


def distance_kind(distance: BaseDistance) -> str:
    """Which of EMLF's distances a PML distance object is (``euclidean``, ``squared_euclidean``, ``cosine``),
    read from the object itself: a similarity (PML's ``is_inverted``) of normalised vectors is the cosine."""
    if distance.is_inverted:
        if not distance.normalize_embeddings:
            raise ParameterError("emlf: a similarity distance must normalise its embeddings (cosine); dot products are unbounded")
        return "cosine"
    if isinstance(distance, LpDistance) and distance.p == 2 and distance.power in (1, 2):
        return "euclidean" if distance.power == 1 else "squared_euclidean"
    raise ParameterError(
        f"emlf: unsupported distance {type(distance).__name__}(p={getattr(distance, 'p', '?')},"
        f" power={getattr(distance, 'power', '?')}); use euclidean, squared_euclidean or cosine"
    )


class EMLF(nn.Module):
    """Expression metric loss; see the module docstring and ``docs/method.md``.

    ``distance`` is a PML distance object (the recipe's ``distance = "cosine"`` is built from the distance
    registry); None is the euclidean distance of L2-normalised embeddings. Margins are in its units;
    ``neg_margin=None`` takes :data:`DEFAULT_NEG_MARGIN`.
    With a miner, only the mined pairs count: anchor ``a`` of pair ``(a, p)`` or ``(a, n)``.
    A batch with no positive pair gives no pull term, one with a single expression no push term (each 0).
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float | None = None,
        distance: BaseDistance | None = None,
        variant: str = "mean",
        pull_weight: float = 1.0,
        push_weight: float = 1.0,
    ):
        super().__init__()
        if distance is None:
            distance = LpDistance(p=2, power=1, normalize_embeddings=True)
        if not isinstance(distance, BaseDistance):
            raise ParameterError(f"emlf: distance must be a pytorch-metric-learning distance, got {distance!r}")
        kind = distance_kind(distance)
        if variant not in VARIANTS:
            raise ParameterError(f"emlf: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        neg_margin = DEFAULT_NEG_MARGIN[kind] if neg_margin is None else neg_margin
        if pos_margin < 0 or neg_margin <= pos_margin:
            raise ParameterError(
                f"emlf: need 0 <= pos_margin < neg_margin, got pos_margin={pos_margin}, neg_margin={neg_margin}"
            )
        if pull_weight < 0 or push_weight < 0:
            raise ParameterError("emlf: pull_weight and push_weight must be >= 0")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self.variant = variant
        self.pull_weight = float(pull_weight)
        self.push_weight = float(push_weight)
        self.distance_name = kind
        self.distance = distance

    def extra_repr(self) -> str:
        return (
            f"distance={self.distance_name}, variant={self.variant}, pos_margin={self.pos_margin}, "
            f"neg_margin={self.neg_margin}, pull_weight={self.pull_weight}, push_weight={self.push_weight}"
        )

    def pairwise_distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        mat = self.distance(embeddings)
        # PML's cosine is a similarity; 1 - cos turns it into a distance in [0, 2].
        return 1 - mat if self.distance.is_inverted else mat

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> torch.Tensor:
        if len(embeddings) == 0:
            return embeddings.sum()
        # Squared hinges of small distances lose too much in half precision: under AMP, compute in float32.
        with torch.autocast(embeddings.device.type, enabled=False):
            if embeddings.dtype in (torch.float16, torch.bfloat16):
                embeddings = embeddings.float()
            return self._loss(embeddings, labels.to(embeddings.device), indices_tuple)

    def _loss(self, embeddings, labels, indices_tuple):
        d = self.pairwise_distances(embeddings)
        pos, neg = _pair_masks(labels, indices_tuple)
        # One column per expression present in the batch.
        classes = F.one_hot(torch.unique(labels, return_inverse=True)[1]).to(d.dtype)
        pull, has_pos = self._pull(d, pos)
        push, has_neg = self._push(d, neg, classes)
        return self.pull_weight * _class_balanced_mean(pull, has_pos, classes) + self.push_weight * (
            _class_balanced_mean(push, has_neg, classes)
        )

    def _pull(self, d, pos):
        """Per-anchor pull term and whether the anchor has a positive."""
        has_pos = pos.any(dim=1)
        if self.variant == "hard":
            farthest = torch.where(pos, d, torch.zeros_like(d)).amax(dim=1)
            return F.relu(farthest - self.pos_margin).pow(2), has_pos
        per_pair = torch.where(pos, F.relu(d - self.pos_margin).pow(2), torch.zeros_like(d))
        # clamp: an anchor without positives gets 0/1, never 0/0 (whose gradient would be NaN).
        return per_pair.sum(dim=1) / pos.sum(dim=1).clamp(min=1), has_pos

    def _push(self, d, neg, classes):
        """Per-anchor push term and whether the anchor has a negative."""
        has_neg = neg.any(dim=1)
        if self.variant == "hard":
            nearest = torch.where(neg, d, torch.full_like(d, float("inf"))).amin(dim=1)
            return F.relu(self.neg_margin - nearest).pow(2), has_neg
        per_pair = torch.where(neg, F.relu(self.neg_margin - d).pow(2), torch.zeros_like(d))
        # Mean within each negative expression, then over the negative expressions: every other expression
        # is pushed away equally, however many of its samples the batch holds.
        sums = per_pair @ classes
        counts = neg.to(d.dtype) @ classes
        per_class = sums / counts.clamp(min=1)
        n_classes = (counts > 0).sum(dim=1).clamp(min=1)
        return per_class.sum(dim=1) / n_classes, has_neg


def _pair_masks(labels, indices_tuple):
    """Boolean (B, B) masks of the anchor-positive and anchor-negative pairs that take part."""
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg = ~same
    if indices_tuple is None:
        return pos, neg
    a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
    mined_pos = torch.zeros_like(pos)
    mined_neg = torch.zeros_like(neg)
    mined_pos[a1, p] = True
    mined_neg[a2, n] = True
    # AND with the label masks: a miner's pairs are trusted for selection, not for labels or self-pairs.
    return pos & mined_pos, neg & mined_neg


def _class_balanced_mean(values, valid, classes):
    """Mean of ``values`` over the valid anchors of each class, then over the classes that have any.

    0 (still attached to the graph) when no anchor is valid.
    """
    values = torch.where(valid, values, torch.zeros_like(values))
    sums = values @ classes
    counts = valid.to(classes.dtype) @ classes
    return (sums / counts.clamp(min=1)).sum() / (counts > 0).sum().clamp(min=1)
