"""Distributed building blocks (fermetric/training/distributed.py, issue #11), on the CPU with gloo.

Two spawned 2-process runs carry the collective checks (one for losses, DDP gradients, loss parameters and the
samplers; failure propagation in three scenarios); each rank saves what it computed and the assertions, with the
single-process references, happen here in the parent. The pure rules (sharding, batch checks, helpers) are
also tested in-process for more world sizes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fermetric.errors import RecipeError
from fermetric.training import distributed as D

WORLD = 2
B, DIM, CLASSES = 16, 8, 4  # the global batch of the loss checks


# ---------------------------------------------------------------------------------------------------------------
# shared fixtures of the workers and the parent
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, DIM, generator=g)
    y = torch.arange(B) % CLASSES
    y = y[torch.randperm(B, generator=g)]
    inputs = torch.randn(B, 6, generator=g)
    return x, y, inputs


def _metric_losses():
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import TripletMarginMiner

    from fermetric.components.losses import EMLF

    return {
        "emlf": (EMLF(), None),
        "triplet": (TripletMarginLoss(margin=0.2), None),
        "triplet_mined": (TripletMarginLoss(margin=0.2), TripletMarginMiner(margin=0.5, type_of_triplets="all")),
    }


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, DIM))
        self.classifier = nn.Linear(DIM, CLASSES)

    def forward(self, x):
        e = self.body(x)
        return e, self.classifier(e)


def _objective(center_seed: int):
    from fermetric.components.losses import EMLF, CenterLoss, CrossEntropyLoss
    from fermetric.training.objective import LossTerm, Objective

    torch.manual_seed(center_seed)
    center = CenterLoss(CLASSES, DIM)
    return Objective([LossTerm("cross_entropy", 1.0, CrossEntropyLoss()), LossTerm("emlf", 0.5, EMLF()),
                      LossTerm("center", 0.1, center)])


def _sampler_cases():
    from fermetric.components.samplers import MPerClassBatchSampler, RandomBatchSampler

    labels = [i % 7 for i in range(70)]
    return {
        "random": lambda: RandomBatchSampler(labels, 28, seed=3),
        "random_uneven": lambda: RandomBatchSampler(labels[:61], 8, seed=3, drop_last=False),  # last batch: 5
        "m_per_class": lambda: MPerClassBatchSampler(labels, 28, seed=3, m=4),
    }


def _launch(target, args, timeout: float):
    """Start WORLD ranks as torchrun does: the rendezvous store lives in this (the launcher's) process, not in rank 0,
    so no rank's exit can pull the store from under another rank's teardown (which aborts it: "terminate called
    without an active exception")."""
    import torch.distributed as dist

    ctx = mp.get_context("spawn")
    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=True, wait_for_workers=False)  # noqa: F841 - kept alive
    procs = [ctx.Process(target=target, args=(rank, port, *args)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {timeout} s"
    return [p.exitcode for p in procs]


def _env(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                      TORCHELASTIC_USE_AGENT_STORE="True")  # connect to the launcher's store, as under torchrun
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------
# worker 1: losses, DDP gradients, loss parameters, samplers, collectives
# ---------------------------------------------------------------------------------------------------------------


def _worker_checks(rank: int, port: int, out: str) -> None:
    _env(rank, port)
    ctx = D.DistContext.from_env(device="cpu", timeout_s=60)
    try:
        results = D.run_guarded(_checks, ctx, ctx)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        ctx.destroy()


def _checks(ctx: D.DistContext) -> dict:
    from fermetric.components.losses import CenterLoss

    res: dict = {"ctx": (ctx.rank, ctx.world_size, ctx.is_main, ctx.backend, D.is_main())}
    x, y, inputs = _global_batch()
    per = B // ctx.world_size
    mine = slice(ctx.rank * per, (ctx.rank + 1) * per)

    # the metric losses, gathered
    for name, (loss, miner) in _metric_losses().items():
        local = x[mine].clone().requires_grad_(True)
        value = D.GlobalBatchLoss(loss, miner=miner)(local, y[mine])
        value.backward()
        res[name] = (value.item(), local.grad.clone())

    # a loss with parameters: centres start different per rank, broadcast makes them rank 0's
    torch.manual_seed(100 + ctx.rank)
    center = CenterLoss(CLASSES, DIM)
    D.broadcast_parameters([center])
    local = x[mine].clone().requires_grad_(True)
    value = D.GlobalBatchLoss(center)(local, y[mine])
    value.backward()
    D.sync_loss_parameters([center])
    res["center"] = (value.item(), local.grad.clone(), center.centers.grad.clone())

    # a DDP model with the joint objective: model and centre gradients after DDP and the sync, one SGD step
    torch.manual_seed(1)
    model = _Net()
    objective = D.distribute_objective(_objective(center_seed=200 + ctx.rank), ctx.world_size)
    loss_modules = [t.module for t in objective.terms]
    D.broadcast_parameters(loss_modules)
    ddp = ctx.wrap_model(model)
    params = list(ddp.parameters()) + [p for m in loss_modules for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    emb, logits = ddp(inputs[mine])
    total, parts = objective(emb, logits, y[mine])
    total.backward()
    D.sync_loss_parameters(loss_modules)
    res["ddp"] = {
        "parts": [p.item() for p in parts],
        "model_grads": {k: p.grad.clone() for k, p in D.unwrap(ddp).named_parameters()},
        "center_grad": loss_modules[2].loss.centers.grad.clone(),
        "objective_state_keys": [sorted(s) for s in objective.state_dict()],
    }
    opt.step()
    res["ddp"]["centers_after"] = loss_modules[2].loss.centers.detach().clone()
    res["ddp"]["weight_after"] = D.unwrap(ddp).classifier.weight.detach().clone()

    # the samplers, built here in a fresh process (determinism across interpreters)
    res["samplers"] = {}
    for name, make in _sampler_cases().items():
        sharded = D.ShardedBatchSampler(make(), ctx.rank, ctx.world_size)
        epochs = {}
        for epoch in (0, 1, 5):
            sharded.set_epoch(epoch)
            epochs[epoch] = list(sharded)
        res["samplers"][name] = {"len": len(sharded), "epochs": epochs, "mode": sharded.mode}

    # the small collectives
    res["broadcast"] = ctx.broadcast_object({"seed": 7, "from": ctx.rank})
    res["all_reduce"] = ctx.all_reduce_sum(torch.tensor([float(ctx.rank + 1)])).item()
    ctx.barrier()
    return res


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    codes = _launch(_worker_checks, (str(out),), timeout=120)
    assert codes == [0, 0], f"exit codes {codes}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_context_and_collectives(ranks):
    assert [r["ctx"] for r in ranks] == [(0, 2, True, "gloo", True), (1, 2, False, "gloo", False)]
    assert all(r["broadcast"] == {"seed": 7, "from": 0} for r in ranks)
    assert all(r["all_reduce"] == 3.0 for r in ranks)


@pytest.mark.parametrize("name", ["emlf", "triplet", "triplet_mined"])
def test_gathered_metric_loss_equals_single_process(ranks, name):
    loss, miner = _metric_losses()[name]
    x, y, _ = _global_batch()
    x = x.clone().requires_grad_(True)
    ref = loss(x, y, indices_tuple=miner(x, y)) if miner is not None else loss(x, y)
    ref.backward()
    assert ref.item() > 0
    for r in ranks:  # every rank returns the single-process value of the global batch
        assert r[name][0] == pytest.approx(ref.item(), rel=1e-6, abs=1e-7)
    # scaling rule: rank r's local gradient is world_size x its slice of the single-process gradient, so DDP's
    # average over ranks gives the single-process gradient
    rebuilt = torch.cat([r[name][1] for r in ranks]) / WORLD
    torch.testing.assert_close(rebuilt, x.grad, rtol=1e-5, atol=1e-7)


def test_center_loss_parameters_stay_in_sync(ranks):
    from fermetric.components.losses import CenterLoss

    x, y, _ = _global_batch()
    torch.manual_seed(100)  # rank 0's centres, which broadcast_parameters gave every rank
    center = CenterLoss(CLASSES, DIM)
    x = x.clone().requires_grad_(True)
    ref = center(x, y)
    ref.backward()
    for r in ranks:
        assert r["center"][0] == pytest.approx(ref.item(), rel=1e-6)
        torch.testing.assert_close(r["center"][2], center.centers.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([r["center"][1] for r in ranks]) / WORLD, x.grad, rtol=1e-5, atol=1e-7)


def test_ddp_joint_objective_matches_single_process(ranks):
    x, y, inputs = _global_batch()
    torch.manual_seed(1)
    model = _Net()
    objective = _objective(center_seed=200)
    emb, logits = model(inputs)
    total, parts = objective(emb, logits, y)
    total.backward()
    ce, emlf, center = (p.item() for p in parts)
    # the metric terms see the global batch; cross-entropy is local, and its mean over ranks is the global mean
    for r in ranks:
        assert r["ddp"]["parts"][1:] == pytest.approx([emlf, center], rel=1e-5)
    assert sum(r["ddp"]["parts"][0] for r in ranks) / WORLD == pytest.approx(ce, rel=1e-5)
    for r in ranks:  # after DDP's averaging and sync_loss_parameters: the single-process gradients
        for k, p in model.named_parameters():
            torch.testing.assert_close(r["ddp"]["model_grads"][k], p.grad, rtol=1e-4, atol=1e-6, msg=k)
        torch.testing.assert_close(r["ddp"]["center_grad"], objective.terms[2].module.centers.grad, rtol=1e-4, atol=1e-6)
        # checkpoints keep the unwrapped keys
        assert r["ddp"]["objective_state_keys"] == [sorted(s) for s in objective.state_dict()]
    # one optimizer step later, the loss parameters and the model are still identical on both ranks
    torch.testing.assert_close(ranks[0]["ddp"]["centers_after"], ranks[1]["ddp"]["centers_after"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["ddp"]["weight_after"], ranks[1]["ddp"]["weight_after"], rtol=0, atol=0)


def _check_shards(global_batches, per_rank, world, class_balanced):
    """Each rank's batches are disjoint shards that together cover exactly each global batch."""
    assert all(len(b) == len(global_batches) for b in per_rank)
    for g, shards in zip(global_batches, zip(*per_rank)):
        sizes = {len(s) for s in shards}
        assert len(sizes) == 1 and sizes.pop() == max(1, len(g) // world)  # equal size on every rank
        union = [i for s in shards for i in s]
        if len(g) >= world:
            kept = len(g) - len(g) % world
            if class_balanced:
                assert Counter(union) == Counter(g)
            else:  # chunks: in rank order, the global batch itself, remainder dropped
                assert union == g[:kept]
            assert len(set(union)) == len(union) == kept  # disjoint
        else:  # fewer indices than ranks: padded cyclically
            assert set(union) == set(g)


@pytest.mark.parametrize("name", ["random", "random_uneven", "m_per_class"])
def test_ranks_shard_every_epoch_of_the_global_batches(ranks, name):
    make = _sampler_cases()[name]
    inner = make()
    labels = [i % 7 for i in range(70)]
    for epoch in (0, 1, 5):
        inner.set_epoch(epoch)
        global_batches = list(inner)
        per_rank = [r["samplers"][name]["epochs"][epoch] for r in ranks]
        _check_shards(global_batches, per_rank, WORLD, class_balanced=name == "m_per_class")
        if name == "m_per_class":
            for shards in zip(*per_rank):
                for shard in shards:
                    counts = Counter(labels[i] for i in shard)
                    assert len(counts) == 7 and set(counts.values()) == {2}  # 4 per class / 2 ranks, every class
    assert {r["samplers"][name]["len"] for r in ranks} == {len(inner)}
    epochs = ranks[0]["samplers"][name]["epochs"]
    assert epochs[0] != epochs[1]  # a new epoch reshuffles


# ---------------------------------------------------------------------------------------------------------------
# worker 2: a rank that fails stops the other, with its error
# ---------------------------------------------------------------------------------------------------------------


def _worker_fail(rank: int, port: int, out: str, scenario: str, failing: int) -> None:
    _env(rank, port)
    ctx = D.DistContext.from_env(device="cpu", timeout_s=300)  # far beyond the test's timeout: not the mechanism
    start = time.monotonic()
    try:
        D.run_guarded(_fail_job, ctx, ctx, scenario, failing, poll_s=0.2, grace_s=3.0)
        outcome = {"type": None}
    except BaseException as exc:  # noqa: BLE001
        outcome = {"type": type(exc).__name__, "message": str(exc)}
    outcome["elapsed"] = time.monotonic() - start
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
    os._exit(1 if outcome["type"] else 0)


def _fail_job(ctx: D.DistContext, scenario: str, failing: int) -> None:
    t = torch.zeros(1)
    for step in range(3):
        ctx.all_reduce_sum(t)
    if ctx.rank == failing:
        raise ValueError(f"boom on rank {ctx.rank}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scenario == "collective":  # the survivor is waiting for the failed rank in a collective
            ctx.all_reduce_sum(t)
        time.sleep(0.02)  # "compute": busy in Python, no collective that could notice the failure


@pytest.mark.parametrize("scenario,failing", [("collective", 1), ("compute", 1), ("collective", 0)])
def test_a_failing_rank_stops_the_other_with_its_error(tmp_path, scenario, failing):
    codes = _launch(_worker_fail, (str(tmp_path), scenario, failing), timeout=40)
    assert codes == [1, 1]
    outcome = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)}
    survivor = 1 - failing
    assert outcome[failing]["type"] == "ValueError"
    assert outcome[survivor]["type"] == "PeerFailure"
    assert f"rank {failing} failed: ValueError: boom on rank {failing}" in outcome[survivor]["message"]
    assert outcome[survivor]["elapsed"] < 20  # stopped by the failure, not by a timeout


# ---------------------------------------------------------------------------------------------------------------
# in-process: the rules themselves
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [None, "1"])
def test_from_env_without_torchrun_is_single_process(monkeypatch, world_size):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    if world_size:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    ctx = D.DistContext.from_env(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.distributed) == (0, 1, 0, True, False)
    assert ctx.device == torch.device("cpu") and not torch.distributed.is_initialized()
    # every collective is the identity, and run_guarded is a plain call
    assert ctx.broadcast_object("x") == "x"
    assert ctx.all_reduce_sum(torch.tensor([2.0])).item() == 2.0
    ctx.barrier()
    assert D.run_guarded(lambda a: a + 1, ctx, 1) == 2
    model = nn.Linear(2, 2)
    assert ctx.wrap_model(model) is model
    ctx.destroy()


def test_from_env_names_what_torchrun_would_have_set(monkeypatch):
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(D.FermetricError, match="MASTER_ADDR and MASTER_PORT unset"):
        D.DistContext.from_env(device="cpu")


def test_single_process_losses_are_the_wrapped_losses():
    from fermetric.components.losses import EMLF, CenterLoss, CrossEntropyLoss

    x, y, _ = _global_batch()
    assert D.GlobalBatchLoss(EMLF())(x, y).item() == EMLF()(x, y).item()
    assert D.GlobalBatchLoss(CrossEntropyLoss()).uses_logits
    with pytest.raises(ValueError, match="miner"):
        D.GlobalBatchLoss(EMLF())(x, y, indices_tuple=(y, y, y))
    # checkpoints move between 1 and N processes: same keys, loadable both ways
    torch.manual_seed(0)
    plain = CenterLoss(CLASSES, DIM)
    wrapped = D.GlobalBatchLoss(CenterLoss(CLASSES, DIM))
    assert list(wrapped.state_dict()) == list(plain.state_dict()) == ["centers"]
    wrapped.load_state_dict(plain.state_dict())
    torch.testing.assert_close(wrapped.loss.centers, plain.centers)
    plain.load_state_dict(D.GlobalBatchLoss(CenterLoss(CLASSES, DIM)).state_dict())
    objective = _objective(0)
    assert D.distribute_objective(objective, 1) is objective and not any(
        isinstance(t.module, D.GlobalBatchLoss) for t in objective.terms)
    D.distribute_objective(objective, 2)
    assert [isinstance(t.module, D.GlobalBatchLoss) for t in objective.terms] == [False, True, True]


def _shards(make, world, epoch=0):
    per_rank = []
    for rank in range(world):
        s = D.ShardedBatchSampler(make(), rank, world)
        s.set_epoch(epoch)
        per_rank.append(list(s))
    inner = make()
    inner.set_epoch(epoch)
    return list(inner), per_rank


@pytest.mark.parametrize("world", [2, 3, 4])
def test_random_shards_and_the_uneven_rule(world):
    from fermetric.components.samplers import RandomBatchSampler

    for n, batch, drop_last in [(70, 12, True), (61, 8, False), (3, 8, True)]:  # last batches of 5; one of 3
        make = lambda: RandomBatchSampler(list(range(n)), batch, seed=1, drop_last=drop_last)  # noqa: E731
        global_batches, per_rank = _shards(make, world, epoch=2)
        _check_shards(global_batches, per_rank, world, class_balanced=False)
        assert all(len(b) == len(make()) for b in per_rank)


def test_m_per_class_split_rules():
    from fermetric.components.samplers import MPerClassBatchSampler

    labels = [i % 8 for i in range(96)]
    # m divisible by the world size: m / W images of every class of the batch on every rank
    make = lambda: MPerClassBatchSampler(labels, 32, seed=4, m=4)  # noqa: E731
    for world in (2, 4):
        global_batches, per_rank = _shards(make, world, epoch=1)
        _check_shards(global_batches, per_rank, world, class_balanced=True)
        for g, shards in zip(global_batches, zip(*per_rank)):
            for shard in shards:
                counts = Counter(labels[i] for i in shard)
                assert set(counts) == {labels[i] for i in g} and set(counts.values()) == {4 // world}
    # m = 3 over 2 ranks: whole classes (8 classes per batch, 4 per rank, 3 images each)
    make = lambda: MPerClassBatchSampler(labels, 24, seed=4, m=3)  # noqa: E731
    assert D.ShardedBatchSampler(make(), 0, 2).mode == "whole_classes"
    global_batches, per_rank = _shards(make, 2)
    _check_shards(global_batches, per_rank, 2, class_balanced=True)
    for shards in zip(*per_rank):
        assert [sorted(Counter(labels[i] for i in s).values()) for s in shards] == [[3] * 4] * 2
    # neither splits: an error that says what would
    labels7 = [i % 7 for i in range(70)]
    with pytest.raises(RecipeError, match="m=3 images per class must be a multiple of 2"):
        D.ShardedBatchSampler(MPerClassBatchSampler(labels7, 21, seed=0, m=3), 0, 2)


def test_global_batch_check():
    assert D.check_global_batch(28, 1) == 28 and D.check_global_batch(28, 2) == 14
    for batch, world in [(27, 2), (6, 4)]:
        with pytest.raises(RecipeError, match="global batch"):
            D.check_global_batch(batch, world)


def test_helpers(monkeypatch):
    model = nn.Linear(2, 2)
    assert D.unwrap(model) is model
    assert D.unwrap(nn.DataParallel(model)) is model
    calls = []
    write = D.rank_zero_only(lambda v: calls.append(v) or v)
    monkeypatch.setenv("RANK", "0")
    assert D.is_main() and write(1) == 1
    monkeypatch.setenv("RANK", "1")
    assert not D.is_main() and write(2) is None
    assert calls == [1]
