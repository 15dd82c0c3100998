"""A procedurally drawn face-expression dataset, so that the quick start trains on a fresh machine.

:func:`generate` draws cartoon faces from :data:`fermetric.components.landmarks.TEMPLATE_68`: each subject gets an identity
(face width and height, eye spacing and size, brow thickness, mouth width, lip thickness, skin, hair and
background tone, a resting expression), each image one of FER2013's seven expressions (:data:`CLASSES`) as
deformations of the landmarks, loosely following the action units of each expression:

===========  ===============================================================================================
angry        brows lowered and drawn together (AU4), lids tightened (AU7), lips pressed and narrowed (AU23/24)
disgust      nose wrinkled and shortened (AU9), upper lip raised, more on one side (AU10), brows lowered
fear         brows raised and drawn together, flat (AU1+2+4), eyes wide (AU5), lips stretched, parted (AU20/25)
happy        lip corners up and out (AU12), cheeks raise the lower lids (AU6), sometimes teeth (AU25)
neutral      the subject's resting face
sad          inner brow corners raised (AU1+4), lip corners down (AU15), chin raised (AU17), lids lowered
surprise     brows raised and arched (AU1+2), eyes wide (AU5), jaw dropped (AU26)
===========  ===============================================================================================

Each image has its own intensity (40-100%, exaggerated 1.3x: at 48 px real-size movements would be
sub-pixel), a little of every other action unit (so classes overlap, as
low-intensity real expressions do), pose jitter (rotation, scale, shift applied to the landmarks), a lighting
gradient, blur and noise. Wrinkles that come with the action units (forehead lines, frown lines, nose
wrinkles, nasolabial folds) are drawn too, so the texture carries the expression, not just the outline.

Faces are drawn on a canvas about 200 px wide with anti-aliased OpenCV primitives and area-downsampled to
``size``. The returned landmarks are the ones the drawing used, in output pixels (pixel-centre convention).
The face is framed loosely, like FER2013 (chin, brows and some hair inside the picture), not tightly like
CK+48, so that every landmark lies inside the image: with the synthetic set use ``landmarks = "dataset"``
in a cropper (exact), not ``"template"`` (which assumes the CK+48 framing).

Deterministic: the same arguments give byte-identical images, and a subject's identity depends only on
``seed`` and its index (adding subjects does not change the others). About 1 ms per 48x48 image.

``color=True`` gives (H, W, 3) RGB faces: the same drawing, coloured through a per-subject lookup table (a warm
skin tone around the subject's skin value, a background/hair hue elsewhere, each of luma ~1 so a gray
conversion gives back about the gray face). The gray faces are unchanged by it (the colours come from their own
random stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fermetric.contracts import FaceImage

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# Expression parameters. Displacements are in inter-ocular distances; eye_open/lower_lid_up/lip_press/
# mouth_width are relative changes.
PARAMS = (
    "brow_inner_up",  # AU1 (+) / AU4 (-) at the inner ends of the brows
    "brow_outer_up",  # AU2
    "brow_together",  # AU4: inner ends pulled towards the midline
    "eye_open",  # AU5 (+) / lowered lids (-)
    "lower_lid_up",  # AU6/AU7: cheeks or lid tightener push the lower lid up
    "nose_wrinkle",  # AU9
    "upper_lip_raise",  # AU10
    "lip_asym",  # unilateral AU10/AU14 (contempt-like asymmetry of disgust)
    "corner_up",  # AU12 (+) / AU15 (-)
    "mouth_width",  # AU12/AU20 (+) / AU18/AU23 (-)
    "mouth_open",  # AU25/AU26/AU27
    "lip_press",  # AU23/AU24
    "chin_raise",  # AU17
    "teeth",  # how much of the teeth an open mouth shows
)

# Full-intensity targets per class, our reading of the prototypical AU combinations (Ekman & Friesen).
EXPRESSIONS: dict[str, dict[str, float]] = {
    "angry": dict(brow_inner_up=-0.16, brow_outer_up=0.02, brow_together=0.09, eye_open=-0.15, lower_lid_up=0.45,
                  lip_press=0.55, mouth_width=-0.12, chin_raise=0.06, corner_up=-0.03),
    "disgust": dict(nose_wrinkle=0.07, upper_lip_raise=0.09, lip_asym=0.06, brow_inner_up=-0.08, brow_together=0.05,
                    lower_lid_up=0.4, corner_up=-0.06, mouth_open=0.05, teeth=0.6, chin_raise=0.04),
    "fear": dict(brow_inner_up=0.15, brow_outer_up=0.06, brow_together=0.07, eye_open=0.7, mouth_open=0.14,
                 mouth_width=0.18, corner_up=-0.05, teeth=0.4),
    "happy": dict(corner_up=0.17, mouth_width=0.2, lower_lid_up=0.4, eye_open=-0.1, mouth_open=0.07, teeth=0.9,
                  brow_outer_up=-0.01),
    "neutral": dict(),
    "sad": dict(brow_inner_up=0.13, brow_outer_up=-0.05, brow_together=0.05, eye_open=-0.3, corner_up=-0.12,
                chin_raise=0.08, mouth_width=-0.05),
    "surprise": dict(brow_inner_up=0.17, brow_outer_up=0.18, eye_open=0.75, mouth_open=0.38, mouth_width=-0.15,
                     teeth=0.2),
}

# Spread of the action units nobody asked for: a subject's resting face, and per-image leakage.
_NUISANCE = dict(brow_inner_up=0.03, brow_outer_up=0.03, brow_together=0.02, eye_open=0.12, lower_lid_up=0.1,
                 nose_wrinkle=0.012, upper_lip_raise=0.015, lip_asym=0.015, corner_up=0.035, mouth_width=0.05,
                 mouth_open=0.03, lip_press=0.1, chin_raise=0.02, teeth=0.2)

# Cartoon exaggeration: 48 px leaves an eye 2-3 px high, so real-size movements would be sub-pixel.
_GAIN = 1.3

# The template's layout is a tight CK+48 crop whose chin falls outside the picture; shrink it about this
# point to frame the whole face.
_FRAME_SCALE = 0.88
_FRAME_FROM = np.array([0.5, 0.58])
_FRAME_TO = np.array([0.5, 0.5])


@dataclass
class SyntheticFace:
    """One drawn face. ``landmarks``: (68, 2) float32 output pixels, iBUG-300W order, as drawn."""

    image: np.ndarray
    landmarks: np.ndarray
    label: str
    subject: str
    intensity: float = 1.0

    def to_face(self, path: str = "") -> FaceImage:
        return FaceImage(image=self.image, path=path or f"synthetic:{self.subject}/{self.label}",
                         landmarks=self.landmarks)


@dataclass
class _Identity:
    face_w: float
    face_h: float
    eye_sep: float
    eye_size: float
    brow_thick: float
    brow_height: float
    mouth_w: float
    lip_thick: float
    nose_len: float
    skin: float
    bg: float
    hair: float
    hair_volume: float
    hairline: float
    rest: dict[str, float]


def _identity(rng: np.random.Generator) -> _Identity:
    skin = rng.uniform(95, 205)
    while True:
        bg = rng.uniform(10, 245)
        if abs(bg - skin) > 35:
            break
    hair = rng.uniform(10, 90) if rng.random() < 0.8 else rng.uniform(140, 220)
    return _Identity(
        face_w=rng.uniform(0.9, 1.08),
        face_h=rng.uniform(0.92, 1.08),
        eye_sep=rng.uniform(-0.025, 0.025),
        eye_size=rng.uniform(1.0, 1.35),
        brow_thick=rng.uniform(0.9, 2.0),
        brow_height=rng.uniform(-0.02, 0.02),
        mouth_w=rng.uniform(0.88, 1.12),
        lip_thick=rng.uniform(0.75, 1.3),
        nose_len=rng.uniform(0.92, 1.08),
        skin=skin,
        bg=bg,
        hair=hair,
        hair_volume=rng.uniform(1.0, 1.25),
        hairline=rng.uniform(0.28, 0.55),
        rest={k: float(rng.normal(0, 0.7 * s)) for k, s in _NUISANCE.items()},
    )


def _expression(label: str, ident: _Identity, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    intensity = float(rng.uniform(0.4, 1.0)) if label != "neutral" else 0.0
    target = EXPRESSIONS[label]
    p = {}
    for k in PARAMS:
        p[k] = ident.rest.get(k, 0.0) + intensity * _GAIN * target.get(k, 0.0) + float(rng.normal(0, _NUISANCE[k]))
    # Fear and happy open the mouth only sometimes.
    if label in ("happy", "fear", "disgust"):
        p["mouth_open"] *= float(rng.uniform(0.0, 1.6))
    p["mouth_open"] = max(p["mouth_open"], 0.0)
    p["nose_wrinkle"] = max(p["nose_wrinkle"], 0.0)
    p["upper_lip_raise"] = max(p["upper_lip_raise"], 0.0)
    p["teeth"] = float(np.clip(p["teeth"], 0, 1))
    p["lip_press"] = float(np.clip(p["lip_press"], -0.3, 0.8))
    p["eye_open"] = max(p["eye_open"], -0.7)
    p["lower_lid_up"] = float(np.clip(p["lower_lid_up"], -0.4, 0.8))
    p["lip_asym"] *= 1.0 if rng.random() < 0.5 else -1.0
    return p, intensity


def _ellipse(cx, cy, rx, ry, a0=0.0, a1=2 * math.pi, n=40) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _face_geometry(tpl: np.ndarray, ident: _Identity, p: dict[str, float]):
    """Landmarks and the extra strokes of one face, in template units (the CK+48 crop is [0, 1]^2)."""
    pts = tpl.astype(np.float64).copy()
    eye_r, eye_l = pts[36:42].mean(0), pts[42:48].mean(0)
    d = float(np.linalg.norm(eye_l - eye_r))
    eye_y = (eye_r[1] + eye_l[1]) / 2

    # -- identity: proportions
    pts[:, 0] = 0.5 + (pts[:, 0] - 0.5) * np.where(np.arange(68) < 17, ident.face_w, 1.0)
    below = pts[:, 1] > eye_y
    pts[below, 1] = eye_y + (pts[below, 1] - eye_y) * ident.face_h
    for idx, side in ((list(range(36, 42)) + list(range(17, 22)), -1), (list(range(42, 48)) + list(range(22, 27)), 1)):
        pts[idx, 0] += side * ident.eye_sep
    pts[17:27, 1] -= ident.brow_height
    pts[28:36, 1] = pts[27, 1] + (pts[28:36, 1] - pts[27, 1]) * ident.nose_len

    # -- brows: inner/outer raise, pulled together
    w_inner = np.array([0, 0.25, 0.5, 0.75, 1.0])
    for idx, w, side in ((slice(17, 22), w_inner, 1), (slice(22, 27), w_inner[::-1], -1)):
        lift = p["brow_outer_up"] * (1 - w) + p["brow_inner_up"] * w
        lift += 0.5 * p["brow_outer_up"] * np.sin(np.pi * w) * (p["brow_outer_up"] > 0)  # arch
        pts[idx, 1] -= lift * d
        pts[idx, 0] += side * p["brow_together"] * w * d

    # -- eyes: lids opened/closed about the corner line, lower lid pushed up
    for corner_o, corner_i, upper, lower in ((36, 39, (37, 38), (41, 40)), (45, 42, (44, 43), (46, 47))):
        c = (pts[corner_o] + pts[corner_i]) / 2
        pts[[corner_o, corner_i, *upper, *lower]] = c + (pts[[corner_o, corner_i, *upper, *lower]] - c) * ident.eye_size
        a, b = pts[corner_o], pts[corner_i]

        def line_y(x, a=a, b=b):
            return a[1] + (b[1] - a[1]) * (x - a[0]) / (b[0] - a[0])

        for i in upper:
            pts[i, 1] = line_y(pts[i, 0]) + (pts[i, 1] - line_y(pts[i, 0])) * max(0.08, 1 + p["eye_open"])
        for i in lower:
            pts[i, 1] = line_y(pts[i, 0]) + (pts[i, 1] - line_y(pts[i, 0])) * max(0.05, 1 - p["lower_lid_up"])

    # -- nose: AU9 pulls the nostrils and the tip up and flares them
    wr = p["nose_wrinkle"]
    pts[30, 1] -= 0.5 * wr * d
    pts[31:36, 1] -= wr * d
    pts[31:36, 0] = pts[33, 0] + (pts[31:36, 0] - pts[33, 0]) * (1 + 2.0 * wr)

    # -- mouth, rebuilt from a closed neutral mouth
    mx = (pts[48, 0] + pts[54, 0]) / 2
    my = (pts[48, 1] + pts[54, 1]) / 2
    hw0 = (pts[54, 0] - pts[48, 0]) / 2
    hw = hw0 * ident.mouth_w * (1 + p["mouth_width"])
    s = (pts[48:68, 0] - mx) / hw0  # each mouth point's place along the mouth, -1 .. 1
    lip_scale = ident.lip_thick * max(0.25, 1 - p["lip_press"])
    thick_up = 0.036 * lip_scale * (1 - 0.5 * s**2) * (1 + 0.25 * np.abs(np.sin(np.pi * s)))  # cupid's bow
    thick_lo = 0.055 * lip_scale * (1 - 0.55 * s**2)
    bulge = np.sqrt(np.clip(1 - (s / 0.92) ** 2, 0, 1))
    side, asym = math.copysign(1.0, p["lip_asym"]), abs(p["lip_asym"])
    curve = -p["corner_up"] * d * s**2 - asym * d * np.clip(side * s, 0, None)
    gap = p["mouth_open"] * d
    raise_up = (p["upper_lip_raise"] * d + 0.15 * gap) * bulge * (1 + 6 * asym * side * s)
    inner_up = my + curve - raise_up
    inner_lo = my + curve + (gap * 0.85 - p["chin_raise"] * 0.35 * d) * bulge
    inner_lo = np.maximum(inner_lo, inner_up)
    y = np.empty(20)
    idx_outer_up, idx_outer_lo = np.arange(1, 6), np.arange(7, 12)
    idx_inner_up, idx_inner_lo = np.arange(13, 16), np.arange(17, 20)
    y[[0, 6, 12, 16]] = my + curve[[0, 6, 12, 16]]
    y[idx_outer_up] = inner_up[idx_outer_up] - thick_up[idx_outer_up]
    y[idx_outer_lo] = inner_lo[idx_outer_lo] + thick_lo[idx_outer_lo] * (1 + 0.6 * p["chin_raise"] / 0.1)
    y[idx_inner_up] = inner_up[idx_inner_up]
    y[idx_inner_lo] = inner_lo[idx_inner_lo]
    pts[48:68, 0] = mx + s * hw
    pts[48:68, 1] = y
    # The jaw follows the opening.
    jaw_w = np.array([0.1, 0.3, 0.6, 0.85, 1.0, 0.85, 0.6, 0.3, 0.1])
    pts[4:13, 1] += 0.6 * gap * jaw_w

    # -- extras drawn from the landmarks: forehead/hair outline, ears, wrinkles
    jaw_c = (pts[0] + pts[16]) / 2
    rx = (pts[16, 0] - pts[0, 0]) / 2
    brow_top = tpl[17:27, 1].min()
    ry = jaw_c[1] - (brow_top - 0.55 * d)
    forehead = _ellipse(jaw_c[0], jaw_c[1], rx, ry, 0, -math.pi, 30)  # from the 16 side over the top to 0
    hair = _ellipse(jaw_c[0], jaw_c[1] - 0.05 * ry, rx * 1.1 * ident.hair_volume, ry * 1.12 * ident.hair_volume,
                    0, -math.pi, 30)
    hairline_y = brow_top - ident.hairline * d
    fringe = forehead[forehead[:, 1] <= hairline_y]
    ears = [_ellipse(pts[i, 0] + side * 0.03, pts[i, 1] + 0.03, 0.045, 0.1, 0, 2 * math.pi, 20)
            for i, side in ((1, -1), (15, 1))]
    neck = np.array([pts[5], pts[11], [pts[11, 0] + 0.02, 2.0], [pts[5, 0] - 0.02, 2.0]])

    strokes = []  # (polyline, darkness 0..1, width in template units)
    up = max(0.0, (p["brow_inner_up"] + p["brow_outer_up"]) / 2)
    if up > 0.02:
        for k in range(3):
            yk = brow_top - (0.16 + 0.11 * k) * d - 0.4 * up * d
            line = _ellipse(0.5, yk + 0.3 * d, 0.62 * d, 0.3 * d, -math.pi * 0.78, -math.pi * 0.22, 12)
            strokes.append((line, min(1.0, up / 0.15) * 0.55, 0.012))
    frown = max(0.0, -p["brow_inner_up"]) + max(0.0, p["brow_together"]) * 0.8
    if frown > 0.02:
        for side in (-1, 1):
            x = pts[27, 0] + side * 0.08 * d
            strokes.append((np.array([[x, pts[21, 1] - 0.05 * d], [x + side * 0.02 * d, pts[27, 1] + 0.12 * d]]),
                            min(1.0, frown / 0.15) * 0.6, 0.012))
    if wr > 0.01:
        for k in range(3):
            yk = pts[28, 1] + (k - 1) * 0.1 * d
            strokes.append((np.array([[pts[28, 0] - 0.16 * d, yk], [pts[28, 0], yk - 0.03 * d],
                                      [pts[28, 0] + 0.16 * d, yk]]), min(1.0, wr / 0.05) * 0.6, 0.012))
    smile = max(0.0, p["corner_up"]) + max(0.0, p["upper_lip_raise"]) * 0.8 + max(0.0, p["lower_lid_up"]) * 0.05
    if smile > 0.02:
        for wing, corner, side in ((31, 48, -1), (35, 54, 1)):
            a = pts[wing] + [side * 0.05 * d, -0.02 * d]
            b = pts[corner] + [side * 0.14 * d, 0.08 * d]
            mid = (a + b) / 2 + [side * 0.12 * d, 0]
            t = np.linspace(0, 1, 8)[:, None]
            strokes.append(((1 - t) ** 2 * a + 2 * t * (1 - t) * mid + t**2 * b, min(1.0, smile / 0.15) * 0.6, 0.014))
    return pts, dict(forehead=forehead, hair=hair, fringe=fringe, ears=ears, neck=neck, strokes=strokes, d=d)


def _roi(points: np.ndarray, pad: float, n: int) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) around ``points`` grown by ``pad``, inside an n x n canvas: blending
    masks only there keeps the per-image cost at about a millisecond."""
    x0, y0 = np.floor(points.min(0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(0) + pad).astype(int) + 1
    return max(0, x0), max(0, y0), max(min(n, x1), max(0, x0) + 1), max(min(n, y1), max(0, y0) + 1)


def _draw(pts_px, extra_px, ident: _Identity, p: dict[str, float], canvas_size: int, unit: float) -> np.ndarray:
    """Draw on a canvas_size^2 canvas; ``unit``: canvas pixels per template unit."""
    shift = 4
    k = float(1 << shift)

    def ip(a):
        return np.round(np.asarray(a) * k).astype(np.int32)

    aa = cv2.LINE_AA
    skin = ident.skin
    img = np.full((canvas_size, canvas_size), ident.bg, dtype=np.uint8)
    cv2.fillPoly(img, [ip(extra_px["hair"])], ident.hair, aa, shift)
    cv2.fillPoly(img, [ip(extra_px["neck"])], skin * 0.85, aa, shift)
    for ear in extra_px["ears"]:
        cv2.fillPoly(img, [ip(ear)], skin * 0.9, aa, shift)
    face = np.concatenate([pts_px[0:17], extra_px["forehead"]])
    cv2.fillPoly(img, [ip(face)], skin, aa, shift)
    if len(extra_px["fringe"]) >= 3:
        cv2.fillPoly(img, [ip(extra_px["fringe"])], ident.hair, aa, shift)

    for line, dark, width in extra_px["strokes"]:
        cv2.polylines(img, [ip(line)], False, skin * (1 - 0.45 * dark), max(1, int(round(width * unit))), aa, shift)

    brow_col = max(0.0, min(ident.hair, skin * 0.45))
    bt = max(1, int(round(ident.brow_thick * unit / 48)))
    for sl in (slice(17, 22), slice(22, 27)):
        cv2.polylines(img, [ip(pts_px[sl])], False, brow_col, bt, aa, shift)

    # Eyes: sclera, iris clipped to the eye opening, lid outline (heavier on top: lashes).
    eyes = pts_px[36:48]
    x0, y0, x1, y1 = _roi(eyes, 0.35 * np.ptp(eyes[:, 0]) / 2 + 3, canvas_size)
    origin = np.array([x0, y0])
    eye_mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    iris = np.zeros_like(eye_mask)
    for sl in (slice(36, 42), slice(42, 48)):
        poly = pts_px[sl] - origin
        cv2.fillPoly(eye_mask, [ip(poly)], 255, aa, shift)
        c = (poly[0] + poly[3]) / 2
        r = 0.32 * np.linalg.norm(poly[3] - poly[0])
        cv2.circle(iris, tuple(int(v) for v in ip(c)), int(r * k), 255, -1, aa, shift)
    sclera = min(250.0, skin + 45)
    m = eye_mask.astype(np.float32) / 255
    ir = iris.astype(np.float32) / 255 * m
    out = img[y0:y1, x0:x1].astype(np.float32)
    out = out * (1 - m) + sclera * m
    out = out * (1 - ir) + 25.0 * ir
    img[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    lid = max(1, int(round(unit * 0.012)))
    for upper, lower in (([36, 37, 38, 39], [39, 40, 41, 36]), ([42, 43, 44, 45], [45, 46, 47, 42])):
        cv2.polylines(img, [ip(pts_px[upper])], False, skin * 0.3, lid + 1, aa, shift)
        cv2.polylines(img, [ip(pts_px[lower])], False, skin * 0.6, lid, aa, shift)

    # Nose: bridge shadow, nostril line and holes.
    cv2.polylines(img, [ip(pts_px[27:31])], False, skin * 0.85, lid, aa, shift)
    cv2.polylines(img, [ip(pts_px[31:36])], False, skin * 0.55, lid, aa, shift)
    for i in (32, 34):
        cv2.circle(img, tuple(int(v) for v in ip(pts_px[i])), int(unit * 0.012 * k), skin * 0.35, -1, aa, shift)

    # Mouth: lips, dark opening with teeth under the upper lip, lip line.
    cv2.fillPoly(img, [ip(pts_px[48:60])], skin * 0.72, aa, shift)
    inner = pts_px[60:68]
    gap = np.linalg.norm(inner[2] - inner[6])
    if gap > 0.6:
        x0, y0, x1, y1 = _roi(inner, 3, canvas_size)
        origin = np.array([x0, y0])
        mouth_mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mouth_mask, [ip(inner - origin)], 255, aa, shift)
        teeth = np.zeros_like(mouth_mask)
        if p["teeth"] > 0.05:
            th = max(1, int(round(min(gap * 0.45, unit * 0.03) * p["teeth"] * 2)))
            cv2.polylines(teeth, [ip(pts_px[[60, 61, 62, 63, 64]] - origin)], False, 255, th, aa, shift)
        mm = mouth_mask.astype(np.float32) / 255
        tm = teeth.astype(np.float32) / 255 * mm
        out = img[y0:y1, x0:x1].astype(np.float32) * (1 - mm) + 30.0 * mm
        out = out * (1 - tm) + 225.0 * tm
        img[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    cv2.polylines(img, [ip(pts_px[[60, 61, 62, 63, 64]])], False, skin * 0.35, lid, aa, shift)
    return img


def _pose(rng: np.random.Generator) -> np.ndarray:
    """Similarity transform (2x3) of the framed face, in output-normalized units."""
    angle = math.radians(float(np.clip(rng.normal(0, 4.0), -10, 10)))
    scale = float(rng.uniform(0.93, 1.07))
    shift = np.clip(rng.normal(0, 0.025, size=2), -0.06, 0.06)
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    rot = np.array([[c, -s], [s, c]])
    centre = np.array([0.5, 0.5])
    return np.hstack([rot, (centre - rot @ centre + shift)[:, None]])


def _fit_inside(affine: np.ndarray, pts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Shrink/shift a pose so every landmark stays in [lo, hi]: croppers get whole faces, tests get a promise."""
    moved = pts @ affine[:, :2].T + affine[:, 2]
    span = (moved.max(0) - moved.min(0)).max()
    if span > hi - lo:
        f = (hi - lo) / span
        c = moved.mean(0)
        affine = np.hstack([affine[:, :2] * f, (affine[:, 2] * f + c * (1 - f))[:, None]])
        moved = pts @ affine[:, :2].T + affine[:, 2]
    delta = np.clip(lo - moved.min(0), 0, None) - np.clip(moved.max(0) - hi, 0, None)
    affine = affine.copy()
    affine[:, 2] += delta
    return affine


def render_face(label: str, ident_rng: np.random.Generator, image_rng: np.random.Generator, size: int = 48):
    """One face: (image, landmarks, intensity). Exposed for tests and for drawing a single example."""
    from fermetric.components.landmarks import TEMPLATE_68

    if label not in EXPRESSIONS:
        raise ValueError(f"unknown expression {label!r}; valid: {', '.join(CLASSES)}")
    ident = _identity(ident_rng)
    return _render(label, ident, image_rng, size, TEMPLATE_68)


def _render(label: str, ident: _Identity, rng: np.random.Generator, size: int, tpl: np.ndarray):
    p, intensity = _expression(label, ident, rng)
    pts_t, extra = _face_geometry(tpl, ident, p)

    # template units -> framed [0, 1] -> posed [0, 1] -> pixels
    frame = np.hstack([np.eye(2) * _FRAME_SCALE, (_FRAME_TO - _FRAME_SCALE * _FRAME_FROM)[:, None]])
    pose = _pose(rng)
    total = np.vstack([pose, [0, 0, 1]]) @ np.vstack([frame, [0, 0, 1]])
    margin = 1.0 / size
    total = _fit_inside(total[:2], pts_t, margin, 1 - 2 * margin)

    ss = max(2, int(math.ceil(200 / size)))  # supersampling factor
    canvas = size * ss

    def to_canvas(a):
        return (np.asarray(a) @ total[:, :2].T + total[:, 2]) * canvas - 0.5

    extra_px = dict(
        hair=to_canvas(extra["hair"]), neck=to_canvas(extra["neck"]), ears=[to_canvas(e) for e in extra["ears"]],
        forehead=to_canvas(extra["forehead"]),
        fringe=to_canvas(extra["fringe"]) if len(extra["fringe"]) else extra["fringe"],
        strokes=[(to_canvas(line), dark, width) for line, dark, width in extra["strokes"]],
    )
    unit = canvas * _FRAME_SCALE  # canvas pixels per template unit (ignoring the small pose scale)
    big = _draw(to_canvas(pts_t), extra_px, ident, p, canvas, unit)
    small = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)

    # Camera: lighting gradient, contrast, blur, noise.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    phi = rng.uniform(0, 2 * math.pi)
    small = small * rng.uniform(0.8, 1.15) + rng.uniform(-30, 30) * (math.cos(phi) * xx + math.sin(phi) * yy)
    small += rng.uniform(-15, 15)
    sigma = rng.uniform(0.0, 0.8) * size / 48
    if sigma > 0.3:
        small = cv2.GaussianBlur(small, (0, 0), sigma)
    small += rng.normal(0, rng.uniform(2, 6), size=small.shape).astype(np.float32)
    image = np.clip(np.round(small), 0, 255).astype(np.uint8)

    # Landmarks in output pixels (pixel-centre convention): x_px = u * size - 0.5.
    lm = ((pts_t @ total[:, :2].T + total[:, 2]) * size - 0.5).astype(np.float32)
    return image, lm, intensity


_LUMA = np.array([0.299, 0.587, 0.114])


def _unit_luma(gain: np.ndarray) -> np.ndarray:
    return gain / float(_LUMA @ gain)


def colour_table(ident_skin: float, rng: np.random.Generator) -> np.ndarray:
    """A (256, 3) uint8 lookup table gray -> RGB for one subject: a warm skin tint near ``ident_skin``, a random
    hue (background, hair) away from it; both gains have luma 1."""
    skin_gain = _unit_luma(np.array([1.0, rng.uniform(0.72, 0.9), rng.uniform(0.5, 0.75)]))
    other_gain = _unit_luma(rng.uniform(0.45, 1.0, size=3))
    g = np.arange(256, dtype=np.float64)
    w = np.exp(-(((g - ident_skin) / 45.0) ** 2))[:, None]
    rgb = g[:, None] * (w * skin_gain + (1 - w) * other_gain)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def generate(n_subjects: int = 24, per_class: int = 5, size: int = 48, seed: int = 0,
             color: bool = False) -> list[SyntheticFace]:
    """``n_subjects * len(CLASSES) * per_class`` drawn faces, ordered by subject, then class, then repeat.

    Subject ``i`` is named ``synth_s{i:02d}``; its identity depends only on ``(seed, i)`` and each image's
    randomness only on ``(seed, i, class, repeat)``, so the same arguments give byte-identical images.
    ``color``: (H, W, 3) RGB faces (see the module docstring) instead of (H, W) gray.
    """
    from fermetric.components.landmarks import TEMPLATE_68

    if n_subjects < 1 or per_class < 1:
        raise ValueError("n_subjects and per_class must be at least 1")
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    faces = []
    for si in range(n_subjects):
        ident = _identity(np.random.default_rng([seed, si, 0]))
        lut = colour_table(ident.skin, np.random.default_rng([seed, si, 0, 1])) if color else None
        subject = f"synth_s{si:02d}"
        for ci, label in enumerate(CLASSES):
            for r in range(per_class):
                rng = np.random.default_rng([seed, si, 1 + ci, r])
                image, lm, intensity = _render(label, ident, rng, size, TEMPLATE_68)
                if lut is not None:
                    image = lut[image]
                faces.append(SyntheticFace(image=image, landmarks=lm, label=label, subject=subject,
                                           intensity=intensity))
    return faces
