"""Datasets: what images there are, their expression labels and, when known, their subjects.

A dataset component only lists samples; decoding, cropping and caching happen once, in
:mod:`fermetric.data.pipeline`. Built-ins: ``manifest`` (a CSV of ``path,label[,subject,...]``), ``folders``
(``root/<class>/*.png``, subject ids from a folder level or a mapping file) and ``synthetic`` (drawn faces for the quick start, labelled synthetic everywhere).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

import fermetric
from fermetric.contracts import IMAGE_SUFFIXES, FaceDataset, Range, Sample
from fermetric.errors import FermetricError

# The meta key that marks a sample refused before its file is opened, with the reason as its value; the pipeline
# reports such samples as unreadable. Spelt out here because components import only the contracts; it equals
# fermetric.data.decode.REFUSED (tests/test_bad_data.py checks).
REFUSED = "fermetric.refused"


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
    limit: Annotated[int, Range(0)] = 0,
    allow_outside: bool = False,
) -> FaceDataset:
    """Images listed in a CSV manifest; paths are relative to the manifest's folder.

    Rows with an empty label are left out (e.g. Yale's non-expression conditions), as are rows whose
    ``duplicate_of`` column is filled when ``skip_duplicates`` is on. ``dedupe_by`` keeps the first row of
    each value of a column (FER2013's ``pixel_md5``). ``classes`` keeps and orders a subset of labels;
    ``rename`` maps labels (``{happiness = "happy"}``); ``limit`` keeps an evenly spread subset.

    Paths are confined to the manifest's folder: a path that leaves it once resolved (``../../etc/passwd``, an
    absolute path elsewhere, a symlink pointing outside) is refused without being opened; it is reported by the
    pipeline among the unreadable files with its row number and the reason "outside the data folder", and if
    every row is refused the dataset fails at once. ``allow_outside = true`` lifts this for manifests that
    point elsewhere on purpose. The same holds for landmark files. The manifest may start with a UTF-8 BOM.
    """
    manifest = Path(manifest)
    rename = rename or {}
    if not manifest.is_file():
        raise FermetricError(f"manifest not found: {manifest}")
    root = manifest.parent
    real_root = root.resolve()
    samples: list[Sample] = []
    seen: set[str] = set()
    refused = 0
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        for col in (path_column, label_column):
            if col not in fields:
                raise FermetricError(
                    f"{manifest}: no column {col!r} (columns: {', '.join(repr(c) for c in fields) or 'none'})"
                )
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
            given = row[path_column] or ""
            path = root / given
            lm = row.get(landmarks_column) or ""
            meta = {k: v for k, v in row.items() if k not in (path_column, label_column)}
            problem = _path_problem(given, path, real_root) if not allow_outside else ""
            lm_problem = _path_problem(lm, root / lm, real_root) if lm and not allow_outside else ""
            if problem or lm_problem:
                refused += 1
                what = problem or f"landmark file {lm!r} {lm_problem}"
                meta[REFUSED] = (
                    f"outside the data folder: line {reader.line_num} of {manifest.name}: {what}"
                    " (data.allow_outside = true allows it)"
                )
            samples.append(
                Sample(
                    key=str(path),
                    label=label,
                    subject=(row.get(subject_column) or "").strip() or None,
                    path=path,
                    meta=meta,
                    landmarks_file=(root / lm) if lm and not lm_problem else None,
                )
            )
    if samples and refused == len(samples):
        first = samples[0].meta[REFUSED].removeprefix("outside the data folder: ")
        raise FermetricError(
            f"{manifest}: every one of its {refused} image paths leaves the manifest's folder {real_root}"
            f" (e.g. {first}); move the manifest beside the images, or set data.allow_outside = true"
            " if it points elsewhere on purpose"
        )
    if limit:
        samples = _spread(samples, limit)
    return FaceDataset(manifest.parent.name, list(classes or sorted({s.label for s in samples})), samples)


def _path_problem(given: str, path: Path, real_root: Path) -> str:
    """Why a manifest path is refused ("" when it stays in the data folder once symlinks are resolved)."""
    if not given.strip():
        return "empty path"
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        return f"{given!r} cannot be resolved ({type(exc).__name__}: {exc})"
    if resolved.is_relative_to(real_root):
        return ""
    lexical = Path(os.path.normpath(real_root / given))
    via = " through a symlink" if lexical.is_relative_to(real_root) else ""
    return f"{given!r} resolves{via} to {resolved}, outside {real_root}"


def folder_dataset(
    root: Path,
    split_dirs: list[str] | None = None,
    classes: list[str] | None = None,
    limit: Annotated[int, Range(0)] = 0,
    subject_level: bool = False,
    subjects_file: Path | None = None,
) -> FaceDataset:
    """Images in class-per-folder trees: ``root/<class>/<image>``.

    With ``split_dirs`` (e.g. ``["train", "val"]``) the tree is ``root/<split>/<class>/<image>`` and each
    sample's ``meta["split"]`` is its split folder, usable with ``eval.protocol = "split"``.

    Subject ids (for subject-independent splits, ``eval.group_by = "subject"``) come from either

    * ``subject_level = true``: one more folder level, ``root/[<split>/]<class>/<subject>/<image>``; the
      subject is that folder's name (the same name under two classes is the same person); or
    * ``subjects_file``: a CSV with columns ``path,subject`` (a UTF-8 BOM is fine), ``path`` relative to
      ``root`` as in the tree (``happy/img_01.png`` or ``train/happy/img_01.png``, ``/`` separators). Every
      image found must be listed, else the dataset fails naming a few that are not (a partly subject-tagged
      dataset would silently lose subject-independence); rows naming no image found are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FermetricError(f"dataset folder not found: {root}")
    if subject_level and subjects_file is not None:
        raise FermetricError("data: give subject_level or subjects_file, not both")
    mapping = _read_subjects(Path(subjects_file)) if subjects_file is not None else None
    samples: list[Sample] = []
    for split in split_dirs or [None]:
        base = root / split if split else root
        if not base.is_dir():
            raise FermetricError(f"split folder not found: {base}")
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if classes is not None and class_dir.name not in classes:
                continue
            meta = {"split": split} if split else {}
            if subject_level:
                for subject_dir in sorted(p for p in class_dir.iterdir() if p.is_dir()):
                    for image in _images_in(subject_dir):
                        samples.append(Sample(key=str(image), label=class_dir.name, subject=subject_dir.name,
                                              path=image, meta=dict(meta)))
            else:
                for image in _images_in(class_dir):
                    samples.append(Sample(key=str(image), label=class_dir.name, path=image, meta=dict(meta)))
    if not samples:
        expected = "<class>/<subject>/<image>" if subject_level else "<class>/<image>"
        raise FermetricError(f"no images found under {root} (expected {expected} folders)")
    if mapping is not None:
        unlisted = []
        for s in samples:
            rel = Path(s.path).relative_to(root).as_posix()
            s.subject = mapping.get(rel)
            if not s.subject:
                unlisted.append(rel)
        if unlisted:
            raise FermetricError(
                f"data.subjects_file {subjects_file}: {len(unlisted)} of {len(samples)} images under {root} have no"
                f" subject there (e.g. {', '.join(unlisted[:3])}); list every image as path,subject with paths"
                " relative to the root"
            )
    if limit:
        samples = _spread(samples, limit)
    return FaceDataset(root.name, list(classes or sorted({s.label for s in samples})), samples)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_subjects(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FermetricError(f"data.subjects_file: not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        for col in ("path", "subject"):
            if col not in fields:
                raise FermetricError(
                    f"data.subjects_file {path}: no column {col!r} (columns: {', '.join(repr(c) for c in fields) or 'none'})"
                )
        mapping = {}
        for row in reader:
            rel = (row.get("path") or "").strip().replace("\\", "/")
            subject = (row.get("subject") or "").strip()
            if rel and subject:
                mapping[Path(rel).as_posix()] = subject
    return mapping


def synthetic_dataset(subjects: Annotated[int, Range(2, 10_000)] = 24, per_class: Annotated[int, Range(1, 1000)] = 5,
                      size: Annotated[int, Range(16, 1024)] = 48, seed: Annotated[int, Range(0)] = 0,
                      color: bool = False) -> FaceDataset:
    """Procedurally drawn faces (see :mod:`fermetric.components.synthetic`): no download, known landmarks and subjects.

    ``color``: RGB faces (a colour set for ``crop.color = "rgb"``); gray by default. Their keys differ from the gray
    faces' (``synthetic/<seed>/rgb/<n>``), so the two never share a crop-cache row.

    Everything trained on it is labelled SYNTHETIC in the run's outputs: it shows the toolkit works, not
    how well a model recognises real expressions.
    """
    from . import synthetic

    faces = synthetic.generate(n_subjects=subjects, per_class=per_class, size=size, seed=seed, color=bool(color))
    prefix = f"synthetic/{seed}/rgb/" if color else f"synthetic/{seed}/"
    samples = [
        Sample(key=f"{prefix}{i:05d}", label=f.label, subject=f.subject, image=f.image, landmarks=f.landmarks)
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
