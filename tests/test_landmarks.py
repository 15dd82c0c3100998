"""Landmark sources: template, dataset, dlib (skipped without dlib or ../shared/data), Haar boxes."""

import csv
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fermetric.components import landmarks
from fermetric.errors import FermetricError, NoFace
from fermetric.contracts import FaceImage
from fermetric.components.landmarks import TEMPLATE_68, get_face_box, get_landmarks, template_landmarks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAVE_DLIB = all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))
needs_dlib = pytest.mark.skipif(not HAVE_DLIB, reason="dlib or face-recognition-models not installed")
needs_yale = pytest.mark.skipif(not (DATA / "yalefaces" / "manifest.csv").exists(), reason=f"{DATA}/yalefaces absent")


def _iod(p):
    return np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0))


def test_template_is_a_plausible_aligned_face():
    t = TEMPLATE_68
    assert t.shape == (68, 2) and t.dtype == np.float32
    assert not t.flags.writeable
    right_eye, left_eye = t[36:42].mean(0), t[42:48].mean(0)
    assert right_eye[0] < 0.5 < left_eye[0]  # subject's right eye on the image's left
    assert abs(right_eye[1] - left_eye[1]) < 0.02  # aligned crops: eyes level
    assert t[17:27, 1].mean() < right_eye[1] < t[30, 1] < t[48:68, 1].mean()
    assert 0.3 < _iod(t) < 0.45


def test_template_scales_to_the_image():
    np.testing.assert_allclose(template_landmarks(48, 48), TEMPLATE_68 * 48 - 0.5, atol=1e-5)
    tall = template_landmarks(96, 48)
    np.testing.assert_allclose(tall[:, 0], TEMPLATE_68[:, 0] * 48 - 0.5, atol=1e-5)
    np.testing.assert_allclose(tall[:, 1], TEMPLATE_68[:, 1] * 96 - 0.5, atol=1e-4)
    face = FaceImage(np.zeros((64, 64), np.uint8))
    np.testing.assert_allclose(get_landmarks("template", face), template_landmarks(64, 64))


def test_dataset_source():
    pts = np.random.default_rng(0).uniform(0, 40, (68, 2)).astype(np.float32)
    assert np.array_equal(get_landmarks("dataset", FaceImage(np.zeros((48, 48), np.uint8), landmarks=pts)), pts)
    blank = np.zeros((48, 48), np.uint8)
    with pytest.raises(NoFace, match="landmark file missing: S010_004.txt"):
        get_landmarks("dataset", FaceImage(blank, landmarks_error="landmark file missing: S010_004.txt"))
    with pytest.raises(NoFace, match="no landmarks given by the dataset"):
        get_landmarks("dataset", FaceImage(blank))
    x0, y0, x1, y1 = get_face_box("dataset", FaceImage(blank, landmarks=pts))
    assert (x0, y0, x1, y1) == (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())


def test_unknown_source_lists_the_valid_ones():
    face = FaceImage(np.zeros((48, 48), np.uint8))
    with pytest.raises(ValueError, match="template, dlib, dataset, haar"):
        get_landmarks("mediapipe", face)
    with pytest.raises(ValueError, match="get_face_box"):
        get_landmarks("haar", face)


def test_haar_finds_nothing_on_a_blank_image():
    with pytest.raises(NoFace, match="no face detected"):
        get_face_box("haar", FaceImage(np.full((120, 160), 128, np.uint8)))


@needs_dlib
def test_dlib_finds_nothing_on_a_blank_image():
    with pytest.raises(NoFace, match="no face detected"):
        get_landmarks("dlib", FaceImage(np.full((48, 48), 128, np.uint8)))


@needs_dlib
def test_dlib_on_synthetic_faces():
    # The drawn faces are face-like enough for dlib: a check on both the drawing and the 48 px upscaling path.
    from fermetric.components import synthetic

    faces = synthetic.generate(n_subjects=2, per_class=1, size=48)
    dl = landmarks.DlibLandmarks()
    errors = []
    for f in faces:
        found = dl.detect_all(f.image)
        if found:
            errors.append(np.linalg.norm(found[0] - f.landmarks, axis=1).mean() / _iod(f.landmarks))
    assert len(errors) >= len(faces) - 2
    assert np.mean(errors) < 0.1


def _yale(path="happy/subject01.png"):
    return cv2.imread(str(DATA / "yalefaces" / path), cv2.IMREAD_GRAYSCALE)


@needs_dlib
@needs_yale
def test_dlib_on_a_real_face_and_on_a_small_copy():
    image = _yale()
    pts = get_landmarks("dlib", FaceImage(image))
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    h, w = image.shape
    assert (pts >= 0).all() and (pts[:, 0] < w).all() and (pts[:, 1] < h).all()
    assert pts[36:48, 1].mean() < pts[30, 1] < pts[48:68, 1].mean()
    # A 120 px copy goes through the pad-and-upscale path; its landmarks must map back onto the same face.
    small = cv2.resize(image, (120, int(round(120 * h / w))), interpolation=cv2.INTER_AREA)
    s = 120 / w
    pts_small = get_landmarks("dlib", FaceImage(small))
    mapped = (pts_small + 0.5) / s - 0.5
    assert np.linalg.norm(mapped - pts, axis=1).mean() < 0.1 * _iod(pts)


@needs_yale
def test_haar_box_on_a_real_face():
    image = _yale()
    x0, y0, x1, y1 = get_face_box("haar", FaceImage(image))
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    assert 60 < x1 - x0 < 250


def test_missing_dlib_says_how_to_install(monkeypatch):
    monkeypatch.setattr(landmarks, "_dlib_models", {})
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(FermetricError, match=r"pip install 'fermetric\[dlib\]'"):
        landmarks.DlibLandmarks()


def test_missing_models_say_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "face_recognition_models" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FermetricError, match=r"pip install 'fermetric\[dlib\]'"):
        landmarks.dlib_model_path()


@pytest.mark.shared_data
@needs_dlib
@pytest.mark.skipif(not (DATA / "ckplus48" / "manifest.csv").exists(), reason=f"{DATA}/ckplus48 absent")
def test_template_is_close_to_dlib_on_ckplus48():
    with open(DATA / "ckplus48" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::40]
    found = []
    for row in rows:
        image = cv2.imread(str(DATA / "ckplus48" / row["path"]), cv2.IMREAD_GRAYSCALE)
        faces = landmarks.DlibLandmarks().detect_all(image)
        if faces:
            found.append(faces[0])
    assert len(found) >= len(rows) - 1
    mean = (np.mean(found, axis=0) + 0.5) / 48
    assert np.abs(mean - TEMPLATE_68).mean() < 0.02
