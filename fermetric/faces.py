"""What a cropper receives: one decoded face image and, when known, its 68 landmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FaceImage:
    """One image on its way to a cropper.

    image: HxW uint8 grayscale (the whole pipeline is grayscale; a backbone may repeat it to 3 channels).
    landmarks: (68, 2) float32 pixel coordinates (x, y) in the iBUG-300W order, when the dataset gives
        them; ``None`` otherwise.
    landmarks_error: why the dataset could not give landmarks it was asked for (missing file, ...).
    path: where the image came from, for messages.
    """

    image: np.ndarray
    path: str = ""
    landmarks: np.ndarray | None = None
    landmarks_error: str | None = None
