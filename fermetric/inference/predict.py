"""The loaded model (:class:`Model`) and what it gives: one :class:`FaceResult` per face, or per picture without one.

Pictures are read, their faces found and cropped one at a time, and the crops are run through the network in
batches of ``batch_size`` across pictures (a folder of single-face photos still fills whole batches). Results come
back in input order. A picture with no face, or a file that cannot be read, gives one row with ``status`` and
``reason`` and never stops the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from fermetric.errors import FermetricError, NoFace

from fermetric.model import pick_device

from .faces import Face, FaceFinder
from fermetric.data.pipeline import checked_crop

from .inputs import Item, array_image, iter_items
from .model import Checkpoint, build_network, load_checkpoint

TTA_MODES = ("none", "flip", "ten_crop")


@dataclass
class FaceResult:
    """One face (``status == "ok"``), or one picture/file where no face could be read (``no_face``, ``unreadable``,
    ``skipped``) with the ``reason``."""

    source: str
    index: int
    status: str = "ok"
    reason: str = ""
    frame: int | None = None
    time_s: float | None = None
    face: int | None = None  # 0 = the largest face of the picture
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1: first pixel and one past the last
    method: str = ""  # how the face was found (the detector's name, whole image, given landmarks, cropper)
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = field(default=None, repr=False)
    annotation: str = ""  # the annotated picture this row is drawn on (predict --annotate)

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def to_row(self, classes: list[str]) -> dict[str, Any]:
        """A flat row for CSV: fixed columns, then one ``p_<class>`` column per class."""
        row: dict[str, Any] = {
            "source": self.source, "frame": "" if self.frame is None else self.frame,
            "time_s": "" if self.time_s is None else self.time_s, "face": "" if self.face is None else self.face,
            "status": self.status, "reason": self.reason, "method": self.method,
        }
        for k, v in zip(("x0", "y0", "x1", "y1"), self.box or ("", "", "", "")):
            row[k] = round(v, 1) if v != "" else ""
        row["label"] = self.label or ""
        row["confidence"] = "" if self.confidence is None else round(self.confidence, 6)
        for c in classes:
            row[f"p_{c}"] = round(self.probabilities[c], 6) if c in self.probabilities else ""
        row["annotation"] = self.annotation
        return row

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "embedding"}
        out["box"] = list(self.box) if self.box else None
        return out


@dataclass
class _Pending:
    item: Item
    faces: list[Face]
    rows: list[FaceResult]
    crops: list[np.ndarray | None]


class Model:
    """A trained fermetric model, ready to use: :func:`fermetric.load_model` returns one.

    ``classes``, ``meta`` (the checkpoint's self-description), ``checkpoint`` (path), ``choice`` (why this
    checkpoint), ``device``; ``predict``, ``embed`` and ``faces`` take the inputs :func:`iter_items` reads.
    """

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", detect: Any = "auto", host=None,
                 detector_params: dict[str, Any] | None = None):
        from fermetric.build import build
        from fermetric.plugins import get_host

        host = host or get_host()
        self.meta = dict(checkpoint.meta)
        self.checkpoint = checkpoint.path
        self.choice = checkpoint.choice
        self.classes: list[str] = [str(c) for c in self.meta["classes"]]
        self.input_size = tuple(int(v) for v in self.meta["input_size"])
        self.device = pick_device(device)
        self.network = build_network(checkpoint, host).to(self.device)
        self.crop_table = dict(self.meta["crop"])
        # What the network reads: grey crops (N, 1, H, W), or RGB ones (N, 3, H, W) for crop.color = "rgb".
        self.color = str(self.crop_table.get("color", "gray"))
        self.finder = FaceFinder(self.crop_table, self.input_size, detect, detector_params, host)
        table = self.finder.cropper_table(self.crop_table)
        try:
            self.cropper, _ = build(host, "cropper", table, where="crop")
        except FermetricError as exc:
            raise FermetricError(f"{self.checkpoint}: cannot build its cropper {table}: {exc}") from exc
        if tuple(self.cropper.output_size) != self.input_size:
            raise FermetricError(
                f"{self.checkpoint}: its cropper now gives {tuple(self.cropper.output_size)} crops but the network was"
                f" trained on {self.input_size} (the cropper plugin changed?)"
            )

    # -- description ----------------------------------------------------------------------------------------
    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic_data"))

    @property
    def preprocessing(self) -> str:
        """What happens to a picture before the network sees it, in one sentence."""
        return self.finder.describe()

    def describe(self) -> dict[str, Any]:
        m = self.meta
        return {
            "checkpoint": str(self.checkpoint), "choice": self.choice, "fermetric": m["fermetric"], "classes": self.classes,
            "crop": m["crop"], "input_size": list(self.input_size), "in_chans": m["in_chans"],
            "normalization": m["normalization"], "backbone": m["backbone"], "embedding_dim": m["embedding_dim"],
            "synthetic_data": self.synthetic, "preprocessing": self.preprocessing, "device": str(self.device),
        }

    def __repr__(self) -> str:
        return f"Model({self.checkpoint}, classes={self.classes}, crop={self.crop_table.get('name')}, device={self.device})"

    # -- faces and crops ------------------------------------------------------------------------------------
    def faces(self, image: np.ndarray, landmarks: np.ndarray | None = None, path: str = "") -> list[Face]:
        """The faces of a picture, read in the model's colour (a grey picture is repeated in RGB for a colour
        model) so that its cropper sees what it saw in training."""
        return self.finder.find(array_image(image, self.color), landmarks, path)

    def crop(self, face: Face) -> np.ndarray:
        """The network's input for one face, uint8: (H, W) grey, or (3, H, W) RGB for a colour model (the layout
        training stacked its crops in); raises NoFace when the cropper finds none."""
        crop = checked_crop(self.cropper(face.face_image), self.input_size, self.crop_table, self.color)
        return np.ascontiguousarray(crop.transpose(2, 0, 1)) if crop.ndim == 3 else crop

    def forward_crops(self, crops: np.ndarray, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, probabilities) of uint8 crops (N, H, W), (N, 1, H, W) or, colour, (N, 3, H, W)."""
        from fermetric.model import predict

        x = torch.from_numpy(np.ascontiguousarray(crops))
        if x.ndim == 3:
            x = x.unsqueeze(1)
        emb, logp = predict(self.network, x, self.device, batch_size=max(1, len(x)), tta=tta)
        return emb, np.exp(logp)

    # -- prediction -----------------------------------------------------------------------------------------
    def iter_pictures(self, inputs: Any, batch_size: int = 64, tta: str = "none", every: int = 1,
                      embeddings: bool = False, all_faces: bool = True) -> Iterator[tuple[Item, list[Face], list[FaceResult]]]:
        """For each picture, in order: (item, its faces, its rows). ``all_faces=False`` keeps the largest face only."""
        if tta not in TTA_MODES:
            raise FermetricError(f"tta = {tta!r}; choose one of {', '.join(TTA_MODES)}")
        if batch_size < 1 or every < 1:
            raise FermetricError("batch_size and every must be at least 1")
        pending: list[_Pending] = []
        n_crops = 0
        for item in iter_items(inputs, every=every, color=self.color):
            work = self._prepare(item, all_faces)
            pending.append(work)
            n_crops += sum(c is not None for c in work.crops)
            if n_crops >= batch_size:
                yield from self._flush(pending, tta, embeddings)
                pending, n_crops = [], 0
        yield from self._flush(pending, tta, embeddings)

    def _prepare(self, item: Item, all_faces: bool) -> _Pending:
        base = dict(source=item.source, index=item.index, frame=item.frame, time_s=item.time_s)
        if item.status != "ok":
            return _Pending(item, [], [FaceResult(**base, status=item.status, reason=item.reason)], [None])
        try:
            faces = self.faces(item.image, item.landmarks, item.source)
        except NoFace as exc:
            faces, reason = [], str(exc)
        else:
            reason = "no face detected"
        if not all_faces:
            faces = faces[:1]
        if not faces:
            return _Pending(item, [], [FaceResult(**base, status="no_face", reason=reason)], [None])
        rows, crops = [], []
        for i, face in enumerate(faces):
            row = FaceResult(**base, face=i, box=tuple(round(float(v), 2) for v in face.box), method=face.method)
            try:
                crops.append(self.crop(face))
            except NoFace as exc:
                row.status, row.reason = "no_face", f"{self.crop_table.get('name')}: {exc}"
                crops.append(None)
            rows.append(row)
        return _Pending(item, faces, rows, crops)

    def _flush(self, pending: list[_Pending], tta: str, embeddings: bool):
        crops = [c for w in pending for c in w.crops if c is not None]
        if crops:
            emb, prob = self.forward_crops(np.stack(crops), tta)
            k = 0
            for w in pending:
                for row, crop in zip(w.rows, w.crops):
                    if crop is None:
                        continue
                    p = prob[k]
                    best = int(p.argmax())
                    row.label, row.confidence = self.classes[best], float(p[best])
                    row.probabilities = {c: float(v) for c, v in zip(self.classes, p)}
                    if embeddings:
                        row.embedding = emb[k]
                    k += 1
        for w in pending:
            yield w.item, w.faces, w.rows

    def iter_predict(self, inputs: Any, **kwargs) -> Iterator[FaceResult]:
        for _, _, rows in self.iter_pictures(inputs, **kwargs):
            yield from rows

    def predict(self, inputs: Any, batch_size: int = 64, tta: str = "none", every: int = 1, embeddings: bool = False) -> list[FaceResult]:
        """Per-face results for paths (files, folders, globs, videos), PIL images, numpy arrays or lists of them.

        Every picture gives at least one row: one per face found (largest first), or one saying why none was
        (``status``: ``no_face``, ``unreadable``, ``skipped``).
        """
        return list(self.iter_predict(inputs, batch_size=batch_size, tta=tta, every=every, embeddings=embeddings))

    def embed(self, inputs: Any, batch_size: int = 64, every: int = 1) -> tuple[np.ndarray, list[FaceResult]]:
        """(embeddings (n_faces, embedding_dim) float32, the faces' rows in the same order). Pictures without a
        readable face have no embedding; :meth:`predict` with ``embeddings=True`` lists them too."""
        rows = [r for r in self.iter_predict(inputs, batch_size=batch_size, every=every, embeddings=True) if r.status == "ok"]
        dim = int(self.meta["embedding_dim"])
        vectors = np.stack([r.embedding for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        return vectors, rows


def load_model(path, device: str = "auto", fold: int | None = None, detect: Any = "auto", host=None,
               detector_params: dict[str, Any] | None = None) -> Model:
    """A trained model from a run folder or a checkpoint file (see :mod:`fermetric.inference.model` for which
    checkpoint a run folder gives); ``detect`` picks the face detector for raw pictures (``auto``, ``none``, a
    registered face detector such as ``dlib`` or ``haar``, built with ``detector_params``, or a detector object)."""
    return Model(load_checkpoint(path, fold), device=device, detect=detect, host=host, detector_params=detector_params)

