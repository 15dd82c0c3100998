"""The bundled synthetic expression set: deterministic, well-formed, and the expressions really differ."""

from collections import Counter

import numpy as np
import pytest

from fermetric.components import synthetic
from fermetric.contracts import FaceImage


@pytest.fixture(scope="module")
def faces():
    return synthetic.generate(n_subjects=4, per_class=6, size=48, seed=0)


def test_same_seed_gives_identical_bytes():
    a = synthetic.generate(n_subjects=2, per_class=2, seed=7)
    b = synthetic.generate(n_subjects=2, per_class=2, seed=7)
    assert [f.image.tobytes() for f in a] == [f.image.tobytes() for f in b]
    assert all(np.array_equal(x.landmarks, y.landmarks) for x, y in zip(a, b))
    c = synthetic.generate(n_subjects=2, per_class=2, seed=8)
    assert any(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, c))


def test_a_subject_does_not_depend_on_how_many_there_are():
    few = synthetic.generate(n_subjects=1, per_class=1, seed=3)
    more = synthetic.generate(n_subjects=3, per_class=1, seed=3)
    assert [f.image.tobytes() for f in few] == [f.image.tobytes() for f in more[: len(few)]]


def test_shapes_dtypes_and_counts(faces):
    assert len(faces) == 4 * len(synthetic.CLASSES) * 6
    for f in faces:
        assert f.image.shape == (48, 48) and f.image.dtype == np.uint8
        assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
    assert Counter(f.label for f in faces) == {c: 4 * 6 for c in synthetic.CLASSES}
    assert Counter(f.subject for f in faces) == {f"synth_s{i:02d}": 7 * 6 for i in range(4)}
    assert synthetic.CLASSES == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def test_other_sizes():
    (f,) = synthetic.generate(n_subjects=1, per_class=1, size=96)[:1]
    assert f.image.shape == (96, 96)
    assert f.landmarks.max() < 96


def test_landmarks_inside_the_image(faces):
    lm = np.stack([f.landmarks for f in faces])
    assert lm.min() >= 0 and lm.max() <= 47


def test_drawing_matches_landmarks(faces):
    # An open mouth is drawn dark: the pixel between the inner lips must be darker than the nose bridge.
    checked = 0
    for f in faces:
        gap = f.landmarks[66, 1] - f.landmarks[62, 1]
        if f.label == "surprise" and gap > 3:
            x, y = np.round((f.landmarks[62] + f.landmarks[66]) / 2).astype(int)
            bx, by = np.round(f.landmarks[28]).astype(int)
            assert int(f.image[by, bx]) - int(f.image[y, x]) > 25
            checked += 1
    assert checked >= 5


def _by_label(faces, fn):
    return {c: np.mean([fn(f.landmarks) for f in faces if f.label == c]) for c in synthetic.CLASSES}


def _iod(p):
    return np.linalg.norm(p[42:48].mean(0) - p[36:42].mean(0))


def test_expressions_move_the_right_landmarks(faces):
    mouth_open = _by_label(faces, lambda p: (p[66, 1] - p[62, 1]) / _iod(p))
    assert mouth_open["surprise"] > mouth_open["neutral"] + 0.15
    assert mouth_open["fear"] > mouth_open["neutral"]
    # corners above (negative) or below the lip midline
    corners = _by_label(faces, lambda p: ((p[48, 1] + p[54, 1]) / 2 - (p[62, 1] + p[66, 1]) / 2) / _iod(p))
    assert corners["happy"] < corners["neutral"] < corners["sad"]
    brows = _by_label(faces, lambda p: (p[36:48, 1].mean() - p[17:27, 1].mean()) / _iod(p))
    assert brows["surprise"] > brows["neutral"] > brows["angry"]
    eyes = _by_label(faces, lambda p: (p[[40, 41, 46, 47], 1].mean() - p[[37, 38, 43, 44], 1].mean()) / _iod(p))
    assert eyes["surprise"] > eyes["neutral"] > eyes["angry"]


def test_to_face_carries_the_landmarks(faces):
    face = faces[0].to_face()
    assert isinstance(face, FaceImage)
    assert face.image is faces[0].image and face.landmarks is faces[0].landmarks
    assert face.path.startswith("synthetic:")
