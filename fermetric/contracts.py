"""The contracts plugins are written against: what a dataset lists, what a cropper receives, what a callback sees.

Plugin authors import from here (and from :mod:`fermetric.errors` and :mod:`fermetric.hookspecs`)::

    from fermetric.contracts import FaceImage, Sample, FaceDataset, load_landmarks_file, Callback, DetectedFace
    from fermetric.contracts import to_gray, eye_line_rotation, warp_box, warp   # geometry helpers

Nothing here imports the rest of fermetric, so this module is safe to depend on from any layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fermetric.geometry import (  # noqa: F401 - re-exported: the one module plugins import
    IDENTITY,
    apply_affine,
    apply_box_warp,
    box_warp,
    eye_centres,
    eye_line_rotation,
    five_from_68,
    level_rotation,
    resize,
    to_gray,
    warp,
    warp_box,
)


@dataclass
class FaceImage:
    """One image on its way to a cropper.

    image: HxW uint8 grayscale (the whole pipeline is grayscale; a backbone may repeat it to 3 channels).
    landmarks: (68, 2) float32 pixel coordinates (x, y) in the iBUG-300W order, when the dataset gives
        them; ``None`` otherwise.
    landmarks_error: why the dataset could not give landmarks it was asked for (missing file, ...).
    path: where the image came from, for messages.
    """

    image: np.ndarray
    path: str = ""
    landmarks: np.ndarray | None = None
    landmarks_error: str | None = None


@dataclass
class DetectedFace:
    """One face a face detector (``register_face_detectors``) found in a picture, in its pixel coordinates.

    box: (x0, y0, x1, y1): the face's first column and row and one past its last (OpenCV's ``(x, y, x + w, y + h)``,
        insightface's ``bbox``).
    landmarks: what places the face, when the detector gives it: 68 points in the iBUG-300W order, or 5 points
        (the eye on the image's left, the other eye, the nose tip, the mouth corner on the image's left, the
        other corner: insightface's and RetinaFace's order). Without landmarks, inference maps the box onto
        the model's framing as it does a Haar box.
    score: the detector's confidence, when it has one.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None = None
    score: float | None = None


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


@dataclass(frozen=True)
class Range:
    """The allowed range of a numeric component parameter, declared where the parameter is defined::

        def __init__(self, width: Annotated[int, Range(1)] = 32, dropout: Annotated[float, Range(0, 1, high_inclusive=False)] = 0.0)

    Recipes are checked against it before any work (exit 2, naming the key and the range); ``fermetric plugins``
    shows it. ``None`` is unbounded.
    """

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low}"
        if self.low is None:
            return f"{'<=' if self.high_inclusive else '<'} {self.high}"
        return f"in {'[' if self.low_inclusive else '('}{self.low}, {self.high}{']' if self.high_inclusive else ')'}"


class Callback:
    """A training callback: override the events you need (each gets the running loop).

    What a callback may read on ``loop`` (a :class:`fermetric.training.loop.TrainLoop`):

    - ``loop.epoch`` (0-based), ``loop.epochs``, ``loop.start_epoch`` (> 0 when resumed), ``loop.step`` (batch in the
      epoch, 1-based after ``on_batch_end``), ``loop.batches`` (per epoch), ``loop.fold`` / ``loop.n_folds``;
    - ``loop.row``: after an epoch, its history row (``epoch``, ``lr``, ``train_loss``, ``loss_<term>``,
      ``train_accuracy``, ``seconds``, ``images_per_s``, and ``val_accuracy`` / ``val_macro_f1`` with validation data);
    - ``loop.running()``: mean loss and accuracy of the epoch so far (reads them from the device: call it rarely);
    - ``loop.improved`` / ``loop.best``: whether this epoch is the selected one so far, and which epoch that is;
    - ``loop.folder``: the fold's :class:`fermetric.runfolder.RunFolder` (write your files under ``loop.folder.root``);
    - ``loop.net`` (the network), ``loop.model`` (the same, or its DistributedDataParallel wrapper under torchrun),
      ``loop.objective``, ``loop.device``, ``loop.ctx`` (rank and world size), ``loop.log(text)`` and ``loop.warn(text)``
      (the run's console, log file and run.json warnings).

    Under torchrun, the callbacks of a recipe's ``[[callback]]`` tables run on rank 0 only (they are loggers and
    writers); the loop's figures in ``loop.row`` are already summed over every process.

    A callback stops training early by setting ``loop.should_stop = True``. Whatever ``state_dict()`` returns goes into
    the checkpoint and comes back through ``load_state_dict`` on ``--resume``.
    """

    def on_fit_start(self, loop: Any) -> None:
        """Before the first epoch to run (after a resumed checkpoint was restored)."""

    def on_epoch_start(self, loop: Any) -> None:
        """Before the first batch of ``loop.epoch``."""

    def on_batch_end(self, loop: Any) -> None:
        """After each optimizer step. Keep it cheap: it runs once per batch."""

    def on_epoch_end(self, loop: Any) -> None:
        """After training and validating ``loop.epoch``; ``loop.row`` holds its figures."""

    def on_fit_end(self, loop: Any) -> None:
        """After the last epoch (or an early stop), before the test evaluation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
