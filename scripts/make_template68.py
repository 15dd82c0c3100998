"""Rebuild fermetric/components/template68.npy: the mean dlib 68-point layout of the CK+48 face crops.

    .venv/bin/python scripts/make_template68.py [--data ../shared/data/ckplus48] [--out fermetric/components/template68.npy]

Every image is padded by 25% (edge replication) and upscaled to 256 px by fermetric.components.landmarks.DlibLandmarks,
the landmarks are mapped back to the 48x48 pixels and normalized to [0, 1] as ((x + 0.5) / w, (y + 0.5) / h),
then averaged over the images where dlib found a face. Only the 68x2 mean is written: no image, and nothing
that identifies a subject, leaves the dataset folder.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermetric.components.landmarks import TEMPLATE_PATH, DlibLandmarks  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ckplus48")
    ap.add_argument("--out", type=Path, default=TEMPLATE_PATH)
    args = ap.parse_args()

    with open(args.data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    dl = DlibLandmarks()
    found, missed = [], []
    t0 = time.perf_counter()
    for row in rows:
        img = cv2.imread(str(args.data / row["path"]), cv2.IMREAD_GRAYSCALE)
        if img is None:
            missed.append(row["path"])
            continue
        faces = dl.detect_all(img)
        if not faces:
            missed.append(row["path"])
            continue
        h, w = img.shape
        found.append((faces[0] + 0.5) / np.array([w, h], dtype=np.float32))
    pts = np.stack(found)
    mean = pts.mean(axis=0).astype(np.float32)
    spread = np.sqrt(((pts - mean) ** 2).sum(-1)).mean()
    np.save(args.out, mean)
    print(
        f"{len(found)} of {len(rows)} images with a face ({time.perf_counter() - t0:.1f} s); "
        f"mean landmark deviation from the template {spread:.4f} (normalized units) -> {args.out}"
    )
    if missed:
        print("no face in:", ", ".join(missed[:20]) + (" ..." if len(missed) > 20 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
