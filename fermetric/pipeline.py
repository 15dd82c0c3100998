"""From a dataset's sample list to one in-memory tensor of crops: decode once, crop once, cache on disk.

Crops are cached in one SQLite file per cache folder, keyed by the image's content and the cropper's name and
parameters, so a second run (or another recipe with the same crop) never decodes or detects again. A file
that cannot be read is reported by path and skipped; a face the cropper cannot find follows
``crop.on_no_face`` ("fallback" to the whole image, "skip", or "error"). Both are counted in the run summary.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from .datasets import FaceDataset, Sample, load_landmarks_file
from .errors import FermetricError, NoFace
from .faces import FaceImage
from .progress import progress_bar

# Bump when the way crops are computed changes, so old cache entries are not reused.
CACHE_FORMAT = 2


@dataclass
class Prepared:
    """Crops ready for training: ``images`` (N, 1, H, W) uint8 and ``labels`` (N,) class ids."""

    images: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    classes: list[str]
    synthetic: bool
    report: dict[str, Any] = field(default_factory=dict)


def decode(sample: Sample) -> np.ndarray:
    """Grayscale uint8 pixels of a sample. Colour is dropped: the whole pipeline is grayscale."""
    if sample.image is not None:
        image = sample.image
    else:
        with Image.open(sample.path) as im:
            image = np.asarray(im.convert("L"))
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image, dtype=np.uint8)


def face_of(sample: Sample, image: np.ndarray) -> FaceImage:
    face = FaceImage(image=image, path=sample.key, landmarks=sample.landmarks)
    if face.landmarks is None and sample.landmarks_file is not None:
        if not sample.landmarks_file.is_file():
            face.landmarks_error = f"landmark file missing: {sample.landmarks_file}"
        else:
            try:
                face.landmarks = load_landmarks_file(sample.landmarks_file)
            except (OSError, ValueError) as exc:
                face.landmarks_error = f"landmark file unreadable: {sample.landmarks_file}: {exc}"
    return face


def cropper_key(crop_table: dict[str, Any], version: str | None) -> str:
    spec = {k: v for k, v in crop_table.items() if k not in ("on_no_face", "cache")}
    blob = json.dumps({"crop": spec, "plugin_version": version, "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class CropCache:
    """A key/value store of crops (or of "no face" outcomes) in SQLite: one file, atomic writes."""

    def __init__(self, folder: Path | None):
        self.db = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            # Runs may share a cache folder (parallel folds or ablations): wait for the other writer, and let
            # readers read while one writes.
            self.db = sqlite3.connect(folder / "crops.sqlite", timeout=120)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.pending = 0
            self.db.execute("CREATE TABLE IF NOT EXISTS crops (key TEXT PRIMARY KEY, status TEXT, h INT, w INT, data BLOB)")

    def get(self, key: str) -> tuple[str, np.ndarray | None] | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT status, h, w, data FROM crops WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        status, h, w, data = row
        return status, (np.frombuffer(data, dtype=np.uint8).reshape(h, w).copy() if data is not None else None)

    def put(self, key: str, status: str, crop: np.ndarray | None) -> None:
        if self.db is None:
            return
        h, w = crop.shape if crop is not None else (0, 0)
        self.db.execute(
            "INSERT OR REPLACE INTO crops VALUES (?, ?, ?, ?, ?)",
            (key, status, h, w, crop.tobytes() if crop is not None else None),
        )
        self.pending += 1
        if self.pending >= 256:  # short transactions: never hold the write lock for long
            self.commit()

    def commit(self) -> None:
        if self.db is not None:
            self.db.commit()
            self.pending = 0

    def close(self) -> None:
        if self.db is not None:
            self.db.commit()
            self.db.close()


def content_hash(sample: Sample) -> str:
    """The image's bytes and, when the dataset gives landmarks, theirs: a crop depends on both, so a fixed or
    added landmark file must not bring back the crop (or the "no face") computed without it."""
    digest = hashlib.sha1()
    if sample.image is not None:
        digest.update(np.ascontiguousarray(sample.image).tobytes())
    else:
        digest.update(Path(sample.path).read_bytes())
    if sample.landmarks is not None:
        digest.update(b"landmarks:" + np.ascontiguousarray(sample.landmarks, dtype=np.float32).tobytes())
    elif sample.landmarks_file is not None:
        path = Path(sample.landmarks_file)
        digest.update(b"landmarks-file:" + (path.read_bytes() if path.is_file() else b"missing:" + str(path).encode()))
    return digest.hexdigest()


def prepare(
    dataset: FaceDataset,
    cropper: Any,
    crop_table: dict[str, Any],
    cache_dir: Path | None,
    cropper_version: str | None = None,
    description: str = "cropping",
) -> Prepared:
    """Decode and crop every sample once (or read the crops from the cache)."""
    policy = crop_table.get("on_no_face", "fallback")
    ckey = cropper_key(crop_table, cropper_version)
    cache = CropCache(cache_dir if crop_table.get("cache", True) else None)
    height, width = cropper.output_size
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    crops: list[np.ndarray] = []
    labels: list[int] = []
    kept: list[Sample] = []
    unreadable: list[dict[str, str]] = []
    no_face: list[dict[str, str]] = []
    hits = 0
    try:
        with progress_bar() as bar:
            task = bar.add_task(description, total=len(dataset.samples))
            for sample in dataset.samples:
                bar.advance(task)
                if sample.label not in class_index:
                    continue
                try:
                    key = f"{ckey}:{content_hash(sample)}"
                    cached = cache.get(key)
                    image = None if cached is not None else decode(sample)
                except (OSError, ValueError, cv2.error) as exc:
                    # Only reading the file is forgiven; a cropper that breaks is a bug and stops the run below.
                    unreadable.append({"file": sample.key, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                if cached is not None:
                    hits += 1
                    status, crop = cached
                else:
                    try:
                        crop = _checked(cropper(face_of(sample, image)), (height, width), crop_table)
                        status = "ok"
                    except NoFace as exc:
                        crop, status = None, f"noface:{exc}"
                    except FermetricError:
                        raise
                    except Exception as exc:
                        raise FermetricError(
                            f"cropper {crop_table.get('name')!r} failed on {sample.key}: {type(exc).__name__}: {exc}"
                        ) from exc
                    cache.put(key, status, crop)
                if status != "ok":
                    reason = status.removeprefix("noface:")
                    if policy == "error":
                        raise FermetricError(f"{sample.key}: {reason} (crop.on_no_face = \"error\")")
                    no_face.append({"file": sample.key, "reason": reason, "action": policy})
                    if policy == "skip":
                        continue
                    image = decode(sample) if image is None else image
                    crop = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                crops.append(crop)
                labels.append(class_index[sample.label])
                kept.append(sample)
    finally:
        cache.close()
    if not crops:
        raise FermetricError(f"no usable images in dataset {dataset.name!r} ({len(unreadable)} unreadable, {len(no_face)} without a face)")
    report = {
        "images_listed": len(dataset.samples),
        "images_used": len(kept),
        "unreadable": len(unreadable),
        "unreadable_files": unreadable,
        "no_face": len(no_face),
        "no_face_by_reason": dict(Counter(item["reason"] for item in no_face)),
        "no_face_files": no_face,
        "no_face_policy": policy,
        "cache_hits": hits,
    }
    images = torch.from_numpy(np.stack(crops)).unsqueeze(1)
    return Prepared(images, torch.tensor(labels), kept, list(dataset.classes), dataset.synthetic, report)


def _checked(crop: np.ndarray, size: tuple[int, int], crop_table: dict[str, Any]) -> np.ndarray:
    crop = np.asarray(crop)
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if crop.shape != size:
        raise FermetricError(
            f"cropper {crop_table.get('name')!r} returned a {crop.shape} crop but declares output_size {size}"
        )
    return np.ascontiguousarray(crop, dtype=np.uint8)
