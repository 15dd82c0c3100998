"""insightface's own models (detector, 106-point landmarks) from a local model-pack folder, never downloaded.

``insightface.app.FaceAnalysis(name=..., root=...)`` downloads a pack into ``root`` (``~/.insightface`` by
default) whenever ``name`` is not an existing folder. fermetric must never download, nor write to the user's
home folder, so :func:`check_model_pack` checks the folder and its ``.onnx`` files first, and FaceAnalysis is only
ever given that existing folder as ``name`` (and the same folder as ``root``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fermetric.errors import FermetricError, MissingResource, RecipeError

# The detector file of each of insightface's published packs (FaceAnalysis recognises models by their
# inputs/outputs, not by file name: these names are for the error message).
DETECTOR_FILES = {
    "buffalo_l": "det_10g.onnx",
    "buffalo_m": "det_2.5g.onnx",
    "buffalo_s": "det_500m.onnx",
    "antelopev2": "scrfd_10g_bnkps.onnx",
}
LANDMARK_106_FILE = "2d106det.onnx"
MANIFEST_FILE = "manifest.json"  # insightface >= 2 model packages describe their models in a manifest

INSTALL_HINT = (
    "pip install --no-deps -r plugins/fermetric-insightface/requirements-nodeps.txt"
    " (insightface==2.1 without its OpenCV 5 requirement), then pip install -e plugins/fermetric-insightface"
)


class ModelPackError(MissingResource):
    """The insightface model pack named by ``crop.model_pack`` is missing or incomplete."""


def expected_files(need_106: bool) -> str:
    detectors = ", ".join(f"{f} ({pack})" for pack, f in DETECTOR_FILES.items())
    text = f"a face detector, one of {detectors}"
    if need_106:
        text += f", and the 106-point landmark model {LANDMARK_106_FILE}"
    return text


def import_insightface():
    try:
        import insightface  # noqa: F401
        from insightface.app import FaceAnalysis  # noqa: F401
        from insightface.utils import face_align  # noqa: F401
    except ImportError as exc:
        raise FermetricError(f"fermetric-insightface needs insightface ({exc}): {INSTALL_HINT}") from exc
    import insightface

    return insightface


CROPPER_ALTERNATIVE = 'or use landmarks = "dlib" with the insightface_align cropper, which needs no model pack.'


def check_model_pack(model_pack: str, need_106: bool, key: str = "crop.model_pack",
                     alternative: str = CROPPER_ALTERNATIVE) -> Path:
    """The model pack folder as an absolute path, or :class:`ModelPackError` naming the folder and the files it
    should hold. Nothing is loaded, downloaded or created."""
    if not model_pack:
        raise RecipeError(
            f"{key} is not set: insightface's detector{' and 106-point landmarks need' if need_106 else ' needs'} a local"
            f" model-pack folder (for instance buffalo_l, holding {expected_files(need_106)}). fermetric never"
            f" downloads models; {alternative}"
        )
    given = Path(model_pack).expanduser()
    pack = given if given.is_absolute() else Path.cwd() / given
    files = f"It should be a folder holding insightface's .onnx models: {expected_files(need_106)}."
    how = (
        " fermetric-insightface never downloads models: unpack an insightface model pack there yourself"
        f" (insightface's model packs are licensed for non-commercial research only), {alternative}"
    )
    if not pack.is_dir():
        what = "is a file, not a folder" if pack.exists() else "not found"
        raise ModelPackError(f"insightface model pack {what}: {pack} ({key} = {model_pack!r}). {files}{how}")
    if (pack / MANIFEST_FILE).is_file():
        return pack.resolve()
    onnx = sorted(p.name for p in pack.glob("*.onnx"))
    if not onnx:
        present = sorted(p.name for p in pack.iterdir())[:10]
        raise ModelPackError(
            f"insightface model pack {pack} ({key} = {model_pack!r}) holds no .onnx file"
            f" (it has: {', '.join(present) or 'nothing'}). {files}{how}"
        )
    return pack.resolve()


@dataclass
class Detection:
    """One face found by insightface, in the pixel coordinates of the image it was given."""

    bbox: np.ndarray  # (4,) x0, y0, x1, y1
    score: float
    kps: np.ndarray | None  # (5, 2): eye (image left), eye (image right), nose tip, mouth corners (left, right)
    landmarks_106: np.ndarray | None  # (106, 2) when the pack's landmark model ran


class InsightFaceDetector:
    """insightface's FaceAnalysis on a checked local model pack, detection (+ 106-point landmarks), on the CPU.

    Only the modules a cropper needs are loaded (not recognition, gender/age or the 3D landmarks), so a
    large pack costs no more than its detector.
    """

    def __init__(self, model_pack: str, need_106: bool = False, det_size: int = 640, det_thresh: float = 0.5,
                 key: str = "crop.model_pack", alternative: str = CROPPER_ALTERNATIVE):
        pack = check_model_pack(model_pack, need_106, key, alternative)  # before anything that could download
        import_insightface()
        from insightface.app import FaceAnalysis

        modules = ["detection"] + (["landmark_2d_106"] if need_106 else [])
        try:
            # name is an existing folder, so FaceAnalysis loads it as it is and never calls its downloader;
            # root is that folder too, so not even an add-on could default to ~/.insightface.
            app = FaceAnalysis(name=str(pack), root=str(pack), allowed_modules=modules,
                               providers=["CPUExecutionProvider"])
        except AssertionError as exc:  # FaceAnalysis asserts that a detection model was found
            raise ModelPackError(f"insightface found no face detector in {pack}. {expected_files(need_106)} expected.") from exc
        except Exception as exc:
            raise ModelPackError(f"insightface could not load the model pack {pack}: {type(exc).__name__}: {exc}") from exc
        if "detection" not in app.models:
            raise ModelPackError(f"insightface found no face detector in {pack}. {expected_files(need_106)} expected.")
        if need_106 and "landmark_2d_106" not in app.models:
            raise ModelPackError(
                f"insightface found no 106-point landmark model in {pack} (loaded: {', '.join(sorted(app.models))});"
                f" expected {LANDMARK_106_FILE} (buffalo_sc has none: use buffalo_s, buffalo_l or antelopev2)"
            )
        app.prepare(ctx_id=-1, det_thresh=float(det_thresh), det_size=(int(det_size), int(det_size)))
        self.app = app
        self.pack = pack
        self.need_106 = need_106

    def detect(self, gray: np.ndarray) -> list[Detection]:
        """Every face in a grayscale image, largest first."""
        import cv2

        bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR) if gray.ndim == 2 else gray
        faces = self.app.get(bgr)
        out = []
        for f in faces:
            bbox = np.asarray(f.bbox, dtype=np.float64)
            kps = None if f.kps is None else np.asarray(f.kps, dtype=np.float64).reshape(5, 2)
            lmk = getattr(f, "landmark_2d_106", None)
            lmk = None if lmk is None else np.asarray(lmk, dtype=np.float64).reshape(106, 2)
            out.append(Detection(bbox, float(f.det_score if f.det_score is not None else 0.0), kps, lmk))
        out.sort(key=lambda d: (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]), reverse=True)
        return out
