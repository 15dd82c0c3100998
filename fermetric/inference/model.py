"""Loading a trained model with nothing but its checkpoint: ``torch.load(weights_only=True)`` plus plain JSON.

A checkpoint's ``meta`` (written by the engine) describes everything inference needs: classes, the crop table and
its landmark source, input size and channels, normalisation, backbone and model tables, embedding size, the
fermetric version and whether it was trained on synthetic data. No recipe, no pickled objects: the network is
rebuilt from the backbone table through the plugin registries and the state dict is loaded into it.

Which checkpoint a run folder gives (:func:`resolve_checkpoint`):

- a single-split run: the checkpoint its test metrics were computed with (``metrics.json``'s
  ``selected_checkpoint``: the best validation epoch, or the last epoch when the run selected ``last``);
- a k-fold run: ``fold=K`` when given, otherwise the fold with the highest validation accuracy (from its
  ``history.csv``; never its test accuracy, which would flatter the model). A k-fold run trains no model on all
  the data; to deploy one, train a ``holdout`` or ``split`` recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fermetric import __version__
from fermetric.errors import FermetricError
from fermetric.model import NORMALIZATIONS  # what the network knows, the loader accepts
from fermetric.data.pipeline import COLORS  # what a checkpoint's crop.color may be
from fermetric.runfolder import RunFolder
from fermetric.runfolder import load_checkpoint as load_checkpoint_file  # this module's load_checkpoint resolves runs

# What a checkpoint's ``meta`` must hold for inference.
REQUIRED_META = ("fermetric", "classes", "embedding_dim", "backbone", "crop", "model", "input_size", "in_chans", "normalization")


class ModelLoadError(FermetricError):
    """The model file or folder cannot be used; the message names the file and what is missing."""


class FoldError(ModelLoadError):
    """``--fold K`` names no fold of the run: a bad command line (exit 2), not a damaged model."""

    exit_code = 2


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint: where it is, why this one, and its contents."""

    path: Path
    choice: str  # how it was chosen, for people ("best validation epoch of fold 3", ...)
    state: dict[str, Any]
    meta: dict[str, Any]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


def check_version(written_by: str, path: Path) -> None:
    """Checkpoints are compatible within a release series: same major version (same minor while the major is 0,
    as semantic versioning allows breaking changes there), and not newer than the installed fermetric."""
    have, got = _version_tuple(__version__), _version_tuple(written_by)
    series = 2 if have[0] == 0 else 1
    if got > have:
        raise ModelLoadError(f"{path} was written by fermetric {written_by}, newer than the installed {__version__}: upgrade fermetric")
    if got[:series] != have[:series]:
        raise ModelLoadError(
            f"{path} was written by fermetric {written_by}; this fermetric ({__version__}) reads checkpoints of"
            f" {'.'.join(map(str, have[:series]))}.x only. Load it with fermetric {written_by}, or retrain"
        )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read with ``weights_only=True``: tensors and plain containers only, never arbitrary
    pickled objects."""
    state = load_checkpoint_file(Path(path), needs=("model", "meta"), error=ModelLoadError,
                            advice="Give the run folder or the checkpoint file (best.pt) of a fermetric run")
    meta = state["meta"]
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: 'meta' is a {type(meta).__name__}, not a table")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelLoadError(f"{path}: checkpoint metadata lacks {', '.join(missing)} (written by fermetric {meta.get('fermetric', '?')})")
    check_version(str(meta["fermetric"]), path)
    if (meta.get("crop") or {}).get("color", "gray") not in COLORS:
        raise ModelLoadError(f"{path}: crop.color {meta['crop']['color']!r} is unknown to this fermetric (knows {', '.join(COLORS)})")
    if meta["normalization"] not in NORMALIZATIONS:
        raise ModelLoadError(f"{path}: normalization {meta['normalization']!r} is unknown to this fermetric (knows {', '.join(NORMALIZATIONS)})")
    return state


def _best_val(folder: RunFolder) -> float:
    scores = []
    for row in folder.history():
        try:
            scores.append(float(row.get("val_accuracy") or "nan"))
        except ValueError:
            pass
    scores = [s for s in scores if not math.isnan(s)]
    return max(scores) if scores else -1.0


def _checkpoint_of(folder: RunFolder) -> tuple[Path, str]:
    """The checkpoint a (fold) folder's test metrics used."""
    selected = str((folder.metrics() or {}).get("selected_checkpoint", ""))
    if folder.best_checkpoint.is_file() and not selected.startswith("last"):
        return folder.best_checkpoint, "the best validation epoch" + (f" ({selected.removeprefix('best ').strip('()')})" if selected else "")
    if folder.last_checkpoint.is_file():
        return folder.last_checkpoint, "the last epoch"
    raise ModelLoadError(f"{folder.root} has no checkpoint ({folder.best_checkpoint.name} or {folder.last_checkpoint.name} in {folder.checkpoint_dir})")


def resolve_checkpoint(path: str | Path, fold: int | None = None) -> tuple[Path, str]:
    """(checkpoint file, how it was chosen) for a checkpoint file or a run folder."""
    path = Path(path)
    if path.is_file():
        if fold is not None:
            raise FoldError(f"--fold {fold} needs a run folder; {path} is a checkpoint file")
        return path, "the given checkpoint"
    if not path.is_dir():
        raise ModelLoadError(f"model not found: {path} (give a run folder or a checkpoint file)")
    run = RunFolder(path)
    folds = run.folds()
    if not folds:
        if fold not in (None, 0):
            raise FoldError(f"--fold {fold}: {path} is a single-split run (no fold folders)")
        return _checkpoint_of(run)
    by_index = {int(f.root.name.rsplit("_", 1)[1]): f for f in folds}
    if fold is not None:
        if fold not in by_index:
            raise FoldError(f"--fold {fold}: {path} has folds {', '.join(map(str, sorted(by_index)))}")
        ckpt, why = _checkpoint_of(by_index[fold])
        return ckpt, f"fold {fold} (--fold), {why}"
    usable = {i: f for i, f in by_index.items() if f.best_checkpoint.is_file() or f.last_checkpoint.is_file()}
    if not usable:
        raise ModelLoadError(f"{path}: none of its {len(folds)} folds has a checkpoint")
    # A fold still training has a best.pt from some epoch so far: choose among the finished folds (those with test
    # metrics) when there are any, and say when the run is not finished.
    finished = {i: f for i, f in usable.items() if f.metrics()}
    candidates = finished or usable
    best = max(candidates, key=lambda i: (_best_val(candidates[i]), -i))
    ckpt, why = _checkpoint_of(candidates[best])
    score = _best_val(candidates[best])
    what = "finished folds" if finished else "folds"
    how = (f"validation accuracy {score:.4f}, the highest of {len(candidates)} {what}" if score >= 0
           else f"the first of {len(candidates)} {what} (no validation scores)")
    status = run.status()
    warning = (f"; the run is {status or 'not finished'} ({len(finished)} of {len(folds)} folds finished):"
               " its model may still change" if status != "finished" else "")
    return ckpt, f"fold {best} ({how}; --fold K picks another), {why}{warning}"


def load_checkpoint(path: str | Path, fold: int | None = None) -> Checkpoint:
    ckpt, choice = resolve_checkpoint(path, fold)
    state = read_checkpoint(ckpt)
    return Checkpoint(ckpt, choice, state, state["meta"])


def _require_component(host, kind: str, name: str, path: Path) -> None:
    registry = host.registry(kind)
    if name not in registry:
        problems = "".join(f"; plugin {p.plugin} ({p.distribution}) failed to load: {p.error}" for p in host.problems)
        raise ModelLoadError(
            f"{path} needs {kind} {name!r}, which no installed plugin provides (installed: {', '.join(registry.names())})."
            f" Install the plugin that registers it{problems}"
        )


def build_network(checkpoint: Checkpoint, host=None):
    """The FERModel described by the checkpoint's metadata, with its weights, in eval mode on the CPU."""
    from fermetric.build import build_model
    from fermetric.plugins import get_host

    host = host or get_host()
    meta, path = checkpoint.meta, checkpoint.path
    _require_component(host, "backbone", meta["backbone"]["name"], path)
    _require_component(host, "cropper", meta["crop"]["name"], path)
    recipe = {"backbone": dict(meta["backbone"]), "model": dict(meta["model"])}
    recipe["model"].setdefault("embedding_dim", meta["embedding_dim"])
    recipe["model"].setdefault("dropout", 0.0)
    recipe["model"]["normalization"] = meta["normalization"]  # checkpoints before colour had no such model key
    try:
        network = build_model(host, recipe, len(meta["classes"]))
    except FermetricError as exc:
        raise ModelLoadError(f"{path}: cannot rebuild the network: {exc}") from exc
    try:
        network.load_state_dict(checkpoint.state["model"])
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path}: the weights do not fit the network its metadata describes (backbone {meta['backbone']}): {str(exc).splitlines()[0]}"
        ) from exc
    return network.eval()
