"""Tests of the insightface croppers: the five-point alignment (on yalefaces with dlib when they are here, and
on a rotated synthetic face everywhere), the model-pack checks (missing pack: documented error, no download,
nothing in ~/.insightface) and the model-pack path itself, with a stand-in for insightface's FaceAnalysis
(no real model pack can be downloaded here).

The file name is unique across fermetric and its plugins: pytest imports test modules by basename.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

fi = pytest.importorskip("fermetric_insightface", reason="fermetric-insightface is not installed (pip install -e plugins/fermetric-insightface)")
pytest.importorskip("insightface", reason="insightface is not installed (pip install --no-deps -r plugins/fermetric-insightface/requirements-nodeps.txt)")

from insightface.utils.face_align import arcface_dst, estimate_norm  # noqa: E402

from fermetric.errors import FermetricError, NoFace, RecipeError  # noqa: E402
from fermetric.contracts import FaceImage  # noqa: E402
from fermetric.components.landmarks import template_landmarks  # noqa: E402
from fermetric_insightface import FivePointAligner, InsightFaceCropper, ModelPackError, arcface_transform, five_from_68  # noqa: E402

DIST = "fermetric-insightface"

# insightface 2.1 calls SimilarityTransform.estimate, which scikit-image 0.26 deprecates; our cropper silences it.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def _repo_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "fermetric" / "plugins.py").is_file() and (parent / "plugins").is_dir():
            return parent
    return None


def _shared_data() -> Path | None:
    root = _repo_root()
    return None if root is None else root.parent / "shared" / "data"


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def _rotated_face(angle_deg: float = 15.0, size: int = 200, seed: int = 0):
    """A textured image with fermetric's 68-point template rotated by ``angle_deg`` about the image centre."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (5, 5), 0)
    pts = template_landmarks(size, size).astype(np.float64) * 0.6 + size * 0.2
    rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle_deg, 1.0)
    return cv2.warpAffine(image, rot, (size, size)), _apply(rot, pts).astype(np.float32)


# ---------------------------------------------------------------------------------------- five points


def test_five_from_68_picks_eye_centres_nose_tip_and_mouth_corners():
    pts = template_landmarks(100, 100)
    five = five_from_68(pts)
    assert np.allclose(five[0], pts[36:42].mean(0)) and np.allclose(five[1], pts[42:48].mean(0))
    assert np.allclose(five[2:], pts[[30, 48, 54]])
    # the order of insightface's template: image-left eye, image-right eye, nose, left and right mouth corner
    assert five[0, 0] < five[1, 0] and five[3, 0] < five[4, 0] and five[2, 1] < five[3, 1]


@pytest.mark.parametrize("size", [112, 224, 128])
def test_transform_is_insightface_estimate_norm_for_its_sizes(size):
    _, pts = _rotated_face()
    five = five_from_68(pts)
    assert np.allclose(arcface_transform(five, size), estimate_norm(five.astype(np.float32), image_size=size), atol=1e-5)


def test_other_sizes_scale_the_112_template():
    _, pts = _rotated_face()
    five = five_from_68(pts)
    assert np.allclose(arcface_transform(five, 48), estimate_norm(five.astype(np.float32), 112) * 48 / 112, atol=1e-5)


@pytest.mark.parametrize("size", [112, 48])
def test_dataset_landmarks_are_aligned_onto_the_template(size):
    image, pts = _rotated_face(angle_deg=15.0)
    cropper = FivePointAligner(landmarks="dataset", size=size)
    face = FaceImage(image, landmarks=pts)
    crop = cropper(face)
    assert crop.shape == (size, size) and crop.dtype == np.uint8 and cropper.output_size == (size, size)
    eyes = _apply(cropper.transform(face), five_from_68(pts))[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.5  # level, though the face was turned by 15 degrees
    assert np.allclose(eyes, arcface_dst[:2] * size / 112, atol=2.0 * size / 112)


def test_crop_is_norm_crop_up_to_resampling():
    from insightface.utils.face_align import norm_crop

    image, pts = _rotated_face(size=160)
    ours = FivePointAligner(landmarks="dataset", size=112)(FaceImage(image, landmarks=pts))
    theirs = norm_crop(image, five_from_68(pts).astype(np.float32), image_size=112)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 4.0


def test_missing_dataset_landmarks_is_no_face():
    image, _ = _rotated_face()
    with pytest.raises(NoFace):
        FivePointAligner(landmarks="dataset")(FaceImage(image))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"landmarks": "mediapipe"}, "valid: dlib, dataset, template, insightface"),
        ({"landmarks": "dataset", "size": 8}, "too small"),
        ({"landmarks": "dataset", "model_pack": "models/buffalo_l"}, 'only used with landmarks = "insightface"'),
        ({"landmarks": "insightface"}, "model_pack is not set"),
        ({"landmarks": "dataset", "det_size": 500}, "multiple of 32"),
    ],
)
def test_bad_parameters_are_recipe_errors(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        FivePointAligner(**kwargs)


# ---------------------------------------------------------------------------------------- yalefaces


def _yale_rows(limit: int) -> tuple[Path, list[dict]]:
    data = _shared_data()
    if data is None or not (data / "yalefaces" / "manifest.csv").is_file():
        pytest.skip(f"needs ../shared/data/yalefaces beside the checkout (looked in {data})")
    if importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("needs dlib and face-recognition-models: pip install 'fermetric[dlib]'")
    root = data / "yalefaces"
    with (root / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r.get("duplicate_of")]
    idx = np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int)
    return root, [rows[i] for i in idx]


def test_yalefaces_are_aligned_with_level_eyes():
    from PIL import Image

    from fermetric.components.landmarks import DlibLandmarks

    root, rows = _yale_rows(limit=24)
    cropper = FivePointAligner(landmarks="dlib", size=112)
    dlib68 = DlibLandmarks()
    aligned, angles = 0, []
    for row in rows:
        image = np.asarray(Image.open(root / row["path"]).convert("L"))
        assert image.shape == (243, 320)
        try:
            crop = cropper(FaceImage(image, path=row["path"]))
        except NoFace:
            continue  # dlib misses a few of the harshly side-lit ones
        aligned += 1
        assert crop.shape == (112, 112) and crop.dtype == np.uint8
        # Independent check: find the eyes again, in the crop, and measure the eye line.
        try:
            five = five_from_68(dlib68(crop))
        except NoFace:
            continue
        angles.append(math.degrees(math.atan2(five[1, 1] - five[0, 1], five[1, 0] - five[0, 0])))
        assert 30 < five[0, 0] < 47 and 65 < five[1, 0] < 82 and 40 < five[0, 1] < 62  # where the template puts them
    assert aligned >= 0.9 * len(rows)
    assert len(angles) >= 0.8 * aligned
    assert np.median(np.abs(angles)) < 2.0 and np.max(np.abs(angles)) < 6.0


# ---------------------------------------------------------------------------------------- model packs


@pytest.fixture
def no_download(tmp_path, monkeypatch):
    """HOME is a fresh folder, and insightface's downloader fails the test if anything calls it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    import insightface.app.face_analysis as face_analysis
    import insightface.utils.storage as storage

    def refuse(*args, **kwargs):
        raise AssertionError(f"insightface tried to download: {args} {kwargs}")

    monkeypatch.setattr(storage, "download_file", refuse)
    monkeypatch.setattr(face_analysis, "ensure_available", refuse)
    yield home
    assert not (home / ".insightface").exists(), "something wrote ~/.insightface"
    assert list(home.iterdir()) == [], f"something wrote to HOME: {list(home.iterdir())}"


@pytest.mark.parametrize("which", ["align", "face"])
def test_missing_model_pack_fails_fast_with_the_documented_error(which, tmp_path, no_download, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPackError) as info:
        if which == "align":
            FivePointAligner(landmarks="insightface", model_pack="models/buffalo_l")
        else:
            InsightFaceCropper(model_pack="models/buffalo_l")
    message = str(info.value)
    assert isinstance(info.value, FermetricError)
    assert f"insightface model pack not found: {tmp_path / 'models' / 'buffalo_l'}" in message
    assert "det_10g.onnx (buffalo_l)" in message and "never downloads" in message
    assert ("2d106det.onnx" in message) == (which == "face")


def test_model_pack_without_onnx_files_names_what_it_found(tmp_path, no_download):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    (pack / "buffalo_l.zip").write_bytes(b"")
    with pytest.raises(ModelPackError, match=r"holds no \.onnx file \(it has: buffalo_l\.zip\).*2d106det\.onnx"):
        InsightFaceCropper(model_pack=str(pack))


def test_model_pack_that_is_a_file(tmp_path, no_download):
    (tmp_path / "pack").write_text("")
    with pytest.raises(ModelPackError, match="is a file, not a folder"):
        InsightFaceCropper(model_pack=str(tmp_path / "pack"))


class _FakeFace(dict):
    """What FaceAnalysis.get returns: attribute access, None for what a model did not fill in."""

    def __getattr__(self, name):
        return self.get(name)


class _FakeFaceAnalysis:
    """Stands in for insightface.app.FaceAnalysis: records how it was built, returns the faces it is given."""

    calls: list[dict] = []
    faces: list[_FakeFace] = []
    tasks = ("detection", "landmark_2d_106")

    def __init__(self, name, root="~/.insightface", allowed_modules=None, **kwargs):
        type(self).calls.append({"name": name, "root": root, "allowed_modules": allowed_modules, **kwargs})
        self.models = {t: object() for t in self.tasks if allowed_modules is None or t in allowed_modules}
        assert "detection" in self.models

    def prepare(self, ctx_id=0, det_thresh=0.5, det_size=None):
        self.prepared = (ctx_id, det_thresh, det_size)

    def get(self, img, max_num=0):
        assert img.ndim == 3 and img.shape[2] == 3  # insightface wants BGR
        return list(self.faces)


@pytest.fixture
def fake_pack(tmp_path, monkeypatch, no_download):
    import insightface.app

    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    for name in ("det_10g.onnx", "2d106det.onnx"):
        (pack / name).write_bytes(b"not a real model")
    _FakeFaceAnalysis.calls = []
    _FakeFaceAnalysis.faces = []
    _FakeFaceAnalysis.tasks = ("detection", "landmark_2d_106")
    monkeypatch.setattr(insightface.app, "FaceAnalysis", _FakeFaceAnalysis)
    return pack


def _fake_detection(pts68: np.ndarray, scale: float = 1.0) -> _FakeFace:
    five = five_from_68(pts68)
    extra = (pts68[:38] + pts68[30]) / 2  # 38 more points inside the face: 106 in all, extent = the 68's
    lmk = np.vstack([pts68, extra])
    x0, y0 = pts68.min(0)
    x1, y1 = pts68.max(0)
    return _FakeFace(bbox=np.array([x0, y0, x1, y1]) * scale, kps=five, det_score=0.9, landmark_2d_106=lmk)


def test_insightface_five_points_come_from_the_detector(fake_pack):
    image, pts = _rotated_face()
    small = _fake_detection(pts * 0.3, scale=0.3)
    _FakeFaceAnalysis.faces = [small, _fake_detection(pts)]  # the larger face wins, whatever the order
    cropper = FivePointAligner(landmarks="insightface", model_pack=str(fake_pack), size=112)
    call = _FakeFaceAnalysis.calls[-1]
    assert call["name"] == str(fake_pack.resolve()) and call["root"] == str(fake_pack.resolve())
    assert call["allowed_modules"] == ["detection"]
    face = FaceImage(image)  # no dataset landmarks: the points must come from the detector
    reference = FivePointAligner(landmarks="dataset", size=112)(FaceImage(image, landmarks=pts))
    assert np.array_equal(cropper(face), reference)
    _FakeFaceAnalysis.faces = []
    with pytest.raises(NoFace, match="no face detected"):
        cropper(face)


def test_insightface_face_frames_the_106_landmarks(fake_pack):
    image, pts = _rotated_face(angle_deg=20.0)
    _FakeFaceAnalysis.faces = [_fake_detection(pts)]
    cropper = InsightFaceCropper(model_pack=str(fake_pack), size=64, margin=0.0, align=True)
    assert _FakeFaceAnalysis.calls[-1]["allowed_modules"] == ["detection", "landmark_2d_106"]
    face = FaceImage(image)
    crop = cropper(face)
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    inside = _apply(cropper.transform(face), _FakeFaceAnalysis.faces[0]["landmark_2d_106"])
    eyes = _apply(cropper.transform(face), five_from_68(pts)[:2])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6  # rotated level on the detector's eye points
    # margin 0: the landmarks' extent spans the crop's outer pixel edges in its larger dimension
    lo, hi = inside.min(0), inside.max(0)
    assert (lo >= -0.5 - 1e-6).all() and (hi <= 63.5 + 1e-6).all()
    assert max(hi - lo) == pytest.approx(64.0)


def test_insightface_face_detector_aligns_photos_by_its_five_points(fake_pack):
    """``--detect insightface``: the detector's boxes, five points and scores, largest first; inference aligns a
    template model's crop on the five points."""
    from fermetric.contracts import DetectedFace
    from fermetric.inference.faces import FaceFinder
    from fermetric_insightface import InsightFaceFaces

    image, pts = _rotated_face()
    _FakeFaceAnalysis.faces = [_fake_detection(pts * 0.3, scale=0.3), _fake_detection(pts)]
    detector = InsightFaceFaces(model_pack=str(fake_pack), det_size=320, det_thresh=0.6)
    assert _FakeFaceAnalysis.calls[-1]["allowed_modules"] == ["detection"]
    found = detector(image)
    assert all(isinstance(f, DetectedFace) for f in found) and found[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(found[0].landmarks, five_from_68(pts))  # the larger face first
    finder = FaceFinder({"name": "au_partial", "landmarks": "template"}, (48, 48), detect="insightface",
                        detector_params={"model_pack": str(fake_pack)})
    face = finder.find(image)[0]
    target = five_from_68(template_landmarks(48, 48))
    np.testing.assert_allclose(_apply(face.to_original, target), five_from_68(pts), atol=1e-3)
    assert face.method == "insightface"


def test_insightface_face_detector_without_its_pack_fails_when_the_model_loads(tmp_path, no_download, monkeypatch):
    from fermetric.inference.faces import FaceFinder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPackError, match=r"insightface model pack not found: .*models/buffalo_l \(--detector-param model_pack"):
        FaceFinder({"name": "au_partial", "landmarks": "template"}, (48, 48), detect="insightface",
                   detector_params={"model_pack": "models/buffalo_l"})
    with pytest.raises(RecipeError, match="--detector-param model_pack is not set"):
        FaceFinder({"name": "au_partial", "landmarks": "template"}, (48, 48), detect="insightface")


def test_pack_without_landmark_model_is_reported(fake_pack):
    _FakeFaceAnalysis.tasks = ("detection",)
    with pytest.raises(ModelPackError, match="no 106-point landmark model.*2d106det.onnx"):
        InsightFaceCropper(model_pack=str(fake_pack))


# ---------------------------------------------------------------------------------------- as a plugin


def test_registered_with_distribution_and_version():
    from fermetric.plugins import PluginHost

    try:
        version = importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{DIST} is not pip-installed here")
    host = PluginHost(allow=[DIST])
    for name in ("insightface_align", "insightface_face"):
        component = host.registry("cropper").get(name)
        assert (component.distribution, component.version) == (DIST, version)
    assert set(host.registry("cropper").get("insightface_align").params) >= {"landmarks", "size", "model_pack"}
    assert not [p for p in host.problems if p.plugin == DIST]


def test_fermetric_crop_reports_the_missing_pack(no_download, monkeypatch, tmp_path):
    """The path a user takes: `fermetric crop` on the shipped model-pack recipe, pack absent, exits 1 with the
    documented message before cropping anything."""
    from click.testing import CliRunner

    from fermetric.cli import cli

    root = _repo_root()
    if not importlib.metadata.entry_points(group="fermetric", name=DIST):
        pytest.skip(f"{DIST} is not pip-installed here")
    if root is None or not (root.parent / "shared" / "data" / "yalefaces" / "manifest.csv").is_file():
        pytest.skip("needs ../shared/data/yalefaces beside the checkout (the recipe lists its images)")
    if (root / "models" / "buffalo_l").exists():
        pytest.skip("models/buffalo_l exists in this checkout: the pack is not absent")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("FERMETRIC_PLUGINS", raising=False)
    monkeypatch.chdir(root)
    out = tmp_path / "preview.png"
    result = CliRunner().invoke(cli, ["crop", "plugins/fermetric-insightface/recipes/yalefaces_model_pack.toml", "--out", str(out)])
    assert result.exit_code == 2, result.output  # a missing resource the recipe names is bad input (MissingResource)
    assert f"insightface model pack not found: {root / 'models' / 'buffalo_l'}" in result.output
    assert "2d106det.onnx" in result.output
    assert not out.exists()
