"""The memory-mapped crop store and the DataLoader path (issue #11, "data larger than memory").

The store must give the very crops the in-memory path gives (gray and RGB, every no-face policy), never be read
half-written (a build that raises, a build killed with SIGKILL, a damaged file), survive two builders at once,
and the DataLoader must yield the sampler's batches, in order, with 0 and 2 workers.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fermetric.components.croppers import AUPartialCropper
from fermetric.components.datasets import synthetic_dataset
from fermetric.components.samplers import RandomBatchSampler
from fermetric.contracts import FaceDataset, Sample
from fermetric.data import pipeline
from fermetric.data.loader import BatchLoader
from fermetric.data.pipeline import prepare
from fermetric.data.store import CROPS_FILE, INDEX_FILE, STORES_DIR, CropArray, open_or_build
from fermetric.errors import FermetricError, NoFace

REPO = Path(__file__).resolve().parents[1]
TABLE = {"name": "au_partial", "landmarks": "dataset", "size": 32, "on_no_face": "fallback", "cache": True}


def _dataset(color: str = "gray", subjects: int = 2, per_class: int = 2) -> FaceDataset:
    return synthetic_dataset(subjects=subjects, per_class=per_class, size=48, color=color == "rgb")


def _table(color: str = "gray", **extra) -> dict:
    return {**TABLE, "color": color, **extra}


def _cropper() -> AUPartialCropper:
    return AUPartialCropper(landmarks="dataset", size=32)


def _store_dirs(cache: Path) -> list[Path]:
    root = cache / STORES_DIR
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


class Picky:
    """The au_partial crop, but "no face" on every third image; ``fail_after``: a bug after that many calls."""

    def __init__(self, fail_after: int | None = None):
        self.inner = _cropper()
        self.output_size = self.inner.output_size
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, face):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("a cropper bug")
        if int(face.path.rsplit("/", 1)[-1]) % 3 == 0:
            raise NoFace("no face here")
        return self.inner(face)


# -- same crops ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_mmap_store_gives_the_in_memory_crops_bit_for_bit(tmp_path, color):
    ds = _dataset(color)
    memory = prepare(ds, _cropper(), _table(color), tmp_path / "a", store="memory")
    cold = prepare(ds, _cropper(), _table(color), tmp_path / "b", store="mmap")
    warm = prepare(ds, _cropper(), _table(color), tmp_path / "b", store="mmap")
    channels = 3 if color == "rgb" else 1
    assert memory.images.shape == cold.images.shape == (len(ds.samples), channels, 32, 32)
    assert isinstance(cold.images, CropArray) and cold.report["store"]["built"] and not warm.report["store"]["built"]
    for got in (cold, warm):
        assert torch.equal(got.images[:], memory.images)
        assert torch.equal(got.labels, memory.labels)
        assert [s.key for s in got.samples] == [s.key for s in memory.samples]
        for index in (3, -1, slice(2, 9), slice(None, None, 3), [5, 1, 1, 7], np.array([4, 0]),
                      torch.tensor([6, 2, 6]), torch.arange(len(ds.samples)) % 2 == 0, torch.tensor(1)):
            assert torch.equal(got.images[index], memory.images[index]), index
        assert got.images[[0]].dtype == torch.uint8
    assert len(_store_dirs(tmp_path / "b")) == 1
    if color == "rgb":  # the colour survived: channels differ
        assert not torch.equal(cold.images[:, 0], cold.images[:, 2])


def test_one_store_serves_every_no_face_policy(tmp_path):
    ds = _dataset()
    for policy in ("fallback", "skip"):
        memory = prepare(ds, Picky(), _table(on_no_face=policy), tmp_path / f"m-{policy}", store="memory")
        mapped = prepare(ds, Picky(), _table(on_no_face=policy), tmp_path / "shared", store="mmap")
        assert torch.equal(mapped.images[:], memory.images) and torch.equal(mapped.labels, memory.labels)
        for key in ("images_used", "no_face", "no_face_files", "unreadable_files"):
            assert mapped.report[key] == memory.report[key], key
    assert len(_store_dirs(tmp_path / "shared")) == 1
    with pytest.raises(FermetricError, match="on_no_face"):
        prepare(ds, Picky(), _table(on_no_face="error"), tmp_path / "shared", store="mmap")


def test_unreadable_files_are_reported_alike(tmp_path):
    from PIL import Image

    good = np.full((40, 40), 128, np.uint8)
    Image.fromarray(good).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    samples = [Sample(key=str(tmp_path / n), label="happy", path=tmp_path / n)
               for n in ("ok.png", "bad.png", "missing.png")]
    ds = FaceDataset("files", ["happy"], samples)
    table = {"name": "full_face", "size": 16, "on_no_face": "fallback", "cache": True}
    from fermetric.components.croppers import FullFaceCropper

    memory = prepare(ds, FullFaceCropper(size=16), table, tmp_path / "m", store="memory")
    mapped = prepare(ds, FullFaceCropper(size=16), table, tmp_path / "s", store="mmap")
    assert mapped.report["unreadable_files"] == memory.report["unreadable_files"]
    assert torch.equal(mapped.images[:], memory.images)


def test_auto_picks_the_store_by_size(tmp_path, monkeypatch):
    ds = _dataset()
    assert isinstance(prepare(ds, _cropper(), _table(), tmp_path, store="auto").images, torch.Tensor)
    monkeypatch.setattr(pipeline, "AUTO_MMAP_BYTES", 1000)
    assert isinstance(prepare(ds, _cropper(), _table(), tmp_path, store="auto").images, CropArray)
    # without a cache there is no disk to map: memory
    assert isinstance(prepare(ds, _cropper(), _table(cache=False), tmp_path, store="auto").images, torch.Tensor)
    with pytest.raises(FermetricError, match="crop.cache"):
        prepare(ds, _cropper(), _table(cache=False), tmp_path, store="mmap")


def test_the_sqlite_cache_feeds_the_store(tmp_path):
    ds = _dataset()
    prepare(ds, _cropper(), _table(), tmp_path, store="memory")  # fills crops.sqlite
    mapped = prepare(ds, Picky(fail_after=0), _table(), tmp_path, store="mmap")  # the cropper is never called
    assert mapped.report["cache_hits"] == len(ds.samples)


# -- half-written, damaged, concurrent ----------------------------------------------------------------------------
def test_a_build_that_raises_leaves_no_store(tmp_path):
    ds = _dataset()
    with pytest.raises(FermetricError, match="a cropper bug"):
        prepare(ds, Picky(fail_after=5), _table(), tmp_path, store="mmap")
    root = tmp_path / STORES_DIR
    assert not _store_dirs(tmp_path) and not list(root.glob("*.tmp-*"))
    good = prepare(ds, Picky(), _table(), tmp_path, store="mmap")
    assert good.report["store"]["built"]
    assert torch.equal(good.images[:], prepare(ds, Picky(), _table(), tmp_path / "m", store="memory").images)


_KILLED_BUILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import numpy as np
    from fermetric.data.store import open_or_build
    root, n, kill_at = Path(sys.argv[1]), 50, int(sys.argv[2])
    def produce(writer):
        for i in range(n):
            if i == kill_at:
                writer._file.flush()
                os.kill(os.getpid(), 9)        # killed half-way: no cleanup runs
            writer.add(np.full((4, 4), i, np.uint8), f"k{i}", f"s{i}", "happy")
    open_or_build(root, "demo", (1, 4, 4), n, produce)
    print("built")
""")


def test_a_killed_build_is_detected_and_rebuilt(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(_KILLED_BUILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "20"], env=env, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert not (tmp_path / "demo").exists() and list(tmp_path.glob("demo.tmp-*"))  # half a build, not a store
    calls = []

    def produce(writer):
        calls.append(1)
        for i in range(50):
            writer.add(np.full((4, 4), i, np.uint8), f"k{i}", f"s{i}", "happy")

    store = open_or_build(tmp_path, "demo", (1, 4, 4), 50, produce)
    assert store.built and calls == [1] and not list(tmp_path.glob("demo.tmp-*"))
    assert torch.equal(store.array[:][:, 0, 0, 0], torch.arange(50, dtype=torch.uint8))
    # damaged afterwards (truncated): never read as complete, rebuilt
    with open(store.path / CROPS_FILE, "r+b") as f:
        f.truncate(100)
    again = open_or_build(tmp_path, "demo", (1, 4, 4), 50, produce)
    assert again.built and calls == [1, 1] and torch.equal(again.array[:], store.array[:])
    # an index of another format: rebuilt too
    index = (again.path / INDEX_FILE).read_text().replace('"format": 1', '"format": 999')
    (again.path / INDEX_FILE).write_text(index)
    assert open_or_build(tmp_path, "demo", (1, 4, 4), 50, produce).built and len(calls) == 3


_CONCURRENT = textwrap.dedent("""
    import sys, time, hashlib
    from pathlib import Path
    from fermetric.components.croppers import AUPartialCropper
    from fermetric.components.datasets import synthetic_dataset
    from fermetric.data.pipeline import prepare
    class Slow(AUPartialCropper):
        def __call__(self, face):
            time.sleep(0.01)
            return super().__call__(face)
    ds = synthetic_dataset(subjects=2, per_class=2, size=48)
    table = {"name": "au_partial", "landmarks": "dataset", "size": 32, "on_no_face": "fallback", "cache": True}
    p = prepare(ds, Slow(landmarks="dataset", size=32), table, Path(sys.argv[1]), store="mmap")
    print(p.report["store"]["built"], hashlib.sha1(p.images[:].numpy().tobytes()).hexdigest())
""")


def test_two_concurrent_builds_end_with_one_valid_store(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(_CONCURRENT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = [o[0].split()[-2:] for o in outs]
    assert {line[1] for line in lines} == {lines[0][1]}  # the same crops for both
    assert sorted(line[0] for line in lines) == ["False", "True"]  # one built it, the other opened it
    stores = _store_dirs(tmp_path / "cache")
    assert len(stores) == 1 and not list((tmp_path / "cache" / STORES_DIR).glob("*.tmp-*"))
    memory = prepare(_dataset(), _cropper(), _table(), tmp_path / "m", store="memory")
    import hashlib

    assert hashlib.sha1(memory.images.numpy().tobytes()).hexdigest() == lines[0][1]


def test_crop_array_pickles_as_its_path_and_views(tmp_path):
    mapped = prepare(_dataset(), _cropper(), _table(), tmp_path, store="mmap")
    array = mapped.images
    array[0]  # opens the file
    clone = pickle.loads(pickle.dumps(array))
    assert clone._fd is None and torch.equal(clone[:], array[:])
    view = array.subset(np.array([5, 2, 9]))
    assert len(view) == 3 and view.shape == (3, 1, 32, 32) and torch.equal(view[:], array[[5, 2, 9]])
    assert torch.equal(view[1:], array[[2, 9]]) and torch.equal(view.subset([2])[0], array[9])
    assert np.array_equal(array.memmap(), array[:].numpy())
    with pytest.raises(IndexError):
        array[len(array)]


# -- the DataLoader ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_yields_the_samplers_batches_in_order(tmp_path, workers):
    ds = _dataset(subjects=2, per_class=3)
    memory = prepare(ds, _cropper(), _table(), tmp_path / "m", store="memory")
    mapped = prepare(ds, _cropper(), _table(), tmp_path / "s", store="mmap")
    sampler = RandomBatchSampler(memory.labels.tolist(), batch_size=8, seed=3)
    for images in (mapped.images, memory.images):
        loader = BatchLoader(images, mapped.labels, sampler, workers=workers)
        assert len(loader) == len(sampler)
        for epoch in range(2):
            loader.set_epoch(epoch)
            torch.manual_seed(11)
            got = list(loader)
            after = torch.rand(1)  # the loader drew nothing from the global RNG
            torch.manual_seed(11)
            assert torch.equal(after, torch.rand(1))
            sampler.set_epoch(epoch)
            expected = list(sampler)
            assert len(got) == len(expected)
            for (x, y), batch in zip(got, expected):
                idx = torch.as_tensor(batch)
                assert x.dtype == torch.uint8 and torch.equal(x, memory.images[idx]) and torch.equal(y, memory.labels[idx])
