"""``fermetric predict | evaluate | export | embed | explain``: the commands that use a trained model.

Exit codes, as for the rest of the CLI: 0 when anything was processed (rows for unreadable files and pictures
without a face are part of a normal result), 1 when nothing could be read or the model cannot be loaded, 2 for a
bad command line (including a --fold the run lacks, bad detector parameters, a missing detector model pack).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from fermetric.errors import FermetricError, RecipeError, handle_errors

MODEL_HELP = "A run folder (fermetric run --out) or a checkpoint file."
DETECT_HELP = ("Face detector for pictures: auto (dlib if installed, else Haar; a template model reads small aligned crops"
               " as they are), dlib, haar, a plugin's (fermetric plugins --kind face_detector), or none (each picture is"
               " one face framed like the training data).")
INPUTS_HELP = "INPUTS: image files, folders (searched recursively), glob patterns ('faces/*.png') and video files."


def model_options(fn):
    fn = click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda, cuda:1, ...")(fn)
    fn = click.option("--fold", type=int, help="k-fold run: use this fold's model (default: the fold with the best validation accuracy).")(fn)
    fn = click.option("--detector-param", "detector_params", multiple=True, metavar="KEY=VALUE", callback=_detector_params,
                      help="A parameter of the --detect detector (TOML value: model_pack=\"models/buffalo_l\"); repeatable.")(fn)
    fn = click.option("--detect", default="auto", show_default=True, callback=_detector_name, help=DETECT_HELP)(fn)
    return fn


def _detector_name(ctx, param, value: str) -> str:
    from .faces import detector_names

    names = detector_names()
    if value not in names:
        raise click.BadParameter(f"{value!r} is not a face detector; choose one of {', '.join(names)}")
    return value


def _detector_params(ctx, param, values: tuple[str, ...]) -> dict:
    from fermetric.recipe import parse_value

    params = {}
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{text!r}: write KEY=VALUE")
        params[key.strip()] = parse_value(raw.strip())
    return params


def _load(model: str, device: str, fold: int | None, detect: str, detector_params: dict | None = None):
    from fermetric.progress import console

    from .predict import load_model

    m = load_model(model, device=device, fold=fold, detect=detect, detector_params=detector_params)
    console.print(f"model: {m.checkpoint} ({m.choice}); {len(m.classes)} classes on {m.device}")
    console.print(f"preprocessing: {m.preprocessing}")
    if m.synthetic:
        console.print("[bold magenta]this model was trained on SYNTHETIC data[/]: its predictions on real faces mean little")
    return m


class _Progress:
    """A progress bar over the pictures (a video counts its frames)."""

    def __init__(self, description: str, total: int | None):
        from fermetric.progress import progress_bar

        self.bar = progress_bar()
        self.description = description
        self.total = total

    def __enter__(self):
        self.bar.__enter__()
        self.task = self.bar.add_task(self.description, total=self.total)
        self.last = None
        return self

    def __call__(self, item) -> None:
        if item.frame is not None:
            self.bar.update(self.task, description=f"{self.description} {Path(item.source).name} frame {item.frame}")
        if (item.index, item.frame is None) != self.last:
            self.bar.update(self.task, completed=item.index + 1)
        self.last = (item.index, item.frame is None)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _count_inputs(inputs) -> int | None:
    from .inputs import expand

    try:
        return sum(1 for _ in expand(list(inputs)))
    except OSError:
        return None


def _summary(rows) -> dict[str, int]:
    counts = {"faces": 0, "no_face": 0, "unreadable": 0, "skipped": 0}
    pictures = set()
    for r in rows:
        pictures.add((r.index, r.frame))
        counts["faces" if r.status == "ok" else r.status] = counts.get("faces" if r.status == "ok" else r.status, 0) + 1
    counts["pictures"] = len(pictures)
    return counts


def _report(rows, what: str) -> None:
    from fermetric.progress import console

    c = _summary(rows)
    def n(count: int, noun: str) -> str:
        return f"{count} {noun}{'' if count == 1 else 's'}"

    # Inputs: pictures, video frames, and the files or patterns that gave none (unreadable, skipped).
    console.print(f"{what}: {n(c['pictures'], 'input')}, {n(c['faces'], 'face')}, {c['no_face']} without a face,"
                  f" {c['unreadable']} unreadable, {c['skipped']} skipped")
    for r in [r for r in rows if r.status in ("unreadable", "skipped")][:5]:
        console.print(f"  [yellow]{r.status}[/] {r.source}: {r.reason}")
    if c["faces"] + c["no_face"] == 0:
        raise FermetricError(f"nothing could be read from the {c['pictures']} inputs")


def _check_out_suffix(out: str | None, allowed: tuple[str, ...], option: str) -> None:
    if out and Path(out).suffix.lower() not in allowed:
        raise RecipeError(f"{option} {out}: use a file ending in {' or '.join(allowed)}")


@click.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), help="A .csv or .json file for the results (default: CSV on standard output).")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False), help="Write each picture with its faces' boxes, labels and top probabilities here.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Faces per forward pass.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Videos: keep every Nth frame.")
@click.option("--tta", type=click.Choice(["none", "flip", "ten_crop"]), default="none", show_default=True, help="Test-time augmentation.")
@click.option("--largest-only", is_flag=True, help="Only the largest face of each picture.")
@model_options
@handle_errors
def predict(model, inputs, out, annotate_dir, batch_size, every, tta, largest_only, device, fold, detect, detector_params):
    """Expression of every face in INPUTS: one row per face (box, label, per-class probabilities), and one row per
    picture or file without a face, with the reason.

    INPUTS: image files, folders (searched recursively), glob patterns ('faces/*.png') and video files (frame
    index and timestamp in the rows).
    """
    from .annotate import draw, picture_stem, unique_name, write_png

    _check_out_suffix(out, (".csv", ".json"), "--out")
    m = _load(model, device, fold, detect, detector_params)
    annotate = Path(annotate_dir) if annotate_dir else None
    if annotate:
        annotate.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    rows = []
    with _Progress("predicting", _count_inputs(inputs)) as progress:
        for item, faces, item_rows in m.iter_pictures(list(inputs), batch_size=batch_size, tta=tta, every=every, all_faces=not largest_only):
            progress(item)
            rows.extend(item_rows)
            if annotate and item.image is not None:
                quads = [f.quad for f in faces] + [None] * (len(item_rows) - len(faces))
                # Two inputs with one name (happy/subject01.png, sad/subject01.png) get subject01.png and subject01_2.png:
                # each row names its file.
                path = unique_name(annotate, picture_stem(item.source, item.frame), taken)
                write_png(path, draw(item.image, item_rows, quads))
                for row in item_rows:
                    row.annotation = str(path)
    _write_results(rows, m, out)
    _report(rows, "predicted")
    if annotate:
        from fermetric.progress import console

        console.print(f"annotated pictures: {annotate} ({len(taken)} files)")


def _write_results(rows, m, out: str | None) -> None:
    if out and Path(out).suffix.lower() == ".json":
        Path(out).write_text(json.dumps({"model": m.describe(), "results": [r.to_json() for r in rows]}, indent=2, default=str) + "\n")
        return
    table = [r.to_row(m.classes) for r in rows]
    header = list(table[0]) if table else list(rows[0].to_row(m.classes)) if rows else ["source"]
    f = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(table)
    finally:
        if out:
            f.close()


@click.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="embeddings.npy; the index (one row per vector, and the pictures without one) goes beside it as .csv.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Videos: keep every Nth frame.")
@model_options
@handle_errors
def embed(model, inputs, out, batch_size, every, device, fold, detect, detector_params):
    """Embeddings of every face in INPUTS, for retrieval and plotting: OUT (.npy, float32, one row per face) and
    OUT with .csv (row, source, frame, face, box, predicted label; pictures without a face have no row number)."""
    import numpy as np

    _check_out_suffix(out, (".npy",), "--out")
    m = _load(model, device, fold, detect, detector_params)
    rows, vectors = [], []
    with _Progress("embedding", _count_inputs(inputs)) as progress:
        for item, _, item_rows in m.iter_pictures(list(inputs), batch_size=batch_size, every=every, embeddings=True):
            progress(item)
            rows.extend(item_rows)
    out_path = Path(out)
    index_path = out_path.with_suffix(".csv")
    with index_path.open("w", newline="") as f:
        writer = None
        for r in rows:
            record = {"row": len(vectors) if r.status == "ok" else ""} | r.to_row([])
            if r.status == "ok":
                vectors.append(r.embedding)
            writer = writer or csv.DictWriter(f, fieldnames=list(record))
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(record)
    dim = int(m.meta["embedding_dim"])
    np.save(out_path, np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32))
    _report(rows, "embedded")
    from fermetric.progress import console

    console.print(f"wrote {out_path} ({len(vectors)} x {dim}) and {index_path}")


@click.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="A recipe (its [data] table) or a manifest CSV.")
@click.option("--label-map", help="Dataset label -> model class: 'sadness=sad,anger=angry,contempt=-' ('-' leaves a label out) or a .json/.toml/.csv file.")
@click.option("--split", help="Keep only samples whose --split-column has this value (e.g. PublicTest).")
@click.option("--split-column", default="usage", show_default=True)
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Score an evenly spread subset of this many images.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of the data table (data.limit=200).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the metrics and the confusion matrix (JSON + PNG), named as in a run folder.")
@click.option("--predictions", type=click.Path(dir_okay=False), help="CSV of every image's prediction (file, label, predicted, confidence, status).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--tta", type=click.Choice(["none", "flip", "ten_crop"]), default="none", show_default=True)
@model_options
@handle_errors
def evaluate(model, data, label_map, split, split_column, limit, overrides, out, predictions, batch_size, tta, device, fold, detect, detector_params):
    """Metrics of MODEL on another dataset (cross-dataset evaluation): accuracy, macro-F1, per-class recall and
    the confusion matrix. Labels the model lacks are reported with what the model called those images."""
    from fermetric.contracts import FaceDataset
    from fermetric.evaluation.plots import plot_confusion
    from fermetric.progress import console
    from fermetric.runfolder import RunFolder, write_json

    from .evaluate import evaluate as run_evaluate
    from .evaluate import _select_split, load_dataset, parse_label_map

    mapping = parse_label_map(label_map)
    dataset = _select_split(load_dataset(data, list(overrides)), split, split_column)
    if limit and limit < len(dataset.samples):
        import numpy as np

        idx = np.linspace(0, len(dataset.samples) - 1, limit).round().astype(int)
        dataset = FaceDataset(dataset.name, dataset.classes, [dataset.samples[i] for i in idx], dataset.synthetic)
    m = _load(model, device, fold, detect, detector_params)
    folder = RunFolder(out) if out else None
    if folder:
        folder.root.mkdir(parents=True, exist_ok=True)
    with _Progress(f"evaluating on {dataset.name}", len(dataset.samples)) as progress:
        metrics = run_evaluate(m, dataset, mapping, batch_size=batch_size, tta=tta,
                               predictions_csv=Path(predictions) if predictions else None, on_item=progress)
    for label, info in metrics["unmapped"].items():
        hint = "" if info["reason"] == "excluded by --label-map" else f"; map it with --label-map {label}=CLASS"
        console.print(f"[yellow]not scored[/]: {info['images']} images labelled {label!r} ({info['reason']}; the model called them"
                      f" {', '.join(f'{k} {v}' for k, v in list(info['predicted_as'].items())[:3])}){hint}")
    if metrics["model_classes_without_images"]:
        console.print(f"model classes with no test image (no recall; left out of macro-F1): {', '.join(metrics['model_classes_without_images'])}")
    if metrics["unreadable"] or metrics["no_face"]:
        console.print(f"{metrics['unreadable']} unreadable and {metrics['no_face']} without a face: not scored")
    if folder:
        write_json(metrics, folder.metrics_file)
        write_json(metrics["confusion_matrix"], folder.confusion_json)
        plot_confusion(metrics["confusion_matrix"]["matrix"], m.classes, folder.confusion_png,
                       f"{Path(str(m.checkpoint)).parent.parent.name} on {dataset.name}: acc {metrics['accuracy']:.3f}")
    tag = " (model trained on SYNTHETIC data)" if m.synthetic else ""
    click.echo(f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {metrics['n_test']} images of {dataset.name}{tag}"
               + (f" -> {out}" if out else ""))


@click.command()
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Output file (default: <model name>.onnx / .pt here); the sidecar is <out>.json.")
@click.option("--opset", type=click.IntRange(min=9), default=17, show_default=True, help="ONNX opset.")
@click.option("--dynamic-batch/--fixed-batch", default=True, show_default=True, help="A batch dimension of any size, or --batch exactly.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="The batch size of a --fixed-batch export.")
@click.option("--parity-images", multiple=True, help="Pictures (files, folders, globs) to check parity on (default: synthetic faces).")
@click.option("--device", default="cpu", hidden=True)
@click.option("--fold", type=int, help="k-fold run: export this fold's model (default: the best validation fold).")
@handle_errors
def export(model, fmt, out, opset, dynamic_batch, batch, parity_images, device, fold):
    """Write MODEL's network as ONNX (or TorchScript) with a JSON sidecar stating the preprocessing, and check
    it against PyTorch: the maximum absolute difference of the probabilities is printed (goal < 1e-4)."""
    from .export import PARITY_GOAL
    from .export import export as run_export
    from .inputs import iter_items

    m = _load(model, device, fold, "auto")
    if not out:  # beside the model, not in the current folder (a clone's root would collect stray exports)
        source = Path(model).resolve()
        folder, name = (source.parent, source.stem) if source.is_file() else (source, source.name)
        out = str(folder / f"{name}.{'onnx' if fmt == 'onnx' else 'pt'}")
    images = [i.image for i in iter_items(list(parity_images), color=m.color) if i.image is not None][:64] if parity_images else None
    if parity_images and not images:
        raise FermetricError(f"--parity-images: none of {', '.join(parity_images)} could be read")
    result = run_export(m, Path(out), fmt, opset, dynamic_batch, batch, images)
    ok = result["max_abs_diff"] < PARITY_GOAL
    click.echo(f"wrote {result['file']} and {result['sidecar']}")
    click.echo(f"parity ({'onnxruntime' if fmt == 'onnx' else 'torch.jit'} vs PyTorch, {result['parity_images']} crops of {result['parity_source']}):"
               f" max abs difference of probabilities {result['max_abs_diff']:.2e} ({'within' if ok else 'ABOVE'} the {PARITY_GOAL:.0e} goal),"
               f" embeddings {result['max_abs_diff_embedding']:.2e}")
    if not ok:
        raise FermetricError(f"parity check failed: {result['max_abs_diff']:.2e} >= {PARITY_GOAL:.0e}")


@click.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for one PNG per face: <picture>[_f<frame>]_face<K>.png.")
@click.option("--class", "target", help="Explain this class instead of the predicted one.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Videos: keep every Nth frame.")
@model_options
@handle_errors
def explain(model, inputs, out, target, every, device, fold, detect, detector_params):
    """Grad-CAM heatmaps of MODEL on the faces in INPUTS: over the partial image and mapped back onto the picture,
    to see which action-unit regions drove each prediction."""
    from fermetric.progress import console

    from .explain import write_explanations

    m = _load(model, device, fold, detect, detector_params)
    folder = Path(out)
    with _Progress("explaining", _count_inputs(inputs)) as progress:
        records = write_explanations(m, list(inputs), folder, target, every, on_item=progress)
    done = [r for r in records if r.get("file")]
    console.print(f"explained {len(done)} faces -> {folder}; {len(records) - len(done)} pictures without one")
    if not done and not any(r.get("status") == "no_face" for r in records):
        raise FermetricError("nothing could be read from the inputs")
