"""The run folder: the one owner of every file a run or an ablation writes, their names, and what "finished" means.

A run folder (``fermetric run --out DIR``)::

    recipe.toml              the fully resolved recipe (defaults written out)
    run.json                 versions, seed, device, components, data summary, status (see :class:`Status`)
    log.txt                  the console output of every attempt, appended
    history.csv              one row per epoch (single-split runs; per fold otherwise)
    checkpoints/last.pt      everything needed to resume, written atomically every epoch
    checkpoints/best.pt      the epoch selected on validation data (model + metadata)
    metrics.json             test metrics (k-fold: mean ± std over folds, and each fold's)
    confusion_matrix.json / .png, embeddings_tsne.png, training_curves.png, tensorboard/
    fold_00/ ... fold_09/    k-fold: each fold's history, checkpoints, metrics and pictures

An ablation folder (``fermetric ablate --out DIR``)::

    ablation.json, results.csv, results.md
    cells/<cell id>/cell.json, recipe.toml, error.txt, seed_<s>/ (a run folder)

Everything else in fermetric (engine, ablation, reports, tests) asks this module for paths and states instead of
spelling file names out. JSON and checkpoints are written atomically (a temporary file, then a rename), so a
run killed at any moment leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable


# The file names, for messages that tell a person where to look ("see error.txt"); code uses the properties.
RECIPE_FILE, RUN_INFO_FILE, LOG_FILE, HISTORY_FILE, METRICS_FILE = "recipe.toml", "run.json", "log.txt", "history.csv", "metrics.json"
LAST_CHECKPOINT, BEST_CHECKPOINT = "last.pt", "best.pt"
ERROR_FILE, RESULTS_MD = "error.txt", "results.md"
LOCK_FILE = ".lock"
# Opens each command's part of log.txt (the engine writes it with the time and the command line).
COMMAND_MARK = "--- "


class Status:
    """``run.json``'s ``status``: ``running`` while a process works on it, then one final value with a ``reason``."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: ``--resume`` continues it
    FAILED = "failed"  # an error; ``reason`` says which
    PARTIAL = "partial"  # --fold K ran some folds of a k-fold protocol, not all


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename). NaN and infinities become null:
    they are not JSON, and a reader other than Python's would reject the file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def save_checkpoint(obj: Any, path: Path) -> None:
    """``torch.save`` atomically: a kill or a full disk mid-write leaves the previous checkpoint intact.

    torch reports a full disk as a RuntimeError ("unexpected pos ..."); it is turned into the OSError it is
    (ENOSPC, with the space needed and free), so the message says what happened."""
    import errno
    import shutil

    import torch

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) or not isinstance(exc, Exception):
            raise
        needed = _tensor_bytes(obj)
        free = shutil.disk_usage(path.parent).free
        if free < needed + (1 << 20):
            raise OSError(errno.ENOSPC, f"No space left on device writing a checkpoint of about {needed >> 20} MB"
                          f" ({free >> 20} MB free)", str(path)) from exc
        raise


def _tensor_bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


RESUME_ADVICE = "Nothing can be resumed from it: delete it to restart that fold from its first epoch (the run's other files are kept)"


def load_checkpoint(path: Path, map_location: Any = "cpu", *, needs: tuple[str, ...] = ("model",),
                    error: Callable[[str], Exception] | None = None, advice: str = RESUME_ADVICE,
                    data: bytes | None = None) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True`` (no arbitrary objects are ever unpickled); a missing,
    truncated, random or foreign file raises ``error(message)`` (a FermetricError by default), a message that names the file, what
    is wrong with it and ``advice`` (what the caller's user should do), never a torch traceback.

    The one place checkpoints are read: resuming (the engine), initialising from a run (``model.init_from``) and
    loading a model for inference differ only in the keys they need, the error they raise and the advice.
    ``data``: the file's bytes, already read by a caller that also hashes them (the checkpoint is then loaded from
    exactly those bytes, even if the file is replaced meanwhile); ``path`` only names it in messages."""
    import io

    import torch

    from fermetric.errors import FermetricError

    error = error or FermetricError
    path = Path(path)
    if data is None and not path.is_file():
        raise error(f"checkpoint not found: {path}")
    try:
        state = torch.load(path if data is None else io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError, KeyError: all mean "damaged"
        text = str(exc).strip()
        first = text.splitlines()[0][:200] if text else ""
        raise error(f"{path} is damaged or not a fermetric checkpoint (a weights-only torch.load failed:"
                    f" {type(exc).__name__}{': ' + first if first else ''}). {advice}") from None
    missing = [k for k in needs if not isinstance(state, dict) or k not in state]
    if missing:
        keys = sorted(map(str, state)) if isinstance(state, dict) else []
        found = (str(keys[:8])[:-1] + f", ... ({len(keys)} keys)]" if len(keys) > 8 else str(keys)) \
            if isinstance(state, dict) else type(state).__name__
        wanted = " and ".join(repr(k) for k in needs)
        raise error(f"{path} is not a fermetric checkpoint: expected a dict with {wanted}, found {found}. {advice}")
    return state


@dataclass(frozen=True)
class RunFolder:
    """Paths and states of one run folder, or of one fold's folder inside it."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- files ----------------------------------------------------------------------------------------------
    recipe_file = property(lambda self: self.root / RECIPE_FILE)
    run_file = property(lambda self: self.root / RUN_INFO_FILE)
    log_file = property(lambda self: self.root / LOG_FILE)
    history_file = property(lambda self: self.root / HISTORY_FILE)
    metrics_file = property(lambda self: self.root / METRICS_FILE)
    checkpoint_dir = property(lambda self: self.root / "checkpoints")
    last_checkpoint = property(lambda self: self.root / "checkpoints" / LAST_CHECKPOINT)
    best_checkpoint = property(lambda self: self.root / "checkpoints" / BEST_CHECKPOINT)
    confusion_json = property(lambda self: self.root / "confusion_matrix.json")
    confusion_png = property(lambda self: self.root / "confusion_matrix.png")
    tsne_png = property(lambda self: self.root / "embeddings_tsne.png")
    curves_png = property(lambda self: self.root / "training_curves.png")
    tensorboard_dir = property(lambda self: self.root / "tensorboard")

    def fold(self, index: int) -> RunFolder:
        return RunFolder(self.root / f"fold_{int(index):02d}")

    def folds(self) -> list[RunFolder]:
        """The fold folders that exist, in order."""
        return [RunFolder(p) for p in sorted(self.root.glob("fold_[0-9][0-9]")) if p.is_dir()]

    def mkdir(self) -> RunFolder:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self

    @contextmanager
    def lock(self):
        """Hold the folder for one process: a second ``fermetric run`` into the same folder fails at once instead of
        mixing its history rows and checkpoints with the first one's. The lock is an OS file lock, so a killed
        process releases it."""
        import fcntl

        from fermetric.errors import FermetricError

        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FermetricError(f"{self.root} is in use by another fermetric run ({holder}); wait for it to end, or use"
                                 " another --out") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            yield self
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # -- state ----------------------------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any] | None:
        return read_json(self.run_file)

    def status(self) -> str | None:
        info = self.run_info()
        return str(info.get("status")) if info else None

    def is_finished(self) -> bool:
        """A whole run that ended well: ``run.json`` says finished and ``metrics.json`` is there."""
        return self.status() == Status.FINISHED and self.metrics_file.is_file()

    def fold_done(self) -> bool:
        """A fold of a k-fold run is done once its test metrics are written (they are written last)."""
        return self.metrics_file.is_file()

    def has_training(self) -> bool:
        """Whether the folder holds anything a new run would destroy: metrics or a checkpoint, here or in a fold."""
        return self.metrics_file.exists() or self.last_checkpoint.exists() or any(
            f.last_checkpoint.exists() or f.metrics_file.exists() for f in self.folds()
        )

    def last_command_seconds(self) -> float | None:
        """run.json's start to finish: the last command's (a resumed run's start is its last command's)."""
        info = self.run_info() or {}
        try:
            return (datetime.fromisoformat(info["finished"]) - datetime.fromisoformat(info["started"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            return None

    def commands(self) -> int:
        """How many commands wrote to this folder's log.txt (0 without one)."""
        try:
            return sum(line.startswith(COMMAND_MARK) for line in self.log_file.read_text(encoding="utf-8").splitlines())
        except OSError:
            return 0

    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.metrics_file)

    def fold_metrics(self) -> list[dict[str, Any]]:
        """Per-fold test metrics of a finished run (k-fold: each fold's; otherwise the one split's)."""
        metrics = self.metrics() or {}
        return list(metrics["per_fold"]) if "per_fold" in metrics else ([metrics] if metrics else [])

    def history(self) -> list[dict[str, str]]:
        """The rows of ``history.csv`` (strings, as written); empty when there is none."""
        try:
            with self.history_file.open(newline="") as f:
                return list(csv.DictReader(f))
        except OSError:
            return []

    def append_history(self, row: dict[str, Any]) -> None:
        """Append one epoch's row. A row with columns the file lacks (a run resumed by a newer fermetric that logs
        more) rewrites the file with every column, the old rows' new cells empty: appending it under the old
        header would shift its values into the wrong columns."""
        header = self._history_header()
        if header is not None and list(row) == header:
            with self.history_file.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
            return
        rows = self.history() if header is not None else []
        columns = list(dict.fromkeys([*(header or []), *row]))
        self._write_history(rows + [{k: row.get(k, "") for k in columns}], columns)

    def _history_header(self) -> list[str] | None:
        try:
            with self.history_file.open(newline="") as f:
                return next(csv.reader(f), None)
        except OSError:
            return None

    def _write_history(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        tmp = self.history_file.with_name(self.history_file.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.history_file)

    def truncate_history(self, epochs_done: int) -> None:
        """Keep the rows of the first ``epochs_done`` epochs: a run killed after logging an epoch but before
        checkpointing it logs that epoch again when resumed."""
        rows = [r for r in self.history() if int(r["epoch"]) <= epochs_done]
        if not rows:
            self.history_file.unlink(missing_ok=True)
            return
        self._write_history(rows, self._history_header() or list(rows[0]))


@dataclass(frozen=True)
class CellFolder:
    """One cell of an ablation: its overrides, its resolved recipe, the error of a failed seed, a run folder per seed."""

    root: Path

    cell_file = property(lambda self: self.root / "cell.json")
    recipe_file = property(lambda self: self.root / RECIPE_FILE)
    error_file = property(lambda self: self.root / ERROR_FILE)

    def seed(self, s: int) -> RunFolder:
        return RunFolder(self.root / f"seed_{int(s)}")


@dataclass(frozen=True)
class AblationFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    ablation_file = property(lambda self: self.root / "ablation.json")
    results_csv = property(lambda self: self.root / "results.csv")
    results_md = property(lambda self: self.root / RESULTS_MD)

    def cell(self, cell_id: str) -> CellFolder:
        return CellFolder(self.root / "cells" / cell_id)

    def cell_ids(self) -> list[str]:
        """Every cell trained into this folder, sorted: a later ablate with a smaller grid rewrites ablation.json
        with its own cells only, but the others' folders stay."""
        cells = self.root / "cells"
        return sorted(d.name for d in cells.iterdir() if CellFolder(d).cell_file.is_file()) if cells.is_dir() else []

    def cell_relpath(self, cell_id: str) -> str:
        """The cell's folder relative to the ablation folder, as ``ablation.json`` records it."""
        return f"cells/{cell_id}"

    def info(self) -> dict[str, Any] | None:
        return read_json(self.ablation_file)
