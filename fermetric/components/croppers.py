"""fermetric's built-in croppers: the whole face (``full_face``) and the paper's partial image (``au_partial``).

A cropper is built from its recipe table (``factory(**params)``; the keyword parameters of ``__init__`` are
the recipe parameters) and called on a :class:`~fermetric.contracts.FaceImage`; it returns a uint8 array of exactly
``output_size`` (height, width) or raises :class:`~fermetric.errors.NoFace`: (H, W) gray for a gray image, (H, W, 3)
RGB for a colour one (``crop.color = "rgb"``: the pipeline hands RGB pixels; the landmark and face detectors
still see a gray copy, every warp is applied to the three channels alike). What happens to an
image that raises is the engine's ``crop.on_no_face`` policy, not the cropper's business.

Geometry: every crop is a single affine warp from the original image (rotation onto the eye line, then the
box onto the output tile) with edge replication outside the image, so a box that sticks out of the picture
is padded instead of being shifted or shrunk, which would change the framing from image to image.

The partial image is our interpretation of Yu & Bai (2020); see docs/method.md, section 1.
"""

import math
from pathlib import Path

import cv2
import numpy as np

import fermetric
from fermetric.errors import NoFace, RecipeError
from fermetric.contracts import (
    FaceImage,
    apply_affine,
    apply_box_warp,
    box_warp,
    eye_centres,
    eye_line_rotation,
    resize,
    to_gray,
    warp_box,
)
from fermetric.components.landmarks import (
    LANDMARK_SOURCES,
    get_face_box,
    get_landmarks,
    require_dlib,
    template_landmarks,
)

# Landmark indices (iBUG-300W) of each partial-image region, and the action units acting there.
REGIONS: dict[str, tuple[int, ...]] = {
    # AU1/2 inner/outer brow raiser, AU4 brow lowerer, AU5 upper lid raiser, AU6 cheek raiser, AU7 lid tightener
    "eyes_brows": tuple(range(17, 27)) + tuple(range(36, 48)),
    # AU10 upper lip raiser, AU12 lip corner puller, AU15 depressor, AU17 chin raiser, AU20 stretcher,
    # AU23 tightener, AU25 lips part, AU26 jaw drop
    "mouth": tuple(range(48, 68)),
    # AU9 nose wrinkler
    "nose": tuple(range(27, 36)),
}
# The nose's landmarks are a thin vertical strip, but AU9 shows beside it too (wrinkles across the bridge,
# the infraorbital triangle, the top of the nasolabial furrows): widen it to a band one inter-ocular distance
# wide (before the margin).
REGION_MIN_WIDTH_IOD = {"nose": 1.0}
REGION_AUS = {
    "eyes_brows": "AU1, AU2, AU4, AU5, AU6, AU7",
    "mouth": "AU10, AU12, AU15, AU17, AU20, AU23, AU25, AU26",
    "nose": "AU9",
}
LAYOUTS = ("stack", "side_by_side", "grid")
# Region plans an AUPartialCropper keeps (one per distinct landmark set and image size; see its __call__).
PLAN_CACHE_SIZE = 8
FITS = ("grow", "stretch")


class CropperParamError(RecipeError, ValueError):
    """A cropper parameter has a value the cropper cannot use (a RecipeError for the CLI, a ValueError for
    code that builds croppers directly)."""


def _pixels(image: np.ndarray) -> np.ndarray:
    """The pixels a crop is cut from: (H, W, 3) uint8 for a colour image (alpha dropped), else 2-D gray, exactly
    as before colour support (:func:`~fermetric.contracts.to_gray`)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3]
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image)
    return to_gray(image)


# Far above any FER input; it stops a typo (48000) from allocating gigabytes per crop.
MAX_CROP_SIZE = 1024


def _check_common(landmarks: str, size: int) -> None:
    if landmarks not in LANDMARK_SOURCES:
        raise CropperParamError(
            f"landmarks = {landmarks!r} is not a landmark source; valid: {', '.join(LANDMARK_SOURCES)}"
        )
    if not 8 <= int(size) <= MAX_CROP_SIZE:
        raise CropperParamError(f"size = {size} is outside [8, {MAX_CROP_SIZE}] pixels")
    if landmarks == "dlib":
        require_dlib()


def _grow_to_aspect(box: tuple[float, float, float, float], aspect: float) -> tuple[float, float, float, float]:
    """Grow ``box`` about its centre until width / height == ``aspect``: a tile is filled with more context,
    never by squashing the face."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _expand(box, dx: float, dy: float):
    x0, y0, x1, y1 = box
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def _extent(pts: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _split(total: int, weights: list[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder), each at least 1."""
    n = len(weights)
    free = total - n
    raw = [free * w / sum(weights) for w in weights]
    shares = [int(math.floor(r)) for r in raw]
    order = sorted(range(n), key=lambda i: raw[i] - shares[i], reverse=True)
    for i in order[: free - sum(shares)]:
        shares[i] += 1
    return [s + 1 for s in shares]


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


class FullFaceCropper:
    """The whole face, optionally rotated so that the eyes are level.

    landmarks: where the face comes from. ``template``: the image already is an aligned face crop (FER2013,
        CK+48, synthetic), so it is only resized and ``margin``/``align`` are ignored. ``dlib``/``dataset``:
        the box is the extent of the 68 landmarks (jaw, brows: the forehead above the brows is not part of
        it), grown by ``margin`` on every side and made square. ``haar``: OpenCV's detected box, grown by
        ``margin``, never rotated (no eyes to align on).
    size: output is ``size`` x ``size``.
    margin: added on each side, as a fraction of the box's width (horizontally) and height (vertically).
    align: rotate about the eyes' midpoint so that the line through the eye centres (mean of points 36-41
        and of 42-47) is horizontal.
    """

    def __init__(self, landmarks: str = "template", size: int = 48, margin: float = 0.1, align: bool = True):
        _check_common(landmarks, size)
        if not 0 <= float(margin) <= 2:
            raise CropperParamError(f"margin = {margin} is outside [0, 2]")
        self.landmarks = landmarks
        self.size = int(size)
        self.margin = float(margin)
        self.align = bool(align)
        self.output_size: tuple[int, int] = (self.size, self.size)

    def __repr__(self) -> str:
        return (
            f"FullFaceCropper(landmarks={self.landmarks!r}, size={self.size}, margin={self.margin}, "
            f"align={self.align})"
        )

    def __call__(self, face: FaceImage) -> np.ndarray:
        image = _pixels(face.image)
        if self.landmarks == "template":
            return resize(image, self.size, self.size)
        if self.landmarks == "haar":
            x0, y0, x1, y1 = get_face_box("haar", face)
            # Haar boxes are edge coordinates; the warp works in pixel-centre coordinates.
            box = (x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5)
            to_frame = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        else:
            pts = get_landmarks(self.landmarks, face)
            to_frame = eye_line_rotation(pts) if self.align else np.array([[1.0, 0, 0], [0, 1.0, 0]])
            box = _extent(apply_affine(to_frame, pts))
        w, h = box[2] - box[0], box[3] - box[1]
        if w < 1 or h < 1:
            raise NoFace("degenerate face box")
        box = _grow_to_aspect(_expand(box, self.margin * w, self.margin * h), 1.0)
        return warp_box(image, to_frame, box, self.size, self.size)


class AUPartialCropper:
    """The partial image: the face regions where expression action units act, cut out and tiled.

    landmarks: ``template`` (aligned face crops; the regions sit where :data:`TEMPLATE_68` puts them),
        ``dlib``, ``dataset``, or ``haar`` (:data:`TEMPLATE_68` fitted into the Haar box: approximate, for when
        neither dlib nor dataset landmarks are available).
    regions: any of ``eyes_brows`` (points 17-26 and 36-47), ``mouth`` (48-67), ``nose`` (27-35, widened to
        a band one inter-ocular distance wide), tiled in the order given.
    margin: added on every side of each region's landmark box, as a fraction of the inter-ocular distance
        (between the eye centres), so that a closed mouth, whose landmark box is a few pixels high, keeps the
        skin around the lips where AU10/15/17 show.
    layout: ``stack`` (regions one above the other, each the full width and a share of the height
        proportional to its height/width ratio), ``side_by_side`` (the transpose) or ``grid`` (near-square
        grid of equal cells, empty cells black). The shares come from the regions' boxes on
        :data:`TEMPLATE_68`, not from each image, so a region always lands in the same tile: an open mouth
        does not squeeze the eyes.
    fit: how a region box meets its tile's aspect ratio. ``grow`` (default): the box is extended about its
        centre with the surrounding face, so nothing is distorted; with ``stack`` the growth is small, but
        wide regions in narrow ``side_by_side``/``grid`` tiles pull in much of the face. ``stretch``: the box
        is scaled to the tile, keeping only the region at the price of distortion.
    size: output is ``size`` x ``size``.
    align: rotate about the eyes' midpoint so that the eye line is horizontal (not for ``template``/``haar``,
        which have no measured eye line).
    """

    def __init__(
        self,
        landmarks: str = "template",
        regions: list[str] = ("eyes_brows", "mouth"),
        margin: float = 0.15,
        layout: str = "stack",
        size: int = 48,
        align: bool = True,
        fit: str = "grow",
    ):
        _check_common(landmarks, size)
        if isinstance(regions, str):
            regions = [regions]
        regions = list(regions)
        unknown = [r for r in regions if r not in REGIONS]
        if not regions or unknown:
            raise CropperParamError(
                f"regions = {regions!r}: choose one or more of {', '.join(REGIONS)}"
                + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else "")
            )
        if len(set(regions)) != len(regions):
            raise CropperParamError(f"regions = {regions!r} names a region twice")
        if layout not in LAYOUTS:
            raise CropperParamError(f"layout = {layout!r}; valid: {', '.join(LAYOUTS)}")
        if fit not in FITS:
            raise CropperParamError(f"fit = {fit!r}; valid: {', '.join(FITS)}")
        if not 0 <= float(margin) <= 2:
            raise CropperParamError(f"margin = {margin} is outside [0, 2]")
        if int(size) < 2 * len(regions):
            raise CropperParamError(f"size = {size} is too small for {len(regions)} regions")
        self.landmarks = landmarks
        self.regions = regions
        self.margin = float(margin)
        self.layout = layout
        self.size = int(size)
        self.align = bool(align)
        self.fit = fit
        self.output_size: tuple[int, int] = (self.size, self.size)
        self._plans: dict[tuple, list[tuple] | str] = {}
        self.tiles = self._tiles(self.region_boxes(template_landmarks(100, 100), align=False)[1])

    def __repr__(self) -> str:
        return (
            f"AUPartialCropper(landmarks={self.landmarks!r}, regions={self.regions!r}, margin={self.margin}, "
            f"layout={self.layout!r}, size={self.size}, align={self.align}, fit={self.fit!r})"
        )

    def _landmarks(self, face: FaceImage) -> np.ndarray:
        if self.landmarks != "haar":
            return get_landmarks(self.landmarks, face)
        x0, y0, x1, y1 = get_face_box("haar", face)
        tpl = template_landmarks(1, 1) + 0.5  # back to [0, 1] box coordinates
        return (np.array([x0, y0]) + tpl * np.array([x1 - x0, y1 - y0]) - 0.5).astype(np.float32)

    def region_boxes(self, pts: np.ndarray, align: bool) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
        """(image-to-frame affine, the margin-grown box of each region in that frame)."""
        identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        to_frame = eye_line_rotation(pts) if align else identity
        frame_pts = apply_affine(to_frame, pts)
        right, left = eye_centres(frame_pts)
        iod = float(np.hypot(*(left - right)))
        if not np.isfinite(iod) or iod < 1e-3:
            raise NoFace("degenerate landmarks (the eyes coincide)")
        pad = self.margin * iod
        boxes = []
        for name in self.regions:
            box = _extent(frame_pts[list(REGIONS[name])])
            min_w = REGION_MIN_WIDTH_IOD.get(name, 0.0) * iod
            if box[2] - box[0] < min_w:
                cx = (box[0] + box[2]) / 2
                box = (cx - min_w / 2, box[1], cx + min_w / 2, box[3])
            box = _expand(box, pad, pad)
            # Keep a region visible even with margin = 0 and a closed mouth.
            w, h = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        return to_frame, boxes

    def _tiles(self, boxes) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of each region's tile in the output, shares from ``boxes``."""
        n, size = len(boxes), self.size
        if self.layout == "stack":
            heights = _split(size, [(b[3] - b[1]) / (b[2] - b[0]) for b in boxes])
            return [(top, 0, h, size) for top, h in zip(_offsets(heights), heights)]
        if self.layout == "side_by_side":
            widths = _split(size, [(b[2] - b[0]) / (b[3] - b[1]) for b in boxes])
            return [(0, left, size, w) for left, w in zip(_offsets(widths), widths)]
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        heights, widths = _split(size, [1.0] * rows), _split(size, [1.0] * cols)
        tops, lefts = _offsets(heights), _offsets(widths)
        return [(tops[i // cols], lefts[i % cols], heights[i // cols], widths[i % cols]) for i in range(n)]

    def _plan(self, pts: np.ndarray, align: bool, img_h: int, img_w: int) -> list[tuple]:
        """Each region's warp for these landmarks: [(top, left, h, w, box_warp plan)], or raises NoFace."""
        to_frame, boxes = self.region_boxes(pts, align)
        frame_to_image = np.linalg.inv(np.vstack([to_frame, [0, 0, 1]]))[:2]
        plan = []
        for name, box, (top, left, h, w) in zip(self.regions, boxes, self.tiles):
            if self.fit == "grow":
                box = _grow_to_aspect(box, w / h)
            x0, y0, x1, y1 = box
            corners = apply_affine(frame_to_image, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
            if (
                corners[:, 0].max() < 0
                or corners[:, 1].max() < 0
                or corners[:, 0].min() > img_w - 1
                or corners[:, 1].min() > img_h - 1
            ):
                raise NoFace(f"the {name} region lies outside the image")
            plan.append((top, left, h, w, box_warp(to_frame, box, h, w)))
        return plan

    def __call__(self, face: FaceImage) -> np.ndarray:
        image = _pixels(face.image)
        pts = self._landmarks(face)
        # template and haar have no measured eye line to align on
        align = self.align and self.landmarks in ("dlib", "dataset")
        img_h, img_w = image.shape[:2]
        # Aligned crops of one size all have the same (template) landmarks, so inference on them would redo the
        # same geometry for every face: keep the last few plans, keyed by the exact landmarks.
        key = (np.ascontiguousarray(pts, np.float64).tobytes(), align, img_h, img_w)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = self._plan(pts, align, img_h, img_w)
            except NoFace as e:
                plan = str(e)  # the message, not the exception: its traceback would keep frames alive
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = plan
        if isinstance(plan, str):
            raise NoFace(plan)
        out = np.zeros(self.output_size + image.shape[2:], dtype=np.uint8)
        for top, left, h, w, warp_plan in plan:
            out[top : top + h, left : left + w] = apply_box_warp(image, warp_plan, h, w)
        return out


@fermetric.hookimpl
def register_croppers(register):
    register("full_face", FullFaceCropper)
    register("au_partial", AUPartialCropper)


def preview_grid(
    pairs: list[tuple[np.ndarray, np.ndarray | None]],
    path,
    titles: list[str] | None = None,
    pairs_per_row: int = 4,
) -> Path:
    """Write a PNG of (original, crop) pairs side by side; a ``None`` crop reads "no face".

    Used by ``fermetric crop RECIPE --preview N``. Returns the path written.
    """
    # Figure + Agg canvas instead of pyplot: no global backend switch, safe in a headless worker.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(pairs))
    per_row = max(1, min(pairs_per_row, n))
    rows = math.ceil(n / per_row)
    fig = Figure(figsize=(per_row * 2 * 1.6, rows * 1.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, per_row * 2, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (original, crop) in enumerate(pairs):
        r, c = divmod(i, per_row)
        ax_o, ax_c = axes[r, 2 * c], axes[r, 2 * c + 1]
        ax_o.imshow(to_gray(original), cmap="gray", vmin=0, vmax=255)
        title = titles[i] if titles is not None and i < len(titles) else f"#{i}"
        ax_o.set_title(str(title)[:28], fontsize=7)
        if crop is None:
            ax_c.text(0.5, 0.5, "no face", ha="center", va="center", fontsize=9, color="crimson",
                      transform=ax_c.transAxes)
        else:
            ax_c.imshow(to_gray(crop), cmap="gray", vmin=0, vmax=255)
            ax_c.set_title(f"crop {crop.shape[0]}x{crop.shape[1]}", fontsize=7)
    if not pairs:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
