"""Pictures for people: each input drawn with its faces' frames, labels and top probabilities."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from .predict import FaceResult

# Small pictures (a 48x48 crop) are scaled up before drawing, so that the text stays legible.
MIN_DRAW_SIDE = 320
COLOURS = [(80, 200, 80), (60, 160, 255), (255, 120, 60), (200, 80, 220), (60, 220, 220)]


def unique_name(folder: Path, stem: str, taken: set[str], suffix: str = ".png") -> Path:
    """``folder/stem.png``, or ``stem_2.png``... when another input of this run had the same name."""
    name, n = f"{stem}{suffix}", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}{suffix}"
    taken.add(name)
    return folder / name


def picture_stem(source: str, frame: int | None) -> str:
    stem = Path(source).stem if not source.startswith("<") else source.strip("<>").replace(" ", "_")
    return f"{stem}_f{frame:06d}" if frame is not None else stem


def draw(image: np.ndarray, rows: list[FaceResult], quads: list[np.ndarray | None], top_k: int = 3) -> np.ndarray:
    """BGR picture with every face's frame (rotated when it was aligned), label and top ``top_k`` probabilities."""
    scale = max(1, math.ceil(MIN_DRAW_SIDE / max(image.shape[:2])))
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)  # pictures are grey or RGB
    if scale > 1:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    h, w = canvas.shape[:2]
    font_scale = max(0.4, min(w, h) / 700)
    thick = max(1, int(round(font_scale * 2)))
    for i, (row, quad) in enumerate(zip(rows, quads)):
        if quad is None or row.box is None:
            continue
        colour = COLOURS[i % len(COLOURS)]
        pts = ((np.asarray(quad) + 0.5) * scale).round().astype(np.int32)
        cv2.polylines(canvas, [pts], True, colour, thick, cv2.LINE_AA)
        lines = [f"{row.label} {row.confidence:.2f}"] if row.status == "ok" else [row.status.replace("_", " ")]
        lines += [f"{c} {p:.2f}" for c, p in row.top(top_k)[1:]] if row.status == "ok" else []
        x, y, bottom = int(pts[:, 0].min()), int(pts[:, 1].min()), int(pts[:, 1].max())
        line_h = int(22 * font_scale) + 4
        block = line_h * len(lines)
        # Above the frame, else below it, else inside its top (a frame as large as the picture: --detect none).
        if y - block - 2 > 0:
            y0 = y - block - 2
        elif bottom + block + 2 < h:
            y0 = bottom + 2
        else:
            y0 = max(0, y) + 2
        for j, text in enumerate(lines):
            ty = y0 + j * line_h + line_h - 4
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale * (1 if j == 0 else 0.8), thick)
            tx = min(max(0, x), max(0, w - tw - 5))
            cv2.rectangle(canvas, (tx, ty - th - 3), (tx + tw + 4, ty + 3), (0, 0, 0), -1)
            cv2.putText(canvas, text, (tx + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale * (1 if j == 0 else 0.8), colour if j == 0 else (230, 230, 230), thick, cv2.LINE_AA)
    if not any(q is not None for q in quads) and rows:
        cv2.putText(canvas, rows[0].reason or rows[0].status, (5, int(24 * font_scale) + 5), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (60, 60, 255), thick, cv2.LINE_AA)
    return canvas


def write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - encoding a uint8 array does not fail
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())
