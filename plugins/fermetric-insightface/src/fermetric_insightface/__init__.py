"""fermetric-insightface: croppers built on insightface.

* ``insightface_align``: ArcFace five-point alignment (insightface's similarity transform onto its template),
  fed by fermetric's own landmarks (dlib, dataset, template: no model download, no model pack) or by
  insightface's detector from a local model pack.
* ``insightface_face``: the whole face framed by insightface's detector and 106-point landmarks, from a local
  model pack.
* ``insightface`` (a face detector, ``fermetric predict --detect insightface --detector-param model_pack=...``):
  insightface's detector and its five points find and align the faces of photos for any trained model.

Nothing is ever downloaded and nothing is written to ``~/.insightface``: a missing model pack fails at once
with a message naming the folder and the files it should hold. insightface is imported only when a cropper
is built, so ``fermetric plugins`` stays fast and lists these croppers even where insightface is missing.
"""

from importlib.metadata import PackageNotFoundError, version

import fermetric
from fermetric_insightface.croppers import FivePointAligner, InsightFaceCropper, arcface_transform, five_from_68
from fermetric_insightface.detectors import InsightFaceFaces
from fermetric_insightface.models import InsightFaceDetector, ModelPackError, check_model_pack

try:
    __version__ = version("fermetric-insightface")
except PackageNotFoundError:
    __version__ = "0+unknown"


@fermetric.hookimpl
def register_croppers(register):
    register("insightface_align", FivePointAligner)
    # The conventional place of insightface's default pack: smoke tests build it from there, or skip naming it.
    register("insightface_face", InsightFaceCropper, example={"model_pack": "~/.insightface/models/buffalo_l"})


@fermetric.hookimpl
def register_face_detectors(register):
    register("insightface", InsightFaceFaces, example={"model_pack": "~/.insightface/models/buffalo_l"})


__all__ = [
    "FivePointAligner",
    "InsightFaceCropper",
    "InsightFaceDetector",
    "InsightFaceFaces",
    "ModelPackError",
    "arcface_transform",
    "check_model_pack",
    "five_from_68",
    "register_croppers",
    "register_face_detectors",
]
