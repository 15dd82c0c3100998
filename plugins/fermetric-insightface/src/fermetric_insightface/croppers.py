"""The croppers: ``insightface_align`` (ArcFace five-point alignment) and ``insightface_face`` (the whole face
from insightface's detector and 106-point landmarks).

Both follow fermetric's cropper contract: built as ``factory(**recipe_params)``, called as
``cropper(face: FaceImage) -> np.ndarray`` (uint8 grayscale, exactly ``output_size``), raising
:class:`fermetric.errors.NoFace` when there is no face.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

from fermetric.errors import NoFace, RecipeError
from fermetric.components.landmarks import DlibLandmarks, get_landmarks
from fermetric.contracts import IDENTITY, FaceImage, apply_affine, five_from_68, level_rotation, to_gray, warp

from .models import InsightFaceDetector, import_insightface

FIVE_POINT_SOURCES = ("dlib", "dataset", "template", "insightface")

def arcface_transform(five: np.ndarray, size: int) -> np.ndarray:
    """2x3 similarity mapping the five points onto insightface's ArcFace template for a ``size`` crop.

    ``insightface.utils.face_align.estimate_norm`` itself for sizes it supports (multiples of 112 or 128);
    for other sizes its 112 template scaled by ``size / 112``.
    """
    import_insightface()
    from insightface.utils.face_align import estimate_norm

    five = np.asarray(five, dtype=np.float64)
    if not np.isfinite(five).all():
        raise NoFace("landmarks are not finite")
    if np.hypot(*(five[1] - five[0])) < 1e-3:
        raise NoFace("degenerate landmarks (the eyes coincide)")
    native = size % 112 == 0 or size % 128 == 0
    with warnings.catch_warnings():
        # scikit-image >= 0.26 deprecates the SimilarityTransform.estimate that insightface 2.1 calls.
        warnings.simplefilter("ignore", FutureWarning)
        matrix = estimate_norm(five.astype(np.float32), image_size=size if native else 112)
    matrix = np.asarray(matrix, dtype=np.float64)
    if not native:
        matrix = matrix * (size / 112.0)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        raise NoFace("degenerate landmarks (no similarity fits them)")
    return matrix


def check_detector_params(det_size: int, det_thresh: float) -> None:
    if int(det_size) < 32 or int(det_size) % 32:
        raise RecipeError(f"det_size = {det_size}: insightface's detector needs a multiple of 32 (e.g. 640)")
    if not 0.0 < float(det_thresh) < 1.0:
        raise RecipeError(f"det_thresh = {det_thresh} is outside (0, 1)")


class FivePointAligner:
    """ArcFace-style alignment: the similarity transform that puts five facial points (eye centres, nose tip,
    mouth corners) onto insightface's template (``insightface.utils.face_align.estimate_norm``, as in its
    ``norm_crop``), so that eyes, nose and mouth land at the same pixels in every crop.

    landmarks: where the five points come from. ``dlib`` (default), ``dataset`` or ``template``: fermetric's
        68 landmarks (:mod:`fermetric.components.landmarks`) reduced to five (eye centres = mean of points 36-41 and
        42-47, nose tip 30, mouth corners 48 and 54); no model pack needed. ``insightface``: the five points
        of insightface's own face detector, from the local ``model_pack``.
    size: output is ``size`` x ``size``; insightface's template is for 112 (128 gives its wider 128 variant),
        other sizes use the 112 template scaled. Outside the image is black, as in ``norm_crop``.
    model_pack: a local insightface model-pack folder (e.g. ``models/buffalo_l``, holding ``det_10g.onnx``),
        only for ``landmarks = "insightface"``. It is never downloaded: a missing pack fails at once.
    det_size, det_thresh: the detector's input size (a multiple of 32) and score threshold.
    """

    def __init__(self, landmarks: str = "dlib", size: int = 112, model_pack: str = "", det_size: int = 640,
                 det_thresh: float = 0.5):
        if landmarks not in FIVE_POINT_SOURCES:
            raise RecipeError(f"landmarks = {landmarks!r}; valid: {', '.join(FIVE_POINT_SOURCES)}")
        if int(size) < 16:
            raise RecipeError(f"size = {size} is too small (at least 16 pixels)")
        if model_pack and landmarks != "insightface":
            raise RecipeError(f'model_pack is only used with landmarks = "insightface" (landmarks = {landmarks!r})')
        check_detector_params(det_size, det_thresh)
        self.landmarks = landmarks
        self.size = int(size)
        self.model_pack = model_pack
        self.output_size: tuple[int, int] = (self.size, self.size)
        import_insightface()  # fail now, with the install hint, rather than on the first image
        self.detector = None
        if landmarks == "insightface":
            self.detector = InsightFaceDetector(model_pack, need_106=False, det_size=det_size, det_thresh=det_thresh)
        elif landmarks == "dlib":
            DlibLandmarks()  # loads dlib's models once, or fails with fermetric's install hint

    def __repr__(self) -> str:
        pack = f", model_pack={self.model_pack!r}" if self.model_pack else ""
        return f"FivePointAligner(landmarks={self.landmarks!r}, size={self.size}{pack})"

    def five_points(self, face: FaceImage) -> np.ndarray:
        """The five points (float64 (5, 2), template order) of the largest face, or :class:`NoFace`."""
        if self.detector is None:
            return five_from_68(get_landmarks(self.landmarks, face))
        found = self.detector.detect(to_gray(face.image))
        if not found:
            raise NoFace("no face detected")
        if found[0].kps is None:
            raise NoFace("the detector gave no five points")
        return found[0].kps

    def transform(self, face: FaceImage) -> np.ndarray:
        """The 2x3 matrix from the image to the crop."""
        return arcface_transform(self.five_points(face), self.size)

    def __call__(self, face: FaceImage) -> np.ndarray:
        image = to_gray(face.image)
        return warp(image, self.transform(face), self.size, self.size, cv2.BORDER_CONSTANT, 0)


class InsightFaceCropper:
    """The whole face from insightface's own models in a local ``model_pack``: its detector and its 106-point
    landmarks (face contour, brows, eyes, nose, lips).

    The image is rotated about the midpoint of the detector's two eye points so that they are level (``align``);
    the box is the extent of the 106 landmarks in that frame (jaw line to brows), grown by ``margin`` of its
    width/height on each side and made square, then resampled to ``size`` x ``size`` (edges replicated).
    The same framing as fermetric's ``full_face`` with dlib landmarks, from insightface's models instead.

    model_pack: a local insightface model-pack folder with a detector and ``2d106det.onnx`` (buffalo_l,
        buffalo_m, buffalo_s or antelopev2, unpacked). Never downloaded: a missing pack fails at once.
    """

    def __init__(self, model_pack: str = "", size: int = 48, margin: float = 0.1, align: bool = True,
                 det_size: int = 640, det_thresh: float = 0.5):
        if int(size) < 8:
            raise RecipeError(f"size = {size} is too small (at least 8 pixels)")
        if not 0.0 <= float(margin) <= 2.0:
            raise RecipeError(f"margin = {margin} is outside [0, 2]")
        check_detector_params(det_size, det_thresh)
        self.model_pack = model_pack
        self.size = int(size)
        self.margin = float(margin)
        self.align = bool(align)
        self.output_size: tuple[int, int] = (self.size, self.size)
        self.detector = InsightFaceDetector(model_pack, need_106=True, det_size=det_size, det_thresh=det_thresh)

    def __repr__(self) -> str:
        return f"InsightFaceCropper(model_pack={self.model_pack!r}, size={self.size}, margin={self.margin}, align={self.align})"

    def transform(self, face: FaceImage) -> np.ndarray:
        """The 2x3 matrix from the image to the crop."""
        found = self.detector.detect(to_gray(face.image))
        if not found:
            raise NoFace("no face detected")
        det = found[0]
        if det.landmarks_106 is None:
            raise NoFace("the landmark model gave no 106 points")
        rotation = level_rotation(det.kps[0], det.kps[1]) if self.align and det.kps is not None else IDENTITY
        pts = apply_affine(rotation, det.landmarks_106)
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        w, h = x1 - x0, y1 - y0
        if not (w >= 1 and h >= 1):
            raise NoFace("degenerate face box")
        x0, x1, y0, y1 = x0 - self.margin * w, x1 + self.margin * w, y0 - self.margin * h, y1 + self.margin * h
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # Box edges (cx +- side/2) onto the crop's outer pixel edges; pixel centres at integers on both sides.
        scale = self.size / side
        to_crop = np.array([[scale, 0, (self.size - 1) / 2 - scale * cx], [0, scale, (self.size - 1) / 2 - scale * cy]])
        return (np.vstack([to_crop, [0, 0, 1]]) @ np.vstack([rotation, [0, 0, 1]]))[:2]

    def __call__(self, face: FaceImage) -> np.ndarray:
        image = to_gray(face.image)
        return warp(image, self.transform(face), self.size, self.size, cv2.BORDER_REPLICATE)
