"""Initialising a model from a previous fermetric run (``model.init_from``): transfer and fine-tuning.

The source is a run folder (its selected checkpoint, ``best.pt``, else ``last.pt``), a fold's folder of a k-fold run,
or a checkpoint file. What is loaded is ``model.init_parts``: the backbone, or the backbone and the embedding layer.
The classifier always starts afresh for the new run's classes: a FER2013 head (with neutral, without contempt)
has nothing to say about CK+48's classes (contempt, no neutral), and reusing rows by class name would tie the new
head to the old label set. Everything that must match (backbone architecture, input size, embedding size when the embedding
is loaded) is checked before any data work, with one message naming what differs. Input channels may differ between
1 and N (a grey source into a backbone that reads the grey crop repeated in 3 channels, as ImageNet weights do): the
first convolution is adapted exactly for grey input (:func:`adapt_input_conv`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from fermetric.errors import FermetricError, RecipeError
from fermetric.model import FERModel
from fermetric.runfolder import RunFolder, load_checkpoint

PARTS = ("backbone", "backbone+embedding")
# Backbone keys that say where weights came from, not what the network is.
PROVENANCE_KEYS = {"weights_file", "pretrained"}


def source_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``model.init_from`` points at."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise RecipeError(f"model.init_from: {path} is neither a run folder nor a checkpoint file")
    folder = RunFolder(path)
    for candidate in (folder.best_checkpoint, folder.last_checkpoint):
        if candidate.is_file():
            return candidate
    folds = folder.folds()
    if folds:
        raise RecipeError(
            f"model.init_from: {path} is a k-fold run; name one fold's folder ({folds[0].root} ... {folds[-1].root})"
        )
    raise RecipeError(f"model.init_from: {path} holds no checkpoint (is the run finished?)")


def load_source(path: str | Path) -> tuple[Path, dict[str, Any], str]:
    """(checkpoint path, checkpoint, sha256 of the file), loaded with ``weights_only=True`` from the same bytes that
    were hashed, so that run.json's hash is that of the weights used even if the source run rewrites its file."""
    ckpt = source_checkpoint(path)
    data = ckpt.read_bytes()
    state = load_checkpoint(ckpt, needs=("model", "meta"), error=lambda message: RecipeError(f"model.init_from: {message}"),
                            advice="model.init_from names a fermetric run folder, one of its folds, or its best.pt", data=data)
    return ckpt, state, hashlib.sha256(data).hexdigest()


def architecture(backbone: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in backbone.items() if k not in PROVENANCE_KEYS}


def check_compatible(meta: dict[str, Any], recipe: dict[str, Any], input_size: tuple[int, int] | None, in_chans: int,
                     parts: str) -> None:
    """Raise a RecipeError naming every difference that would make the source's weights not fit. ``input_size``:
    the cropper's output; None skips that check (a dry build, which builds no cropper)."""
    problems = []
    theirs, ours = architecture(meta.get("backbone", {})), architecture(recipe["backbone"])
    if theirs.get("name") != ours.get("name"):
        problems.append(f"backbone {ours.get('name')!r} here, {theirs.get('name')!r} in the source")
    else:
        keys = sorted(set(theirs) | set(ours))
        diff = [f"backbone.{k} = {ours.get(k)!r} here, {theirs.get(k)!r} in the source" for k in keys
                if k != "in_chans" and theirs.get(k) != ours.get(k)]
        problems += diff
    if input_size is not None and list(meta.get("input_size", [])) != list(input_size):
        problems.append(f"input size {list(input_size)} here (the cropper's output), {meta.get('input_size')} in the source")
    # The backbones' own input channels (meta["in_chans"] is the crops' channels: a grey crop may feed a
    # 3-channel backbone, repeated).
    theirs_c, ours_c = int(meta.get("backbone", {}).get("in_chans", 1)), int(in_chans)
    if theirs_c != ours_c and 1 not in (theirs_c, ours_c):
        problems.append(f"backbone.in_chans = {ours_c} here, {theirs_c} in the source (only 1 <-> N channels can be"
                        " adapted)")
    if parts == "backbone+embedding" and int(meta.get("embedding_dim", -1)) != int(recipe["model"]["embedding_dim"]):
        problems.append(f"model.embedding_dim = {recipe['model']['embedding_dim']} here, {meta.get('embedding_dim')} in the"
                        " source (or set model.init_parts = \"backbone\")")
    if problems:
        raise RecipeError("model.init_from: the source model does not fit this recipe: " + "; ".join(problems))


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight (out, c, k, k) for ``channels`` input channels, exact for grey input: fermetric
    feeds a grey crop to an N-channel backbone as the grey value repeated N times, so 1 -> N divides the kernel by N
    in every channel and N -> 1 sums the channels; either way a grey image gives the same activations as before.
    (timm's ``adapt_input_conv`` assumes an RGB source; a fermetric source is often grey.)"""
    have = weight.shape[1]
    if have == channels:
        return weight
    if have == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise FermetricError(f"model.init_from: cannot adapt a {have}-channel input convolution to {channels} channels")


def load_parts(model: FERModel, state: dict[str, Any], parts: str) -> tuple[list[str], list[str]]:
    """Copy the chosen parts of the source's weights into ``model``; returns (the parameter names loaded, those of
    them adapted to another number of input channels)."""
    prefixes = ("backbone.",) if parts == "backbone" else ("backbone.", "embedding.")
    chosen = {k: v for k, v in state["model"].items() if k.startswith(prefixes)}
    target = model.state_dict()
    adapted = []
    for key, value in chosen.items():
        want = target.get(key)
        if (want is not None and value.ndim == 4 and want.ndim == 4 and value.shape[1] != want.shape[1]
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]):
            chosen[key] = adapt_input_conv(value, want.shape[1])
            adapted.append(key)
    missing, unexpected = model.load_state_dict(chosen, strict=False)
    missing = [k for k in missing if k.startswith(prefixes)]
    if missing or unexpected:
        raise FermetricError(f"model.init_from: weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return sorted(chosen), adapted


def record(ckpt: Path, state: dict[str, Any], sha256: str, parts: str) -> dict[str, Any]:
    """What run.json says about the source."""
    meta = state["meta"]
    return {"path": str(ckpt.resolve()), "sha256": sha256, "parts": parts, "classes": meta.get("classes"),
            "epoch": state.get("epoch"), "fermetric": meta.get("fermetric"), "synthetic_data": meta.get("synthetic_data")}
