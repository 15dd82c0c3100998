"""Focal loss on the classifier's logits (Lin, Goyal, Girshick, He, Dollar, "Focal Loss for Dense Object
Detection", ICCV 2017), in its multi-class softmax form.

For one image with label ``y`` and softmax probability ``p = softmax(logits)[y]``::

    FL = -alpha_y * (1 - p)^gamma * log(p)

averaged over the batch. ``gamma = 0`` without ``alpha`` is exactly cross-entropy; a larger ``gamma`` shrinks
the loss of images the model already gets right (``p`` near 1), so the gradient concentrates on the hard ones:
for facial expressions, the confusable fear/surprise and sad/neutral pairs and the rare classes (disgust).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fermetric.errors import RecipeError

# 1 - p is clamped to this before the power: for 0 < gamma < 1, d(x^gamma)/dx is infinite at x = 0, and a
# confident image (p == 1.0 in float32 once the logit gap passes ~17) would otherwise give NaN gradients.
_TINY = 1e-12


class FocalLoss(nn.Module):
    """Focal loss, ``mean_i -alpha_{y_i} (1 - p_i)^gamma log p_i``, on logits.

    gamma: the focusing parameter, >= 0 (the paper's default is 2; 0 gives cross-entropy).
    alpha: optional weight per class, in class-id order (the order of the dataset's class names), e.g. the
        inverse class frequency; the weighted losses are averaged over the batch (not divided by the sum of
        the weights, as ``torch.nn.functional.cross_entropy(weight=...)`` does).
    num_classes: filled in by fermetric from the model; only used to reject an ``alpha`` of the wrong length
        before training starts.

    ``uses_logits = True`` tells fermetric's engine to call ``loss(logits, labels)`` instead of
    ``loss(embeddings, labels)``.
    """

    uses_logits = True

    def __init__(self, gamma: float = 2.0, alpha: list[float] | None = None, num_classes: int | None = None):
        super().__init__()
        gamma = float(gamma)
        if not gamma >= 0.0:  # also rejects NaN
            raise RecipeError(f"focal: gamma must be >= 0, got {gamma}")
        if alpha is not None:
            alpha = [float(a) for a in alpha]
            if num_classes is not None and len(alpha) != num_classes:
                raise RecipeError(f"focal: alpha has {len(alpha)} values but the model has {num_classes} classes")
            if any(not a >= 0.0 for a in alpha):
                raise RecipeError(f"focal: alpha values must be >= 0, got {alpha}")
        self.gamma = gamma
        # A buffer follows the module to the GPU; not persistent: it comes from the recipe, not from training.
        self.register_buffer("alpha", None if alpha is None else torch.tensor(alpha), persistent=False)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={None if self.alpha is None else self.alpha.tolist()}"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"focal: expected logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
        log_p = F.log_softmax(logits, dim=1).gather(1, labels.long()[:, None]).squeeze(1)
        # 1 - p from log p without cancellation: exactly what matters for the confident images.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(_TINY)
        loss = -one_minus_p.pow(self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha.to(loss.dtype)[labels]
        return loss.mean()
