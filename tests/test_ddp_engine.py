"""The same recipe on 2 gloo processes (torchrun, CPU) as on 1: same global batch, rank 0 alone writes the run
folder, kill + --resume under 2 processes ends exactly where an uninterrupted 2-process run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fermetric.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "recipes/quickstart.toml"
# Learnable in a few seconds; augmentation and dropout off so that what differs between 1 and 2 processes is only
# what must differ (see the tolerance below).
RECIPE = ["data.subjects=12", "data.per_class=4", "train.epochs=8", "train.batch_size=56", "train.sampler.m=8",
          "eval.tsne=false", "eval.knn=false", "train.augment={flip=false,shift=0.0,rotate=0.0,scale=0.0}"]


def fermetric_run(out, overrides, nproc=1, resume=False, **popen):
    cmd = [sys.executable, "-m", "fermetric", "run", QUICKSTART, "--out", str(out), "--nproc", str(nproc)]
    cmd += [x for o in overrides for x in ("--set", o)] + (["--resume"] if resume else [])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | {"MPLBACKEND": "Agg"}
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return RunFolder(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    overrides = RECIPE + [f'train.cache_dir="{tmp / "cache"}"']
    return {"one": fermetric_run(tmp / "one", overrides), "two": fermetric_run(tmp / "two", overrides, nproc=2),
            "overrides": overrides, "tmp": tmp}


def test_two_processes_reach_what_one_does_with_the_same_global_batch(runs):
    """Tolerance: the two runs see the same global batches, and the metric loss the same global batch, but on the
    CPU BatchNorm normalises each process's half batch (SyncBatchNorm is CUDA-only), so the trajectories drift apart
    a little, and the half batches' noisier statistics make two processes learn a little slower; we ask for the same
    learning: training loss within 10% on average over the epochs and within 20% at every epoch, and test accuracy
    within 0.15 (6 of 42 test images). Measured on a 2-core AMD EPYC (2026-12-02): two processes' loss was 1.01 to
    1.13 times one process's, the largest at epoch 7, 1.06 on average (a 10% bound at every epoch failed there)."""
    one, two = runs["one"], runs["two"]
    h1, h2 = one.history(), two.history()
    assert len(h1) == len(h2) == 8
    ratios = [float(b["train_loss"]) / float(a["train_loss"]) for a, b in zip(h1, h2)]
    assert all(0.8 <= r <= 1.2 for r in ratios), [round(r, 3) for r in ratios]
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.10), [round(r, 3) for r in ratios]
    assert float(h2[-1]["train_loss"]) < float(h2[0]["train_loss"]), "two processes learn"
    assert abs(one.metrics()["accuracy"] - two.metrics()["accuracy"]) <= 0.15
    assert float(h1[0]["lr"]) == float(h2[0]["lr"])


def test_rank_zero_alone_writes_the_run_folder(runs):
    two = runs["two"]
    info = two.run_info()
    assert info["processes"] == 2 and info["status"] == "finished"
    assert [r["epoch"] for r in two.history()] == [str(e) for e in range(1, 9)], "one row per epoch, not one per rank"
    log = two.log_file.read_text()
    assert log.count("epoch 1/8") == 1
    # the images of an epoch are counted over both processes: the same number as one process trains on
    assert float(two.history()[0]["images_per_s"]) > 0
    state = torch.load(two.last_checkpoint, weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"]), "the network's weights, not DDP's wrapper"


def test_kill_and_resume_under_two_processes_ends_where_an_uninterrupted_run_ends(runs):
    out = RunFolder(runs["tmp"] / "killed")
    proc = fermetric_run(out.root, runs["overrides"], nproc=2, popen=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.last_checkpoint.exists() and len(out.history()) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: the launcher and both ranks get it
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert out.status() == "interrupted" and 3 <= len(out.history()) < 8
    fermetric_run(out.root, runs["overrides"], nproc=2, resume=True)
    assert out.status() == "finished"
    straight = runs["two"]
    assert out.metrics()["accuracy"] == straight.metrics()["accuracy"]
    a = torch.load(out.last_checkpoint, weights_only=True)["model"]
    b = torch.load(straight.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "bit-identical weights after resume"
