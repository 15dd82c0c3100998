"""The PI&DML pipeline on real data (skipped without ../shared/data) and its documented behaviour on bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fermetric import engine
from fermetric.components.croppers import AUPartialCropper
from fermetric.contracts import FaceDataset, Sample
from fermetric.errors import FermetricError, RecipeError
from fermetric.data.pipeline import prepare

from .conftest import shared_data
from fermetric.runfolder import RunFolder


def _dataset(samples, classes=("happy", "sad")):
    return FaceDataset("t", list(classes), samples)


def test_blank_image_follows_on_no_face_policy(tmp_path):
    pytest.importorskip("dlib", reason="dlib-bin is an optional extra (fermetric[dlib])")
    blank = Sample(key="blank", label="happy", image=np.full((64, 64), 128, np.uint8))
    from fermetric.components import synthetic

    face = synthetic.generate(n_subjects=1, per_class=1, size=64, seed=0)[0]
    good = Sample(key="good", label="sad", image=face.image, landmarks=face.landmarks)
    cropper = AUPartialCropper(landmarks="dlib")
    table = {"name": "au_partial", "landmarks": "dlib"}
    fallback = prepare(_dataset([blank, good]), cropper, table | {"on_no_face": "fallback"}, tmp_path / "c1")
    assert len(fallback.samples) == 2 and fallback.report["no_face_by_reason"] == {"no face detected": 1}
    assert fallback.report["no_face_files"] == [{"file": "blank", "reason": "no face detected", "action": "fallback"}]
    skipped = prepare(_dataset([blank, good]), cropper, table | {"on_no_face": "skip"}, tmp_path / "c1")
    assert [s.key for s in skipped.samples] == ["good"]
    assert skipped.report["cache_hits"] == 2  # the same crop (and the same "no face") is never computed twice
    with pytest.raises(FermetricError, match=r"blank: no face detected"):
        prepare(_dataset([blank, good]), cropper, table | {"on_no_face": "error"}, tmp_path / "c1")


def test_missing_landmark_file_is_counted_by_reason(tmp_path):
    from fermetric.components import synthetic

    face = synthetic.generate(n_subjects=1, per_class=1, size=64, seed=0)[0]
    path = tmp_path / "face.png"
    Image.fromarray(face.image).save(path)
    np.save(tmp_path / "face.npy", face.landmarks)
    ok = Sample(key="with", label="happy", path=path, landmarks_file=tmp_path / "face.npy")
    missing = Sample(key="without", label="sad", path=path, landmarks_file=tmp_path / "gone.npy")
    table = {"name": "au_partial", "landmarks": "dataset", "on_no_face": "skip"}
    prepared = prepare(_dataset([ok, missing]), AUPartialCropper(landmarks="dataset"), table, None)
    assert [s.key for s in prepared.samples] == ["with"]
    (reason,) = prepared.report["no_face_by_reason"]
    assert reason.startswith("landmark file missing:") and "gone.npy" in reason


def test_loss_parameter_of_wrong_type_stops_before_training(tmp_path):
    with pytest.raises(RecipeError, match=r"loss.1.pos_margin: loss 'emlf' expects float"):
        engine.run_recipe("recipes/quickstart.toml", str(tmp_path / "r"), ['loss.1.pos_margin="big"'])
    assert not (tmp_path / "r").exists()


def test_au_partial_with_dlib_on_yale_full_photos(tmp_path):
    root = shared_data("yalefaces")
    pytest.importorskip("dlib")
    from fermetric.plugins import get_host

    host = get_host()
    dataset = host.registry("dataset").get("manifest").factory(manifest=root / "manifest.csv")
    assert len(dataset.samples) == 59  # 4 expression classes, the documented duplicate dropped
    table = {"name": "au_partial", "landmarks": "dlib", "on_no_face": "skip"}
    prepared = prepare(dataset, AUPartialCropper(landmarks="dlib"), table, tmp_path / "cache")
    assert prepared.images.shape[1:] == (1, 48, 48)
    assert prepared.report["no_face"] <= 2 and len(prepared.samples) >= 57


def test_au_partial_with_template_on_ckplus48(tmp_path):
    root = shared_data("ckplus48")
    from fermetric.plugins import get_host

    dataset = get_host().registry("dataset").get("manifest").factory(manifest=root / "manifest.csv")
    prepared = prepare(dataset, AUPartialCropper(landmarks="template"), {"name": "au_partial"}, tmp_path / "cache")
    assert prepared.images.shape == (981, 1, 48, 48) and prepared.report["no_face"] == 0
    assert len(prepared.classes) == 7 and "contempt" in prepared.classes


@pytest.mark.slow
def test_ckplus48_pidml_recipe_end_to_end(tmp_path):
    shared_data("ckplus48")
    out = tmp_path / "ck"
    metrics, _ = engine.run_recipe(
        "recipes/pidml/ck48_pidml.toml", str(out),
        ["train.epochs=3", "eval.folds=10", f'data.manifest="{shared_data("ckplus48") / "manifest.csv"}"',
         f'train.cache_dir="{tmp_path / "cache"}"', "eval.tsne_max_points=300"],
        fold=0,
    )
    fold = RunFolder(out).fold(0)
    assert fold.tsne_png.is_file() and fold.confusion_png.is_file()
    saved = fold.metrics()
    assert saved["n_test"] > 50 and 0 < saved["embedding"]["intra_inter_ratio"] < 1.5
    assert metrics["accuracy"] > 1 / 7  # three epochs are enough to beat chance on 7 classes
    run = RunFolder(out).run_info()
    subjects = {s for s in run["data"]["classes"]}
    assert run["synthetic_data"] is False and subjects


def test_a_broken_cropper_stops_the_run_naming_file_and_cropper(tmp_path):
    class Broken:
        output_size = (8, 8)

        def __call__(self, face):
            raise ValueError("bad maths")

    sample = Sample(key="img-1", label="happy", image=np.zeros((16, 16), np.uint8))
    with pytest.raises(FermetricError, match=r"cropper 'broken' failed on img-1: ValueError: bad maths"):
        prepare(_dataset([sample]), Broken(), {"name": "broken"}, None)


def test_a_landmark_file_added_later_is_not_hidden_by_the_cache(tmp_path):
    from fermetric.components import synthetic

    face = synthetic.generate(n_subjects=1, per_class=1, size=64, seed=0)[0]
    path = tmp_path / "face.png"
    Image.fromarray(face.image).save(path)
    sample = Sample(key="face", label="happy", path=path, landmarks_file=tmp_path / "face.npy")
    table = {"name": "au_partial", "landmarks": "dataset", "on_no_face": "skip"}
    with pytest.raises(FermetricError, match="no usable images"):
        prepare(_dataset([sample]), AUPartialCropper(landmarks="dataset"), table, tmp_path / "cache")
    np.save(tmp_path / "face.npy", face.landmarks)
    second = prepare(_dataset([sample]), AUPartialCropper(landmarks="dataset"), table, tmp_path / "cache")
    assert [s.key for s in second.samples] == ["face"] and second.report["cache_hits"] == 0
