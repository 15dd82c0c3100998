"""Face detectors at inference (``register_face_detectors``): what FaceFinder makes of a detector's 68 points, five
points or bare box, against the exact geometry they came from; detector objects, names, parameters and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fermetric.components.landmarks import template_landmarks
from fermetric.contracts import DetectedFace, five_from_68
from fermetric.errors import FermetricError, NoFace, RecipeError
from fermetric.inference.faces import FaceFinder, detector_names

TEMPLATE_MODEL = {"name": "au_partial", "landmarks": "template"}  # trained on aligned crops (CK+48, FER2013)
LANDMARK_MODEL = {"name": "au_partial", "landmarks": "dataset"}  # its cropper reads 68 landmarks


def _similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(math.radians(degrees)), scale * math.sin(math.radians(degrees))
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


# A 48x48 aligned crop placed in a 320x240 picture: 3.1 times larger, turned by 12 degrees.
CROP_TO_PICTURE = _similarity(3.1, 12.0, 95.0, 40.0)
PICTURE = np.random.default_rng(0).integers(0, 255, (240, 320), dtype=np.uint8)


class Fixed:
    """A detector object that always reports the same faces."""

    name = "fixed"

    def __init__(self, *faces):
        self.faces = list(faces)
        self.calls = 0

    def __call__(self, gray):
        assert gray.ndim == 2 and gray.dtype == np.uint8
        self.calls += 1
        return list(self.faces)


def _points_in_picture():
    return _apply(CROP_TO_PICTURE, template_landmarks(48, 48)).astype(np.float32)


@pytest.mark.parametrize("points", [68, 5])
def test_landmarks_align_the_face_onto_the_training_framing_exactly(points):
    pts = _points_in_picture()
    given = pts if points == 68 else five_from_68(pts)
    finder = FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(DetectedFace((80.0, 30.0, 250.0, 220.0), given, 0.9)))
    (face,) = finder.find(PICTURE)
    assert face.method == "fixed"
    np.testing.assert_allclose(face.to_original, CROP_TO_PICTURE, atol=1e-6)
    assert face.face_image.image.shape == (48, 48)


def test_five_points_give_a_landmark_cropper_the_template_carried_onto_the_face():
    finder = FaceFinder(LANDMARK_MODEL, (48, 48), detect=Fixed(DetectedFace((0, 0, 1, 1), five_from_68(_points_in_picture()))))
    (face,) = finder.find(PICTURE)
    assert face.face_image.image.shape == PICTURE.shape  # the cropper reads the picture itself ...
    np.testing.assert_allclose(face.face_image.landmarks, _points_in_picture(), atol=1e-4)  # ... at these points


def test_a_smile_does_not_move_a_five_point_alignment():
    """Like the 68-point fit on STABLE_POINTS, the five-point fit leaves the mouth corners out."""
    five = five_from_68(_points_in_picture())
    smiling = five.copy()
    eye_distance = np.linalg.norm(five[1] - five[0])
    smiling[3] += [-0.15 * eye_distance, -0.08 * eye_distance]
    smiling[4] += [0.15 * eye_distance, -0.08 * eye_distance]
    finder = FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(DetectedFace((80.0, 30.0, 250.0, 220.0), smiling)))
    np.testing.assert_allclose(finder.find(PICTURE)[0].to_original, CROP_TO_PICTURE, atol=1e-6)


def test_a_bare_box_maps_its_pixels_onto_the_crop():
    """Box (first column/row, one past the last): the crop's outer pixel edges are the box's edges, as for Haar."""
    box = (100.0, 50.0, 196.0, 146.0)  # 96 x 96 pixels: exactly 2 picture pixels per crop pixel
    (face,) = FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(DetectedFace(box))).find(PICTURE)
    assert face.method == "fixed"
    np.testing.assert_allclose(face.to_original, [[2.0, 0.0, 100.5], [0.0, 2.0, 50.5]])  # crop pixel 0 -> 100.5
    assert face.box == pytest.approx(box)  # reported as the detector gave it
    expected = PICTURE[50:146, 100:196].reshape(48, 2, 48, 2).mean(axis=(1, 3))
    assert np.abs(face.face_image.image.astype(float) - expected).max() <= 1.0


def test_faces_are_sorted_largest_first_and_unusable_ones_dropped():
    small = DetectedFace((220.0, 20.0, 300.0, 100.0))
    big = DetectedFace((10.0, 10.0, 210.0, 210.0))
    broken = [DetectedFace((50.0, 50.0, 50.0, 90.0)), DetectedFace((0.0, 0.0, 80.0, 80.0), np.full((5, 2), np.nan)),
              DetectedFace((0.0, 0.0, 80.0, 80.0), np.ones((5, 2))), DetectedFace((0.0, 0.0, float("inf"), 80.0)),
              DetectedFace((1000.0, 1000.0, 1100.0, 1100.0))]
    faces = FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(small, *broken, big)).find(PICTURE)
    assert [f.box[0] < 215 for f in faces] == [True, False]  # big first, whatever the detector's order
    with pytest.raises(NoFace, match="gave only unusable faces .*has no area"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(broken[0])).find(PICTURE)
    with pytest.raises(NoFace, match="lies outside the 320x240 picture"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(broken[-1])).find(PICTURE)


def test_a_given_detector_is_asked_even_for_a_small_aligned_crop():
    """Only ``auto`` takes a picture no larger than twice the model's input as an aligned crop as it is."""
    detector = Fixed(DetectedFace((0.0, 0.0, 48.0, 48.0)))
    (face,) = FaceFinder(TEMPLATE_MODEL, (48, 48), detect=detector).find(PICTURE[:48, :48])
    assert face.method == "fixed" and detector.calls == 1
    (auto,) = FaceFinder(TEMPLATE_MODEL, (48, 48), detect="auto").find(PICTURE[:48, :48])
    assert auto.method == "whole image"


@pytest.mark.parametrize("bad, message", [
    ("a box", "returned str, not fermetric.contracts.DetectedFace"),
    (DetectedFace((0, 0, 9, 9), np.arange(14.0).reshape(7, 2)), "gave 7 landmarks; a DetectedFace holds 68, 5 or none"),
])
def test_a_detector_that_breaks_the_contract_is_named(bad, message):
    with pytest.raises(FermetricError, match=message):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(bad)).find(PICTURE)


def test_names_parameters_and_their_errors():
    assert {"auto", "haar", "dlib", "none"} <= set(detector_names())
    with pytest.raises(FermetricError, match=r"detect='mtcnn' \(--detect mtcnn\): no such face detector; choose one of auto, .*haar"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect="mtcnn")
    with pytest.raises(RecipeError, match="need a named detector"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect="auto", detector_params={"min_neighbors": 3})
    with pytest.raises(RecipeError, match=r"detect='haar' \(--detect haar\): unknown parameter 'min_neigbours'; haar's parameters: scale_factor, min_neighbors"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect="haar", detector_params={"min_neigbours": 3})
    with pytest.raises(RecipeError, match="'name' is not a detector parameter"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect="haar", detector_params={"name": "dlib"})
    with pytest.raises(RecipeError, match="a detector object is already built"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect=Fixed(), detector_params={"share": 1})
    strict = FaceFinder(TEMPLATE_MODEL, (48, 48), detect="haar", detector_params={"min_neighbors": 50})
    assert strict._instance.min_neighbors == 50  # built when named, with its parameters
    # One instance per set of parameters as the factory binds them: the default given or left out is the same.
    default = FaceFinder(TEMPLATE_MODEL, (48, 48), detect="haar")
    assert FaceFinder(TEMPLATE_MODEL, (48, 48), detect="haar", detector_params={"min_neighbors": 5})._instance is default._instance
    assert default._instance is not strict._instance
    # A model whose cropper finds the face itself never uses a detector: none is built.
    own = FaceFinder({"name": "some_plugin_cropper", "landmarks": "its_own"}, (48, 48), detect="haar")
    assert own._instance is None and own.detector == "none"


@pytest.mark.parametrize("frame", ["whole picture", "near the top", "at the right edge"])
def test_an_annotation_label_stays_on_the_picture(frame):
    """A label goes above its frame, else below, else inside its top, and never past the picture's right edge."""
    from fermetric.inference.annotate import draw
    from fermetric.inference.faces import _quad_of_pixels
    from fermetric.inference.predict import FaceResult

    box = {"whole picture": (0, 0, 320, 240), "near the top": (40, 2, 140, 100), "at the right edge": (250, 120, 320, 200)}[frame]
    row = FaceResult("p.png", 0, face=0, box=box, label="surprise", confidence=0.91,
                     probabilities={"surprise": 0.91, "fear": 0.05, "happy": 0.04})
    picture = np.full((240, 320), 128, np.uint8)
    canvas = draw(picture, [row], [_quad_of_pixels(*box)])
    black = np.all(canvas == 0, axis=2)  # the labels' background boxes
    rows_with_label = np.flatnonzero(black.any(axis=1))
    assert black.sum() > 500, "no label drawn"
    cols = np.flatnonzero(black.any(axis=0))
    assert rows_with_label.max() < canvas.shape[0] - 1
    if frame == "near the top":
        assert rows_with_label.min() > 0.4 * canvas.shape[0]  # below the frame (which starts at row 2)
    if frame == "at the right edge":
        assert cols.min() < 250 * canvas.shape[1] / 320  # moved left so that "surprise 0.91" fits


def test_without_dlib_asking_for_it_says_how_to_install_it_and_what_else_to_use(monkeypatch):
    import fermetric.inference.faces as faces

    monkeypatch.setattr(faces, "dlib_available", lambda: False)
    # The same message reaches load_model(detect=...) and `fermetric predict --detect`: it names both spellings.
    with pytest.raises(FermetricError, match=r"detect='dlib' \(--detect dlib\) needs dlib .*or use detect='haar' \(--detect haar\)"):
        FaceFinder(TEMPLATE_MODEL, (48, 48), detect="dlib")
    assert FaceFinder(TEMPLATE_MODEL, (48, 48), detect="auto").detector == "haar"
