"""Bad data (issue #12): every bad image, manifest, folder tree, cache or fold is reported, never fatal or silent.

Every file is generated in tmp_path; nothing here needs ../shared/data.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fermetric.contracts import FaceDataset, Sample
from fermetric.components.datasets import folder_dataset, manifest_dataset
from fermetric.data import decode as decode_mod
from fermetric.data.decode import UnreadableImage
from fermetric.data.pipeline import CropCache, decode, prepare, summary_lines
from fermetric.errors import FermetricError
from fermetric.evaluation.metrics import aggregate, classification_metrics


# -- helpers -------------------------------------------------------------------------------------------------
class ResizeCropper:
    """The smallest cropper: the whole image resized to 8x8 (counts its calls)."""

    output_size = (8, 8)

    def __init__(self):
        self.calls = 0

    def __call__(self, face):
        import cv2

        self.calls += 1
        return cv2.resize(face.image, (8, 8), interpolation=cv2.INTER_AREA)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A ~100-byte PNG whose header claims width x height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _png_chunk(b"IEND", b""))


def gray_png(path: Path, value: int = 100, size: int = 16) -> Path:
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def sample_of(path: Path, label: str = "happy") -> Sample:
    return Sample(key=str(path), label=label, path=path)


def decoded(path: Path) -> np.ndarray:
    return decode(sample_of(path))


# -- 1. decoding ----------------------------------------------------------------------------------------------
def test_decompression_bomb_is_unreadable_by_path_and_the_run_goes_on(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert bomb.stat().st_size < 200
    with pytest.raises(UnreadableImage) as info:
        decoded(bomb)
    assert info.value.reason == "decompression bomb" and str(bomb) in str(info.value)
    good = gray_png(tmp_path / "good.png")
    prepared = prepare(FaceDataset("t", ["happy"], [sample_of(bomb), sample_of(good)]), ResizeCropper(), {"name": "r"}, None)
    assert prepared.report["images_used"] == 1
    [item] = prepared.report["unreadable_files"]
    assert item["file"] == str(bomb) and item["reason"] == "decompression bomb" and "3600000000 pixels" in item["error"]


def test_pillow_warning_zone_is_refused_too(tmp_path, monkeypatch):
    # Between Pillow's own limit and twice it Pillow only warns; that must be a refusal as well.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = gray_png(tmp_path / "a.png", size=12)  # 144 pixels: Pillow's warning zone
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        decoded(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(decode_mod, "MAX_PIXELS", 100)
    with pytest.raises(UnreadableImage, match="12x12 pixels"):
        decoded(path)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 30000, 65535, 32896, 128, 129]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(decoded(path), expected)
    # A typical 16-bit photo (mid-grey) stays mid-grey instead of 97 % white.
    photo = np.random.default_rng(0).integers(20000, 40000, (32, 32)).astype(np.uint16)
    Image.fromarray(photo).save(path)
    assert 70 < decoded(path).mean() < 160


def test_16bit_big_endian_tiff(tmp_path):
    im = Image.new("I;16B", (3, 1))
    for x, v in enumerate((0, 65535, 32768)):
        im.putpixel((x, 0), v)
    path = tmp_path / "be.tif"
    im.save(path)
    np.testing.assert_array_equal(decoded(path), [[0, 255, 128]])


def test_float_tiff_in_unit_range_is_scaled_by_255(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = tmp_path / "unit.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(decoded(path), [[0, 64, 128, 255]])


def test_float_tiff_outside_unit_range_is_scaled_by_its_range(tmp_path):
    values = np.array([[-20.0, 30.0, 100.0, 180.0]], dtype=np.float32)
    path = tmp_path / "hdr.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(decoded(path), [[0, 64, 153, 255]])  # (v + 20) * 255 / 200, rounded
    # A float photo in 0..255 is not 99.7 % black.
    photo = np.random.default_rng(1).uniform(30, 220, (32, 32)).astype(np.float32)
    Image.fromarray(photo).save(path)
    assert 100 < decoded(path).mean() < 160


def test_float_nan_and_constant_images(tmp_path):
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan, 1.0]], dtype=np.float32)).save(path)
    np.testing.assert_array_equal(decoded(path), [[0, 0, 255]])
    Image.fromarray(np.full((2, 2), 7.5, np.float32)).save(path)
    np.testing.assert_array_equal(decoded(path), np.zeros((2, 2), np.uint8))


def test_32bit_integer_image_is_scaled_by_its_range(tmp_path):
    path = tmp_path / "int.tif"
    Image.fromarray(np.array([[0, 100000, 200000]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(decoded(path), [[0, 128, 255]])


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "CMYK", "1", "RGB"])
def test_odd_modes_decode_to_correct_grayscale(tmp_path, mode):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :2] = (255, 0, 0)
    rgb[:, 2:4] = (0, 200, 0)
    rgb[:, 4:] = (255, 255, 255)
    base = Image.fromarray(rgb)
    luma = np.asarray(base.convert("L"))
    if mode == "P":
        im, expected = base.quantize(3), luma
    elif mode == "LA":
        im = base.convert("LA")
        im.putalpha(40)  # nearly transparent: the stored gray is kept
        expected = luma
    elif mode == "RGBA":
        im = base.convert("RGBA")
        im.putalpha(0)
        expected = luma
    elif mode == "CMYK":
        im, expected = base.convert("CMYK"), luma
    elif mode == "1":
        im = base.convert("L").point(lambda v: 255 if v > 128 else 0).convert("1")
        expected = np.where(luma > 128, 255, 0).astype(np.uint8)
    else:
        im, expected = base, luma
    suffix = ".tif" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{suffix}"
    im.save(path)
    out = decoded(path)
    assert out.dtype == np.uint8 and out.shape == (4, 6)
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=1)


def test_generated_pixels_follow_the_same_rules():
    floats = Sample(key="f", label="happy", image=np.array([[0.0, 0.5, 1.0]]))
    deep = Sample(key="d", label="happy", image=np.array([[0, 65535]], dtype=np.uint16))
    rgba = Sample(key="c", label="happy", image=np.full((2, 2, 4), 200, np.uint8))
    np.testing.assert_array_equal(decode(floats), [[0, 128, 255]])
    np.testing.assert_array_equal(decode(deep), [[0, 255]])
    np.testing.assert_array_equal(decode(rgba), np.full((2, 2), 200))
    with pytest.raises(UnreadableImage, match="bad pixels"):
        decode(Sample(key="x", label="happy", image=np.zeros((2, 2, 2, 2))))


def within(seconds: float, fn, fifos=()):
    """fn()'s result, or a test failure (not a hung test run) if it blocks longer than ``seconds``; blocked
    readers of ``fifos`` are released so the process can exit."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for _ in range(20):
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            thread.join(0.05)
        pytest.fail(f"blocked for more than {seconds} s (a FIFO was opened)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableImage) as info:
        within(5, lambda: decoded(fifo), [fifo])
    assert info.value.reason == "not a regular file" and "FIFO" in info.value.error
    dataset = FaceDataset("t", ["happy"], [sample_of(fifo), sample_of(gray_png(tmp_path / "g.png"))])
    prepared = within(5, lambda: prepare(dataset, ResizeCropper(), {"name": "r"}, None), [fifo])
    assert prepared.report["images_used"] == 1
    assert prepared.report["unreadable_files"][0]["reason"] == "not a regular file"


def test_directory_and_device_are_refused(tmp_path):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    for path in (folder, Path("/dev/null")):
        with pytest.raises(UnreadableImage) as info:
            decoded(path)
        assert info.value.reason == "not a regular file"
    with pytest.raises(UnreadableImage) as info:
        decoded(tmp_path / "missing.png")
    assert info.value.reason == "missing"


def test_symlink_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.png").symlink_to(tmp_path / "pipe")
    with pytest.raises(UnreadableImage, match="not a regular file"):
        within(5, lambda: decoded(tmp_path / "link.png"), [tmp_path / "pipe"])


@pytest.mark.parametrize("keep", [0, 30, 60, -100])
def test_truncated_files_are_unreadable(tmp_path, keep):
    path = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])  # nothing, the header only, part of it, or all but the last pixel rows
    with pytest.raises(UnreadableImage) as info:
        decoded(path)
    assert info.value.reason in ("empty file", "truncated", "not an image", "corrupt")


def test_truncated_jpeg_is_unreadable(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableImage) as info:
        decoded(path)
    assert info.value.reason == "truncated"


def test_unreadable_error_is_a_user_error():
    # The CLI prints FermetricErrors without a traceback; callers catching ValueError keep working.
    exc = UnreadableImage("x.png", "not an image")
    assert isinstance(exc, FermetricError) and isinstance(exc, ValueError)


# -- 2. path confinement ----------------------------------------------------------------------------------------
def _manifest(root: Path, rows: list[str], header: str = "path,label,subject", bom: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header, *rows]) + "\n"
    path = root / "manifest.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_manifest_paths_outside_its_folder_are_refused_before_opening(tmp_path):
    outside = gray_png(tmp_path / "secret.png")
    data = tmp_path / "data"
    data.mkdir()
    gray_png(data / "a.png")
    (data / "link.png").symlink_to(outside)
    os.mkfifo(tmp_path / "fifo.png")  # outside and a FIFO: opening it would hang
    manifest = _manifest(data, ["a.png,happy,s1", "../../etc/passwd,happy,s1", f"{outside},happy,s1",
                                "link.png,happy,s1", "../fifo.png,happy,s1"])
    dataset = manifest_dataset(manifest)
    prepared = within(5, lambda: prepare(dataset, ResizeCropper(), {"name": "r"}, None), [tmp_path / "fifo.png"])
    assert prepared.report["images_used"] == 1
    refused = prepared.report["unreadable_files"]
    assert [r["reason"] for r in refused] == ["outside the data folder"] * 4
    assert prepared.report["unreadable_by_reason"] == {"outside the data folder": 4}
    assert "line 3" in refused[0]["error"] and "../../etc/passwd" in refused[0]["error"]
    assert "through a symlink" in refused[2]["error"] and "allow_outside" in refused[2]["error"]
    with pytest.raises(UnreadableImage, match="outside the data folder"):
        decode(dataset.samples[1])


def test_refused_marker_is_the_one_the_pipeline_reads():
    from fermetric.components import datasets

    assert datasets.REFUSED == decode_mod.REFUSED


def test_allow_outside_opts_out(tmp_path):
    (tmp_path / "images").mkdir()
    gray_png(tmp_path / "images" / "x.png")
    manifest = _manifest(tmp_path / "manifests", ["../images/x.png,happy,s1"])
    with pytest.raises(FermetricError, match="allow_outside"):
        manifest_dataset(manifest)  # every row refused: fails at once, saying how to opt out
    prepared = prepare(manifest_dataset(manifest, allow_outside=True), ResizeCropper(), {"name": "r"}, None)
    assert prepared.report["images_used"] == 1


def test_landmark_files_outside_are_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gray_png(data / "a.png")
    gray_png(data / "b.png")
    manifest = _manifest(data, ["a.png,happy,../../etc/hosts", "b.png,happy,"], header="path,label,landmarks")
    dataset = manifest_dataset(manifest)
    assert "landmark file" in dataset.samples[0].meta["fermetric.refused"]
    assert dataset.samples[0].landmarks_file is None


# -- 3. BOM and invisible column names --------------------------------------------------------------------------
def test_manifest_with_utf8_bom_just_works(tmp_path):
    gray_png(tmp_path / "a.png")
    dataset = manifest_dataset(_manifest(tmp_path, ["a.png,happy,s1"], bom=True))
    assert [s.label for s in dataset.samples] == ["happy"] and dataset.samples[0].subject == "s1"


def test_missing_column_error_shows_invisible_characters(tmp_path):
    manifest = _manifest(tmp_path, ["a.png,happy"], header="path\u200b,label")
    with pytest.raises(FermetricError) as info:
        manifest_dataset(manifest)
    assert "'path\\u200b'" in str(info.value)


# -- 4. all-unreadable datasets and the console summary ---------------------------------------------------------
def test_all_unreadable_dataset_names_examples_and_counts(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image")
    (tmp_path / "b.png").write_bytes(bomb_png())
    (tmp_path / "c.png").write_bytes(b"")
    samples = [sample_of(tmp_path / n) for n in ("a.png", "b.png", "c.png", "missing.png")]
    with pytest.raises(FermetricError) as info:
        prepare(FaceDataset("mine", ["happy"], samples), ResizeCropper(), {"name": "r"}, None)
    message = str(info.value)
    assert "no usable images in dataset 'mine'" in message
    assert "not an image 1" in message and "decompression bomb 1" in message and "missing 1" in message
    assert "empty file 1" in message
    examples = message.split("for example: ")[1]
    assert str(tmp_path / "a.png") in examples and examples.count(str(tmp_path)) == 3  # three examples


def test_summary_lines_lists_the_first_n_then_how_many_more(tmp_path):
    files = [{"file": f"/d/{i}.png", "reason": "not an image", "error": "not an image: no image format recognised"}
             for i in range(12)]
    lines = summary_lines({"unreadable_files": files}, limit=5)
    assert lines[0] == "12 unreadable files: not an image 12"
    assert len(lines) == 7 and lines[1].strip().startswith("/d/0.png: not an image")
    assert lines[-1].strip() == "... and 7 more (all in run.json)"
    assert summary_lines({"unreadable_files": files[:3]}, limit=5)[-1].strip().startswith("/d/2.png")
    assert summary_lines({"unreadable_files": []}) == []


# -- 5. subjects in folder datasets ----------------------------------------------------------------------------
def test_folders_with_a_subject_level(tmp_path):
    for cls in ("happy", "sad"):
        for subject in ("S1", "S2"):
            (tmp_path / cls / subject).mkdir(parents=True)
            gray_png(tmp_path / cls / subject / "x.png")
    dataset = folder_dataset(tmp_path, subject_level=True)
    assert dataset.has_subjects and dataset.classes == ["happy", "sad"]
    assert sorted({s.subject for s in dataset.samples}) == ["S1", "S2"] and len(dataset.samples) == 4


def test_folders_with_a_subjects_file(tmp_path):
    root = tmp_path / "faces"
    for cls in ("happy", "sad"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            gray_png(root / cls / f"{i}.png")
    mapping = tmp_path / "subjects.csv"
    mapping.write_bytes(b"\xef\xbb\xbfpath,subject\nhappy/0.png,A\nhappy/1.png,B\nsad/0.png,A\nsad/1.png,B\nother.png,C\n")
    dataset = folder_dataset(root, subjects_file=mapping)
    assert dataset.has_subjects
    assert {(Path(s.path).name, s.label, s.subject) for s in dataset.samples} == {
        ("0.png", "happy", "A"), ("1.png", "happy", "B"), ("0.png", "sad", "A"), ("1.png", "sad", "B")}
    mapping.write_text("path,subject\nhappy/0.png,A\n")
    with pytest.raises(FermetricError, match=r"3 of 4 images .* no subject"):
        folder_dataset(root, subjects_file=mapping)


def test_folders_subject_split_keeps_subjects_apart(tmp_path):
    from fermetric.data.protocols import make_folds

    for cls in ("happy", "sad"):
        for subject in ("S1", "S2", "S3"):
            (tmp_path / cls / subject).mkdir(parents=True)
            for i in range(2):
                gray_png(tmp_path / cls / subject / f"{i}.png", value=40 * i + 10)
    prepared = prepare(folder_dataset(tmp_path, subject_level=True), ResizeCropper(), {"name": "r"}, None)
    subjects = np.array([s.subject for s in prepared.samples])
    folds = make_folds(prepared, {"protocol": "kfold", "folds": 3, "group_by": "subject"}, 0.0, 0)
    assert len(folds) == 3
    for fold in folds:
        assert not set(subjects[fold.test]) & set(subjects[np.concatenate([fold.train, fold.val])])


# -- 6. metrics with a class absent from a fold ----------------------------------------------------------------
def test_absent_class_has_no_recall_and_stays_out_of_macro_f1():
    classes = ["happy", "sad", "angry"]
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 1])
    m = classification_metrics(y_true, y_pred, classes)
    assert m["per_class_recall"] == {"happy": 1.0, "sad": 1.0, "angry": None}
    assert m["macro_f1"] == 1.0 and m["accuracy"] == 1.0
    assert np.array(m["confusion_matrix"]["matrix"]).shape == (3, 3)
    assert json.loads(json.dumps(m))["per_class_recall"]["angry"] is None  # JSON null, valid JSON
    # A wrong prediction into the absent class still costs the true class.
    m = classification_metrics(y_true, np.array([0, 2, 1, 1]), classes)
    assert m["per_class_recall"]["happy"] == 0.5 and m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_aggregate_skips_folds_without_the_class():
    classes = ["happy", "sad", "angry"]
    folds = [classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 2]), classes),
             classification_metrics(np.array([0, 1]), np.array([0, 0]), classes)]
    agg = aggregate(folds)
    assert agg["per_class_recall.angry"]["mean"] == 1.0 and agg["per_class_recall.angry"]["n"] == 1
    assert agg["per_class_recall.angry"]["values"] == [1.0, None]
    assert agg["per_class_recall.sad"]["mean"] == 0.5
    assert math.isclose(agg["macro_f1"]["mean"], (1.0 + folds[1]["macro_f1"]) / 2)
    assert json.loads(json.dumps(agg))


# -- 7. corrupt crop cache ----------------------------------------------------------------------------------------
def _two_images(tmp_path):
    return FaceDataset("t", ["happy"], [sample_of(gray_png(tmp_path / "a.png", 50)),
                                        sample_of(gray_png(tmp_path / "b.png", 200))])


@pytest.mark.parametrize("damage", ["random", "truncated", "zeroed_header"])
def test_corrupt_cache_file_says_delete_it(tmp_path, damage):
    cache = tmp_path / "cache"
    prepare(_two_images(tmp_path), ResizeCropper(), {"name": "r"}, cache)
    db = cache / "crops.sqlite"
    for extra in ("crops.sqlite-wal", "crops.sqlite-shm"):
        (cache / extra).unlink(missing_ok=True)
    if damage == "random":
        db.write_bytes(os.urandom(5000))
    elif damage == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3] if len(data) > 4096 else data[:100])
    else:
        data = bytearray(db.read_bytes())
        data[:100] = b"\x00" * 100
        db.write_bytes(bytes(data))
    with pytest.raises(FermetricError) as info:
        prepare(_two_images(tmp_path), ResizeCropper(), {"name": "r"}, cache)
    assert f"delete {db}" in str(info.value) and "rebuilt" in str(info.value)
    assert info.value.__cause__ is None  # no sqlite3 traceback attached
    for extra in ("crops.sqlite", "crops.sqlite-wal", "crops.sqlite-shm"):
        (cache / extra).unlink(missing_ok=True)
    assert prepare(_two_images(tmp_path), ResizeCropper(), {"name": "r"}, cache).report["images_used"] == 2


def test_cache_that_is_a_directory(tmp_path):
    (tmp_path / "crops.sqlite").mkdir()
    with pytest.raises(FermetricError, match="delete"):
        CropCache(tmp_path)


def test_damaged_cache_rows_are_recomputed_not_trained_on(tmp_path):
    cache = tmp_path / "cache"
    first = prepare(_two_images(tmp_path), ResizeCropper(), {"name": "r"}, cache)
    db = sqlite3.connect(cache / "crops.sqlite")
    keys = [k for (k,) in db.execute("SELECT key FROM crops ORDER BY key")]
    db.execute("UPDATE crops SET data = ? WHERE key = ?", (b"\x00" * 10, keys[0]))  # short blob
    db.execute("UPDATE crops SET h = 4, w = 16 WHERE key = ?", (keys[1],))  # right length, wrong shape
    db.commit()
    db.close()
    cropper = ResizeCropper()
    second = prepare(_two_images(tmp_path), cropper, {"name": "r"}, cache)
    assert cropper.calls == 2 and second.report["unreadable"] == 0 and second.report["cache_damaged_rows"] == 2
    assert torch_equal(first.images, second.images)
    third_cropper = ResizeCropper()
    third = prepare(_two_images(tmp_path), third_cropper, {"name": "r"}, cache)  # the rows were rewritten
    assert third_cropper.calls == 0 and third.report["cache_hits"] == 2 and torch_equal(first.images, third.images)


def test_unknown_cache_status_is_a_miss(tmp_path):
    cache = CropCache(tmp_path, size=(8, 8))
    cache.put("k", "ok", np.ones((8, 8), np.uint8))
    cache.db.execute("UPDATE crops SET status = 'garbage'")
    assert cache.get("k") is None
    cache.db.execute("UPDATE crops SET status = 'ok', data = NULL")
    assert cache.get("k") is None
    cache.close()


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
