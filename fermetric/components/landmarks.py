"""Where a cropper's 68 facial landmarks come from.

Every landmark array here is float32 ``(68, 2)``, pixel ``(x, y)`` with the pixel-centre convention (the
centre of the top-left pixel is ``(0, 0)``), in the iBUG-300W order: jaw 0-16, right brow 17-21, left brow
22-26, nose bridge 27-30, nostrils 31-35, right eye 36-41, left eye 42-47, outer lips 48-59, inner lips
60-67 ("right" is the subject's right, the image's left).

Sources (``LANDMARK_SOURCES``):

``template``
    :data:`TEMPLATE_68` scaled to the image: for images that are already tight, aligned face crops
    (FER2013, CK+48, fermetric's synthetic set). Costs nothing and never fails.
``dlib``
    :class:`DlibLandmarks`: dlib's HOG face detector plus its 68-point shape predictor
    (``pip install 'fermetric[dlib]'``).
``dataset``
    The landmarks the dataset ships (``FaceImage.landmarks``).
``haar``
    :class:`HaarFaceBox`: OpenCV's Haar cascade, a face *box* only (no landmarks), the fallback that needs
    nothing beyond OpenCV.

``TEMPLATE_68`` is the mean dlib landmark layout of CK+48 (48x48 crops of CK+ peak frames), measured by
``scripts/make_template68.py``: every image padded by 25% (edge replication), upscaled to 256 px, landmarks
mapped back. dlib found a face in all 981 images; the template is the mean over those 981, stored in
``fermetric/components/template68.npy`` in normalized coordinates (``(x + 0.5) / width``, ``(y + 0.5) / height``).
The CK+48 crops coincide with OpenCV's Haar box (measured: the Haar box of a CK+48 image spans
-0.01..1.01 of it), so the template also places landmarks inside a Haar box.
It is an average over the seven CK+ expressions, so its mouth is slightly open and its brows slightly raised
compared with a neutral face.

Licence of dlib's models (from ``face_recognition_models``): the 68-point model
``shape_predictor_68_face_landmarks.dat`` was trained on the iBUG 300-W data set, whose licence excludes
commercial use, so **the 68-point model is for non-commercial use only**. The 5-point model
``shape_predictor_5_face_landmarks.dat`` was trained on data dlib's author labelled himself and carries no
such restriction (it gives eye corners and the nose tip only, not enough for the AU regions).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from fermetric.errors import FermetricError, MissingResource, NoFace
from fermetric.contracts import FaceImage, to_gray

LANDMARK_SOURCES = ("template", "dlib", "dataset", "haar")

TEMPLATE_PATH = Path(__file__).with_name("template68.npy")

DLIB_INSTALL_HINT = "pip install 'fermetric[dlib]'  (installs dlib-bin and face-recognition-models)"

# Below this short side dlib's HOG window (80 px) cannot see a tight face crop, so we pad and upscale.
SMALL_SIDE = 160
UPSCALE_TO = 256
PAD_FRACTION = 0.25

_template_cache: np.ndarray | None = None


def _load_template() -> np.ndarray:
    global _template_cache
    if _template_cache is None:
        try:
            arr = np.load(TEMPLATE_PATH).astype(np.float32)
        except FileNotFoundError as exc:
            raise FermetricError(
                f"{TEMPLATE_PATH} is missing; rebuild it with scripts/make_template68.py"
            ) from exc
        if arr.shape != (68, 2):
            raise FermetricError(f"{TEMPLATE_PATH} has shape {arr.shape}, expected (68, 2)")
        # Shared by every caller: a stray in-place edit would silently move everyone's crops.
        arr.flags.writeable = False
        _template_cache = arr
    return _template_cache


def __getattr__(name: str):
    # Lazy so that scripts/make_template68.py can import this module before the .npy exists.
    if name == "TEMPLATE_68":
        return _load_template()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def template_landmarks(height: int, width: int) -> np.ndarray:
    """:data:`TEMPLATE_68` in pixel coordinates of a ``height`` x ``width`` aligned face crop."""
    scale = np.array([width, height], dtype=np.float32)
    return (_load_template() * scale - 0.5).astype(np.float32)


class _Resampled:
    """An image padded (edge replication) and rescaled for a detector, and the way back to the original."""

    def __init__(self, image: np.ndarray, pad_fraction: float, target_short: int | None):
        import cv2

        h, w = image.shape[:2]
        self.pad_x = int(round(w * pad_fraction))
        self.pad_y = int(round(h * pad_fraction))
        padded = cv2.copyMakeBorder(
            image, self.pad_y, self.pad_y, self.pad_x, self.pad_x, cv2.BORDER_REPLICATE
        )
        ph, pw = padded.shape[:2]
        scale = 1.0 if target_short is None else target_short / min(ph, pw)
        nh, nw = max(1, int(round(ph * scale))), max(1, int(round(pw * scale)))
        self.sx, self.sy = nw / pw, nh / ph
        if (nh, nw) != (ph, pw):
            padded = cv2.resize(padded, (nw, nh), interpolation=cv2.INTER_CUBIC)
        self.image = padded

    def to_original(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = (pts[..., 0] + 0.5) / self.sx - 0.5 - self.pad_x
        out[..., 1] = (pts[..., 1] + 0.5) / self.sy - 0.5 - self.pad_y
        return out


def _attempts(image: np.ndarray) -> list[_Resampled]:
    """Views of ``image`` to try in order: small crops are padded and upscaled first thing; large images
    are tried as they are, then padded (a large image may itself be a tight crop)."""
    if min(image.shape[:2]) < SMALL_SIDE:
        return [_Resampled(image, PAD_FRACTION, UPSCALE_TO)]
    return [_Resampled(image, 0.0, None), _Resampled(image, PAD_FRACTION, None)]


# --------------------------------------------------------------------------------------------- dlib


_model_lock = threading.Lock()
_dlib_models: dict[str, object] = {}


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> str:
    """Path of a model file shipped by ``face_recognition_models``.

    The package is located, never imported: its ``__init__`` imports ``pkg_resources``, which current
    setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingResource(f"dlib landmarks need face-recognition-models: {DLIB_INSTALL_HINT}")
    path = os.path.join(spec.submodule_search_locations[0], "models", name)
    if not os.path.exists(path):
        raise MissingResource(f"{path} not found; reinstall the models: {DLIB_INSTALL_HINT}")
    return path


def require_dlib() -> None:
    """Raise :class:`FermetricError` with the install hint unless dlib and its model files are installed.

    Cheap (nothing is loaded): croppers call it when they are built, so a recipe that asks for dlib fails
    before any image is read, not on the first one.
    """
    if importlib.util.find_spec("dlib") is None:
        raise MissingResource(f"dlib landmarks need dlib: {DLIB_INSTALL_HINT}")
    dlib_model_path()


def _load_dlib():
    """(detector, predictor), built once per process: the predictor file is ~100 MB to parse."""
    with _model_lock:
        if "predictor" not in _dlib_models:
            try:
                import dlib
            except ImportError as exc:
                raise MissingResource(f"dlib landmarks need dlib: {DLIB_INSTALL_HINT}") from exc
            path = dlib_model_path()
            _dlib_models["detector"] = dlib.get_frontal_face_detector()
            _dlib_models["predictor"] = dlib.shape_predictor(path)
        return _dlib_models["detector"], _dlib_models["predictor"]


class DlibLandmarks:
    """68 landmarks from dlib: HOG frontal-face detector, then the 68-point shape predictor.

    Images whose short side is under 160 px (FER2013, CK+48) are padded by 25% with edge replication and
    upscaled to a 256 px short side before detection, because the HOG detector's smallest face is about
    80 px and it needs some context around a tight crop; the landmarks are mapped back to the original
    pixels. Larger images are tried as they are, then padded. When several faces are found, the largest
    wins. The models load lazily, once per process.

    ``upsample``: how many times dlib doubles the image internally when looking for faces (finds smaller
    faces, costs ~4x per step).

    Licence: the 68-point model (``shape_predictor_68_face_landmarks.dat``) was trained on iBUG 300-W and
    is for **non-commercial use only**; the 5-point model (``shape_predictor_5_face_landmarks.dat``) is
    not restricted. Needs ``pip install 'fermetric[dlib]'``.
    """

    def __init__(self, upsample: int = 0):
        self.upsample = int(upsample)
        _load_dlib()  # fail at construction, with the install hint, rather than on the first image

    def detect_all(self, image: np.ndarray) -> list[np.ndarray]:
        """Landmarks of every face found in the first view that has one, largest face first."""
        import dlib

        detector, predictor = _load_dlib()
        gray = to_gray(image)
        for view in _attempts(gray):
            rects = list(detector(view.image, self.upsample))
            if not rects:
                continue
            rects.sort(key=lambda r: r.width() * r.height(), reverse=True)
            faces = []
            for rect in rects:
                shape = predictor(view.image, dlib.rectangle(rect.left(), rect.top(), rect.right(), rect.bottom()))
                pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
                faces.append(view.to_original(pts).astype(np.float32))
            return faces
        return []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        faces = self.detect_all(image)
        if not faces:
            raise NoFace("no face detected")
        return faces[0]


# --------------------------------------------------------------------------------------------- haar


_haar_models: dict[str, object] = {}


def _load_haar():
    import cv2

    with _model_lock:
        if "cascade" not in _haar_models:
            path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
            cascade = cv2.CascadeClassifier(path)
            if cascade.empty():
                raise FermetricError(
                    f"OpenCV's Haar cascade {path} is missing; fermetric needs opencv-python-headless>=4.8,<5"
                )
            _haar_models["cascade"] = cascade
        return _haar_models["cascade"]


class HaarFaceBox:
    """The largest frontal face found by OpenCV's Haar cascade, as a box ``(x0, y0, x1, y1)`` in pixels.

    No landmarks, so no alignment: the fallback that needs nothing beyond OpenCV. Small images are padded
    and upscaled as for :class:`DlibLandmarks`.
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5):
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        _load_haar()

    def __call__(self, image: np.ndarray) -> tuple[float, float, float, float]:
        cascade = _load_haar()
        gray = to_gray(image)
        for view in _attempts(gray):
            boxes = cascade.detectMultiScale(
                view.image, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(40, 40)
            )
            if len(boxes) == 0:
                continue
            x, y, w, h = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
            # Box edges, not pixel centres: map the outer corners and keep them as edges.
            corners = view.to_original(np.array([[x - 0.5, y - 0.5], [x + w - 0.5, y + h - 0.5]], dtype=np.float64))
            (x0, y0), (x1, y1) = corners + 0.5
            return float(x0), float(y0), float(x1), float(y1)
        raise NoFace("no face detected")


# ----------------------------------------------------------------------------------------- dispatch


_shared: dict[str, object] = {}


def _shared_instance(kind: str):
    if kind not in _shared:
        _shared[kind] = DlibLandmarks() if kind == "dlib" else HaarFaceBox()
    return _shared[kind]


def check_source(source: str) -> None:
    if source not in LANDMARK_SOURCES:
        raise ValueError(f"unknown landmark source {source!r}; valid sources: {', '.join(LANDMARK_SOURCES)}")


def get_landmarks(source: str, face: FaceImage) -> np.ndarray:
    """The 68 landmarks of ``face`` from ``source`` ("template", "dlib" or "dataset").

    Raises :class:`NoFace` when the source finds none, ``ValueError`` for an unknown source or for
    ``"haar"`` (boxes only: use :func:`get_face_box`).
    """
    check_source(source)
    if source == "template":
        h, w = face.image.shape[:2]
        return template_landmarks(h, w)
    if source == "dataset":
        if face.landmarks is None:
            raise NoFace(face.landmarks_error or "no landmarks given by the dataset")
        pts = np.asarray(face.landmarks, dtype=np.float32)
        if pts.shape != (68, 2):
            raise NoFace(f"dataset landmarks have shape {pts.shape}, expected (68, 2)")
        if not np.isfinite(pts).all():
            raise NoFace("dataset landmarks contain NaN or infinite values")
        return pts
    if source == "dlib":
        return _shared_instance("dlib")(face.image)
    raise ValueError("the 'haar' source gives a face box, not landmarks; use get_face_box('haar', face)")


def get_face_box(source: str, face: FaceImage) -> tuple[float, float, float, float]:
    """A face box ``(x0, y0, x1, y1)``: Haar's detection for ``"haar"``, the landmark extent otherwise."""
    check_source(source)
    if source == "haar":
        return _shared_instance("haar")(face.image)
    pts = get_landmarks(source, face)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)
