"""Image geometry that every cropper needs: grayscale conversion, the eye line, affine warps.

Public so that third-party croppers (``plugins/fermetric-insightface``) use the same pixels conventions as the
built-in ones instead of copies: coordinates are pixel centres (pixel ``(0, 0)`` covers ``[-0.5, 0.5]``), an
affine is a 2x3 float64 matrix mapping image points to frame points, and every warp replicates or fills the
border explicitly, so a box that sticks out of the picture is padded, never shifted.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# iBUG-300W indices of the two eyes (the subject's right eye is on the image's left).
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)

# A warp that shrinks by more than this samples at most this much finer first (then area-averages down).
MAX_SUPERSAMPLE = 4

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def to_gray(image: np.ndarray) -> np.ndarray:
    """HxW uint8 from gray, RGB or RGBA pixels (other dtypes are clipped to [0, 255])."""
    image = np.asarray(image)
    if image.ndim == 3:
        code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def eye_centres(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right eye, left eye) centres of 68 landmarks: the mean of points 36-41 and of 42-47."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts[RIGHT_EYE].mean(axis=0), pts[LEFT_EYE].mean(axis=0)


# iBUG-300W indices of the five points face detectors give (insightface, RetinaFace: ArcFace's template order):
# the eye on the image's left (the subject's right eye, 36-41) and on its right (42-47), the nose tip, the mouth
# corners on the image's left and right.
NOSE_TIP_68 = 30
MOUTH_CORNERS_68 = (48, 54)


def five_from_68(pts: np.ndarray) -> np.ndarray:
    """The five ArcFace points from 68 iBUG landmarks: eye centres (mean of each eye's six points), nose tip
    (30) and mouth corners (48, 54), as float64 (5, 2)."""
    pts = np.asarray(pts, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {pts.shape}")
    return np.stack([*eye_centres(pts), pts[NOSE_TIP_68], pts[MOUTH_CORNERS_68[0]], pts[MOUTH_CORNERS_68[1]]])


def level_rotation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """2x3 affine that rotates the image about the midpoint of two points so that the line from ``first`` to
    ``second`` is horizontal (pointing right)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    dx, dy = second - first
    theta = math.atan2(dy, dx)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    centre = (first + second) / 2
    return np.hstack([rot, (centre - rot @ centre)[:, None]])


def eye_line_rotation(pts: np.ndarray) -> np.ndarray:
    """2x3 affine that rotates the image about the eyes' midpoint so that the eye line of 68 landmarks is
    horizontal."""
    return level_rotation(*eye_centres(pts))


def apply_affine(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points (N, 2) mapped by a 2x3 affine."""
    return np.asarray(pts, dtype=np.float64) @ affine[:, :2].T + affine[:, 2]


def box_warp(to_frame: np.ndarray, box, out_h: int, out_w: int) -> tuple[np.ndarray, int, int]:
    """The geometry of :func:`warp_box` without the pixels: (2x3 affine from the intermediate tile to the image,
    intermediate width, intermediate height). Croppers whose boxes repeat (every aligned crop of one size) compute
    it once and apply it with :func:`apply_box_warp`."""
    x0, y0, x1, y1 = box
    # A plain bilinear warp aliases when it shrinks (a 240 px face to 48 px), so shrink in two steps:
    # warp at about the source resolution, then area-average down.
    mid_w = max(out_w, int(math.ceil(x1 - x0)))
    mid_h = max(out_h, int(math.ceil(y1 - y0)))
    sx, sy = (x1 - x0) / mid_w, (y1 - y0) / mid_h
    tile_to_frame = np.array([[sx, 0, x0 + 0.5 * sx], [0, sy, y0 + 0.5 * sy], [0, 0, 1]])
    frame_to_image = np.linalg.inv(np.vstack([to_frame, [0, 0, 1]]))
    return (frame_to_image @ tile_to_frame)[:2], mid_w, mid_h


def apply_box_warp(image: np.ndarray, plan: tuple[np.ndarray, int, int], out_h: int, out_w: int) -> np.ndarray:
    """Resample ``image`` by a :func:`box_warp` plan to ``out_h`` x ``out_w`` (edge replication outside)."""
    tile_to_image, mid_w, mid_h = plan
    tile = cv2.warpAffine(
        image, tile_to_image, (mid_w, mid_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    if (mid_h, mid_w) != (out_h, out_w):
        tile = cv2.resize(tile, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return tile


def warp_box(image: np.ndarray, to_frame: np.ndarray, box, out_h: int, out_w: int) -> np.ndarray:
    """The ``box`` (x0, y0, x1, y1), given in the frame ``to_frame`` maps the image into, resampled to
    ``out_h`` x ``out_w`` with edge replication. The box's edges are the tile's outer pixel edges."""
    return apply_box_warp(image, box_warp(to_frame, box, out_h, out_w), out_h, out_w)


def warp(image: np.ndarray, matrix: np.ndarray, out_h: int, out_w: int, border: int = cv2.BORDER_CONSTANT,
         border_value: int = 0) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (out_w, out_h))`` (matrix maps image to output), supersampled when it
    shrinks the image so that a 300 px face does not alias into a 48 px crop."""
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    k = int(min(MAX_SUPERSAMPLE, max(1, math.ceil(1.0 / scale - 1e-6)))) if scale > 0 else 1
    if k == 1:
        return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=border_value)
    # Output pixel (u, v) of the big tile covers pixel ((u + 0.5) / k - 0.5, ...) of the final crop.
    up = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1]], dtype=np.float64)
    big = cv2.warpAffine(image, (up @ np.vstack([matrix, [0, 0, 1]]))[:2], (out_w * k, out_h * k),
                         flags=cv2.INTER_LINEAR, borderMode=border, borderValue=border_value)
    return cv2.resize(big, (out_w, out_h), interpolation=cv2.INTER_AREA)


def resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-averaged when shrinking, bilinear when growing; a copy when the size already fits."""
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image.copy()
    interp = cv2.INTER_AREA if (out_h < h or out_w < w) else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interp)
