"""A trained model's metrics on another dataset (cross-dataset evaluation).

The data is a recipe (its ``[data]`` table: any registered dataset, e.g. FER2013's manifest with its split
column) or a manifest CSV. Each image goes through the same face finding and crop as ``predict`` (a CK+48 model
reads FER2013's 48x48 crops as they are, and Yale's photos after detection and alignment); the largest face is
scored.

Labels: a dataset label is scored against the model class of the same name (case-insensitive), or the one
``label_map`` names (``sadness=sad,happy=happy``, or a JSON/TOML/CSV file). A label mapped to ``-`` is left out
on purpose. Labels the model lacks are never dropped silently: their images are counted in ``unmapped`` with what
the model called them, and the message lists them. Model classes with no test image get no recall (``null``), and
macro-F1 is the mean over the classes that have test images (``macro_f1_classes``).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fermetric.contracts import FaceDataset, FaceImage
from fermetric.errors import FermetricError, RecipeError

from .inputs import Item
from .predict import Model

EXCLUDE = "-"


def parse_label_map(spec: str | None) -> dict[str, str]:
    """``k=v,k=v`` or a file (``.json``/``.toml`` table, or ``.csv`` with two columns) -> {dataset label: model class}."""
    if not spec:
        return {}
    path = Path(spec)
    if path.is_file():
        try:
            if path.suffix == ".json":
                table = json.loads(path.read_text())
            elif path.suffix == ".toml":
                import tomllib

                table = tomllib.loads(path.read_text())
            else:
                with path.open(newline="") as f:
                    rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
                if rows and [c.strip().lower() for c in rows[0][:2]] in (["from", "to"], ["dataset", "model"]):
                    rows = rows[1:]
                table = {r[0].strip(): (r[1].strip() if len(r) > 1 else EXCLUDE) for r in rows}
        except (OSError, ValueError) as exc:
            raise RecipeError(f"--label-map {path}: {exc}") from exc
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise RecipeError(f"--label-map {path}: expected a table of dataset label -> model class (strings)")
        return {str(k): v for k, v in table.items()}
    out = {}
    for pair in spec.split(","):
        if not pair.strip():
            continue
        if "=" not in pair:
            raise RecipeError(f"--label-map: {pair!r} is not DATASET_LABEL=MODEL_CLASS (nor an existing file)")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_dataset(data: str, overrides: list[str] | None = None, host=None) -> FaceDataset:
    """The dataset of a recipe's ``[data]`` table, or of a manifest CSV."""
    from fermetric import recipe as recipe_mod
    from fermetric.build import build
    from fermetric.plugins import get_host

    host = host or get_host()
    path = Path(data)
    if not path.is_file():
        raise RecipeError(f"--data {data}: file not found (give a recipe .toml or a manifest .csv)")
    if path.suffix.lower() == ".csv":
        table: dict[str, Any] = {"name": "manifest", "manifest": str(path)}
        for item in overrides or []:
            key, _, value = item.partition("=")
            table[key.removeprefix("data.")] = recipe_mod.parse_value(value)
    else:
        table = dict(recipe_mod.load(path, overrides).get("data") or {})
        if "name" not in table:
            raise RecipeError(f"--data {data}: the recipe has no [data] table with a name")
    dataset, _ = build(host, "dataset", table, where="data")
    return dataset


def _select_split(dataset: FaceDataset, split: str | None, column: str) -> FaceDataset:
    if not split:
        return dataset
    samples = [s for s in dataset.samples if s.meta.get(column) == split]
    if not samples:
        values = sorted({s.meta.get(column, "") for s in dataset.samples})
        raise RecipeError(f"--split {split}: no sample has {column} = {split!r} (values: {', '.join(map(repr, values[:10]))})")
    return FaceDataset(dataset.name, dataset.classes, samples, dataset.synthetic)


def resolve_labels(dataset_classes: list[str], model_classes: list[str], label_map: dict[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    """(dataset label -> model class index for the labels that can be scored, dataset label -> why not for the rest)."""
    lower = {c.lower(): i for i, c in enumerate(model_classes)}
    unknown_targets = {v for v in label_map.values() if v != EXCLUDE and v.lower() not in lower}
    if unknown_targets:
        raise RecipeError(f"--label-map maps to {', '.join(sorted(unknown_targets))}, which the model lacks (its classes: {', '.join(model_classes)})")
    unused = set(label_map) - set(dataset_classes)
    if unused:
        raise RecipeError(f"--label-map names {', '.join(sorted(unused))}, which the data lacks (its labels: {', '.join(dataset_classes)})")
    scored, left_out = {}, {}
    for label in dataset_classes:
        target = label_map.get(label, label)
        if target == EXCLUDE:
            left_out[label] = "excluded by --label-map"
        elif target.lower() in lower:
            scored[label] = lower[target.lower()]
        else:
            left_out[label] = "the model has no such class"
    return scored, left_out


def evaluate(model: Model, dataset: FaceDataset, label_map: dict[str, str] | None = None, batch_size: int = 64,
             tta: str = "none", predictions_csv: Path | None = None, on_item=None) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    from fermetric.evaluation.metrics import classification_metrics

    from fermetric.data.pipeline import decode

    scored, left_out = resolve_labels(list(dataset.classes), model.classes, label_map or {})

    def pictures():
        for i, s in enumerate(dataset.samples):
            try:
                image = decode(s, color=model.color)  # exactly as training decodes the dataset's images
            except ValueError as exc:
                yield Item(s.key, i, status="unreadable", reason=str(exc))
                continue
            yield FaceImage(image, path=s.key, landmarks=s.landmarks)

    y_true, y_pred, rows_out = [], [], []
    unmapped: dict[str, Counter] = defaultdict(Counter)
    unreadable, no_face = [], []
    for item, _, rows in model.iter_pictures(pictures(), batch_size=batch_size, tta=tta, all_faces=False):
        if on_item:
            on_item(item)
        sample = dataset.samples[item.index]
        row = rows[0]
        if row.status == "unreadable":
            unreadable.append({"file": sample.key, "error": row.reason})
        elif row.status != "ok":
            no_face.append({"file": sample.key, "reason": row.reason})
        elif sample.label in scored:
            y_true.append(scored[sample.label])
            y_pred.append(model.classes.index(row.label))
        else:
            unmapped[sample.label][row.label] += 1
        rows_out.append({"file": sample.key, "label": sample.label, "status": row.status, "predicted": row.label or "",
                         "confidence": "" if row.confidence is None else round(row.confidence, 6), "reason": row.reason})
    if predictions_csv is not None:
        with Path(predictions_csv).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows_out[0]) if rows_out else ["file"])
            writer.writeheader()
            writer.writerows(rows_out)
    if not y_true:
        raise FermetricError(
            f"nothing to score: {len(dataset.samples)} images, {len(unreadable)} unreadable, {len(no_face)} without a face,"
            f" {sum(sum(c.values()) for c in unmapped.values())} with labels the model lacks ({', '.join(sorted(left_out)) or 'none'})."
            f" Map labels with --label-map (model classes: {', '.join(model.classes)})"
        )
    yt, yp = np.array(y_true), np.array(y_pred)
    metrics = classification_metrics(yt, yp, model.classes)
    present = sorted(set(y_true))
    metrics["macro_f1"] = float(f1_score(yt, yp, labels=present, average="macro", zero_division=0))
    metrics["macro_f1_classes"] = [model.classes[i] for i in present]
    metrics["per_class_recall"] = {c: (r if i in present else None) for i, (c, r) in enumerate(metrics["per_class_recall"].items())}
    metrics |= {
        "dataset": dataset.name,
        "n_images": len(dataset.samples),
        "label_map": {label: model.classes[i] for label, i in scored.items()},
        "unmapped": {label: {"reason": left_out[label], "images": sum(c.values()), "predicted_as": dict(c.most_common())}
                     for label, c in sorted(unmapped.items())},
        "model_classes_without_images": [c for i, c in enumerate(model.classes) if i not in present],
        "unreadable": len(unreadable), "unreadable_files": unreadable,
        "no_face": len(no_face), "no_face_files": no_face,
        "model": model.describe(),
        "tta": tta,
        "synthetic_data": bool(dataset.synthetic),
    }
    return metrics

