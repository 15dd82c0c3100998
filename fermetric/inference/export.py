"""Export the network for other runtimes: ONNX (checked against PyTorch with onnxruntime) or TorchScript.

The exported graph takes what a cropper gives: ``pixels``, float32 (batch, in_chans, H, W) pixel values in
[0, 255] (grey, or RGB for a colour model), and does the normalisation itself, so a consumer only has to crop. It returns ``probabilities``
(softmax over the classes) and ``embedding``. The crop itself stays outside the graph, as in training: the JSON
sidecar (``<file>.json``) states it (cropper table, landmark source, what to do with raw photos), with the input
size, channels, normalisation and classes.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fermetric import __version__
from fermetric.errors import FermetricError

from .predict import Model

FORMATS = ("onnx", "torchscript")
PARITY_GOAL = 1e-4


class Exported(nn.Module):
    """pixels (B, C, H, W) float in [0, 255] -> (probabilities, embedding)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb, logits = self.network(self.network.normalize(pixels))  # the model's own normalisation, in the graph
        return logits.softmax(dim=1), emb


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def sidecar(model: Model, fmt: str, opset: int | None, dynamic_batch: bool, batch: int) -> dict[str, Any]:
    m = model.meta
    h, w = model.input_size
    return {
        "format": fmt,
        "opset": opset,
        "fermetric": __version__,
        "trained_with_fermetric": m["fermetric"],
        "checkpoint": str(model.checkpoint),
        "checkpoint_choice": model.choice,
        "classes": model.classes,
        "input": {"name": "pixels", "dtype": "float32", "shape": ["batch" if dynamic_batch else batch, int(m["in_chans"]), h, w],
                  "channels": ("RGB" if model.color == "rgb" else "grayscale"
                               + ("" if int(m["in_chans"]) == 1 else f", repeated to {m['in_chans']} channels")),
                  "value_range": [0, 255], "normalization": m["normalization"],
                  "normalization_in_graph": ("x / 127.5 - 1" if m["normalization"] == "minus_one_to_one" else
                                             "(x / 255 - mean) / std, ImageNet's") + " (done inside the graph: feed raw pixel values)"},
        "outputs": [{"name": "probabilities", "shape": ["batch", len(model.classes)], "meaning": "softmax over classes, in this order"},
                    {"name": "embedding", "shape": ["batch", int(m["embedding_dim"])], "meaning": "the metric-learning embedding (not L2-normalised)"}],
        "preprocessing": {"crop": m["crop"], "landmark_source": m["crop"].get("landmarks"),
                          "summary": model.preprocessing,
                          "note": "the crop (partial image) is not part of the graph; compute it with fermetric's cropper "
                                  "from the table above (fermetric predict does this), from a face framed like the training data"},
        "backbone": m["backbone"], "embedding_dim": m["embedding_dim"], "synthetic_data": bool(m.get("synthetic_data")),
    }


def parity_inputs(model: Model, images: list[np.ndarray] | None, n: int = 16) -> np.ndarray:
    """uint8 crops (N, C, H, W) to compare the runtimes on: crops of real faces when given, else crops of
    fermetric's synthetic faces (drawn, so that the network sees face-like input, not noise)."""
    crops = []
    for image in images or []:
        for face in model.faces(image)[:1]:
            try:
                crops.append(model.crop(face))
            except Exception:  # noqa: BLE001 - a face the cropper cannot use is just not a parity sample
                pass
    if not crops:
        from fermetric.components.synthetic import generate

        for f in generate(n_subjects=max(1, n // 7 + 1), per_class=1, size=max(64, max(model.input_size)), seed=123)[:n]:
            found = model.faces(f.image, f.landmarks)
            if found:
                crops.append(model.crop(found[0]))
    x = np.stack(crops[:n])
    if x.ndim == 3:  # grey crops: one channel, repeated as the network repeats it
        x = x[:, None]
        return np.repeat(x, int(model.meta["in_chans"]), axis=1) if int(model.meta["in_chans"]) > 1 else x
    return x


def export(model: Model, out: Path, fmt: str = "onnx", opset: int = 17, dynamic_batch: bool = True, batch: int = 1,
           parity_images: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Write ``out`` and its sidecar; returns {"file", "sidecar", "max_abs_diff", "parity_images", "parity_source"}."""
    if fmt not in FORMATS:
        raise FermetricError(f"--format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A copy: Module.to() moves in place, and the model may live on the GPU.
    wrapped = Exported(copy.deepcopy(model.network).cpu()).eval()
    crops = parity_inputs(model, parity_images)
    source = "real images" if parity_images else "synthetic faces"
    x = torch.from_numpy(crops).float()
    example = x[: (2 if dynamic_batch else batch)] if dynamic_batch or len(x) >= batch else x[:1].repeat(batch, 1, 1, 1)
    with torch.no_grad():
        ref_p, ref_e = wrapped(x)
    if fmt == "onnx":
        with warnings.catch_warnings():
            # torch >= 2.9 defaults to the torch.export-based exporter, which needs the onnxscript package; the
            # TorchScript-based one exports these static CNNs exactly and needs nothing more, so it is used on purpose.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (example,), str(out), dynamo=False, opset_version=int(opset),
                input_names=["pixels"], output_names=["probabilities", "embedding"],
                dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}, "embedding": {0: "batch"}} if dynamic_batch else None,
            )
        import onnx
        import onnxruntime as ort

        onnx.checker.check_model(onnx.load(str(out)))
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        if dynamic_batch:
            got_p, got_e = session.run(None, {"pixels": x.numpy()})
        else:
            if len(x) < batch:  # a fixed batch larger than the parity crops: repeat them to fill one batch
                x = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
                with torch.no_grad():
                    ref_p, ref_e = wrapped(x)
            parts = [session.run(None, {"pixels": x[i : i + batch].numpy()}) for i in range(0, len(x) - len(x) % batch, batch)]
            got_p, got_e = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            ref_p, ref_e = ref_p[: len(got_p)], ref_e[: len(got_e)]
    else:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export but still the one format C++ and mobile runtimes load;
            # the tracer's warning is about FERModel's channel check, a constant for a given input size.
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(wrapped, example)
            scripted.save(str(out))
            loaded = torch.jit.load(str(out))
        with torch.no_grad():
            got_p, got_e = (t.numpy() for t in loaded(x))
        opset = None
    diff = float(np.abs(np.asarray(got_p) - ref_p.numpy()).max())
    diff_emb = float(np.abs(np.asarray(got_e) - ref_e.numpy()).max())
    card = sidecar(model, fmt, opset, dynamic_batch, batch)
    card["parity"] = {"runtime": "onnxruntime " + __import__("onnxruntime").__version__ if fmt == "onnx" else "torch.jit",
                      "reference": f"PyTorch {torch.__version__} (CPU)", "images": int(len(got_p)), "source": source,
                      "max_abs_diff_probabilities": diff, "max_abs_diff_embedding": diff_emb, "goal": PARITY_GOAL}
    sidecar_path(out).write_text(json.dumps(card, indent=2) + "\n")
    return {"file": str(out), "sidecar": str(sidecar_path(out)), "max_abs_diff": diff, "max_abs_diff_embedding": diff_emb,
            "parity_images": int(len(got_p)), "parity_source": source}
