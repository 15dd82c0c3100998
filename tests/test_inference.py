"""Using a trained model: fermetric.load_model, predict / embed / evaluate / export / explain (issue #10)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fermetric
from fermetric.cli import cli
from fermetric.components.synthetic import generate
from fermetric.runfolder import RunFolder

from .conftest import REPO, TINY, shared_data


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The quick start recipe, tiny: synthetic faces, landmarks from the dataset, trained once for the module."""
    from fermetric.engine import run_recipe

    tmp = tmp_path_factory.mktemp("inference")
    out = tmp / "run"
    run_recipe(str(REPO / "recipes/quickstart.toml"), str(out), TINY + [f'train.cache_dir="{tmp / "cache"}"'])
    return out


@pytest.fixture(scope="module")
def model(run_dir):
    return fermetric.load_model(run_dir, device="cpu")


@pytest.fixture(scope="module")
def faces():
    return generate(n_subjects=2, per_class=1, size=64, seed=7)


@pytest.fixture
def photos(tmp_path, faces) -> Path:
    """A folder as users have them: face images, a text file, a truncated PNG and a picture with no face."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for f in faces[:4]:
        cv2.imwrite(str(folder / f"{f.subject}_{f.label}.png"), f.image)
    (folder / "notes.txt").write_text("not a picture")
    good = (folder / f"{faces[0].subject}_{faces[0].label}.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    cv2.imwrite(str(folder / "blank.png"), np.full((64, 64), 128, np.uint8))
    return folder


# -- loading -------------------------------------------------------------------------------------------------

def test_import_fermetric_stays_light():
    code = "import sys, fermetric, fermetric.cli; assert callable(fermetric.load_model); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_model_describes_itself_from_the_checkpoint_alone(model, run_dir):
    d = model.describe()
    assert d["classes"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert d["crop"]["name"] == "au_partial" and d["crop"]["landmarks"] == "dataset"
    assert d["input_size"] == [48, 48] and d["in_chans"] == 1 and d["normalization"] == "minus_one_to_one"
    assert d["synthetic_data"] is True and d["embedding_dim"] == 64
    # A single-split run gives the checkpoint its test metrics were computed with.
    assert Path(d["checkpoint"]) == RunFolder(run_dir).best_checkpoint and "best validation epoch" in d["choice"]


def test_predict_equals_cropper_plus_network(model, faces):
    """The API result is the recipe's crop through the network, nothing else."""
    from fermetric.components.croppers import AUPartialCropper

    rows = model.predict([f.to_face() for f in faces[:3]])
    assert [r.method for r in rows] == ["given landmarks"] * 3
    cropper = AUPartialCropper(landmarks="dataset", regions=["eyes_brows", "mouth"], size=48)
    crops = torch.from_numpy(np.stack([cropper(f.to_face()) for f in faces[:3]]))[:, None]
    with torch.no_grad():
        _, logits = model.network(model.network.normalize(crops))
    expected = logits.softmax(1).numpy()
    got = np.array([[r.probabilities[c] for c in model.classes] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r.label for r in rows] == [model.classes[i] for i in expected.argmax(1)]


def test_predict_accepts_arrays_pil_and_batches(model, faces):
    from PIL import Image

    rgb = np.repeat(faces[0].image[..., None], 3, axis=2)
    rows = model.predict([faces[0].image, Image.fromarray(rgb), np.stack([faces[0].image, faces[1].image]), np.zeros(5)])
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    # The same pixels as grey, RGB and PIL give the same answer.
    assert rows[0].status == "ok" and rows[0].probabilities == pytest.approx(rows[1].probabilities, abs=1e-6)
    assert rows[2].probabilities == pytest.approx(rows[0].probabilities, abs=1e-6)
    assert rows[4].status == "unreadable" and "shape" in rows[4].reason


def test_several_faces_in_one_picture(model, faces):
    group = cv2.resize(np.hstack([faces[3].image, np.full((64, 32), 128, np.uint8), faces[5].image]), None, fx=3, fy=3)
    rows = model.predict(group)
    assert [r.face for r in rows] == [0, 1] and all(r.method == "dlib" for r in rows)
    centres = sorted((r.box[0] + r.box[2]) / 2 for r in rows)
    assert centres[0] < group.shape[1] / 2 < centres[1]  # one face on each side


def test_run_folder_kfold_picks_best_validation_fold(run_dir, tmp_path):
    src = RunFolder(run_dir)
    kfold = RunFolder(tmp_path / "kfold")
    for i, val in enumerate([0.40, 0.75, 0.60]):
        fold = kfold.fold(i).mkdir()
        shutil.copy(src.best_checkpoint, fold.best_checkpoint)
        for epoch, v in enumerate([0.1, val]):
            fold.append_history({"epoch": epoch + 1, "val_accuracy": v})
    m = fermetric.load_model(kfold.root, device="cpu")
    assert Path(m.checkpoint) == kfold.fold(1).best_checkpoint and "fold 1" in m.choice and "0.7500" in m.choice
    assert Path(fermetric.load_model(kfold.root, fold=2).checkpoint) == kfold.fold(2).best_checkpoint
    with pytest.raises(fermetric.inference.ModelLoadError, match="has folds 0, 1, 2"):
        fermetric.load_model(kfold.root, fold=7)
    assert "the run is not finished (0 of 3 folds finished): its model may still change" in m.choice
    # While fold 1 is still training (no test metrics yet), its best.pt so far is not a candidate.
    from fermetric.runfolder import write_json

    for i in (0, 2):
        write_json({"accuracy": 0.5}, kfold.fold(i).metrics_file)
    m = fermetric.load_model(kfold.root, device="cpu")
    assert Path(m.checkpoint) == kfold.fold(2).best_checkpoint and "the highest of 2 finished folds" in m.choice
    assert invoke("predict", kfold.root, tmp_path / "none.png", "--fold", "7").exit_code == 2  # a bad command line


def test_bad_model_files_give_one_clear_message(run_dir, tmp_path):
    from fermetric.inference import ModelLoadError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": Evil()}, evil)
    with pytest.raises(ModelLoadError, match="not a fermetric checkpoint"):
        fermetric.load_model(evil)
    assert not marker.exists()  # weights_only: the pickled object was never built

    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ModelLoadError, match=r"expected a dict with 'model' and 'meta', found \['weights'\]"):
        fermetric.load_model(plain)
    text = tmp_path / "model.pt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="model.pt is damaged or not a fermetric checkpoint"):
        fermetric.load_model(text)

    state = torch.load(RunFolder(run_dir).best_checkpoint, weights_only=True)
    for change, message in [
        ({"fermetric": "99.0.0"}, "newer than the installed"),
        ({"fermetric": "0.0.1"}, "reads checkpoints of 0.1.x only"),
        ({"backbone": {"name": "no_such_net"}}, "needs backbone 'no_such_net', which no installed plugin provides"),
        ({"crop": {"name": "no_such_crop", "landmarks": "template"}}, "needs cropper 'no_such_crop'"),
    ]:
        forged = tmp_path / "forged.pt"
        torch.save(state | {"meta": state["meta"] | change}, forged)
        result = invoke("predict", forged, tmp_path)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    no_meta = dict(state["meta"])
    del no_meta["classes"]
    torch.save(state | {"meta": no_meta}, tmp_path / "nometa.pt")
    with pytest.raises(ModelLoadError, match="metadata lacks classes"):
        fermetric.load_model(tmp_path / "nometa.pt")


# -- predict on the command line --------------------------------------------------------------------------------

def test_predict_cli_rows_for_every_file_and_annotations(run_dir, photos, tmp_path):
    out, ann = tmp_path / "predictions.csv", tmp_path / "ann"
    result = invoke("predict", run_dir, photos, "--out", out, "--annotate", ann, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    rows = {Path(r["source"]).name: r for r in read_csv(out)}
    assert rows["notes.txt"]["status"] == "skipped" and "not an image" in rows["notes.txt"]["reason"]
    assert rows["truncated.png"]["status"] == "unreadable" and "truncated" in rows["truncated.png"]["reason"]
    assert rows["blank.png"]["status"] == "no_face" and rows["blank.png"]["reason"] == "no face detected"
    ok = [r for name, r in rows.items() if r["status"] == "ok"]
    assert len(ok) >= 3  # dlib misses about 2% of the synthetic faces
    for r in ok:
        probs = [float(r[f"p_{c}"]) for c in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")]
        assert abs(sum(probs) - 1) < 1e-4 and r["label"] in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
        assert float(r["confidence"]) == pytest.approx(max(probs), abs=1e-5) and r["method"] == "dlib"
    # One annotated picture per readable picture, and a real PNG.
    pngs = sorted(p.name for p in ann.iterdir())
    assert len(pngs) == len(ok) + 1 and all(p.endswith(".png") for p in pngs)
    assert (ann / "blank.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{len(ok)} faces, 1 without a face, 1 unreadable, 1 skipped" in result.output
    # Each row names the picture it is drawn on; unreadable files have none.
    assert rows["blank.png"]["annotation"] == str(ann / "blank.png") and rows["truncated.png"]["annotation"] == ""
    assert sorted(Path(r["annotation"]).name for r in ok) == sorted(set(pngs) - {"blank.png"})


def test_annotations_of_two_pictures_with_one_name_are_told_apart(run_dir, faces, tmp_path):
    for folder, face in (("happy", faces[0]), ("sad", faces[1])):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "subject01.png"), face.image)
    out, ann = tmp_path / "p.json", tmp_path / "ann"
    assert invoke("predict", run_dir, tmp_path / "happy", tmp_path / "sad", "--out", out, "--annotate", ann, "--detect", "none").exit_code == 0
    results = json.loads(out.read_text())["results"]
    by_source = {Path(r["source"]).parent.name: Path(r["annotation"]).name for r in results}
    assert by_source == {"happy": "subject01.png", "sad": "subject01_2.png"}


def test_predict_exit_codes(run_dir, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_text("no pixels here")
    result = invoke("predict", run_dir, junk, tmp_path / "missing.png", str(tmp_path / "nothing*.jpg"))
    assert result.exit_code == 1 and "nothing could be read" in result.output
    assert "no file matches this pattern" in result.output and "file not found" in result.output
    assert invoke("predict", run_dir).exit_code == 2  # no inputs
    assert invoke("predict", run_dir, junk, "--out", tmp_path / "x.xlsx").exit_code == 2


def test_predict_detector_choice_and_parameters_on_the_command_line(run_dir, photos, tmp_path):
    picture = next(photos.glob("*_*.png"))
    unknown = invoke("predict", run_dir, picture, "--detect", "mtcnn")
    assert unknown.exit_code == 2 and "'mtcnn' is not a face detector; choose one of auto, dlib, haar" in unknown.output
    assert invoke("predict", run_dir, picture, "--detect", "haar", "--detector-param", "min_neighbors").exit_code == 2
    auto = invoke("predict", run_dir, picture, "--detector-param", "min_neighbors=3")
    assert auto.exit_code == 2 and "need a named detector (detect='NAME', --detect NAME)" in auto.output
    typo = invoke("predict", run_dir, picture, "--detect", "haar", "--detector-param", "min_neigbours=3")
    assert typo.exit_code == 2 and "unknown parameter 'min_neigbours'; haar's parameters: scale_factor, min_neighbors" in typo.output
    out = tmp_path / "haar.csv"
    ok = invoke("predict", run_dir, picture, "--detect", "haar", "--detector-param", "min_neighbors=2", "--out", out)
    assert ok.exit_code == 0, ok.output
    ok_rows = [r for r in read_csv(out) if r["status"] == "ok"]
    assert ok_rows and all(r["method"] == "haar" for r in ok_rows)


def test_load_model_takes_a_detector_object(run_dir, faces):
    from fermetric.contracts import DetectedFace

    class Everything:
        name = "everything"

        def __call__(self, gray):
            h, w = gray.shape
            return [DetectedFace((0.0, 0.0, float(w), float(h)))]

    m = fermetric.load_model(run_dir, device="cpu", detect=Everything())
    (row,) = m.predict(faces[0].image)
    assert row.status == "ok" and row.method == "everything"


def test_predict_video_every_nth_frame_and_unreadable_video(run_dir, faces, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 128))
    for f in faces[:6]:
        writer.write(cv2.cvtColor(cv2.resize(f.image, (128, 128)), cv2.COLOR_GRAY2BGR))
    writer.release()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    out = tmp_path / "video.json"
    result = invoke("predict", run_dir, video, broken, "--every", "2", "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    frames = [r for r in rows if r["source"] == str(video)]
    assert [r["frame"] for r in frames] == [0, 2, 4]
    assert [r["time_s"] for r in frames] == pytest.approx([0.0, 0.2, 0.4])
    bad = [r for r in rows if r["source"] == str(broken)]
    assert len(bad) == 1 and bad[0]["status"] == "unreadable" and "video" in bad[0]["reason"]


def test_predict_as_a_real_subprocess(run_dir, photos, tmp_path):
    out = tmp_path / "sub.csv"
    proc = subprocess.run([sys.executable, "-m", "fermetric", "predict", str(run_dir), str(photos / "*.png"), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "preprocessing: faces are detected with dlib" in proc.stderr and "SYNTHETIC" in proc.stderr
    assert {Path(r["source"]).name for r in read_csv(out)} == {p.name for p in photos.glob("*.png")}


# -- embed, export, explain, evaluate --------------------------------------------------------------------------

def test_embed_cli_vectors_and_index(run_dir, model, photos, tmp_path):
    out = tmp_path / "emb.npy"
    result = invoke("embed", run_dir, photos, "--out", out)
    assert result.exit_code == 0, result.output
    vectors = np.load(out)
    index = read_csv(out.with_suffix(".csv"))
    ok = [r for r in index if r["status"] == "ok"]
    assert vectors.shape == (len(ok), 64) and [int(r["row"]) for r in ok] == list(range(len(ok)))
    assert all(r["row"] == "" for r in index if r["status"] != "ok") and len(index) == 7
    # The same vectors as the API gives.
    api, rows = model.embed(photos)
    np.testing.assert_allclose(api, vectors, atol=1e-5)


def test_export_onnx_parity_and_sidecar(run_dir, model, faces, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    result = invoke("export", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    diff = float(re.search(r"max abs difference of probabilities ([0-9.e+-]+)", result.output).group(1))
    assert diff < 1e-4
    card = json.loads((tmp_path / "model.onnx.json").read_text())
    assert card["classes"] == model.classes and card["preprocessing"]["crop"]["name"] == "au_partial"
    assert card["input"]["shape"] == ["batch", 1, 48, 48] and card["parity"]["max_abs_diff_probabilities"] == pytest.approx(diff, rel=0.01)
    # Independently: onnxruntime on a batch of 3 crops matches the Python API.
    crops = np.stack([model.crop(model.faces(f.image, f.landmarks)[0]) for f in faces[:3]])[:, None].astype(np.float32)
    probs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["probabilities"], {"pixels": crops})[0]
    api = model.predict([f.to_face() for f in faces[:3]])
    np.testing.assert_allclose(probs, [[r.probabilities[c] for c in model.classes] for r in api], atol=1e-5)
    ts = invoke("export", run_dir, "--format", "torchscript", "--out", tmp_path / "model.pt")
    assert ts.exit_code == 0 and "torch.jit vs PyTorch" in ts.output


def test_explain_heatmaps_map_back_onto_the_action_unit_regions(run_dir, model, faces, tmp_path):
    from fermetric.inference.explain import explain_face, source_coordinates

    f = faces[3]
    face = model.faces(f.image, f.landmarks)[0]
    result = explain_face(model, f.image, face)
    assert result["heat"].shape == (48, 48) and 0 <= result["heat"].min() and result["heat"].max() <= 1
    coords = source_coordinates(model, face)
    # The top tile of the partial image comes from the brows and eyes, the bottom from the mouth (landmarks 17-47
    # and 48-67), so the map back puts each where it belongs on the picture.
    eyes_y, mouth_y = f.landmarks[17:48, 1], f.landmarks[48:68, 1]
    assert eyes_y.min() - 6 < np.median(coords[2:14, :, 1]) < eyes_y.max() + 6
    assert mouth_y.min() - 6 < np.median(coords[24:44, :, 1]) < mouth_y.max() + 6
    # Forehead and hair are not in the partial image: no heat there.
    assert not result["covered"][: max(0, int(eyes_y.min()) - 8)].any()
    out = tmp_path / "explain"
    png = tmp_path / "face.png"
    cv2.imwrite(str(png), f.image)
    res = invoke("explain", run_dir, png, "--out", out, "--class", "happy")
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.iterdir()] == ["face_face0.png"] and "explained 1 faces" in res.output
    assert invoke("explain", run_dir, png, "--out", out, "--class", "bored").exit_code == 1


def test_evaluate_synthetic_manifest_with_label_map(run_dir, faces, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rename = {"sad": "sadness", "angry": "anger"}
    rows = []
    for i, f in enumerate(faces):
        name = f"img{i}.png"
        cv2.imwrite(str(data / name), f.image)
        rows.append((name, rename.get(f.label, f.label)))
    rows.append(("extra.png", "contempt"))
    cv2.imwrite(str(data / "extra.png"), faces[0].image)
    with open(data / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    out, preds = tmp_path / "eval", tmp_path / "preds.csv"
    result = invoke("evaluate", run_dir, "--data", data / "manifest.csv", "--label-map", "sadness=sad,anger=angry",
                    "--out", out, "--predictions", preds)
    assert result.exit_code == 0, result.output
    metrics = json.loads(RunFolder(out).metrics_file.read_text())
    assert metrics["unmapped"]["contempt"]["images"] == 1 and "contempt" in result.output
    assert metrics["label_map"]["sadness"] == "sad" and metrics["label_map"]["anger"] == "angry"
    assert RunFolder(out).confusion_png.read_bytes()[:4] == b"\x89PNG"
    # Accuracy is exactly the share of scored predictions that match the mapped labels.
    table = [r for r in read_csv(preds) if r["status"] == "ok" and r["label"] != "contempt"]
    mapped = {"sadness": "sad", "anger": "angry"}
    assert metrics["n_test"] == len(table)
    assert metrics["accuracy"] == pytest.approx(np.mean([mapped.get(r["label"], r["label"]) == r["predicted"] for r in table]))
    bad = invoke("evaluate", run_dir, "--data", data / "manifest.csv", "--label-map", "sadness=melancholy")
    assert bad.exit_code == 2 and "which the model lacks" in bad.output


# -- real data (../shared/data; skipped when absent) -----------------------------------------------------------

@pytest.fixture(scope="module")
def ck_run(tmp_path_factory) -> Path:
    shared_data("ckplus48")
    from fermetric.engine import run_recipe

    tmp = tmp_path_factory.mktemp("ck48")
    out = tmp / "run"
    run_recipe(str(REPO / "recipes/pidml/ck48_pidml.toml"), str(out), [
        "data.limit=210", "train.epochs=2", 'eval.protocol="holdout"', "eval.test_fraction=0.25",
        "eval.tsne=false", "eval.knn=false", f'train.cache_dir="{tmp / "cache"}"'])
    return out


@pytest.mark.shared_data
def test_ck48_model_reads_ck48_crops_as_they_are(ck_run):
    root = shared_data("ckplus48")
    m = fermetric.load_model(ck_run, device="cpu")
    paths = sorted((root / "happy").glob("*.png"))[:8]
    rows = m.predict(paths)
    assert [r.method for r in rows] == ["whole image"] * 8 and all(r.box == (0, 0, 48, 48) for r in rows)
    assert "pre-aligned face crops" in m.preprocessing


@pytest.mark.shared_data
def test_ck48_model_on_yale_photos_detects_and_aligns(ck_run, tmp_path):
    root = shared_data("yalefaces")
    m = fermetric.load_model(ck_run, device="cpu")
    paths = sorted((root / "happy").glob("*.png"))[:6]
    rows = m.predict(paths)
    assert all(r.status == "ok" and r.method == "dlib" for r in rows)
    for r in rows:
        x0, y0, x1, y1 = r.box
        # A face frame, not the whole 320x243 photo.
        assert 100 < x1 - x0 < 220 and 0 <= x0 and x1 <= 320
    # The aligned crop is framed like a CK+48 image: the template's eye row sits on the detected eyes.
    from fermetric.components.landmarks import DlibLandmarks, template_landmarks
    from fermetric.inference.inputs import decode_file

    image = decode_file(paths[0])
    face = m.faces(image)[0]
    pts = DlibLandmarks().detect_all(face.face_image.image)[0]
    tpl = template_landmarks(48, 48)
    assert np.abs(pts[36:48].mean(0) - tpl[36:48].mean(0)).max() < 3.0
    haar = fermetric.load_model(ck_run, detect="haar").predict(paths[:3])
    assert all(r.method == "haar" and r.status == "ok" for r in haar)


@pytest.mark.shared_data
def test_cross_dataset_ck48_to_fer2013_with_label_map(ck_run, tmp_path):
    fer = shared_data("fer2013")
    out = tmp_path / "cross"
    result = invoke("evaluate", ck_run, "--data", fer / "manifest.csv", "--split", "PublicTest", "--limit", "140",
                    "--label-map", "angry=anger,sad=sadness", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(RunFolder(out).metrics_file.read_text())
    assert metrics["unmapped"]["neutral"]["reason"] == "the model has no such class" and metrics["unmapped"]["neutral"]["images"] > 0
    assert "contempt" in metrics["model_classes_without_images"] and metrics["per_class_recall"]["contempt"] is None
    assert metrics["n_test"] + metrics["unmapped"]["neutral"]["images"] + metrics["no_face"] + metrics["unreadable"] == 140
    assert "contempt" not in metrics["macro_f1_classes"] and "not scored" in result.output
