"""Crop store and DataLoader figures (issue #11, "data larger than memory"): figures, not timed tests.

    # (a) store build rate, cold and warm, against the in-memory path
    .venv/bin/python benchmarks/bench_store.py build-rate [--images 1400] [--size 112]
    # (b) a >= 100,000-face colour store at 112x112, built streaming, then one epoch read through the DataLoader
    /usr/bin/time -v .venv/bin/python benchmarks/bench_store.py scale-build --root /tmp/fm-scale [--faces 100100]
    /usr/bin/time -v .venv/bin/python benchmarks/bench_store.py scale-read --root /tmp/fm-scale [--workers 2]
    # (c) share of an epoch spent waiting for data: in-memory tensor vs memory-mapped store, a small model training
    .venv/bin/python benchmarks/bench_store.py data-share [--images 6000] [--size 112] [--workers 0 1]

Results and the machine they ran on: docs/performance.md, section "Crop store and DataLoader".
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fermetric.components import synthetic  # noqa: E402
from fermetric.components.backbones import FerCNN  # noqa: E402
from fermetric.components.croppers import AUPartialCropper, FullFaceCropper  # noqa: E402
from fermetric.components.datasets import synthetic_dataset  # noqa: E402
from fermetric.components.samplers import RandomBatchSampler  # noqa: E402
from fermetric.contracts import FaceImage  # noqa: E402
from fermetric.data.loader import BatchLoader  # noqa: E402
from fermetric.data.pipeline import prepare  # noqa: E402
from fermetric.data.store import STORES_DIR, CropStore, open_or_build, open_store  # noqa: E402
from fermetric.model import FERModel, normalize  # noqa: E402


def timed(batches):
    """(batch, seconds spent waiting for it): the wait measured by the consumer, as the training loop does."""
    iterator = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_rate(args) -> None:
    per_class = max(1, round(args.images / (7 * 20)))
    ds = synthetic_dataset(subjects=20, per_class=per_class, size=args.size, seed=1, color=True)
    n = len(ds.samples)
    table = {"name": "au_partial", "landmarks": "dataset", "size": args.size, "color": "rgb",
             "on_no_face": "fallback", "cache": True}
    cropper = AUPartialCropper(landmarks="dataset", size=args.size)
    print(f"{n} synthetic colour faces, au_partial {args.size}x{args.size} RGB, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for store in ("mmap", "memory"):
            cache = Path(tmp) / store
            for phase in ("cold", "warm"):
                t0 = time.perf_counter()
                p = prepare(ds, cropper, table, cache, store=store, description=f"{store} {phase}")
                seconds = time.perf_counter() - t0
                print(f"  {store:6s} {phase}: {seconds:7.2f} s  {n / seconds:9.0f} images/s  (cache hits"
                      f" {p.report['cache_hits']})")


def scale_build(args) -> None:
    root = Path(args.root) / STORES_DIR
    size = 112
    cropper = FullFaceCropper(landmarks="dataset", size=size, margin=0.05)
    per_chunk = 10 * 7 * 10  # generate(n_subjects=10, per_class=10): 700 faces per seed
    chunks = -(-args.faces // per_chunk)
    n = chunks * per_chunk
    key = f"scale-{n}-{size}-rgb"

    def produce(writer) -> None:
        t0 = time.perf_counter()
        for seed in range(chunks):
            for i, face in enumerate(synthetic.generate(n_subjects=10, per_class=10, size=size, seed=1000 + seed,
                                                        color=True)):
                crop = cropper(FaceImage(image=face.image, landmarks=face.landmarks))
                writer.add(crop, f"scale/{seed}/{i}", f"synthetic/{seed}/{i}", face.label)
            if seed % 10 == 9:
                done = (seed + 1) * per_chunk
                print(f"  {done} faces, {done / (time.perf_counter() - t0):.0f} faces/s, peak RSS {peak_rss_mb():.0f} MB",
                      flush=True)

    t0 = time.perf_counter()
    store = open_or_build(root, key, (3, size, size), n, produce, {"what": "bench_store scale"}, log=print)
    seconds = time.perf_counter() - t0
    print(f"store {store.path}: {n} faces {size}x{size}x3 ({n * 3 * size * size / 2**30:.2f} GiB);"
          f" {'built' if store.built else 'opened'} in {seconds:.1f} s"
          f" ({n / seconds:.0f} faces/s: drawing + full_face crop + write); peak RSS {peak_rss_mb():.0f} MB")


def _find_store(root: Path) -> CropStore:
    for folder in sorted((root / STORES_DIR).iterdir()):
        if folder.is_dir() and ".tmp-" not in folder.name:
            found = open_store(root / STORES_DIR, folder.name)
            if found is not None:
                return found
    raise SystemExit(f"no complete store under {root / STORES_DIR}: run scale-build first")


def scale_read(args) -> None:
    store = _find_store(Path(args.root))
    array = store.array
    labels = torch.tensor([hash(label) % 7 for label in store.index["labels"]])
    del store.index["keys"], store.index["samples"]  # what a run keeps of the index: statuses and labels
    sampler = RandomBatchSampler(labels.tolist(), batch_size=args.batch_size, seed=0)
    loader = BatchLoader(array, labels, sampler, workers=args.workers)
    model = None
    if args.train:
        model = FERModel(FerCNN(in_chans=3, width=8, depth=3), 7, 32, in_chans=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    seen, wait = 0, 0.0
    checksum = 0
    for (x, y), waited in timed(loader):
        wait += waited
        seen += len(x)
        if model is not None:
            _, logits = model(normalize(x))
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            checksum += int(x[:, :, 0, 0].sum())
    seconds = time.perf_counter() - t0
    print(f"one epoch of {seen} faces ({tuple(array.shape)}, {array.nbytes / 2**30:.2f} GiB on disk), batch"
          f" {args.batch_size}, workers {args.workers}, {'training a small fer_cnn' if model else 'reading only'}:"
          f" {seconds:.1f} s, {seen / seconds:.0f} images/s, data wait {wait / seconds:.1%};"
          f" this process's peak RSS {peak_rss_mb():.0f} MB (workers: see /usr/bin/time)")


def data_share(args) -> None:
    per_class = max(1, round(args.images / (7 * 30)))
    ds = synthetic_dataset(subjects=30, per_class=per_class, size=args.size, seed=2, color=True)
    table = {"name": "full_face", "landmarks": "template", "size": args.size, "color": "rgb",
             "on_no_face": "fallback", "cache": True}
    cropper = FullFaceCropper(landmarks="template", size=args.size)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        memory = prepare(ds, cropper, table, Path(tmp), store="memory")
        mapped = prepare(ds, cropper, table, Path(tmp), store="mmap")
        n = len(memory.labels)
        print(f"{n} colour crops {args.size}x{args.size}; fer_cnn width {args.width} depth 3, batch"
              f" {args.batch_size}, SGD; torch threads {torch.get_num_threads()}; epoch 2 of 2 timed")
        variants = [("in memory, direct indexing (today's loop)", memory.images, None)]
        for w in args.workers:
            variants.append((f"in memory, DataLoader workers={w}", memory.images, w))
            variants.append((f"memory-mapped store, DataLoader workers={w}", mapped.images, w))
        for name, images, workers in variants:
            model = FERModel(FerCNN(in_chans=3, width=args.width, depth=3), 7, 32, in_chans=3)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            sampler = RandomBatchSampler(memory.labels.tolist(), batch_size=args.batch_size, seed=0)

            def step(x, y):
                _, logits = model(normalize(x))
                loss = torch.nn.functional.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            loader = BatchLoader(images, memory.labels, sampler, workers=workers) if workers is not None else None
            for epoch in range(2):
                sampler.set_epoch(epoch)
                t0 = time.perf_counter()
                wait = 0.0
                if loader is None:
                    for batch in sampler:
                        t1 = time.perf_counter()
                        idx = torch.as_tensor(batch)
                        x, y = images[idx], memory.labels[idx]
                        wait += time.perf_counter() - t1
                        step(x, y)
                    seconds = time.perf_counter() - t0
                    fraction = wait / seconds
                else:
                    for (x, y), waited in timed(loader):
                        wait += waited
                        step(x, y)
                    seconds = time.perf_counter() - t0
                    fraction = wait / seconds
            print(f"  {name:48s} {n / seconds:7.0f} images/s  data wait {fraction:6.1%}")
            del loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("build-rate")
    p.add_argument("--images", type=int, default=1400)
    p.add_argument("--size", type=int, default=112)
    p = sub.add_parser("scale-build")
    p.add_argument("--root", required=True)
    p.add_argument("--faces", type=int, default=100_100)
    p = sub.add_parser("scale-read")
    p.add_argument("--root", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train", action="store_true", help="a small fer_cnn training step per batch")
    p = sub.add_parser("data-share")
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    {"build-rate": build_rate, "scale-build": scale_build, "scale-read": scale_read, "data-share": data_share}[args.what](args)


if __name__ == "__main__":
    main()
