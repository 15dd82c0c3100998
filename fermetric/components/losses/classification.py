"""The classification loss of the joint objective: cross-entropy on the classifier's logits."""

import torch
import torch.nn.functional as F
from torch import nn

from fermetric.errors import RecipeError


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with optional label smoothing and per-class weights.

    ``class_weights`` (one per class, in class-id order) counter the class imbalance of FER datasets
    (e.g. few "disgust" or "fear" images). ``num_classes`` is filled in by the engine from the model and only
    serves to reject a weight list of the wrong length before training starts.
    """

    uses_logits = True

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise RecipeError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
        if class_weights is not None:
            if num_classes is not None and len(class_weights) != num_classes:
                raise RecipeError(
                    f"cross_entropy: class_weights has {len(class_weights)} values but the model has "
                    f"{num_classes} classes"
                )
            if any(w < 0 for w in class_weights):
                raise RecipeError("cross_entropy: class_weights must be >= 0")
        self.label_smoothing = float(label_smoothing)
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        # A buffer so it follows the module to the GPU; not persistent because it comes from the recipe,
        # and a checkpoint must load whether or not the resumed recipe sets it.
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=self.label_smoothing)
