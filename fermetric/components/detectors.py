"""fermetric's built-in face detectors for pictures at inference: ``dlib`` (HOG detector + 68 landmarks) and
``haar`` (OpenCV's cascade, boxes only).

A face detector is built from its parameters (``factory(**params)``, as any component) and called on a grey
picture: ``detector(gray) -> list[DetectedFace]``, every face it finds, largest first, in the picture's pixels.
Inference (:mod:`fermetric.inference.faces`) turns each one into the crop the model saw in training; a plugin adds
its own through ``register_face_detectors`` and users pick it with ``fermetric predict --detect NAME``.
"""

from __future__ import annotations

import threading
from typing import Annotated

import cv2
import numpy as np

import fermetric
from fermetric.contracts import DetectedFace, Range
from fermetric.errors import FermetricError


def _box_of_points(pts: np.ndarray) -> tuple[float, float, float, float]:
    """The points' extent as a DetectedFace box: pixel-centre coordinates + 0.5 are first-pixel / one-past-last."""
    return (float(pts[:, 0].min()) + 0.5, float(pts[:, 1].min()) + 0.5,
            float(pts[:, 0].max()) + 0.5, float(pts[:, 1].max()) + 0.5)


class DlibFaces:
    """Every face dlib's HOG detector finds, with its 68 landmarks (fermetric's ``DlibLandmarks``), largest first.

    upsample: how many times dlib doubles the picture internally to find smaller faces (about 4x the cost and the
        memory each, so at most 3).
    """

    def __init__(self, upsample: Annotated[int, Range(0, 3)] = 0):
        from fermetric.components.landmarks import DlibLandmarks

        self.landmarks = DlibLandmarks(upsample=upsample)  # fails now, with the install hint, when dlib is missing

    def __call__(self, gray: np.ndarray) -> list[DetectedFace]:
        return [DetectedFace(_box_of_points(pts), pts) for pts in self.landmarks.detect_all(gray)]


class HaarFaces:
    """Every frontal face OpenCV's Haar cascade finds, largest first (the recipe-side ``HaarFaceBox`` keeps only
    the largest). Pictures under 160 px are padded and upscaled first, as the landmark sources do.

    scale_factor: how much the search window grows from one scale to the next (``detectMultiScale``'s; > 1).
    min_neighbors: how many overlapping detections a face needs (fewer finds more faces, and more false ones).
    """

    def __init__(self, scale_factor: Annotated[float, Range(1.0, 4.0, low_inclusive=False)] = 1.1,
                 min_neighbors: Annotated[int, Range(0, 100)] = 5):
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise FermetricError(f"OpenCV's Haar cascade {path} is missing; fermetric needs opencv-python-headless>=4.8,<5")
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)
        self._lock = threading.Lock()  # a CascadeClassifier is not safe to share between threads

    def __call__(self, gray: np.ndarray) -> list[DetectedFace]:
        h, w = gray.shape
        pad, scale, view = 0, 1.0, gray
        if min(h, w) < 160:
            pad = int(round(0.25 * min(h, w)))
            view = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            scale = 256 / min(view.shape)
            view = cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        with self._lock:
            boxes = self.cascade.detectMultiScale(view, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(40, 40))
        out = [(x / scale - pad, y / scale - pad, (x + bw) / scale - pad, (y + bh) / scale - pad) for x, y, bw, bh in boxes]
        out.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        return [DetectedFace(tuple(float(v) for v in b)) for b in out]


@fermetric.hookimpl
def register_face_detectors(register):
    register("dlib", DlibFaces)
    register("haar", HaarFaces)
