"""Grad-CAM (Selvaraju et al., 2017) for a trained fermetric model: where in the partial image the network looked.

The heatmap is computed over the network's input, from the activations and gradients of the backbone's last
convolution (forward and backward hooks; no extra dependency), for the predicted class or a chosen one. It is
drawn twice: over the partial image (the network's actual input), and mapped back onto the original picture, so
that one sees which action-unit region (brows, eyes, mouth) drove the decision, and that the parts the partial
image leaves out (forehead, cheeks, hair) were never seen at all.

Mapping back works for any cropper, plugins included, without knowing its geometry: the cropper is run on two
ramp images holding each pixel's x and y coordinate, so the "crop" of the ramps tells, for every input pixel,
where in the picture it came from (to about one pixel: the ramps are 8-bit). The heat of each input pixel is then
splatted there and smoothed over the footprint of one input pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from fermetric.contracts import FaceImage
from fermetric.errors import FermetricError, NoFace

from .faces import Face
from .predict import Model


def last_conv(module: nn.Module) -> nn.Module:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise FermetricError(f"Grad-CAM needs a convolution in the backbone; {type(module).__name__} has none")
    return convs[-1]


def grad_cam(model: Model, crop: np.ndarray, target: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """(heatmap (H, W) in [0, 1], class explained, probabilities) for one uint8 crop."""
    network = model.network
    layer = last_conv(network.backbone)
    saved: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out: saved.__setitem__("act", out)),
             layer.register_full_backward_hook(lambda _m, _gi, go: saved.__setitem__("grad", go[0]))]
    was_training = network.training
    network.eval()  # batch norm with running statistics, dropout off: the model as it predicts
    try:
        x = torch.from_numpy(np.ascontiguousarray(crop))
        x = (x[None, None] if x.ndim == 2 else x[None]).to(model.device)
        x = network.normalize(x).requires_grad_(True)
        with torch.enable_grad():
            _, logits = network(x)
            probs = logits.softmax(1)[0].detach().cpu().numpy()
            cls = int(probs.argmax()) if target is None else int(target)
            network.zero_grad(set_to_none=True)
            logits[0, cls].backward()
    finally:
        for h in hooks:
            h.remove()
        network.train(was_training)
    act, grad = saved["act"][0].detach(), saved["grad"][0].detach()
    weights = grad.mean(dim=(1, 2))  # global-average-pooled gradients: one weight per channel
    cam = torch.relu((weights[:, None, None] * act).sum(0))
    cam = torch.nn.functional.interpolate(cam[None, None], size=crop.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.cpu().numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam.astype(np.float32), cls, probs


def source_coordinates(model: Model, face: Face) -> np.ndarray:
    """(H, W, 2) picture coordinates (x, y) of every pixel of this face's crop."""
    img = face.face_image
    h, w = img.image.shape[:2]
    maps = []
    for axis, n in ((1, w), (0, h)):
        ramp = np.linspace(0, 255, n, dtype=np.float64)
        grid = np.broadcast_to(ramp[None, :] if axis == 1 else ramp[:, None], (h, w))
        ramp_img = FaceImage(np.ascontiguousarray(grid.round().astype(np.uint8)), path=img.path, landmarks=img.landmarks)
        # The cropper itself, not model.crop: a colour model's crop of a grey ramp is the ramp in every channel.
        crop = np.asarray(model.cropper(ramp_img)).astype(np.float64)
        maps.append((crop[..., 0] if crop.ndim == 3 else crop) / 255.0 * (n - 1))
    xy = np.stack(maps, -1)
    a = face.to_original
    return xy @ a[:, :2].T + a[:, 2]


def heat_on_picture(heat: np.ndarray, coords: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(heat, coverage) on the picture: every crop pixel's heat splatted at its source and smoothed."""
    h, w = shape
    acc = np.zeros((h, w), np.float64)
    weight = np.zeros((h, w), np.float64)
    xs = np.clip(np.round(coords[..., 0]).astype(int), 0, w - 1).ravel()
    ys = np.clip(np.round(coords[..., 1]).astype(int), 0, h - 1).ravel()
    np.add.at(acc, (ys, xs), heat.ravel())
    np.add.at(weight, (ys, xs), 1.0)
    # One crop pixel covers about this many picture pixels: smooth over that footprint.
    (dxi, dxj), (dyi, dyj) = np.gradient(coords[..., 0]), np.gradient(coords[..., 1])
    step = float(np.sqrt(np.median(np.abs(dxj * dyi - dxi * dyj)))) or 1.0
    sigma = max(0.8, 0.7 * step)
    acc, weight = cv2.GaussianBlur(acc, (0, 0), sigma), cv2.GaussianBlur(weight, (0, 0), sigma)
    covered = weight > 0.05 * max(weight.max(), 1e-12)
    out = np.where(covered, acc / np.maximum(weight, 1e-12), 0.0)
    return out.astype(np.float32), covered


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A picture or crop for OpenCV drawing: grey (H, W), RGB (H, W, 3) or a colour model's crop (3, H, W)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        image = image.transpose(1, 2, 0)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)


def overlay(bgr: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """``heat`` in [0, 1] blended onto a BGR picture (:func:`as_bgr`), where ``mask`` is set."""
    base = bgr.astype(np.float32)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    a = alpha if mask is None else alpha * mask.astype(np.float32)[..., None]
    return np.clip(base * (1 - a) + colour * a, 0, 255).astype(np.uint8)


def explain_face(model: Model, image: np.ndarray, face: Face, target: int | None = None) -> dict[str, Any]:
    crop = model.crop(face)
    heat, cls, probs = grad_cam(model, crop, target)
    try:
        coords = source_coordinates(model, face)
    except NoFace:
        # A cropper that finds the face in the pixels itself cannot crop the ramps: no map back onto the picture.
        picture_heat, covered = np.zeros(image.shape[:2], np.float32), np.zeros(image.shape[:2], bool)
    else:
        picture_heat, covered = heat_on_picture(heat, coords, image.shape[:2])
    return {"crop": crop, "heat": heat, "class": cls, "probabilities": probs, "picture_heat": picture_heat, "covered": covered}


def panel(model: Model, image: np.ndarray, face: Face, result: dict[str, Any]) -> np.ndarray:
    """One PNG: [partial image | Grad-CAM over it | Grad-CAM on the picture, around the face], with a caption."""
    side = 192
    left = cv2.resize(as_bgr(result["crop"]), (side, side), interpolation=cv2.INTER_NEAREST)
    heat = cv2.resize(result["heat"], (side, side), interpolation=cv2.INTER_LINEAR)
    mid = overlay(left, heat)
    # Around the face on the picture: its frame grown by a quarter.
    x0, y0, x1, y1 = face.box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.625 * max(x1 - x0, y1 - y0)
    on_pic = overlay(as_bgr(image), result["picture_heat"], result["covered"])
    cv2.polylines(on_pic, [np.round(face.quad).astype(np.int32)], True, (255, 255, 255), max(1, int(round(half / 100))), cv2.LINE_AA)
    m = np.array([[side / (2 * half), 0, side / 2 - side / (2 * half) * cx], [0, side / (2 * half), side / 2 - side / (2 * half) * cy]])
    right = cv2.warpAffine(on_pic, m, (side, side), flags=cv2.INTER_AREA if half * 2 > side else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    strip = np.hstack([left, mid, right])
    caption = np.zeros((26, strip.shape[1], 3), np.uint8)
    p = result["probabilities"]
    text = f"Grad-CAM for '{model.classes[result['class']]}' (p={p[result['class']]:.2f}); top: {model.classes[int(p.argmax())]}"
    cv2.putText(caption, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (240, 240, 240), 1, cv2.LINE_AA)
    return np.vstack([strip, caption])


def write_explanations(model: Model, inputs: Any, out: Path, target: str | None = None, every: int = 1, on_item=None) -> list[dict[str, Any]]:
    """For every face: ``<picture>[_fN]_face<K>.png`` (panel) in ``out``; returns one record per picture/face."""
    from .annotate import picture_stem, unique_name, write_png

    target_idx = None
    if target is not None:
        lower = {c.lower(): i for i, c in enumerate(model.classes)}
        if target.lower() not in lower:
            raise FermetricError(f"--class {target!r}: the model's classes are {', '.join(model.classes)}")
        target_idx = lower[target.lower()]
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    records = []
    for item, faces, rows in model.iter_pictures(inputs, batch_size=1, every=every):
        if on_item:
            on_item(item)
        for face, row in zip(faces, rows):
            if row.status != "ok":
                continue
            result = explain_face(model, item.image, face, target_idx)
            path = unique_name(out, f"{picture_stem(item.source, item.frame)}_face{row.face}", taken)
            write_png(path, panel(model, item.image, face, result))
            records.append({"source": item.source, "frame": item.frame, "face": row.face, "file": str(path),
                            "explained": model.classes[result["class"]], "label": row.label})
        if not faces or all(r.status != "ok" for r in rows):
            records.append({"source": item.source, "frame": item.frame, "face": None, "file": None, "explained": None,
                            "status": rows[0].status, "reason": rows[0].reason})
    return records
