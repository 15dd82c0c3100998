"""Toolkit overhead (issue #11): fermetric's training loop against a bare PyTorch loop, same model, data, batches,
optimizer and loss, alternating epoch by epoch in one process.

    .venv/bin/python benchmarks/bench_overhead.py [--epochs 6] [--size 48] [--batch-size 56] [--images 2048] [--device cpu]

Both sides train the quick start's network (``fer_cnn`` width 16, depth 3 -> 64-d embedding -> classifier) with
cross-entropy + 0.5 x EMLF on the same synthetic crops held on the device, the same ``m_per_class`` batches, AdamW
and the same augmentation. The fermetric side is :class:`fermetric.training.loop.TrainLoop` with every callback a
run has (model selection, history CSV, console progress, early stopping, divergence monitor, curves, checkpoints
written every epoch); the bare side is the ten lines below. The first epoch of each is warm-up and not counted;
each figure is the median of the remaining epochs, and the ratio is fermetric / bare (goal >= 0.97).
Run it on an idle machine (stop any training first): both sides share the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fermetric import recipe as recipe_mod
from fermetric.build import build_model, build_objective, build_sampler
from fermetric.model import FERModel
from fermetric.plugins import get_host
from fermetric.runfolder import RunFolder
from fermetric.training.augment import Augment
from fermetric.training.callbacks import Checkpointer, default_callbacks
from fermetric.training.loop import TrainLoop, seed_everything
from fermetric.training.optim import OptimizerStep, make_optimizer, make_scheduler

REPO = Path(__file__).resolve().parents[1]


def setup(args, host, recipe):
    seed_everything(0)
    model = build_model(host, recipe, 7).to(args.device)
    objective, _ = build_objective(host, recipe, 7, model.embedding_dim)
    objective.to(args.device)
    cfg = recipe["train"]
    optimizer = make_optimizer([{"params": list(model.parameters()), "lr": float(cfg["lr"]), "name": "model"}], cfg)
    return model, objective, optimizer, OptimizerStep(optimizer, make_scheduler(optimizer, cfg), None, 0.0, model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=56)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    host = get_host()
    overrides = [f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs * 2}", "train.sampler.m=8",
                 f"crop.size={args.size}"]
    recipe = recipe_mod.validate(recipe_mod.load(REPO / "recipes" / "quickstart.toml", overrides), host)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, args.size, args.size), dtype=torch.uint8, generator=g).to(args.device)
    labels = torch.arange(args.images) % 7
    augment = Augment(recipe["train"]["augment"])
    times = {"fermetric": [], "bare": []}

    # -- fermetric: the engine's loop with every callback a run has --------------------------------------------
    model, objective, _, step = setup(args, host, recipe)
    sampler = build_sampler(host, recipe, labels.tolist(), 0)
    tmp = RunFolder(Path(tempfile.mkdtemp()) / "run").mkdir()
    callbacks = [*default_callbacks(0, "bench", 7), Checkpointer({"bench": True})]
    loop = TrainLoop(model=model, objective=objective, step=step, sampler=sampler, images=images,
                     labels=labels.to(args.device), device=torch.device(args.device), epochs=args.epochs * 2, seed=0,
                     augment=augment, callbacks=callbacks, folder=tmp, log=lambda text: None)

    # -- bare: the same work written by hand ---------------------------------------------------------------------
    bare_model, bare_objective, bare_optimizer, _ = setup(args, host, recipe)
    bare_sampler = build_sampler(host, recipe, labels.tolist(), 0)
    bare_labels = labels.to(args.device)

    def bare_epoch(epoch: int) -> None:
        gen = torch.Generator().manual_seed(epoch)
        bare_sampler.set_epoch(epoch)
        bare_model.train()
        for batch in bare_sampler:
            idx = torch.as_tensor(batch, device=images.device)
            x = augment(FERModel.normalize(images[idx]), gen)
            embeddings, logits = bare_model(x)
            loss, _ = bare_objective(embeddings, logits, bare_labels[idx])
            bare_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bare_optimizer.step()

    loop.emit("on_fit_start")
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        loop.run_epoch(epoch)
        times["fermetric"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_epoch(epoch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times["bare"].append(time.perf_counter() - t0)
    n = len(sampler) * args.batch_size
    result = {k: n / statistics.median(v[1:]) for k, v in times.items()}
    result["ratio"] = result["fermetric"] / result["bare"]
    print(f"images per epoch {n}, {args.epochs - 1} timed epochs each (first is warm-up), device {args.device},"
          f" torch threads {torch.get_num_threads()}")
    print(f"fermetric loop: {result['fermetric']:.1f} img/s   bare loop: {result['bare']:.1f} img/s   ratio {result['ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result | {"epoch_seconds": times}, indent=2))


if __name__ == "__main__":
    main()
