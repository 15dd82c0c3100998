"""The crop store: every crop of a dataset x cropper (x colour) in one array file on disk, read in rows.

Layout, one folder per store under ``<cache_dir>/stores/``::

    <key>/crops.u8     N x C x H x W uint8, C order, no header (``np.memmap(path, np.uint8, "r", shape=...)`` opens it)
    <key>/index.json   format version, key, shape, and per row: the crop-cache key (cropper key + content hash),
                       the sample key, the label, the status ("ok", "noface:<reason>", "unreadable") and, for
                       unreadable rows, the reason and error; "complete": true
    <key>.lock         the builders' lock (``fcntl.flock``)

``<key>`` is a hash of the cropper key, the colour and the ordered list of per-image crop-cache keys
(:func:`store_key`), so a store is shared by every run and fold that crops the same images the same way, like
the SQLite crop cache, and a changed image, landmark file or cropper parameter gives a new store.

Safe against a half-written build: a store is built into ``<key>.tmp-<pid>-<random>/`` (crops written row by
row as they are produced, never the whole array in memory), fsynced, then renamed to ``<key>/`` in one
``os.rename``; a reader only ever opens a folder whose ``index.json`` says complete and whose array file has
exactly the size the index states (:func:`open_store`). A killed build leaves only a ``.tmp-`` folder: the next
builder, holding the lock, deletes it and builds again. Concurrent builders of one store take turns on the lock;
the second finds the first's finished store and opens it. (``flock`` needs a local file system or one whose
locks work, as NFSv4 and Lustre's do.)

Reading (:class:`CropArray`) uses ``os.preadv`` into a fresh buffer per request, not a memory map: the pages a
map touches count in the process's resident memory until the kernel drops them, so an epoch over an 11 GB
store would show 11 GB of RSS, while reads leave the data in the page cache, which the kernel shares and
reclaims. Consecutive rows are read in one call (a slice, or a sorted run in a batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from fermetric.errors import FermetricError

# Bump when the file layout or the index changes: stores of another format are rebuilt, never read.
STORE_FORMAT = 1
CROPS_FILE = "crops.u8"
INDEX_FILE = "index.json"
STORES_DIR = "stores"


def store_key(cropper_key: str, color: str, keys: list[str]) -> str:
    """The store's name: cropper, colour and the ordered crop-cache keys of its rows."""
    digest = hashlib.sha1(f"fermetric-store:{STORE_FORMAT}:{cropper_key}:{color}\n".encode())
    for key in keys:
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


# -- reading --------------------------------------------------------------------------------------------------
class CropArray:
    """N x C x H x W uint8 crops in a store's array file, read on demand; optionally a view on some of its rows.

    ``array[i]`` (an int: one (C, H, W) crop), ``array[a:b]``, ``array[indices]`` (a list, a numpy int or bool
    array, a torch LongTensor or BoolTensor), ``array[rows, ...]`` (the rows, then the rest applied) return a **torch.uint8 tensor** holding a copy, as indexing the
    in-memory tensor would, so code written for ``prepared.images[...]`` works on either. :meth:`subset` gives a
    view (no pixels read). The file is opened lazily in each process (a DataLoader worker opens its own; the
    object pickles as its path, shape and rows).
    """

    dtype = torch.uint8

    def __init__(self, path: Path | str, shape: tuple[int, int, int, int], rows: np.ndarray | None = None):
        self.path = Path(path)
        self.file_shape = tuple(int(v) for v in shape)
        if len(self.file_shape) != 4:
            raise ValueError(f"a crop array is N x C x H x W, got shape {self.file_shape}")
        self.rows = None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        if self.rows is not None and len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= self.file_shape[0]):
            raise IndexError(f"rows outside the store's {self.file_shape[0]} rows")
        self.row_bytes = int(np.prod(self.file_shape[1:]))
        self._fd: int | None = None
        self._pid: int | None = None

    # -- shape --
    def __len__(self) -> int:
        return self.file_shape[0] if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.file_shape[1:]))

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        view = "" if self.rows is None else f", view of {len(self)} of {self.file_shape[0]} rows"
        return f"CropArray({str(self.path)!r}, shape={tuple(self.shape)}{view})"

    # -- process-local file --
    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)  # a forked worker gets its own descriptor (own offset-free reads)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = self._pid = None

    def __del__(self):
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    # -- indexing --
    def _file_rows(self, index) -> tuple[np.ndarray | slice, bool]:
        """(file rows, or a contiguous file slice; whether the result drops the batch dimension)."""
        n = len(self)
        if isinstance(index, torch.Tensor):
            if index.dim() == 0:
                index = int(index)
            else:
                index = index.detach().cpu().numpy()
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for {n} crops")
            i %= n
            return (slice(i, i + 1) if self.rows is None else self.rows[i : i + 1]), True
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if self.rows is None and step == 1:
                return slice(start, max(start, stop)), False
            positions = np.arange(start, stop, step, dtype=np.int64)
        else:
            positions = np.asarray(index)
            if positions.dtype == np.bool_:
                if positions.shape != (n,):
                    raise IndexError(f"a boolean index must have shape ({n},), got {positions.shape}")
                positions = np.flatnonzero(positions)
            elif positions.size == 0:
                positions = positions.astype(np.int64)
            elif not np.issubdtype(positions.dtype, np.integer):
                raise IndexError(f"crops are indexed by ints, slices, int or bool arrays; got {positions.dtype}")
            positions = positions.astype(np.int64, copy=False).reshape(-1)
            if positions.size and (positions.min() < -n or positions.max() >= n):
                raise IndexError(f"index out of bounds for {n} crops")
            positions = positions % n if positions.size else positions
        return (positions if self.rows is None else self.rows[positions]), False

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):  # array[rows, channel, ...]: the rows read, the rest applied to them
            if not index:
                return self[:]
            first = self[index[0]]
            rest = index[1:]
            scalar = isinstance(index[0], (int, np.integer)) or (isinstance(index[0], torch.Tensor) and index[0].dim() == 0)
            return first[rest] if scalar else first[(slice(None), *rest)]
        rows, single = self._file_rows(index)
        out = self.read_file_rows(rows)
        tensor = torch.from_numpy(out)
        return tensor[0] if single else tensor

    def read_file_rows(self, rows: np.ndarray | slice) -> np.ndarray:
        """(k, C, H, W) uint8 of the given rows of the file (a slice is one read; an array is read in sorted runs
        of consecutive rows, each once, then put in the asked order)."""
        if isinstance(rows, slice):
            out = np.empty((rows.stop - rows.start, *self.file_shape[1:]), dtype=np.uint8)
            self._read_into(out, rows.start)
            return out
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.file_shape[1:]), dtype=np.uint8)
        if not len(rows):
            return out
        uniq, inverse = np.unique(rows, return_inverse=True)
        sorted_direct = len(uniq) == len(rows) and bool(np.all(rows[1:] > rows[:-1]))
        buf = out if sorted_direct else np.empty((len(uniq), *self.file_shape[1:]), dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(uniq)]])
        for a, b in zip(starts.tolist(), stops.tolist()):
            self._read_into(buf[a:b], int(uniq[a]))
        if sorted_direct:
            return out
        np.take(buf, inverse.reshape(-1), axis=0, out=out)
        return out

    def _read_into(self, out: np.ndarray, first_row: int) -> None:
        view = memoryview(out.reshape(-1))
        offset, done, total = first_row * self.row_bytes, 0, out.nbytes
        fd = self._file()
        while done < total:
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, total - done, offset + done)
                view[done : done + len(chunk)] = chunk
                got = len(chunk)
            if got <= 0:
                raise FermetricError(f"crop store {self.path} ended early (truncated since it was built?): delete its"
                                     f" folder {self.path.parent}; it is rebuilt")
            done += got

    # -- views and conversions --
    def subset(self, index) -> "CropArray":
        """A view on some rows (any index :meth:`__getitem__` takes), reading nothing now."""
        rows, _ = self._file_rows(index)
        if isinstance(rows, slice):
            rows = np.arange(rows.start, rows.stop, dtype=np.int64)
        return CropArray(self.path, self.file_shape, rows)

    def memmap(self) -> np.memmap:
        """The whole file as a read-only ``np.memmap`` (N x C x H x W), for tools that want one."""
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.file_shape)

    def numpy(self) -> np.ndarray:
        return self[:].numpy()

    def to(self, *args, **kwargs) -> torch.Tensor:
        """Every crop as one tensor (``self[:]``) moved like ``Tensor.to``: only for a set that fits in memory."""
        return self[:].to(*args, **kwargs)

    def iter_chunks(self, rows_per_chunk: int = 4096) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), rows_per_chunk):
            yield self[start : start + rows_per_chunk]


# -- the store on disk ----------------------------------------------------------------------------------------
@dataclass
class CropStore:
    path: Path
    index: dict[str, Any]
    built: bool = False
    seconds: float = 0.0

    @property
    def array(self) -> CropArray:
        return CropArray(self.path / CROPS_FILE, tuple(self.index["shape"]))


def _valid_index(folder: Path, key: str | None) -> dict[str, Any] | None:
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        shape = tuple(int(v) for v in index["shape"])
        size = (folder / CROPS_FILE).stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT or index.get("complete") is not True:
        return None
    if key is not None and index.get("key") != key:
        return None
    if len(shape) != 4 or size != int(np.prod(shape)) or len(index.get("keys", ())) != shape[0]:
        return None
    if len(index.get("status", ())) != shape[0]:
        return None
    return index


def open_store(root: Path, key: str) -> CropStore | None:
    """The complete, valid store ``root/key``, or None (absent, half-written, another format, damaged)."""
    folder = Path(root) / key
    index = _valid_index(folder, key)
    return CropStore(folder, index) if index is not None else None


class StoreWriter:
    """Rows of a store being built, appended in order; the array file is written as they come."""

    def __init__(self, folder: Path, key: str, chw: tuple[int, int, int], n: int, meta: dict[str, Any]):
        self.folder, self.key, self.chw, self.n, self.meta = folder, key, tuple(int(v) for v in chw), int(n), meta
        self.keys: list[str] = []
        self.samples: list[str] = []
        self.labels: list[str] = []
        self.status: list[str] = []
        self.errors: dict[str, dict[str, str]] = {}
        self._file = open(folder / CROPS_FILE, "wb", buffering=1 << 20)
        self._zero = bytes(int(np.prod(self.chw)))

    def add(self, crop: np.ndarray | None, key: str, sample: str, label: str, status: str = "ok",
            error: dict[str, str] | None = None) -> None:
        """One row: ``crop`` (H, W) or (H, W, C) uint8 as a cropper returns it (None: a zero row, for an
        unreadable image, whose ``error`` is kept)."""
        if len(self.keys) >= self.n:
            raise FermetricError(f"crop store {self.key}: more rows than the {self.n} announced")
        c, h, w = self.chw
        if crop is None:
            self._file.write(self._zero)
        else:
            crop = np.asarray(crop, dtype=np.uint8)
            chw = crop[None] if crop.ndim == 2 else np.transpose(crop, (2, 0, 1))
            if chw.shape != (c, h, w):
                raise FermetricError(f"crop store {self.key}: a crop of shape {crop.shape} for rows of {(c, h, w)}")
            self._file.write(np.ascontiguousarray(chw).tobytes())
        if error is not None:
            self.errors[str(len(self.keys))] = dict(error)
        self.keys.append(key)
        self.samples.append(sample)
        self.labels.append(label)
        self.status.append(status)

    def finish(self) -> dict[str, Any]:
        if len(self.keys) != self.n:
            raise FermetricError(f"crop store {self.key}: {len(self.keys)} rows written of {self.n}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        index = {
            "format": STORE_FORMAT, "key": self.key, "shape": [self.n, *self.chw], "dtype": "uint8",
            "layout": "N x C x H x W, C order, no header", "meta": self.meta,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "keys": self.keys, "samples": self.samples,
            "labels": self.labels, "status": self.status, "errors": self.errors, "complete": True,
        }
        with open(self.folder / INDEX_FILE, "w") as f:
            json.dump(index, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.folder)
        return index

    def abandon(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _locked(lock_path: Path, log: Callable[[str], None] | None):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock; the atomic rename still holds
        yield
        return
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"waiting for another process that is building the crop store {lock_path.with_suffix('')}")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_or_build(root: Path, key: str, chw: tuple[int, int, int], n: int, produce: Callable[[StoreWriter], None],
                  meta: dict[str, Any] | None = None, log: Callable[[str], None] | None = None) -> CropStore:
    """The store ``root/key``: opened when complete, else built by ``produce(writer)`` (which must add ``n`` rows in
    order) into a temporary folder and renamed into place. Half-written or damaged stores are deleted and built
    again; a build that raises leaves nothing a reader would take for a store."""
    root = Path(root)
    found = open_store(root, key)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock", log):
        found = open_store(root, key)  # another process may have finished it while we waited
        if found is not None:
            return found
        # We hold the lock: every temporary folder of this key is a dead build's.
        for stale in root.glob(f"{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        final = root / key
        if final.exists():  # complete-looking but invalid (truncated, edited, another format): set it aside
            if log:
                log(f"crop store {final} is incomplete or damaged: rebuilding it")
            aside = root / f"{key}.tmp-bad-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp = root / f"{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        started = time.perf_counter()
        writer = StoreWriter(tmp, key, chw, n, dict(meta or {}))
        try:
            produce(writer)
            index = writer.finish()
            os.rename(tmp, final)
            _fsync_dir(root)
        except BaseException:
            writer.abandon()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CropStore(final, index, built=True, seconds=time.perf_counter() - started)
