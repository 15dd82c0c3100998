"""DDP on the CPU (issue #11): the same recipe on 1 process and on 2 gloo processes, same global batch.

    .venv/bin/python benchmarks/bench_ddp.py [--recipe recipes/quickstart.toml] [--set KEY=VALUE ...] [--out runs/bench_ddp]

Runs, one after the other, ``fermetric run RECIPE`` and ``fermetric run RECIPE --nproc 2`` (torchrun --standalone,
gloo, one thread per process: torchrun sets OMP_NUM_THREADS=1) and prints, side by side: steady-state training
throughput (the median of each run's history.csv images_per_s over the epochs after the first), wall time, and
the metrics each reaches. With 2 cores, 1 process uses both through intra-op threads and 2 processes one each, so
the comparison is "the same CPU, split two ways", not a speed-up promise. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fermetric.runfolder import RunFolder  # noqa: E402


def run(recipe: str, out: Path, overrides: list[str], nproc: int) -> dict:
    cmd = [sys.executable, "-m", "fermetric", "run", recipe, "--out", str(out), "--nproc", str(nproc)]
    cmd += [x for o in overrides for x in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | {"MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    folder = RunFolder(out)
    history = folder.history()
    metrics = folder.metrics()
    return {"processes": nproc, "wall_s": round(wall, 1),
            "images_per_s": statistics.median(float(r["images_per_s"]) for r in history[1:] or history),
            "final_train_loss": float(history[-1]["train_loss"]), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_ddp"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    overrides = ["eval.tsne=false", *args.overrides]
    results = []
    for nproc in (1, 2):
        out = args.out / f"nproc{nproc}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        results.append(run(args.recipe, out, overrides, nproc))
    print(f"recipe {args.recipe} {' '.join(args.overrides)} (global batch as in the recipe)")
    print(f"{'processes':>10} {'img/s':>8} {'wall s':>7} {'last loss':>10} {'accuracy':>9} {'macro-F1':>9}")
    for r in results:
        print(f"{r['processes']:>10} {r['images_per_s']:>8.0f} {r['wall_s']:>7.1f} {r['final_train_loss']:>10.4f}"
              f" {r['accuracy']:>9.4f} {r['macro_f1']:>9.4f}")
    print(f"throughput ratio 2 processes / 1 process: {results[1]['images_per_s'] / results[0]['images_per_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
