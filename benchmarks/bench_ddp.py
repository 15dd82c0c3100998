"""DDP on the CPU (issue #11): 1 process against 2 gloo processes on the same global batch.

    .venv/bin/python benchmarks/bench_ddp.py [--epochs 4] [--batch-size 28] [--nproc 1,2] [--json out.json]

**Scope, honestly:** the engine does not use fermetric/training/distributed.py yet (the lead engineer is wiring
it into fermetric/engine.py and fermetric/training/loop.py). Until then this benchmark measures the
*building blocks* in a bare training loop written here: the packaged quick-start network (``fer_cnn`` ->
embedding -> classifier), cross-entropy + 0.5 x EMLF with EMLF gathered over ranks (``GlobalBatchLoss``), the
``m_per_class`` sampler sharded per rank (``ShardedBatchSampler``), DDP, SGD, on synthetic 48x48 faces held in
memory. 1 process uses all ``torch`` threads (the machine's cores); each of the 2 processes uses
cores/2 threads, so the two set-ups get the same CPU.

Reported per set-up: steady-state training throughput (global images/s over the epochs after the first), the
last epoch's mean loss, and train-set accuracy/loss of the final network in eval mode (rank 0). They are *not*
expected to be bit-identical: BatchNorm statistics are per rank (14 images instead of 28; SyncBatchNorm is
CUDA-only in PyTorch) and float sums run in another order, so the figures agree within noise, not exactly.

Once the engine integration lands, the end-to-end figure of the issue is the same recipe run both ways:

    .venv/bin/fermetric run recipes/quickstart.toml --out runs/ddp1
    .venv/bin/torchrun --nproc_per_node 2 -m fermetric run recipes/quickstart.toml --out runs/ddp2

(throughput from each run's history.csv, metrics from metrics.json). Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _data(subjects: int, per_class: int):
    from fermetric.components.synthetic import CLASSES, generate

    faces = generate(n_subjects=subjects, per_class=per_class, size=48, seed=0)
    images = torch.from_numpy(__import__("numpy").stack([f.image for f in faces]))[:, None]
    labels = torch.tensor([CLASSES.index(f.label) for f in faces])
    return images, labels, len(CLASSES)


def _train(rank: int, world: int, port: int, args, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world))
    from fermetric.components.backbones import FerCNN
    from fermetric.components.losses import EMLF, CrossEntropyLoss
    from fermetric.components.samplers import MPerClassBatchSampler
    from fermetric.model import FERModel
    from fermetric.training import distributed as D
    from fermetric.training.objective import LossTerm, Objective

    ctx = D.DistContext.from_env(device="cpu")

    def job():
        images, labels, n_classes = _data(args.subjects, args.per_class)
        D.check_global_batch(args.batch_size, world)
        torch.manual_seed(0)
        model = FERModel(FerCNN(width=16, depth=3), n_classes, embedding_dim=64)
        objective = D.distribute_objective(
            Objective([LossTerm("cross_entropy", 1.0, CrossEntropyLoss()), LossTerm("emlf", 0.5, EMLF())]), world)
        net = ctx.wrap_model(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        sampler = D.ShardedBatchSampler(MPerClassBatchSampler(labels.tolist(), args.batch_size, seed=0, m=4),
                                        ctx.rank, world)
        times, losses = [], []
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            net.train()
            total = torch.zeros(2)
            ctx.barrier()
            t0 = time.perf_counter()
            for batch in sampler:
                x = FERModel.normalize(images[batch])
                emb, logits = net(x)
                loss, _ = objective(emb, logits, labels[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += torch.tensor([loss.item(), 1.0])
            ctx.barrier()
            times.append(time.perf_counter() - t0)
            total = ctx.all_reduce_sum(total)  # loss sums and batch counts of every rank
            losses.append((total[0] / total[1]).item())
        if ctx.is_main:
            plain = D.unwrap(net).eval()
            with torch.no_grad():
                emb, logits = plain(FERModel.normalize(images))
                eval_loss = torch.nn.functional.cross_entropy(logits, labels).item()
                acc = (logits.argmax(1) == labels).float().mean().item()
            steady = times[1:] or times
            n = len(sampler) * args.batch_size
            Path(out).write_text(json.dumps({
                "processes": world, "threads_per_process": torch.get_num_threads(), "global_batch": args.batch_size,
                "images_per_epoch": n, "epoch_s": [round(t, 3) for t in times],
                "images_per_s": round(n / statistics.median(steady), 1), "last_epoch_loss": round(losses[-1], 4),
                "train_accuracy": round(acc, 4), "train_ce": round(eval_loss, 4)}))

    try:
        D.run_guarded(job, ctx)
    finally:
        ctx.destroy()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=28)
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--per-class", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--nproc", default="1,2", help="comma-separated process counts to compare")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in [int(n) for n in args.nproc.split(",")]:
            out = str(Path(tmp) / f"w{world}.json")
            mp.start_processes(_train, args=(world, _port(), args, out), nprocs=world, start_method="spawn")
            results.append(json.loads(Path(out).read_text()))
            print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        base = results[0]["images_per_s"]
        for r in results[1:]:
            print(f"{r['processes']} processes / {results[0]['processes']}: throughput x{r['images_per_s'] / base:.2f}; "
                  f"train accuracy {r['train_accuracy']:.3f} vs {results[0]['train_accuracy']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
