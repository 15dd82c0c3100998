"""Fuzzing image bytes (issue #12): whatever a file holds, decoding gives 8-bit gray pixels or UnreadableImage.

Bounded and fast: a fixed number of examples, no deadline (the first Pillow import is slow), no database.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fermetric.contracts import Sample  # noqa: E402
from fermetric.data.decode import UnreadableImage  # noqa: E402
from fermetric.data.pipeline import decode  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _encoded(mode: str, fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (12, 10)).astype(np.uint16))
    elif mode == "F":
        im = Image.fromarray(rng.normal(0, 3, (12, 10)).astype(np.float32))
    else:
        im = Image.fromarray(rng.integers(0, 255, (12, 10, 3)).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


SEEDS = [_encoded("L", "PNG"), _encoded("RGB", "PNG"), _encoded("P", "PNG"), _encoded("I;16", "PNG"),
         _encoded("RGB", "JPEG"), _encoded("F", "TIFF"), _encoded("L", "BMP"), _encoded("RGBA", "GIF")]


@st.composite
def mutated(draw) -> bytes:
    """A valid image with a few bytes flipped, a run deleted or inserted, or cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[pos: pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            data = data[:pos]
    return bytes(data)


def _check(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.img"
    path.write_bytes(data)
    try:
        pixels = decode(Sample(key=str(path), label="x", path=path))
    except UnreadableImage as exc:
        assert exc.reason and str(path) in str(exc)
        return
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_are_unreadable(folder, data):
    _check(data, folder)


@FUZZ
@given(data=mutated())
def test_mutated_images_decode_or_are_unreadable(folder, data):
    _check(data, folder)


@FUZZ
@given(header=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff"]),
       rest=st.binary(max_size=512))
def test_known_magic_with_garbage_decodes_or_is_unreadable(folder, header, rest):
    _check(header + rest, folder)
