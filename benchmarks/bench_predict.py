"""Throughput of ``Model.predict`` against the bare network, and with face detection on full photos.

    .venv/bin/python benchmarks/bench_predict.py [--model runs/quickstart] [--images 512] [--batch-size 64] [--rounds 5]

1. Pre-cropped faces (48x48 aligned faces, ``detect="none"``): ``model.predict(arrays)`` (input handling, the
   recipe's crop, batching, softmax, one result object per face) against ``network(normalize(x))`` on the same
   crops in the same batches, rounds alternating so that both see the same machine state; the ratio is
   predict / raw (goal >= 0.9 on a CPU).
   The recipe's crop is also timed alone, its region plan reused against recomputed for every face.
2. Full photos with detection: Yale faces (../shared/data/yalefaces) when present, else synthetic faces drawn on
   a 320x243 canvas; dlib (when installed) and Haar.

Without --model a tiny quick-start model is trained first (synthetic data, a few seconds). Not a test: timings
depend on the machine; docs/performance.md records measured figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_model(tmp: Path) -> Path:
    from fermetric.engine import run_recipe

    out = tmp / "run"
    run_recipe(str(REPO / "recipes/quickstart.toml"), str(out), [
        "data.subjects=6", "data.per_class=3", "train.epochs=1", "train.batch_size=28", "train.sampler.m=4",
        "eval.tsne=false", "eval.knn=false", f'train.cache_dir="{tmp / "cache"}"'])
    return out


def photos(n: int) -> tuple[list[np.ndarray], str]:
    from fermetric.inference.inputs import decode_file

    yale = REPO.parent / "shared" / "data" / "yalefaces"
    files = sorted(yale.glob("*/*.png"))[:n]
    if files:
        return [decode_file(p) for p in files], f"{len(files)} Yale photos (320x243)"
    from fermetric.components.synthetic import generate

    out = []
    for f in generate(n_subjects=max(1, n // 7 + 1), per_class=1, size=160, seed=1)[:n]:
        canvas = np.full((243, 320), 110, np.uint8)
        canvas[40:200, 80:240] = f.image
        out.append(canvas)
    return out, f"{len(out)} synthetic faces on 320x243 canvases"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="run folder or checkpoint (default: train a tiny quick-start model)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--photos", type=int, default=48)
    args = ap.parse_args()

    import fermetric
    from fermetric.components.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or tiny_model(Path(tmp))
        model = fermetric.load_model(path, device="cpu", detect="none")
        faces = [f.image for f in generate(n_subjects=args.images // 7 + 1, per_class=1, size=48, seed=3)[: args.images]]
        crops = torch.from_numpy(np.stack([model.crop(model.faces(img)[0]) for img in faces]))[:, None]
        net, bs = model.network.eval(), args.batch_size

        def raw() -> float:
            t = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(crops), bs):
                    emb, logits = net(net.normalize(crops[i : i + bs]))
                    logits.softmax(1).numpy()
            return len(crops) / (time.perf_counter() - t)

        def api() -> float:
            t = time.perf_counter()
            rows = model.predict(faces, batch_size=bs)
            assert len(rows) == len(faces) and all(r.status == "ok" for r in rows)
            return len(faces) / (time.perf_counter() - t)

        raw(), api()  # warm-up: first-call allocations and lazy imports
        r_raw, r_api = [], []
        for _ in range(args.rounds):
            r_raw.append(raw())
            r_api.append(api())
        raw_ips, api_ips = statistics.median(r_raw), statistics.median(r_api)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs}, {len(faces)} faces of 48x48,"
              f" model {model.checkpoint} ({model.meta['backbone']})")
        print(f"raw network forward      : {raw_ips:8.1f} images/s (median of {args.rounds})")
        print(f"Model.predict (pre-cropped): {api_ips:8.1f} images/s")
        print(f"ratio predict / raw      : {api_ips / raw_ips:.3f}")

        # The crop alone, with the region plan reused (what inference on aligned crops does) and recomputed for
        # every face (what it did before the plan was kept), alternating rounds.
        aligned = [model.faces(img)[0].face_image for img in faces]
        cropper = model.cropper

        def crop_ms(reuse: bool) -> float:
            plans = getattr(cropper, "_plans", None)
            t = time.perf_counter()
            for face in aligned:
                if not reuse and plans is not None:
                    plans.clear()
                cropper(face)
            return (time.perf_counter() - t) / len(aligned) * 1e3

        c_reused, c_fresh = [], []
        for _ in range(args.rounds):
            c_reused.append(crop_ms(True))
            c_fresh.append(crop_ms(False))
        print(f"crop ({model.crop_table.get('name')}), plan reused   : {statistics.median(c_reused):.4f} ms/face;"
              f" recomputed each face: {statistics.median(c_fresh):.4f} ms/face")

        pics, what = photos(args.photos)
        from fermetric.inference.faces import dlib_available

        for detect in (["dlib"] if dlib_available() else []) + ["haar"]:
            m = fermetric.load_model(path, device="cpu", detect=detect)
            m.predict(pics[:2])  # load the detector
            t = time.perf_counter()
            rows = m.predict(pics, batch_size=bs)
            dt = time.perf_counter() - t
            found = sum(r.status == "ok" for r in rows)
            print(f"with detection ({detect:4s})   : {len(pics) / dt:8.1f} images/s on {what}, {found} faces found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
