"""Colour end to end (issue #11): RGB decoding, 3-channel croppers and augmentation, the colour synthetic set,
ImageNet normalisation, and an RGB recipe that trains. Gray stays the default, unchanged."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fermetric.components import synthetic
from fermetric.components.croppers import AUPartialCropper, FullFaceCropper
from fermetric.components.datasets import synthetic_dataset
from fermetric.contracts import FaceImage
from fermetric.data.decode import decode_bytes
from fermetric.data.pipeline import cropper_key, decode, prepare
from fermetric.errors import FermetricError, RecipeError
from fermetric.model import IMAGENET_MEAN, IMAGENET_STD, FERModel, normalize, predict
from fermetric.training.augment import Augment


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG") if mode else Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


# -- decoding ---------------------------------------------------------------------------------------------------
def test_rgb_decoding_keeps_colour_and_gray_decoding_is_unchanged():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_bytes(_png(rgb), color="rgb"), rgb)
    gray_of_rgb = decode_bytes(_png(rgb))
    assert gray_of_rgb.shape == (9, 7)
    assert np.array_equal(gray_of_rgb, np.asarray(Image.fromarray(rgb).convert("L")))  # Pillow's luma, as before
    rgba = np.concatenate([rgb, np.zeros((9, 7, 1), np.uint8)], axis=2)
    assert np.array_equal(decode_bytes(_png(rgba), color="rgb"), rgb)  # alpha ignored, not composited
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    assert np.array_equal(decode_bytes(_png(gray), color="rgb"), np.repeat(gray[:, :, None], 3, axis=2))
    deep = (rng.integers(0, 65536, (4, 4))).astype(np.uint16)
    as_gray = decode_bytes(_png(deep))
    assert Image.open(io.BytesIO(_png(deep))).mode.startswith("I")
    assert np.array_equal(decode_bytes(_png(deep), color="rgb"), np.repeat(as_gray[:, :, None], 3, axis=2))
    with pytest.raises(ValueError):
        decode_bytes(_png(gray), color="cmyk")


def test_generated_pixels_decode_in_colour():
    from fermetric.contracts import Sample

    face = synthetic.generate(n_subjects=1, per_class=1, size=32, color=True)[0]
    sample = Sample(key="x", label=face.label, image=face.image)
    assert np.array_equal(decode(sample, color="rgb"), face.image)
    assert decode(sample).shape == (32, 32)
    gray_sample = Sample(key="g", label="happy", image=np.zeros((8, 8), np.float32))
    assert decode(gray_sample, color="rgb").shape == (8, 8, 3)


# -- croppers and augmentation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: FullFaceCropper(landmarks="dataset", size=40),
    lambda: FullFaceCropper(landmarks="template", size=24),
    lambda: AUPartialCropper(landmarks="dataset", size=40),
    lambda: AUPartialCropper(landmarks="dataset", size=40, layout="grid", regions=["eyes_brows", "mouth", "nose"]),
])
def test_croppers_warp_the_three_channels_like_three_gray_images(make):
    face = synthetic.generate(n_subjects=1, per_class=1, size=64, color=True)[3]
    cropper = make()
    crop = cropper(FaceImage(image=face.image, landmarks=face.landmarks))
    assert crop.shape == (*cropper.output_size, 3) and crop.dtype == np.uint8
    for c in range(3):
        single = cropper(FaceImage(image=np.ascontiguousarray(face.image[:, :, c]), landmarks=face.landmarks))
        assert np.array_equal(crop[:, :, c], single), c


def test_augmentation_moves_every_channel_alike():
    rng = np.random.default_rng(1)
    gray = torch.from_numpy(rng.integers(0, 256, (4, 1, 24, 24), dtype=np.uint8))
    colour = torch.cat([gray, 255 - gray, gray // 2], dim=1)
    augment = Augment({"flip": True, "shift": 0.1, "rotate": 10.0, "scale": 0.1})
    out = augment(normalize(colour), torch.Generator().manual_seed(5))
    for c in range(3):
        alone = augment(normalize(colour[:, c : c + 1]), torch.Generator().manual_seed(5))
        assert torch.allclose(out[:, c : c + 1], alone, atol=1e-5)


# -- the synthetic colour set -------------------------------------------------------------------------------------
def test_colour_synthetic_faces_are_deterministic_and_leave_gray_faces_alone():
    gray = synthetic.generate(n_subjects=2, per_class=1, size=32, seed=4)
    colour = synthetic.generate(n_subjects=2, per_class=1, size=32, seed=4, color=True)
    again = synthetic.generate(n_subjects=2, per_class=1, size=32, seed=4, color=True)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(colour, again))
    for g, c in zip(gray, colour):
        assert g.image.shape == (32, 32) and c.image.shape == (32, 32, 3)
        assert np.array_equal(g.landmarks, c.landmarks)
        luma = c.image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(luma - g.image).mean() < 6  # the colour is a tint of the same drawing
    assert np.abs(colour[0].image[:, :, 0].astype(int) - colour[0].image[:, :, 2]).mean() > 3  # really coloured
    ds = synthetic_dataset(subjects=1, per_class=1, size=32, color=True)
    assert ds.samples[0].image.shape == (32, 32, 3) and "/rgb/" in ds.samples[0].key


def test_color_gray_keeps_the_crop_cache_key_and_rgb_does_not():
    table = {"name": "au_partial", "size": 48, "on_no_face": "fallback", "cache": True}
    assert cropper_key({**table, "color": "gray"}, "1") == cropper_key(table, "1")
    assert cropper_key({**table, "color": "rgb"}, "1") != cropper_key(table, "1")


def test_rgb_crops_from_the_pipeline_and_a_gray_only_cropper_is_refused(tmp_path):
    ds = synthetic_dataset(subjects=1, per_class=1, size=48, color=True)
    table = {"name": "au_partial", "landmarks": "dataset", "size": 32, "on_no_face": "fallback", "color": "rgb"}
    prepared = prepare(ds, AUPartialCropper(landmarks="dataset", size=32), table, tmp_path)
    assert prepared.images.shape == (len(ds.samples), 3, 32, 32)
    again = prepare(ds, AUPartialCropper(landmarks="dataset", size=32), table, tmp_path)  # from the cache
    assert again.report["cache_hits"] == len(ds.samples) and torch.equal(again.images, prepared.images)
    gray_table = {**table, "color": "gray"}
    assert prepare(ds, AUPartialCropper(landmarks="dataset", size=32), gray_table, tmp_path).images.shape[1] == 1

    class GrayOnly:
        output_size = (8, 8)

        def __call__(self, face):
            return np.zeros((8, 8), np.uint8)

    with pytest.raises(FermetricError, match="rgb"):
        prepare(ds, GrayOnly(), {**table, "name": "gray_only", "cache": False}, tmp_path)


# -- normalisation ----------------------------------------------------------------------------------------------------
def test_imagenet_normalisation_against_a_hand_computation():
    x = torch.tensor([[[[0, 255]], [[128, 64]], [[10, 200]]]], dtype=torch.uint8)  # (1, 3, 1, 2)
    got = normalize(x, "imagenet")
    for c in range(3):
        for j in range(2):
            hand = (int(x[0, c, 0, j]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            assert abs(float(got[0, c, 0, j]) - hand) < 1e-5
    one = torch.tensor([[[[0, 100, 255]]]], dtype=torch.uint8)
    mean, std = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3
    hand = torch.tensor([(v / 255.0 - mean) / std for v in (0, 100, 255)])
    assert torch.allclose(normalize(one, "imagenet")[0, 0, 0], hand, atol=1e-5)
    assert torch.equal(normalize(x), x.float().div(127.5).sub(1.0))  # the default is today's mapping, exactly
    with pytest.raises(ValueError):
        normalize(x, "zscore")


def test_the_model_normalises_by_its_own_choice():
    class Tiny(torch.nn.Module):
        num_features = 3

        def forward(self, x):
            return x.mean(dim=(2, 3))

    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    assert torch.equal(FERModel.normalize(x), x.float().div(127.5).sub(1.0))  # on the class: as always
    default = FERModel(Tiny(), 2, 4, in_chans=3)
    imagenet = FERModel(Tiny(), 2, 4, in_chans=3, normalization="imagenet")
    imagenet.load_state_dict(default.state_dict())  # the choice is not a weight: checkpoints unchanged
    assert torch.equal(default.normalize(x), FERModel.normalize(x))
    assert torch.equal(imagenet.normalize(x), normalize(x, "imagenet"))
    emb_default, _ = predict(default, x, torch.device("cpu"))
    emb_imagenet, _ = predict(imagenet, x, torch.device("cpu"))
    imagenet.eval()
    expected, _ = imagenet(normalize(x, "imagenet"))
    assert np.allclose(emb_imagenet, expected.detach().numpy(), atol=1e-5)
    assert not np.allclose(emb_default, emb_imagenet)
    with pytest.raises(ValueError):
        FERModel(Tiny(), 2, 4, normalization="bogus")


# -- recipes -----------------------------------------------------------------------------------------------------------
def test_recipe_keys_are_checked(host):
    from fermetric.engine import load_recipe

    base = "recipes/quickstart.toml"
    recipe = load_recipe(base, ['crop.color="rgb"', 'model.normalization="imagenet"', 'train.store="mmap"',
                                "train.workers=2"], host)
    assert recipe["crop"]["color"] == "rgb" and recipe["model"]["normalization"] == "imagenet"
    assert recipe["train"]["store"] == "mmap" and recipe["train"]["workers"] == 2
    plain = load_recipe(base, [], host)
    assert "color" not in plain["crop"] and plain["train"]["store"] == "auto" and plain["train"]["workers"] == 0
    for bad, key in (('crop.color="bgr"', "crop.color"), ('model.normalization="x"', "model.normalization"),
                     ('train.store="disk"', "train.store"), ("train.workers=-1", "train.workers")):
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            load_recipe(base, [bad], host)


def test_an_rgb_recipe_trains_end_to_end(tmp_path, tiny_overrides):
    from fermetric.engine import run_recipe
    from fermetric.runfolder import RunFolder, load_checkpoint

    out = tmp_path / "run"
    metrics, _ = run_recipe("recipes/quickstart.toml", str(out), tiny_overrides + [
        "data.color=true", 'crop.color="rgb"', "backbone.in_chans=3", "train.epochs=1"])
    assert 0.0 <= metrics["accuracy"] <= 1.0
    meta = load_checkpoint(RunFolder(out).last_checkpoint)["meta"]
    assert meta["in_chans"] == 3 and meta["crop"]["color"] == "rgb"
    run = RunFolder(out).run_info()
    assert run["data"]["store"]["color"] == "rgb"


def test_colour_and_imagenet_models_in_inference(tmp_path, tiny_overrides):
    """An ImageNet-normalised model predicts with its own normalisation (the colour model's inference is tested
    below)."""
    import numpy as np

    import fermetric
    from fermetric.engine import run_recipe
    from fermetric.errors import FermetricError

    _, out = run_recipe("recipes/quickstart.toml", str(tmp_path / "imagenet"),
                        tiny_overrides + ['model.normalization="imagenet"', "train.epochs=1"])
    model = fermetric.load_model(out)
    assert model.network.normalization == "imagenet"
    from fermetric.components import synthetic

    drawn = synthetic.generate(n_subjects=1, per_class=1, size=64, seed=5)[0].to_face()
    (row,) = model.predict([drawn])
    assert row.status == "ok" and len(row.probabilities) == 7 and abs(sum(row.probabilities.values()) - 1) < 1e-5
    from fermetric.model import normalize
    from fermetric.model import predict as raw_predict

    import torch

    crop = torch.from_numpy(model.crop(model.faces(drawn.image, drawn.landmarks)[0]))[None, None]
    _, logp = raw_predict(model.network, crop, torch.device("cpu"))
    assert np.allclose(np.exp(logp[0]), [row.probabilities[c] for c in model.classes], atol=1e-5), \
        "the probabilities are the network's on ImageNet-normalised input"
    assert not torch.allclose(normalize(crop, "imagenet"), normalize(crop, "minus_one_to_one"))


def test_a_colour_model_predicts_exports_and_explains_in_colour(tmp_path, tiny_overrides):
    """Inference reads pictures the way the colour model trained: RGB crops (3, H, W) from RGB pixels, the same
    probabilities as the network on the training pipeline's crop, from an array or a PNG file; the ONNX export
    takes RGB and matches PyTorch; Grad-CAM panels are drawn."""
    import json

    from click.testing import CliRunner

    import fermetric
    from fermetric.cli import cli
    from fermetric.data.pipeline import decode
    from fermetric.engine import run_recipe
    from fermetric.model import predict as raw_predict

    _, rgb_run = run_recipe("recipes/quickstart.toml", str(tmp_path / "rgb"), tiny_overrides + [
        "data.color=true", 'crop.color="rgb"', "backbone.in_chans=3", "train.epochs=1"])
    model = fermetric.load_model(rgb_run)
    assert model.color == "rgb"
    face = synthetic.generate(n_subjects=1, per_class=1, size=48, seed=9, color=True)[3]
    assert face.image.ndim == 3 and not np.array_equal(face.image[..., 0], face.image[..., 2]), "a colour picture"

    (row,) = model.predict([face.to_face()])  # with its landmarks, as the quick start's cropper trained
    assert row.status == "ok" and row.method == "given landmarks"
    # The training path: decode in colour, the recipe's cropper, (N, 3, H, W).
    from fermetric.build import build
    from fermetric.contracts import Sample
    from fermetric.plugins import get_host

    cropper, _ = build(get_host(), "cropper", model.crop_table, where="crop")
    pixels = decode(Sample(key="x", label=face.label, image=face.image), color="rgb")
    train_crop = np.asarray(cropper(FaceImage(pixels, landmarks=face.landmarks)))
    assert train_crop.shape == (*model.input_size, 3)
    x = torch.from_numpy(np.ascontiguousarray(train_crop.transpose(2, 0, 1)))[None]
    assert torch.equal(x[0], torch.from_numpy(model.crop(model.faces(face.image, face.landmarks)[0])))
    _, logp = raw_predict(model.network, x, torch.device("cpu"))
    assert np.allclose(np.exp(logp[0]), [row.probabilities[c] for c in model.classes], atol=1e-6)
    # Colour reaches the network: the grey version of the same picture gives other probabilities.
    gray = np.repeat(np.asarray(Image.fromarray(face.image).convert("L"))[:, :, None], 3, axis=2)
    (gray_row,) = model.predict([FaceImage(gray, landmarks=face.landmarks)])
    assert not np.allclose(list(gray_row.probabilities.values()), list(row.probabilities.values()), atol=1e-6)
    # From a file (faces detected), as from the same pixels in an array.
    png = tmp_path / "face.png"
    Image.fromarray(face.image).save(png)
    (file_row,), (array_row,) = model.predict(str(png)), model.predict([face.image])
    assert file_row.status == "ok" and file_row.method == array_row.method
    assert np.allclose(list(file_row.probabilities.values()), list(array_row.probabilities.values()), atol=1e-6)

    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["export", str(rgb_run), "--out", str(out), "--parity-images", str(png)])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "model.onnx.json").read_text())
    assert card["input"]["shape"][1] == 3 and card["input"]["channels"] == "RGB"
    assert card["parity"]["max_abs_diff_probabilities"] < 1e-4 and card["parity"]["source"] == "real images"

    result = CliRunner().invoke(cli, ["explain", str(rgb_run), str(png), "--out", str(tmp_path / "cam")])
    assert result.exit_code == 0, result.output
    (panel,) = list((tmp_path / "cam").glob("*.png"))
    # The panel's left square is the crop the network read, in its own colours (not channel-swapped).
    left = np.asarray(Image.open(panel).convert("RGB"))[:192, :192].reshape(-1, 3).mean(0)
    crop_rgb = model.crop(model.faces(np.asarray(Image.open(png)))[0]).reshape(3, -1).mean(1)
    assert np.abs(left - crop_rgb).max() < 3, (left, crop_rgb)
    assert abs(crop_rgb[0] - crop_rgb[2]) > 10, "a face whose red and blue differ, so a swap would show"
    # A grey picture given to a colour model: the grey value in all three channels.
    grey_crop = model.crop(model.faces(np.asarray(Image.fromarray(face.image).convert("L")), face.landmarks)[0])
    assert grey_crop.shape[0] == 3 and np.array_equal(grey_crop[0], grey_crop[1]) and np.array_equal(grey_crop[1], grey_crop[2])


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_inference_decodes_arrays_and_pil_images_as_training_does(color):
    """Arrays and PIL images handed to predict are decoded by training's rules (uint16 scaled, bool as 0/255,
    floats rounded, 16-bit PIL modes scaled, EXIF orientation), in grey or in colour."""
    from fermetric.contracts import Sample
    from fermetric.data.pipeline import decode
    from fermetric.inference.inputs import iter_items

    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 65536, (6, 5, 3)).astype(np.uint16), rng.random((6, 5)) > 0.5,
              np.full((6, 5, 3), 0.5), rng.integers(0, 4096, (6, 5)).astype(np.int32)]
    for array in arrays:
        (item,) = iter_items([array], color=color)
        assert item.status == "ok"
        assert np.array_equal(item.image, decode(Sample(key="a", label="happy", image=array), color=color)), array.dtype
    deep = Image.fromarray(rng.integers(0, 65536, (6, 5)).astype(np.uint16))
    assert deep.mode.startswith("I")
    buffer = io.BytesIO()
    deep.save(buffer, format="PNG")
    from fermetric.data.decode import decode_bytes

    (item,) = iter_items([deep], color=color)
    assert np.array_equal(item.image, decode_bytes(buffer.getvalue(), color=color))
    assert item.image.max() < 255 or item.image.min() > 0, "scaled, not clipped to white"
