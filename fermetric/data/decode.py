"""Image files to grayscale (or RGB) uint8 pixels, with every way a file can be bad turned into one outcome.

:func:`decode_bytes` returns a 2-D ``uint8`` array (``color="rgb"``: an (H, W, 3) one) or raises :class:`UnreadableImage` (a :class:`FermetricError` and a
``ValueError``) whose ``reason`` is a short category, counted in the run summary, and whose message names the
file. Nothing else escapes it, whatever the bytes are.

Before a file is opened it must be a regular file (``os.stat``, following symlinks): a FIFO, a directory or a
device is refused ("not a regular file"), so a FIFO never hangs the run. The file is then opened non-blocking
and checked again on the open descriptor, and read once (at most :data:`MAX_FILE_BYTES`).

Pixels are decoded by Pillow with a pixel limit (:data:`MAX_PIXELS`): a header claiming more pixels (a
"decompression bomb", e.g. a 100-byte PNG claiming 60000x60000) is refused before any pixel is allocated.

From a mode to 8-bit gray (the default; RGB below):

* 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ...): Pillow's
  conversion to ``L`` (ITU-R 601-2 luma, palettes looked up, CMYK through RGB); an alpha channel is ignored
  (the stored colour is used, not composited onto a background).
* 16-bit unsigned (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``; 16-bit PNGs and TIFFs): ``round(v * 255 / 65535)``,
  the full 16-bit scale (a dark image stays dark; nothing is clipped).
* float (``F``, float TIFFs): when every finite value lies in [0, 1], ``round(v * 255)``; otherwise the actual
  range [min, max] of the finite values is mapped linearly onto [0, 255]. NaN becomes 0, +/-inf the ends.
* 32-bit integer (``I``): the actual range [min, max] mapped onto [0, 255] (as floats outside [0, 1]).
* A constant image that needs range scaling (no contrast to scale) becomes 0.

To RGB (``crop.color = "rgb"``, :func:`image_to_rgb8`, :func:`array_to_rgb8`): colour modes (``RGB``, ``RGBA``,
``P``, ``PA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) through Pillow's conversion to ``RGB`` (palettes looked
up, alpha ignored as above); gray modes (``1``, ``L``, ``LA``, 16-bit, float, 32-bit integer) by the gray rules
above, the gray value repeated in the three channels.

Truncated or corrupt files are unreadable (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left to its default, off).
Animated files give their first frame; EXIF orientation is applied when present and readable.
"""

from __future__ import annotations

import os
import stat
import warnings
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fermetric.errors import FermetricError

# Pixels (width x height) one image may claim; larger headers are refused as decompression bombs. 64 Mpx is
# far beyond any face photo and decodes in a few hundred MB at worst.
MAX_PIXELS = 64 * 1024 * 1024
# Bytes one image file may have; larger files are refused without being read whole.
MAX_FILE_BYTES = 256 * 1024 * 1024
# A sample whose ``meta`` holds this key is refused with that reason before its file is touched (e.g. a
# manifest path outside the manifest's folder): datasets mark such rows so the pipeline reports them.
REFUSED = "fermetric.refused"

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class UnreadableImage(FermetricError, ValueError):
    """A file that cannot be used as an image. ``reason``: a short category; ``detail``: the specifics."""

    def __init__(self, path: object, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {self.error}")

    @property
    def error(self) -> str:
        """The message without the path: "reason: detail"."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def read_image_bytes(path: Path | str) -> bytes:
    """The bytes of a regular file, refusing anything else before opening it (see the module docstring)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnreadableImage(path, "missing", "no such file") from None
    except PermissionError as exc:
        raise UnreadableImage(path, "permission denied", str(exc.strerror or exc)) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise UnreadableImage(path, "cannot stat", f"{type(exc).__name__}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImage(path, "not a regular file", _kind(st.st_mode))
    if st.st_size > MAX_FILE_BYTES:
        raise UnreadableImage(path, "file too large", f"{st.st_size} bytes > {MAX_FILE_BYTES}")
    try:
        # Non-blocking, so a file swapped for a FIFO after the stat above still cannot hang the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except PermissionError as exc:
        raise UnreadableImage(path, "permission denied", str(exc.strerror or exc)) from None
    except OSError as exc:
        raise UnreadableImage(path, "cannot open", f"{type(exc).__name__}: {exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableImage(path, "not a regular file", _kind(st.st_mode))
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise UnreadableImage(path, "file too large", f"more than {MAX_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableImage(path, "read error", f"{type(exc).__name__}: {exc}") from None
    finally:
        os.close(fd)


COLORS = ("gray", "rgb")


def decode_bytes(data: bytes, path: object = "<bytes>", color: str = "gray") -> np.ndarray:
    """Grayscale uint8 pixels (H, W) of an encoded image (PNG, JPEG, TIFF, BMP, ...), or (H, W, 3) RGB ones with
    ``color="rgb"``; ``path`` names it in errors."""
    if color not in COLORS:
        raise ValueError(f"color = {color!r}: expected one of {', '.join(COLORS)}")
    if not data:
        raise UnreadableImage(path, "empty file")
    try:
        with warnings.catch_warnings():
            # Pillow's complaints about pixels it decoded anyway (corrupt EXIF, ...) would only clutter the
            # console. It warns (rather than fails) between its own pixel limit and twice it: that is a refusal.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise UnreadableImage(path, "decompression bomb", f"{w}x{h} pixels, more than the limit of {MAX_PIXELS}")
                if w <= 0 or h <= 0:
                    raise UnreadableImage(path, "corrupt", f"{w}x{h} pixels")
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # a malformed EXIF block: keep the pixels as stored
                    pass
                return image_to_rgb8(im) if color == "rgb" else image_to_gray8(im)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(path, "decompression bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image", "no image format recognised") from None
    except MemoryError:
        raise UnreadableImage(path, "too large to decode", "out of memory") from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, struct.error, EOFError, ...
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise UnreadableImage(path, reason, f"{type(exc).__name__}: {text}") from None


def decode_file(path: Path | str, color: str = "gray") -> np.ndarray:
    """Grayscale (or, ``color="rgb"``, RGB) uint8 pixels of an image file, or :class:`UnreadableImage`."""
    return decode_bytes(read_image_bytes(path), path, color)


def image_to_gray8(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as 2-D uint8 gray, by the rules in the module docstring."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        return _scale16(np.asarray(im))
    if mode == "F":
        return float_to_gray8(np.asarray(im, dtype=np.float64))
    if mode in ("I", "I;32", "I;32L", "I;32B", "I;32S"):
        return _by_range(np.asarray(im, dtype=np.float64))
    if mode == "L":
        return np.ascontiguousarray(np.asarray(im), dtype=np.uint8)
    try:
        gray = im.convert("L")
    except Exception:
        try:
            gray = im.convert("RGB").convert("L")
        except Exception as exc:
            raise UnreadableImage(getattr(im, "filename", "") or "<image>", "unsupported mode", f"{mode}: {exc}") from None
    return np.ascontiguousarray(np.asarray(gray), dtype=np.uint8)


# Modes whose pixels are gray values: converted by the gray rules, then repeated in three channels.
_GRAY_MODES = ("1", "L", "LA", "La", "F", "I", "I;32", "I;32L", "I;32B", "I;32S", *_SIXTEEN_BIT)


def image_to_rgb8(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as (H, W, 3) uint8 RGB, by the rules in the module docstring."""
    if im.mode in _GRAY_MODES:
        return gray_to_rgb(image_to_gray8(im))
    try:
        rgb = im.convert("RGB")
    except Exception:
        try:
            rgb = im.convert("RGBA").convert("RGB")
        except Exception as exc:
            raise UnreadableImage(getattr(im, "filename", "") or "<image>", "unsupported mode",
                                  f"{im.mode}: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb), dtype=np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3), the value repeated."""
    return np.ascontiguousarray(np.repeat(np.asarray(gray)[:, :, None], 3, axis=2))


def array_to_rgb8(image: np.ndarray) -> np.ndarray:
    """Already decoded pixels as (H, W, 3) uint8 RGB: (H, W) gray repeated, (H, W, 3) RGB, (H, W, 4) RGBA (alpha
    ignored); other dtypes by the rules of :func:`array_to_gray8` (floats scaled over the whole image, so the
    channels keep their balance)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return gray_to_rgb(_to_uint8(image))
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"an image must be (H, W) or (H, W, 3|4), got shape {image.shape}")
    return np.ascontiguousarray(_to_uint8(image[:, :, :3]))


def array_to_gray8(image: np.ndarray) -> np.ndarray:
    """Already decoded pixels (a generated dataset's) as 2-D uint8 gray: (H, W), (H, W, 3) RGB or (H, W, 4)
    RGBA (alpha ignored); uint8 as is, uint16 by the 16-bit rule, floats and other integers by the float rule."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.dtype != np.uint8:
            image = _to_uint8(image[:, :, :3])
        image = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"an image must be (H, W) or (H, W, 3|4), got shape {image.shape}")
    return np.ascontiguousarray(_to_uint8(image))


def float_to_gray8(values: np.ndarray) -> np.ndarray:
    """Floats to uint8: [0, 1] scaled by 255 when every finite value is within it, else the actual range."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        out = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0) * 255.0
        return np.ascontiguousarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)
    return _by_range(values)


def _by_range(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    out[np.isnan(values)] = 0.0
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def _scale16(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.uint32)
    return np.ascontiguousarray((v * 255 + 32767) // 65535, dtype=np.uint8)  # round(v * 255 / 65535); no ties


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:
        return _scale16(image)
    if np.issubdtype(image.dtype, np.floating):
        return float_to_gray8(image)
    if np.issubdtype(image.dtype, np.integer):
        if image.size and image.min() >= 0 and image.max() <= 255:
            return image.astype(np.uint8)
        return _by_range(image.astype(np.float64))
    raise ValueError(f"unsupported pixel type {image.dtype}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"
