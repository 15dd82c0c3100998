"""The network every recipe trains: backbone -> embedding -> linear classifier.

Metric losses see the embedding; ``cross_entropy`` sees the classifier's logits, computed from that same
embedding, so the joint objective shapes one space.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# How uint8 pixels become the network's input (``model.normalization``; checkpoints record it as ``normalization``).
NORMALIZATIONS = ("minus_one_to_one", "imagenet")
# torchvision's ImageNet statistics (RGB, pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization_stats(how: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 255] pixel scale: ``x_float = (x_uint8 - mean) / std``.

    ``minus_one_to_one``: mean 127.5, std 127.5 (maps [0, 255] onto [-1, 1]). ``imagenet``: 255 times ImageNet's
    RGB mean/std for 3 channels; for 1 channel (a gray image) the mean of the three means and of the three stds
    (0.449, 0.226), the same for every channel of any other count.
    """
    if how == "minus_one_to_one":
        return (127.5,) * channels, (127.5,) * channels
    if how == "imagenet":
        if channels == 3:
            return tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD)
        mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
        return (255.0 * mean,) * channels, (255.0 * std,) * channels
    raise ValueError(f"normalization {how!r}: expected one of {', '.join(NORMALIZATIONS)}")


def normalize(images: torch.Tensor, how: str = "minus_one_to_one") -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 network input, by :func:`normalization_stats`. ``minus_one_to_one`` is computed
    exactly as fermetric always has (``x / 127.5 - 1``), bit for bit."""
    if how == "minus_one_to_one":
        return images.float().div(127.5).sub(1.0)
    mean, std = normalization_stats(how, int(images.shape[1]))
    x = images.float()
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class _Normalize:
    """``FERModel.normalize(x)`` (on the class): today's [-1, 1] mapping, as every caller has used it;
    ``model.normalize(x)`` (on an instance): the model's own ``normalization``."""

    def __get__(self, obj, cls=None):
        if obj is None:
            def by_name(images: torch.Tensor, how: str = "minus_one_to_one") -> torch.Tensor:
                return normalize(images, how)
            return by_name

        def own(images: torch.Tensor) -> torch.Tensor:
            return normalize(images, obj.normalization)
        return own


class FERModel(nn.Module):
    """``normalization``: how :meth:`normalize` maps uint8 pixels (:data:`NORMALIZATIONS`)."""

    normalize = _Normalize()

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_dim: int = 128, dropout: float = 0.0, in_chans: int = 1,
                 normalization: str = "minus_one_to_one"):
        super().__init__()
        if not isinstance(getattr(backbone, "num_features", None), int):
            raise TypeError(f"backbone {type(backbone).__name__} has no int attribute num_features")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r}: expected one of {', '.join(NORMALIZATIONS)}")
        self.backbone = backbone
        self.in_chans = in_chans
        self.normalization = normalization
        self.embedding_dim = int(embedding_dim)
        self.embedding = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, embedding_dim), nn.BatchNorm1d(embedding_dim))
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float (B, C, H, W) from :meth:`normalize`; 1 channel is repeated to ``in_chans``. Returns
        (embeddings, logits)."""
        if self.in_chans != x.shape[1]:
            x = x.expand(-1, self.in_chans, -1, -1)
        embeddings = self.embedding(self.backbone(x))
        return embeddings, self.classifier(embeddings)


@torch.no_grad()
def predict(model: FERModel, images: torch.Tensor, device: torch.device, batch_size: int = 256, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits (float32 numpy) for uint8 images (a tensor, or anything that slices into one, such as
    :class:`fermetric.data.store.CropArray`), with optional test-time augmentation. Pixels are normalised by the
    model's own ``normalization`` (a wrapper such as DDP is looked through)."""
    model.eval()
    how = getattr(getattr(model, "module", model), "normalization", "minus_one_to_one")
    embs, logits = [], []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device), how)
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


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N``; CUDA asked for where there is none
    is an error that says so."""
    from fermetric.errors import FermetricError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise FermetricError(f"device {name!r}: CUDA is not available here; use \"auto\" or \"cpu\"")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise FermetricError(f"device {name!r}: {exc}") from exc
