"""From a dataset's sample list to the crops a run trains on: decode once, crop once, cache on disk.

Crops are cached in one SQLite file per cache folder, keyed by the image's content and the cropper's name and
parameters, so a second run (or another recipe with the same crop) never decodes or detects again. A file
that cannot be read (not a regular file, a decompression bomb, truncated, not an image, refused by its dataset
as outside the data folder: the rules are in :mod:`fermetric.data.decode`) is reported by path with a reason
and skipped; a face the cropper cannot find follows ``crop.on_no_face`` ("fallback" to the whole image, "skip",
or "error"). Both are counted in the run summary; :func:`summary_lines` words the unreadable ones for a
console. A damaged cache file stops the run saying to delete it; a damaged cache row is recomputed.

Where the crops live (``store``, the recipe's ``train.store``): ``memory`` (one uint8 tensor in RAM, from the
SQLite cache as above), ``mmap`` (a crop store on disk, :mod:`fermetric.data.store`: one array file per dataset x
cropper x colour, read in rows, so resident memory stays bounded whatever the dataset's size), or ``auto``
(``mmap`` when the crops would take more than :data:`AUTO_MMAP_BYTES`, else ``memory``). Both give the same crops,
bit for bit. ``crop.color``: ``gray`` (default, (N, 1, H, W)) or ``rgb`` ((N, 3, H, W), decoded and cropped in
colour).
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

from fermetric.contracts import FaceDataset, FaceImage, Sample, load_landmarks_file
from fermetric.data.decode import (COLORS, REFUSED, UnreadableImage, array_to_gray8, array_to_rgb8, decode_bytes,
                                   read_image_bytes)
from fermetric.data.store import STORES_DIR, CropArray, StoreWriter, open_or_build, store_key
from fermetric.errors import FermetricError, NoFace
from fermetric.progress import progress_bar

# Bump when the way crops are computed changes, so old cache entries are not reused.
CACHE_FORMAT = 3  # 3: 16-bit and float images scaled, not clipped (fermetric.data.decode)
STORES = ("auto", "memory", "mmap")
# store = "auto" keeps crops in memory up to this many bytes (N x C x H x W), in a memory-mapped store above:
# FER2013 at 48 px (83 MB), at 96 px (330 MB) or RAF-DB at 112 px RGB (560 MB) stay in memory; AffectNet at
# 112 px RGB (11 GB) goes to disk. Building the in-memory tensor briefly needs about twice this.
AUTO_MMAP_BYTES = 1 << 30


@dataclass
class Prepared:
    """Crops ready for training: ``images`` (N, C, H, W) uint8 (a tensor in memory, or a
    :class:`~fermetric.data.store.CropArray` on disk, which indexes into tensors the same way) and ``labels`` (N,)
    class ids."""

    images: torch.Tensor | CropArray
    labels: torch.Tensor
    samples: list[Sample]
    classes: list[str]
    synthetic: bool
    report: dict[str, Any] = field(default_factory=dict)


def decode(sample: Sample, data: bytes | None = None, color: str = "gray") -> np.ndarray:
    """Grayscale uint8 pixels (H, W) of a sample, or (H, W, 3) RGB ones with ``color="rgb"``, or
    :class:`~fermetric.data.decode.UnreadableImage` (the only error, whatever the file holds; the rules for
    bombs, bit depths, modes and non-regular files are in :mod:`fermetric.data.decode`). ``data``: the file's
    bytes when the caller has read them already."""
    refused = sample.meta.get(REFUSED) if sample.meta else None
    if refused:
        raise UnreadableImage(sample.key, *_split_reason(refused))
    if sample.image is not None:
        try:
            return array_to_rgb8(sample.image) if color == "rgb" else array_to_gray8(sample.image)
        except ValueError as exc:
            raise UnreadableImage(sample.key, "bad pixels", str(exc)) from None
    if sample.path is None:
        raise UnreadableImage(sample.key, "no file", "the sample has neither pixels nor a path")
    if data is None:
        data = read_image_bytes(sample.path)
    return decode_bytes(data, sample.key, color)


def _split_reason(text: str) -> tuple[str, str]:
    reason, _, detail = str(text).partition(": ")
    return reason, detail


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
    # color = "gray" is left out, so gray crops cached before colour existed are still found.
    spec = {k: v for k, v in crop_table.items()
            if k not in ("on_no_face", "cache") and not (k == "color" and v == "gray")}
    blob = json.dumps({"crop": spec, "plugin_version": version, "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class CropCache:
    """A key/value store of crops (or of "no face" outcomes) in SQLite: one file, atomic writes.

    A cache file that is not SQLite, or is damaged, stops the run with a :class:`FermetricError` that says to
    delete it (it is rebuilt); a damaged row (a blob whose length is not h*w, a crop of another size than
    ``size``, an unknown status) is a cache miss: recomputed and rewritten, never used.
    """

    def __init__(self, folder: Path | None, size: tuple[int, int] | None = None, channels: int = 1):
        self.db = None
        self.pending = 0
        self.size = tuple(size) if size is not None else None
        self.channels = int(channels)  # 3: rows hold (h, w, 3) RGB crops (their keys say rgb: never mixed with gray)
        self.path = Path(folder) / "crops.sqlite" if folder is not None else None
        self.damaged_rows = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and not self.path.is_file():
                raise FermetricError(f"crop cache {self.path} is not a file; delete it; it is rebuilt")
            try:
                # Runs may share a cache folder (parallel folds or ablations): wait for the other writer, and
                # let readers read while one writes.
                self.db = sqlite3.connect(self.path, timeout=120)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS crops (key TEXT PRIMARY KEY, status TEXT, h INT, w INT, data BLOB)"
                )
                self.db.execute("SELECT key, status, h, w, data FROM crops LIMIT 1").fetchall()
            except sqlite3.DatabaseError as exc:
                self._abandon()
                raise self._damaged(exc) from None

    def _damaged(self, exc: BaseException) -> FermetricError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return FermetricError(f"crop cache {self.path} stayed locked by another run: {exc}")
        return FermetricError(
            f"crop cache {self.path} is damaged ({type(exc).__name__}: {exc}); delete {self.path} (and"
            f" {self.path.name}-wal, {self.path.name}-shm beside it, if present); it is rebuilt on the next run"
        )

    def _abandon(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None

    def get(self, key: str) -> tuple[str, np.ndarray | None] | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT status, h, w, data FROM crops WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            self._abandon()
            raise self._damaged(exc) from None
        if row is None:
            return None
        status, h, w, data = row
        if status == "ok":
            c = self.channels
            if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and isinstance(data, bytes)
                    and len(data) == h * w * c and (self.size is None or (h, w) == self.size)):
                self.damaged_rows += 1
                return None
            pixels = np.frombuffer(data, dtype=np.uint8)
            return status, (pixels.reshape(h, w) if c == 1 else pixels.reshape(h, w, c)).copy()
        if isinstance(status, str) and status.startswith("noface:"):
            return status, None
        self.damaged_rows += 1
        return None

    def put(self, key: str, status: str, crop: np.ndarray | None) -> None:
        if self.db is None:
            return
        h, w = crop.shape[:2] if crop is not None else (0, 0)
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO crops VALUES (?, ?, ?, ?, ?)",
                (key, status, h, w, crop.tobytes() if crop is not None else None),
            )
            self.pending += 1
            if self.pending >= 256:  # short transactions: never hold the write lock for long
                self.commit()
        except sqlite3.DatabaseError as exc:
            self._abandon()
            raise self._damaged(exc) from None

    def commit(self) -> None:
        if self.db is not None:
            try:
                self.db.commit()
            except sqlite3.DatabaseError as exc:
                self._abandon()
                raise self._damaged(exc) from None
            self.pending = 0

    def close(self) -> None:
        if self.db is not None:
            self.commit()  # a damaged database is abandoned (and reported) there
            if self.db is not None:
                self.db.close()
                self.db = None


def content_hash(sample: Sample, data: bytes | None = None) -> str:
    """The image's bytes and, when the dataset gives landmarks, theirs: a crop depends on both, so a fixed or
    added landmark file must not bring back the crop (or the "no face") computed without it. ``data``: the
    file's bytes, when read already (else they are read here, refusing what is not a regular file)."""
    digest = hashlib.sha1()
    if sample.image is not None:
        digest.update(np.ascontiguousarray(sample.image).tobytes())
    else:
        digest.update(data if data is not None else read_image_bytes(sample.path))
    if sample.landmarks is not None:
        digest.update(b"landmarks:" + np.ascontiguousarray(sample.landmarks, dtype=np.float32).tobytes())
    elif sample.landmarks_file is not None:
        path = Path(sample.landmarks_file)
        digest.update(b"landmarks-file:" + (path.read_bytes() if path.is_file() else b"missing:" + str(path).encode()))
    return digest.hexdigest()


def _sample_bytes(sample: Sample) -> bytes | None:
    """The file's bytes, read once for the hash and the decoding; refused samples never touch their file."""
    refused = sample.meta.get(REFUSED) if sample.meta else None
    if refused:
        raise UnreadableImage(sample.key, *_split_reason(refused))
    if sample.image is not None:
        return None
    if sample.path is None:
        raise UnreadableImage(sample.key, "no file", "the sample has neither pixels nor a path")
    return read_image_bytes(sample.path)


def _unreadable(key: str, exc: BaseException) -> dict[str, str]:
    if isinstance(exc, UnreadableImage):
        return {"file": key, "reason": exc.reason, "error": exc.error}
    return {"file": key, "reason": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}"}


def _no_face(sample: Sample, status: str, policy: str, no_face: list[dict[str, str]]) -> bool:
    """Apply ``crop.on_no_face`` to an image whose crop found no face: record it, stop the run (``error``), and say
    whether the image is kept (``fallback``: the whole image resized) or dropped (``skip``)."""
    reason = status.removeprefix("noface:")
    if policy == "error":
        raise FermetricError(f"{sample.key}: {reason} (crop.on_no_face = \"error\")")
    no_face.append({"file": sample.key, "reason": reason, "action": policy})
    return policy != "skip"


def prepare(
    dataset: FaceDataset,
    cropper: Any,
    crop_table: dict[str, Any],
    cache_dir: Path | None,
    cropper_version: str | None = None,
    description: str = "cropping",
    store: str = "auto",
    log: Any = None,
) -> Prepared:
    """Decode and crop every sample once (or read the crops from the cache or the crop store).

    ``store``: ``memory``, ``mmap`` or ``auto`` (see the module docstring); ``mmap`` needs ``cache_dir`` and
    ``crop.cache``. ``crop_table["color"]``: ``gray`` (default) or ``rgb``. ``log``: a callable for a line of
    news (waiting for another process building the same store).

    The report's ``unreadable_files`` lists ``{"file", "reason", "error"}`` per file left out (``reason`` a short
    category, counted in ``unreadable_by_reason``); :func:`summary_lines` words it for a console. ``store`` in the
    report says where the crops are (``memory``, or ``mmap`` with the store's folder and whether it was built).
    """
    color = crop_table.get("color", "gray")
    if color not in COLORS:
        raise FermetricError(f"crop.color = {color!r}: expected one of {', '.join(COLORS)}")
    if store not in STORES:
        raise FermetricError(f"train.store = {store!r}: expected one of {', '.join(STORES)}")
    cached = cache_dir is not None and crop_table.get("cache", True)
    if store == "mmap" and not cached:
        raise FermetricError("train.store = \"mmap\" keeps the crops in train.cache_dir: it needs crop.cache = true")
    if store == "auto":
        height, width = cropper.output_size
        in_classes = sum(1 for s in dataset.samples if s.label in set(dataset.classes))
        need = in_classes * height * width * (3 if color == "rgb" else 1)
        store = "mmap" if cached and need > AUTO_MMAP_BYTES else "memory"
    if store == "mmap":
        return _prepare_mmap(dataset, cropper, crop_table, Path(cache_dir), cropper_version, description, color, log)
    return _prepare_memory(dataset, cropper, crop_table, cache_dir, cropper_version, description, color)


def _channels(color: str) -> int:
    return 3 if color == "rgb" else 1


def _crop_sample(sample: Sample, data: bytes | None, key: str, cache: CropCache, cropper: Any,
                 crop_table: dict[str, Any], size: tuple[int, int], color: str, write: bool = True):
    """(status, crop or None, decoded image or None, cache hit) of one sample; decoding errors propagate (the
    caller counts the file unreadable); a cropper that breaks stops the run."""
    cached = cache.get(key)
    if cached is not None:
        status, crop = cached
        return status, crop, None, True
    image = decode(sample, data, color)
    try:
        crop = checked_crop(cropper(face_of(sample, image)), size, crop_table, color)
        status = "ok"
    except NoFace as exc:
        crop, status = None, f"noface:{exc}"
    except FermetricError:
        raise
    except Exception as exc:
        raise FermetricError(
            f"cropper {crop_table.get('name')!r} failed on {sample.key}: {type(exc).__name__}: {exc}"
        ) from exc
    if write:
        cache.put(key, status, crop)
    return status, crop, image, False


def _reraise_cropper_error(exc: BaseException) -> None:
    """A FermetricError from the cropper (some are ValueErrors too) stops the run; decoding errors do not."""
    if isinstance(exc, FermetricError) and not isinstance(exc, UnreadableImage):
        raise exc


def _fallback(sample: Sample, data: bytes | None, image: np.ndarray | None, size: tuple[int, int], color: str) -> np.ndarray:
    """The whole image resized to the crop size (``crop.on_no_face = "fallback"``); decoding errors propagate."""
    if image is None:
        image = decode(sample, data, color)
    height, width = size
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _as_tensor(crops: list[np.ndarray], color: str) -> torch.Tensor:
    stacked = np.stack(crops)
    if color == "rgb":
        return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))
    return torch.from_numpy(stacked).unsqueeze(1)


def _prepare_memory(dataset: FaceDataset, cropper: Any, crop_table: dict[str, Any], cache_dir: Path | None,
                    cropper_version: str | None, description: str, color: str) -> Prepared:
    policy = crop_table.get("on_no_face", "fallback")
    ckey = cropper_key(crop_table, cropper_version)
    height, width = cropper.output_size
    cache = CropCache(cache_dir if crop_table.get("cache", True) else None, size=(height, width),
                      channels=_channels(color))
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
                    data = _sample_bytes(sample)
                    key = f"{ckey}:{content_hash(sample, data)}"
                    status, crop, image, hit = _crop_sample(sample, data, key, cache, cropper, crop_table,
                                                            (height, width), color)
                except (OSError, ValueError, cv2.error) as exc:
                    # Only reading the file is forgiven; a cropper that breaks is a bug and stops the run.
                    _reraise_cropper_error(exc)
                    unreadable.append(_unreadable(sample.key, exc))
                    continue
                hits += hit
                if status != "ok":
                    if not _no_face(sample, status, policy, no_face):
                        continue
                    try:
                        crop = _fallback(sample, data, image, (height, width), color)
                    except (OSError, ValueError, cv2.error) as exc:
                        no_face.pop()
                        unreadable.append(_unreadable(sample.key, exc))
                        continue
                crops.append(crop)
                labels.append(class_index[sample.label])
                kept.append(sample)
    finally:
        cache.close()
    report = _report(dataset, kept, unreadable, no_face, policy, hits, cache.damaged_rows, crops_found=bool(crops))
    report["store"] = {"kind": "memory", "color": color}
    return Prepared(_as_tensor(crops, color), torch.tensor(labels), kept, list(dataset.classes), dataset.synthetic,
                    report)


def _report(dataset: FaceDataset, kept: list[Sample], unreadable: list[dict[str, str]], no_face: list[dict[str, str]],
            policy: str, hits: int, damaged: int, crops_found: bool) -> dict[str, Any]:
    by_reason = dict(Counter(item["reason"] for item in unreadable).most_common())
    if not crops_found:
        raise FermetricError(_no_usable_message(dataset, unreadable, by_reason, no_face))
    return {
        "images_listed": len(dataset.samples),
        "images_used": len(kept),
        "unreadable": len(unreadable),
        "unreadable_by_reason": by_reason,
        "unreadable_files": unreadable,
        "no_face": len(no_face),
        "no_face_by_reason": dict(Counter(item["reason"] for item in no_face)),
        "no_face_files": no_face,
        "no_face_policy": policy,
        "cache_hits": hits,
        "cache_damaged_rows": damaged,
    }


def _prepare_mmap(dataset: FaceDataset, cropper: Any, crop_table: dict[str, Any], cache_dir: Path,
                  cropper_version: str | None, description: str, color: str, log: Any) -> Prepared:
    """The crops from (or into) the crop store: every image's key first (its bytes hashed, as the SQLite cache
    keys them), then the store named by those keys opened, or built once: crops written to disk as they are
    produced, from the SQLite cache's rows where it has them (read only: the store holds the rest). The store
    keeps every readable image, a face or not (a "no face" row holds the whole image resized), so one store
    serves every ``on_no_face`` policy; the policy picks the rows."""
    policy = crop_table.get("on_no_face", "fallback")
    ckey = cropper_key(crop_table, cropper_version)
    height, width = cropper.output_size
    channels = _channels(color)
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    keyed: list[tuple[int, Sample, str]] = []  # (position in the dataset, sample, crop-cache key)
    unreadable_at: list[tuple[int, dict[str, str]]] = []
    with progress_bar() as bar:
        task = bar.add_task(f"{description}: reading", total=len(dataset.samples))
        for pos, sample in enumerate(dataset.samples):
            bar.advance(task)
            if sample.label not in class_index:
                continue
            try:
                data = _sample_bytes(sample)
                keyed.append((pos, sample, f"{ckey}:{content_hash(sample, data)}"))
            except (OSError, ValueError, cv2.error) as exc:
                unreadable_at.append((pos, _unreadable(sample.key, exc)))
    skey = store_key(ckey, color, [k for _, _, k in keyed])
    sqlite_file = cache_dir / "crops.sqlite"
    hits = 0
    damaged = 0

    def produce(writer: StoreWriter) -> None:
        nonlocal hits, damaged
        cache = CropCache(cache_dir if sqlite_file.is_file() else None, size=(height, width), channels=channels)
        try:
            with progress_bar() as bar:
                task = bar.add_task(f"{description}: building the crop store", total=len(keyed))
                for _, sample, key in keyed:
                    bar.advance(task)
                    try:
                        data = _sample_bytes(sample)
                        status, crop, image, hit = _crop_sample(sample, data, key, cache, cropper, crop_table,
                                                                (height, width), color, write=False)
                        hits += hit
                        if status != "ok":
                            crop = _fallback(sample, data, image, (height, width), color)
                    except (OSError, ValueError, cv2.error) as exc:
                        _reraise_cropper_error(exc)
                        writer.add(None, key, sample.key, str(sample.label), "unreadable",
                                   error=_unreadable(sample.key, exc))
                        continue
                    writer.add(crop, key, sample.key, str(sample.label), status)
        finally:
            damaged = cache.damaged_rows
            cache.close()

    meta = {"cropper_key": ckey, "crop": {k: v for k, v in crop_table.items() if k not in ("on_no_face", "cache")},
            "cropper_version": cropper_version, "color": color, "dataset": dataset.name}
    found = open_or_build(cache_dir / STORES_DIR, skey, (channels, height, width), len(keyed), produce, meta,
                          log=log)
    index = found.index
    if index["keys"] != [k for _, _, k in keyed]:  # the name is a hash of these keys: only a collision gets here
        raise FermetricError(f"crop store {found.path} does not hold this dataset's images; delete it; it is rebuilt")
    rows: list[int] = []
    labels: list[int] = []
    kept: list[Sample] = []
    no_face: list[dict[str, str]] = []
    for row, (pos, sample, _) in enumerate(keyed):
        status = index["status"][row]
        if status == "unreadable":
            unreadable_at.append((pos, dict(index["errors"][str(row)], file=sample.key)))
            continue
        if status != "ok" and not _no_face(sample, status, policy, no_face):
            continue
        rows.append(row)
        labels.append(class_index[sample.label])
        kept.append(sample)
    unreadable = [item for _, item in sorted(unreadable_at, key=lambda pair: pair[0])]
    report = _report(dataset, kept, unreadable, no_face, policy, hits if found.built else len(keyed), damaged,
                     crops_found=bool(rows))
    report["store"] = {"kind": "mmap", "color": color, "path": str(found.path), "built": found.built,
                       "build_seconds": round(found.seconds, 3), "rows": len(keyed)}
    array = found.array
    images = array if len(rows) == len(array) else array.subset(np.asarray(rows, dtype=np.int64))
    return Prepared(images, torch.tensor(labels), kept, list(dataset.classes), dataset.synthetic, report)


def _no_usable_message(dataset: FaceDataset, unreadable: list[dict[str, str]], by_reason: dict[str, int],
                       no_face: list[dict[str, str]], limit: int = 3) -> str:
    listed = len(dataset.samples)
    in_classes = sum(1 for s in dataset.samples if s.label in set(dataset.classes))
    parts = [f"no usable images in dataset {dataset.name!r}: {listed} listed, {len(unreadable)} unreadable,"
             f" {len(no_face)} without a face (skipped)"]
    if in_classes < listed:
        parts[0] += f", {listed - in_classes} outside the classes"
    if by_reason:
        parts.append("unreadable by reason: " + ", ".join(f"{r} {n}" for r, n in by_reason.items()))
    examples = unreadable[:limit] or no_face[:limit]
    if examples:
        parts.append("for example: " + "; ".join(f"{e['file']}: {e.get('error') or e.get('reason')}" for e in examples))
    return "\n  ".join(parts)


def summary_lines(report: dict[str, Any], limit: int = 5) -> list[str]:
    """Console lines for the unreadable files of a :func:`prepare` report: the counts by reason, the first
    ``limit`` files with their error, then "... and N more (all in run.json)". Empty when every file was read."""
    files = report.get("unreadable_files") or []
    if not files:
        return []
    by_reason = report.get("unreadable_by_reason") or dict(Counter(f.get("reason", "?") for f in files).most_common())
    lines = [f"{len(files)} unreadable file{'s' if len(files) != 1 else ''}: "
             + ", ".join(f"{reason} {n}" for reason, n in by_reason.items())]
    for item in files[:max(limit, 0)]:
        lines.append(f"  {item['file']}: {item.get('error') or item.get('reason')}")
    if len(files) > limit:
        lines.append(f"  ... and {len(files) - max(limit, 0)} more (all in run.json)")
    return lines


def checked_crop(crop: np.ndarray, size: tuple[int, int], crop_table: dict[str, Any], color: str = "gray") -> np.ndarray:
    """A cropper's output as the network's pixels: (H, W) uint8 grey, or (H, W, 3) RGB for ``color="rgb"``; a
    shape the cropper did not declare is a FermetricError naming it. Training and inference both use this."""
    crop = np.asarray(crop)
    if color == "rgb":
        if crop.ndim == 3 and crop.shape[2] == 4:
            crop = crop[:, :, :3]
        if crop.ndim != 3 or crop.shape[2] != 3:
            raise FermetricError(
                f"cropper {crop_table.get('name')!r} returned a {crop.shape} crop for crop.color = \"rgb\": it must"
                " return (H, W, 3) RGB crops of colour images (this cropper may only know gray; use crop.color = \"gray\")"
            )
        if crop.shape[:2] != size:
            raise FermetricError(
                f"cropper {crop_table.get('name')!r} returned a {crop.shape} crop but declares output_size {size}"
            )
        return np.ascontiguousarray(crop, dtype=np.uint8)
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if crop.shape != size:
        raise FermetricError(
            f"cropper {crop_table.get('name')!r} returned a {crop.shape} crop but declares output_size {size}"
        )
    return np.ascontiguousarray(crop, dtype=np.uint8)
