"""What ``predict`` accepts, turned into a stream of pictures: files, folders, globs, videos, arrays, PIL images.

Every input yields :class:`Item`\\ s in order. An item either carries an image (grayscale (H, W) uint8, or RGB
(H, W, 3) uint8 with ``color="rgb"``, for a colour model) or says why there is none
(``status`` ``unreadable``/``skipped`` and a ``reason``), so one bad file becomes one row of the output instead of
ending the run. Files are decoded here, not by the training pipeline: a user's folder holds anything (a truncated
JPEG, a CSV beside the photos, a 16-bit TIFF), and each must be judged on its own.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from fermetric.contracts import IMAGE_SUFFIXES, FaceImage
from fermetric.data.pipeline import COLORS

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
GLOB_CHARS = set("*?[")


@dataclass
class Item:
    """One picture (an image file, a video frame, an array) or the reason there is none."""

    source: str
    index: int  # position among the inputs, after folders and globs are expanded
    image: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    frame: int | None = None
    time_s: float | None = None
    status: str = "ok"  # ok | unreadable | skipped
    reason: str = ""


def decode_file(path: Path, color: str = "gray") -> np.ndarray:
    """HxW uint8 grayscale (or HxWx3 RGB) pixels of an image file, decoded exactly as training decodes
    (fermetric.data.decode: EXIF orientation, 16-bit and float scaling, bombs and non-regular files refused);
    raises ValueError with the reason when the file is not a readable image."""
    from fermetric.data.decode import decode_file as decode

    return decode(path, color)


def array_image(value: np.ndarray, color: str = "gray") -> np.ndarray:
    """Grayscale uint8 (or RGB HxWx3 uint8 with ``color="rgb"``) from an array: HxW, HxWx1, HxWx3 (RGB) or HxWx4
    (alpha ignored), by the rules training applies to in-memory images (fermetric.data.decode: floats in [0, 1]
    scaled by 255, other floats and integers by their range, uint16 by the 16-bit rule, bool as 0/255)."""
    from fermetric.data.decode import array_to_gray8, array_to_rgb8

    arr = np.asarray(value)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.dtype.kind == "c":
        arr = arr.real
    return array_to_rgb8(arr) if color == "rgb" else array_to_gray8(arr)


def pil_image(value: Any, color: str = "gray") -> np.ndarray:
    """A PIL image's pixels as training decodes a file: EXIF orientation applied, 16-bit, 32-bit and float modes
    scaled (not clipped), RGB for ``color="rgb"``."""
    from PIL import ImageOps

    from fermetric.data.decode import image_to_gray8, image_to_rgb8

    image = ImageOps.exif_transpose(value) or value
    return image_to_rgb8(image) if color == "rgb" else image_to_gray8(image)


def _is_batch(arr: np.ndarray) -> bool:
    return arr.ndim == 4 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4))


@dataclass
class _File:
    path: Path
    listed: bool  # found in a folder or by a glob (not named by the user)


@dataclass
class _Missing:
    source: str
    status: str
    reason: str


def expand(inputs: Any) -> Iterator[Any]:
    """Inputs flattened, lazily, to single pictures' sources: folders listed (recursively, sorted, hidden files
    left out), globs expanded, batches of arrays split. Any iterable works, a generator included."""
    if isinstance(inputs, (str, os.PathLike, np.ndarray, FaceImage, Item)) or _is_pil(inputs):
        inputs = [inputs]
    for value in inputs:
        if isinstance(value, np.ndarray) and _is_batch(value):
            yield from list(value)
        elif isinstance(value, (str, os.PathLike)):
            yield from _expand_path(str(value))
        else:
            yield value


def _expand_path(text: str) -> list[Any]:
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        return [_File(p, True) for p in files] or [_Missing(text, "skipped", "empty folder")]
    if not path.exists() and GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        return [_File(p, True) for p in matches] or [_Missing(text, "unreadable", "no file matches this pattern")]
    return [_File(path, False)]


def _is_pil(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def iter_items(inputs: Any, every: int = 1, color: str = "gray") -> Iterator[Item]:
    """One :class:`Item` per picture, in order. ``every``: keep every Nth frame of a video (frame 0 first).
    ``color``: ``gray`` or ``rgb``, what the model reads (its ``crop.color``).

    Files named explicitly are tried as images whatever their suffix; files found in a folder or by a glob are
    skipped (with a row saying so) unless their suffix is an image's or a video's. Ready :class:`Item`\\ s pass
    through (with their position as index).
    """
    if color not in COLORS:
        raise ValueError(f"color = {color!r}; expected one of {', '.join(COLORS)}")
    for index, value in enumerate(expand(inputs)):
        if isinstance(value, Item):
            value.index = index
            yield value
        elif isinstance(value, _Missing):
            yield Item(value.source, index, status=value.status, reason=value.reason)
        elif isinstance(value, _File):
            yield from _file_items(value.path, index, every, value.listed, color)
        elif isinstance(value, FaceImage):
            name = value.path or f"<face {index}>"
            yield _safe(lambda: Item(name, index, array_image(value.image, color), landmarks=value.landmarks), name, index)
        elif isinstance(value, np.ndarray):
            yield _safe(lambda: Item(f"<array {index}>", index, array_image(value, color)), f"<array {index}>", index)
        elif _is_pil(value):
            name = getattr(value, "filename", "") or f"<image {index}>"
            yield _safe(lambda: Item(name, index, pil_image(value, color)), name, index)
        else:
            yield Item(f"<input {index}>", index, status="unreadable", reason=f"unsupported input type {type(value).__name__}")


def _safe(make, source: str, index: int) -> Item:
    try:
        return make()
    except (ValueError, TypeError, cv2.error) as exc:
        return Item(source, index, status="unreadable", reason=str(exc))


def _file_items(path: Path, index: int, every: int, listed: bool, color: str) -> Iterator[Item]:
    source = str(path)
    if not path.exists():
        yield Item(source, index, status="unreadable", reason="file not found")
        return
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        yield from _video_items(path, index, every, color)
        return
    if listed and suffix not in IMAGE_SUFFIXES:
        yield Item(source, index, status="skipped", reason=f"not an image or video file (suffix {suffix or 'none'!r})")
        return
    try:
        yield Item(source, index, decode_file(path, color))
    except ValueError as exc:
        yield Item(source, index, status="unreadable", reason=str(exc))


def _video_items(path: Path, index: int, every: int, color: str) -> Iterator[Item]:
    source = str(path)
    cap = cv2.VideoCapture(source)
    try:
        if not cap.isOpened():
            yield Item(source, index, status="unreadable", reason="cannot open video (unknown format, no codec, or not a video)")
            return
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frame, kept = 0, 0
        while True:
            if frame % every:
                if not cap.grab():  # grab without decoding: skipped frames cost little
                    break
                frame += 1
                continue
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            t = frame / fps if fps > 0 else float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
            if color == "rgb":
                pixels = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB if bgr.ndim == 2 else cv2.COLOR_BGR2RGB)
            else:
                pixels = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            yield Item(source, index, np.ascontiguousarray(pixels), frame=frame, time_s=round(t, 4))
            kept += 1
            frame += 1
        if kept == 0:
            yield Item(source, index, status="unreadable", reason="no frame could be decoded from this video")
    finally:
        cap.release()
