"""From any picture to the faces a trained model can read: detection, alignment, and the crop the model saw.

The partial image is computed *outside* the network, by the recipe's cropper, from a face framed the way the
training data was framed. A model's checkpoint names that cropper and its landmark source (``crop.landmarks``),
and the source decides what a raw photo needs before the cropper may run:

``template`` (and ``haar``)
    The model was trained on pre-aligned face crops (CK+48, FER2013): the cropper assumes the whole image *is*
    a face framed like :data:`~fermetric.components.landmarks.TEMPLATE_68`. A raw photo therefore first gets
    its faces detected, and each face is warped onto that framing ("aligned crop"): with dlib landmarks by a
    similarity transform onto the template's eyes and nose, with a Haar box by mapping the box onto the crop
    (the CK+48 crops coincide with the Haar box, see docs/method.md). Without this step a 320x243 photo would
    be read as if hair and forehead were "eyes and brows".
``dataset`` and ``dlib``
    The cropper places its regions from 68 landmarks. Each detected face's landmarks are handed to the cropper
    (as ``landmarks = "dataset"``), which keeps several faces per image apart (the ``dlib`` cropper alone would
    always take the largest face). With Haar, the template is fitted into the box, as ``au_partial`` does.
any other source (a plugin's own detector)
    The cropper runs as trained on the whole image and finds its face itself (one face per image).

``detect`` chooses the detector: a registered face detector (``dlib``, ``haar``, or a plugin's, see
``register_face_detectors``; ``fermetric plugins --kind face_detector`` lists them), ``none`` (the whole image is one
face, already framed like the training data) or ``auto``: dlib when installed, else Haar; and for a model trained
on aligned crops, an image no larger than twice the model's input (a 48x48 CK+48 or FER2013 image) is taken as an
aligned crop already, which is exactly what the model trained on. A detector's 68 landmarks align the face by
the stable points below, 5 points (eyes, nose tip, mouth corners) by the template's same five, and a bare box is
mapped onto the crop as a Haar box is. Every face says how it was found (:attr:`Face.method`).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from fermetric.contracts import DetectedFace, FaceImage, five_from_68, to_gray, warp
from fermetric.errors import FermetricError, NoFace, RecipeError

# Landmark sources whose croppers assume an image that already is an aligned face crop.
ALIGNED_CROP_SOURCES = ("template", "haar")
# Landmark sources whose croppers read 68 landmarks: those of each detected face are handed over.
LANDMARK_SOURCES = ("dataset", "dlib")
# Landmarks that barely move with the expression (eye corners and lids, nose bridge and nostrils): the similarity
# onto the template is fitted on them, so that a dropped jaw (surprise) or raised brows do not shrink or shift
# the aligned face.
STABLE_POINTS = np.r_[27:36, 36:48]
# "auto" treats an image up to this many times the model's input side as an aligned crop of a template model.
ALIGNED_CROP_MAX_RATIO = 2.0


@dataclass
class Face:
    """One face, ready for the model's cropper.

    face_image: what the cropper receives (the original image, or the aligned crop of this face).
    method: how the face was found: the detector's name (``dlib``, ``haar``, a plugin's), ``given landmarks``,
        ``whole image`` or ``cropper``.
    box: (x0, y0, x1, y1) of the face's frame in the original image: its first column and row and one past its
        last, as OpenCV and PIL write boxes (``image[y0:y1, x0:x1]``; the bounding box of ``quad`` when rotated).
    quad: the frame's four corners (top-left, top-right, bottom-right, bottom-left) in the original image, in
        pixel-centre coordinates (pixel i spans i - 0.5 .. i + 0.5); a rotated rectangle when the face was aligned.
    to_original: 2x3 affine from ``face_image`` pixels to original pixels (identity unless aligned).
    """

    face_image: FaceImage = field(repr=False)
    method: str
    box: tuple[float, float, float, float]
    quad: np.ndarray = field(repr=False)
    to_original: np.ndarray = field(default_factory=lambda: np.array([[1.0, 0, 0], [0, 1.0, 0]]), repr=False)


def dlib_available() -> bool:
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        from fermetric.components.landmarks import dlib_model_path

        dlib_model_path()
    except FermetricError:
        return False
    return True


def _quad_of_box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _box_of(quad: np.ndarray) -> tuple[float, float, float, float]:
    """The box (first pixel, one past the last) around a quad in pixel-centre coordinates."""
    return (float(quad[:, 0].min()) + 0.5, float(quad[:, 1].min()) + 0.5, float(quad[:, 0].max()) + 0.5, float(quad[:, 1].max()) + 0.5)


def _quad_of_pixels(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The quad (pixel-centre coordinates) of a box given as first pixel / one past the last."""
    return _quad_of_box(x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``
    (Umeyama, without reflection)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign) / max(s.var(0).sum(), 1e-12))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - m[:, :2] @ ms
    return m


def _invert(affine: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]


_detectors: dict[tuple, Any] = {}
_detector_lock = threading.Lock()


def build_detector(name: str, params: dict[str, Any] | None = None, host=None):
    """The registered face detector ``name`` built with ``params``, once per process for each (name, parameters as
    the factory binds them, defaults included): dlib's landmark model alone is ~100 MB to parse, an insightface
    detector an ONNX session."""
    import inspect

    from fermetric.build import build
    from fermetric.plugins import check_value, get_host

    host = host or get_host()
    registry = host.registry("face_detector")
    if name not in registry:
        raise unknown_detector(name, host)
    component = registry.get(name)
    params = dict(params or {})
    where = detect_choice(name)
    if "name" in params:
        raise RecipeError(f"{where}: 'name' is not a detector parameter (detect= / --detect chooses the detector)")
    unknown = sorted(set(params) - set(component.params)) if not component.accepts_any else []
    if unknown:
        valid = ", ".join(component.params) or "none"
        raise RecipeError(f"{where}: unknown parameter {', '.join(map(repr, unknown))}; {name}'s parameters: {valid}")
    for key, value in params.items():
        expected = check_value(component.params[key], value) if key in component.params else None
        if expected is not None:
            raise RecipeError(f"{where}: {key} = {value!r} must be {expected}")
    try:
        bound = inspect.signature(component.factory).bind(**params)
        bound.apply_defaults()
        key = (name, component.factory, repr(sorted(bound.arguments.items())))
    except (TypeError, ValueError):
        key = (name, component.factory, repr(sorted(params.items())))
    with _detector_lock:
        if key not in _detectors:
            _detectors[key], _ = build(host, "face_detector", {"name": name, **params}, {"name"}, where=where)
        return _detectors[key]


def detector_names(host=None) -> list[str]:
    """What ``detect`` accepts: ``auto``, ``none`` and every registered face detector."""
    from fermetric.plugins import get_host

    return ["auto", *(host or get_host()).registry("face_detector").names(), "none"]


def detect_choice(name: str) -> str:
    """How errors name a detector choice: as the keyword of load_model / FaceFinder and as predict's option, since
    the same message reaches users of the Python API and of the command line."""
    return f"detect={name!r} (--detect {name})"


def unknown_detector(name: str, host=None) -> FermetricError:
    return FermetricError(f"{detect_choice(name)}: no such face detector; choose one of {', '.join(detector_names(host))}"
                          " (fermetric plugins --kind face_detector lists who registers each)")


class FaceFinder:
    """Finds the faces of one model's kind in any image (see the module docstring for the rules)."""

    def __init__(self, crop_table: dict[str, Any], input_size: tuple[int, int], detect: Any = "auto",
                 detector_params: dict[str, Any] | None = None, host=None):
        """``detect``: ``auto``, ``none``, a registered face detector's name (built with ``detector_params``), or a
        detector object itself (``detector(gray) -> list[DetectedFace]``)."""
        self.source = str(crop_table.get("landmarks", "template"))
        self.crop_name = str(crop_table.get("name"))
        self.margin = float(crop_table.get("margin", 0.1)) if self.crop_name == "full_face" else 0.0
        self.size = int(max(input_size))
        self.host = host
        self.detector_params = dict(detector_params or {})
        self._instance = None
        if callable(detect) and not isinstance(detect, str):
            if self.detector_params:
                raise RecipeError(f"detector parameters {sorted(self.detector_params)} are for a detector named by"
                                  " detect='NAME'; a detector object is already built")
            name = getattr(detect, "name", None) or getattr(detect, "__name__", None) or type(detect).__name__
            self.requested, self.detector, self._instance = "object", str(name), detect
        elif not isinstance(detect, str):
            raise RecipeError(f"detect = {detect!r}: give a face detector's name ({', '.join(detector_names(host))})"
                              " or a detector object, detector(gray) -> list[DetectedFace]")
        else:
            self.requested = detect
            if detect == "auto":
                detector = "dlib" if dlib_available() else "haar"
            else:
                detector = detect
            if self.detector_params and detect in ("auto", "none"):
                raise RecipeError(f"detector parameters {sorted(self.detector_params)} need a named detector (detect='NAME', --detect NAME), not {detect!r}")
            if detector == "dlib" and not dlib_available():
                from fermetric.components.landmarks import DLIB_INSTALL_HINT

                raise FermetricError(f"{detect_choice('dlib')} needs dlib and its landmark model: {DLIB_INSTALL_HINT};"
                                     f" or use {detect_choice('haar')}")
            if detector not in detector_names(host):
                raise unknown_detector(detect, host)
            self.detector = detector
            if detect not in ("auto", "none") and self.mode != "cropper":
                # Asked for by name: a detector that lacks its model files fails now, before any picture is read.
                self._instance = build_detector(detector, self.detector_params, host)
        if self.mode == "cropper":
            self.detector = "none"

    def _detect(self, gray: np.ndarray) -> list[DetectedFace]:
        """The detector's faces, checked (a plugin's bad face must not stop a whole predict), largest first."""
        if self._instance is None:
            self._instance = build_detector(self.detector, self.detector_params, self.host)
        found = self._instance(gray)
        try:
            faces = list(found)
        except TypeError:
            raise FermetricError(f"face detector {self.detector!r} returned {type(found).__name__}, not a list of"
                                 " fermetric.contracts.DetectedFace") from None
        wrong = [f for f in faces if not isinstance(f, DetectedFace)]
        if wrong:
            raise FermetricError(f"face detector {self.detector!r} returned {type(wrong[0]).__name__}, not fermetric.contracts.DetectedFace")
        usable, problems = [], []
        for f in faces:
            problem = _degenerate(f, gray.shape)
            (problems if problem else usable).append(problem or f)
        if faces and not usable:
            raise NoFace(f"face detector {self.detector!r} gave only unusable faces ({problems[0]})")
        return sorted(usable, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    @property
    def mode(self) -> str:
        if self.source in ALIGNED_CROP_SOURCES:
            return "aligned_crop"
        if self.source in LANDMARK_SOURCES:
            return "landmarks"
        return "cropper"

    def cropper_table(self, crop_table: dict[str, Any]) -> dict[str, Any]:
        """The crop table inference builds its cropper from: the faces found here supply the landmarks."""
        table = dict(crop_table)
        if self.mode == "landmarks":
            table["landmarks"] = "dataset"
        elif self.mode == "aligned_crop":
            # A haar model's crops are the Haar box (grown by full_face's margin): the aligned crop here is that
            # box, so the cropper only has to read it as a template-framed face.
            table["landmarks"] = "template"
        return table

    def describe(self) -> str:
        """One sentence for people: what happens to a photo before the model sees it."""
        det = {"dlib": "dlib (HOG detector + 68 landmarks)", "haar": "OpenCV's Haar cascade", "none": "no detector"}.get(
            self.detector, f"the {self.detector!r} face detector")
        if self.mode == "aligned_crop":
            if self.detector == "none":
                return (f"model trained on pre-aligned face crops (crop.landmarks = {self.source!r}): every image is taken"
                        f" as one face already framed like the training data ({detect_choice('none')})")
            small = (f"; images up to {int(self.size * ALIGNED_CROP_MAX_RATIO)} px are taken as aligned crops already"
                     if self.requested == "auto" else "")
            how = ("their box is mapped onto the training framing (no eye line: not rotated)" if self.detector == "haar"
                   else "aligned to the training framing")
            return (f"model trained on pre-aligned face crops (crop.landmarks = {self.source!r}): faces in photos are"
                    f" detected with {det} and {how} before the {self.crop_name} crop{small}")
        if self.mode == "landmarks":
            if self.detector == "none":
                return ("every image is taken as one face; template landmarks stand in for detected ones"
                        f" ({detect_choice('none')})")
            return (f"faces are detected with {det}; their landmarks place the {self.crop_name} crop"
                    + (" (Haar gives a box only: the landmark template is fitted into it, an approximation)" if self.detector == "haar" else ""))
        return f"the {self.crop_name} cropper finds the face itself (landmarks = {self.source!r}), one per image"

    # -- finding ------------------------------------------------------------------------------------------
    def find(self, image: np.ndarray, landmarks: np.ndarray | None = None, path: str = "") -> list[Face]:
        """The faces in ``image`` (largest first); empty when there is none. ``landmarks``: 68 points given by the
        caller (one face), used instead of a detector."""
        # Detectors read grey; the crops are cut from the picture's own pixels (RGB for a colour model).
        image = np.asarray(image)
        pixels = image[..., :3] if image.ndim == 3 else to_gray(image)
        gray = to_gray(pixels)
        h, w = gray.shape
        if self.mode == "cropper":
            return [Face(FaceImage(pixels, path=path, landmarks=landmarks), "cropper", (0.0, 0.0, float(w), float(h)), _quad_of_pixels(0, 0, w, h))]
        if landmarks is not None:
            return [self._from_landmarks(pixels, np.asarray(landmarks, np.float32), "given landmarks", path)]
        if self._whole_image(gray):
            return [self._whole(pixels, path)]
        return [self._from_detection(pixels, face, path) for face in self._detect(gray)]

    def _from_detection(self, pixels: np.ndarray, face: DetectedFace, path: str) -> Face:
        if face.landmarks is None:
            return self._from_box(pixels, tuple(float(v) for v in face.box), path, self.detector)
        pts = np.asarray(face.landmarks, np.float32).reshape(-1, 2)
        if len(pts) == 68:
            return self._from_landmarks(pixels, pts, self.detector, path)
        if len(pts) == 5:
            # As with 68 points, the similarity is fitted on points that barely move with the expression: the eyes
            # and the nose tip (a smile would pull the mouth corners, and with them the framing). A landmark cropper
            # gets the template's 68 points carried onto the face by it (an approximation, as for a Haar box).
            from fermetric.components.landmarks import template_landmarks

            target = template_landmarks(self.size, self.size)
            to_original = similarity(five_from_68(target)[:3], pts[:3])
            return self._from_landmarks(pixels, _warp_points(to_original, target).astype(np.float32), self.detector, path)
        raise FermetricError(f"face detector {self.detector!r} gave {len(pts)} landmarks; a DetectedFace holds 68, 5 or none")

    def _whole_image(self, gray: np.ndarray) -> bool:
        if self.detector == "none":
            return True
        # A template model's own kind of input (a 48x48 aligned crop) is used as it is: that is what it trained on,
        # and re-aligning it to the mean template would only move it away from its training framing.
        return self.requested == "auto" and self.mode == "aligned_crop" and max(gray.shape) <= ALIGNED_CROP_MAX_RATIO * self.size

    def _whole(self, pixels: np.ndarray, path: str) -> Face:
        from fermetric.components.landmarks import template_landmarks

        h, w = pixels.shape[:2]
        lms = template_landmarks(h, w) if self.mode == "landmarks" else None
        return Face(FaceImage(pixels, path=path, landmarks=lms), "whole image", (0.0, 0.0, float(w), float(h)), _quad_of_pixels(0, 0, w, h))

    def _template_frame(self, pts: np.ndarray) -> np.ndarray:
        """2x3 similarity from image pixels onto a ``size`` x ``size`` aligned crop (template framing)."""
        from fermetric.components.landmarks import template_landmarks

        target = template_landmarks(self.size, self.size)
        return similarity(pts[STABLE_POINTS], target[STABLE_POINTS])

    def _from_landmarks(self, pixels: np.ndarray, pts: np.ndarray, method: str, path: str) -> Face:
        to_crop = self._template_frame(pts)
        to_original = _invert(to_crop)
        s = self.size
        if self.mode == "landmarks":
            # The cropper works on the original image with these landmarks; the frame is only drawn.
            quad = _warp_points(to_original, _quad_of_box(-0.5, -0.5, s - 0.5, s - 0.5))
            return Face(FaceImage(pixels, path=path, landmarks=pts), method, _box_of(quad), quad)
        if self.crop_name == "full_face" and self.margin:
            # full_face on a haar model crops the box plus its margin: frame that much more face.
            grow = np.array([[1 / (1 + 2 * self.margin), 0, 0], [0, 1 / (1 + 2 * self.margin), 0]])
            grow[:, 2] = (s / 2 - 0.5) * (1 - grow[0, 0])
            to_crop = (np.vstack([grow, [0, 0, 1]]) @ np.vstack([to_crop, [0, 0, 1]]))[:2]
            to_original = _invert(to_crop)
        crop = warp(pixels, to_crop, s, s, border=cv2.BORDER_REPLICATE)
        quad = _warp_points(to_original, _quad_of_box(-0.5, -0.5, s - 0.5, s - 0.5))
        return Face(FaceImage(crop, path=path), method, _box_of(quad), quad, to_original)

    def _from_box(self, pixels: np.ndarray, box: tuple[float, float, float, float], path: str, method: str = "haar") -> Face:
        from fermetric.components.landmarks import template_landmarks

        x0, y0, x1, y1 = box
        if self.mode == "landmarks":
            tpl = template_landmarks(1, 1) + 0.5  # [0, 1] box coordinates
            pts = (np.array([x0, y0]) + tpl * np.array([x1 - x0, y1 - y0]) - 0.5).astype(np.float32)
            return Face(FaceImage(pixels, path=path, landmarks=pts), method, box, _quad_of_pixels(*box))
        if self.crop_name == "full_face" and self.margin:
            dx, dy = self.margin * (x1 - x0), self.margin * (y1 - y0)
            x0, y0, x1, y1 = x0 - dx, y0 - dy, x1 + dx, y1 + dy
        s = self.size
        # Box edges onto the crop's outer pixel edges (pixel-centre convention: edge -0.5 .. s - 0.5).
        sx, sy = s / (x1 - x0), s / (y1 - y0)
        to_crop = np.array([[sx, 0, -0.5 - sx * (x0 - 0.5)], [0, sy, -0.5 - sy * (y0 - 0.5)]])
        to_original = _invert(to_crop)
        crop = warp(pixels, to_crop, s, s, border=cv2.BORDER_REPLICATE)
        quad = _warp_points(to_original, _quad_of_box(-0.5, -0.5, s - 0.5, s - 0.5))
        return Face(FaceImage(crop, path=path), method, _box_of(quad), quad, to_original)


def _degenerate(face: DetectedFace, shape: tuple[int, ...]) -> str:
    """Why a detected face cannot be aligned ("" when it can): a box that is not finite, has no area or lies
    outside the picture, landmarks that are not finite or all coincide."""
    try:
        x0, y0, x1, y1 = (float(v) for v in face.box)
    except (TypeError, ValueError):
        return f"box {face.box!r} is not four numbers"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 - x0 < 1 or y1 - y0 < 1:
        return f"box {face.box!r} has no area"
    if x1 <= 0 or y1 <= 0 or x0 >= shape[1] or y0 >= shape[0]:
        return f"box {face.box!r} lies outside the {shape[1]}x{shape[0]} picture"
    if face.landmarks is not None:
        pts = np.asarray(face.landmarks, np.float64)
        if not np.isfinite(pts).all():
            return "landmarks that are not finite"
        if pts.ndim == 2 and len(pts) and np.ptp(pts, axis=0).max() < 1e-3:
            return "landmarks that all coincide"
    return ""


def _warp_points(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ affine[:, :2].T + affine[:, 2]
