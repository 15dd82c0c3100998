"""The ``insightface`` face detector: inference on photos (``fermetric predict --detect insightface``) finds and
aligns faces with insightface's detector and its five points, for a model trained with any cropper."""

from __future__ import annotations

import numpy as np

from fermetric.contracts import DetectedFace

from .croppers import check_detector_params
from .models import InsightFaceDetector


class InsightFaceFaces:
    """The ``insightface`` face detector for pictures at inference (``fermetric predict --detect insightface
    --detector-param model_pack="models/buffalo_l"``): insightface's detector from a local model pack, every face
    with its box, its five points and its score, largest first. Nothing is downloaded: a missing pack fails when
    the model is loaded, naming the folder.

    model_pack: a local insightface model-pack folder holding a detector (``det_10g.onnx`` in buffalo_l, ...).
    det_size: the detector's input side (a multiple of 32).
    det_thresh: the detector's score threshold.
    """

    def __init__(self, model_pack: str = "", det_size: int = 640, det_thresh: float = 0.5):
        check_detector_params(det_size, det_thresh)
        self.detector = InsightFaceDetector(
            model_pack, need_106=False, det_size=det_size, det_thresh=det_thresh, key="--detector-param model_pack",
            alternative='give one with --detector-param model_pack="path/to/buffalo_l", or use --detect dlib or'
                        " --detect haar, which need no model pack.")

    def __call__(self, gray: np.ndarray):
        return [DetectedFace(tuple(float(v) for v in d.bbox), d.kps, d.score) for d in self.detector.detect(gray)]
