"""Datasets: what images there are, their expression labels and, when known, their subjects.

A dataset component only lists samples; decoding, cropping and caching happen once, in
:mod:`fermetric.pipeline`. Built-ins: ``manifest`` (a CSV of ``path,label[,subject,...]``), ``folders``
(``root/<class>/*.png``) and ``synthetic`` (drawn faces for the quick start, labelled synthetic everywhere).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fermetric
from .errors import FermetricError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".webp"}


@dataclass
class Sample:
    """One image of a dataset.

    key: unique and stable (the file path, or ``synthetic/<n>``); the crop cache and error reports use it.
    meta: every other manifest column (``usage``, ``sequence``, ...), for split columns and grouping.
    image: already decoded pixels (generated datasets); files are decoded by the pipeline.
    landmarks / landmarks_file: 68 points given by the dataset, inline or as a file (.npy, .txt, .pts).
    """

    key: str
    label: str
    subject: str | None = None
    path: Path | None = None
    meta: dict[str, str] = field(default_factory=dict)
    image: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    landmarks_file: Path | None = None


@dataclass
class FaceDataset:
    name: str
    classes: list[str]
    samples: list[Sample]
    synthetic: bool = False

    @property
    def has_subjects(self) -> bool:
        return bool(self.samples) and all(s.subject for s in self.samples)


def load_landmarks_file(path: Path) -> np.ndarray:
    """68 (x, y) points from ``.npy``, a whitespace/comma text file, or an iBUG ``.pts`` file."""
    if path.suffix == ".npy":
        points = np.load(path)
    else:
        lines = path.read_text().splitlines()
        if lines and lines[0].startswith("version"):
            start = lines.index("{") + 1
            lines = lines[start : lines.index("}")]
        points = np.array([[float(v) for v in line.replace(",", " ").split()] for line in lines if line.strip()])
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(points) != 68:
        raise ValueError(f"expected 68 landmarks, found {len(points)}")
    return points


def manifest_dataset(
    manifest: Path,
    path_column: str = "path",
    label_column: str = "label",
    subject_column: str = "subject",
    landmarks_column: str = "landmarks",
    classes: list[str] | None = None,
    rename: dict | None = None,
    skip_duplicates: bool = True,
    dedupe_by: str = "",
    limit: int = 0,
) -> FaceDataset:
    """Images listed in a CSV manifest; paths are relative to the manifest's folder.

    Rows with an empty label are left out (e.g. Yale's non-expression conditions), as are rows whose
    ``duplicate_of`` column is filled when ``skip_duplicates`` is on. ``dedupe_by`` keeps the first row of
    each value of a column (FER2013's ``pixel_md5``). ``classes`` keeps and orders a subset of labels;
    ``rename`` maps labels (``{happiness = "happy"}``); ``limit`` keeps an evenly spread subset.
    """
    manifest = Path(manifest)
    rename = rename or {}
    if not manifest.is_file():
        raise FermetricError(f"manifest not found: {manifest}")
    root = manifest.parent
    samples: list[Sample] = []
    seen: set[str] = set()
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        for col in (path_column, label_column):
            if col not in (reader.fieldnames or []):
                raise FermetricError(f"{manifest}: no column {col!r} (columns: {', '.join(reader.fieldnames or [])})")
        for row in reader:
            raw = (row.get(label_column) or "").strip()  # a short row has no label: left out like an empty one
            label = str(rename.get(raw, raw)).strip()
            if not label or (classes is not None and label not in classes):
                continue
            if skip_duplicates and row.get("duplicate_of"):
                continue
            if dedupe_by:
                value = row.get(dedupe_by, "")
                if value and value in seen:
                    continue
                seen.add(value)
            path = root / row[path_column]
            lm = row.get(landmarks_column) or ""
            samples.append(
                Sample(
                    key=str(path),
                    label=label,
                    subject=(row.get(subject_column) or "").strip() or None,
                    path=path,
                    meta={k: v for k, v in row.items() if k not in (path_column, label_column)},
                    landmarks_file=(root / lm) if lm else None,
                )
            )
    if limit:
        samples = _spread(samples, limit)
    return FaceDataset(manifest.parent.name, list(classes or sorted({s.label for s in samples})), samples)


def folder_dataset(
    root: Path, split_dirs: list[str] | None = None, classes: list[str] | None = None, limit: int = 0
) -> FaceDataset:
    """Images in class-per-folder trees: ``root/<class>/<image>``.

    With ``split_dirs`` (e.g. ``["train", "val"]``) the tree is ``root/<split>/<class>/<image>`` and each
    sample's ``meta["split"]`` is its split folder, usable with ``eval.protocol = "split"``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FermetricError(f"dataset folder not found: {root}")
    samples: list[Sample] = []
    for split in split_dirs or [None]:
        base = root / split if split else root
        if not base.is_dir():
            raise FermetricError(f"split folder not found: {base}")
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if classes is not None and class_dir.name not in classes:
                continue
            for image in sorted(class_dir.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    meta = {"split": split} if split else {}
                    samples.append(Sample(key=str(image), label=class_dir.name, path=image, meta=meta))
    if not samples:
        raise FermetricError(f"no images found under {root} (expected <class>/<image> folders)")
    if limit:
        samples = _spread(samples, limit)
    return FaceDataset(root.name, list(classes or sorted({s.label for s in samples})), samples)


def synthetic_dataset(subjects: int = 24, per_class: int = 5, size: int = 48, seed: int = 0) -> FaceDataset:
    """Procedurally drawn faces (see :mod:`fermetric.synthetic`): no download, known landmarks and subjects.

    Everything trained on it is labelled SYNTHETIC in the run's outputs: it shows the toolkit works, not
    how well a model recognises real expressions.
    """
    from . import synthetic

    faces = synthetic.generate(n_subjects=subjects, per_class=per_class, size=size, seed=seed)
    samples = [
        Sample(key=f"synthetic/{seed}/{i:05d}", label=f.label, subject=f.subject, image=f.image, landmarks=f.landmarks)
        for i, f in enumerate(faces)
    ]
    return FaceDataset("synthetic", list(synthetic.CLASSES), samples, synthetic=True)


def _spread(samples: list[Sample], limit: int) -> list[Sample]:
    """A deterministic, evenly spaced subset: keeps every class and subject represented for quick trials."""
    if limit >= len(samples):
        return samples
    idx = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in idx]


@fermetric.hookimpl
def register_datasets(register):
    register("manifest", manifest_dataset)
    register("folders", folder_dataset)
    register("synthetic", synthetic_dataset)
