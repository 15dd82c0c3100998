"""Distributed training building blocks (issue #11): one recipe from one CPU process to N GPUs with torch.distributed.

Nothing here launches processes: ``torchrun --nproc_per_node N -m fermetric run recipe.toml`` does, and
:meth:`DistContext.from_env` joins the process group it set up (NCCL on CUDA, gloo on the CPU). Without
torchrun's environment (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) every piece below is a no-op and a run is the
single process it has always been.

The pieces and the rules they follow:

* :class:`DistContext`: rank, world size, device; ``barrier``, ``broadcast_object``, ``all_reduce_sum``,
  ``destroy``; :func:`run_guarded` makes a rank that fails stop the others with its error (see there).
* :class:`ShardedBatchSampler`: ``train.batch_size`` is the **global** batch. Every rank iterates the same global
  batches (the wrapped sampler is deterministic per (seed, epoch)) and keeps its disjoint share of each, so
  2 processes of batch B/2 see exactly the batches one process of batch B sees. Split rules in its docstring.
* :func:`gather_with_grad` and :class:`GlobalBatchLoss`: a metric loss sees the global batch (embeddings and
  labels gathered from every rank), with its value equal to the single-process loss and the model's gradients,
  after DDP's averaging, equal to the single-process gradients. Scaling rule in its docstring.
* :func:`broadcast_parameters` and :func:`sync_loss_parameters`: loss-owned parameters (centres, proxies,
  ArcFace weights) live outside the DDP-wrapped model; they start equal (broadcast from rank 0) and their
  gradients are averaged across ranks after every backward, so they stay identical on every rank.
* :func:`unwrap`, :func:`is_main`, :func:`rank_zero_only`: for checkpoints, callbacks and IO.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fermetric.errors import FermetricError, RecipeError

T = TypeVar("T")

# Keys in the process group's rendezvous store (see run_guarded).
FAILURE_KEY = "fermetric/failure"
FAILURE_SEEN_KEY = "fermetric/failure_seen"
DONE_KEY = "fermetric/done"


class PeerFailure(FermetricError):
    """This rank stopped because another rank failed; the message is that rank's error."""


class PeerInterrupted(KeyboardInterrupt):
    """This rank stopped because another rank was interrupted (Ctrl-C, SIGTERM): the run is interrupted and
    resumable, not failed. ``exit_code`` is the interrupted rank's (130, or 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------------------------------------------
# The context
# ----------------------------------------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise FermetricError(f"distributed: environment variable {name}={value!r} is not an integer") from None


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    kind = "auto" if device is None else str(device)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(kind)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FermetricError("distributed: device 'cuda' asked for, but CUDA is not available")
        # One GPU per process: LOCAL_RANK picks it, unless the caller named one.
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
    return dev


@dataclass
class DistContext:
    """Where this process stands in the run: ``rank`` of ``world_size`` processes, ``local_rank`` on its node.

    ``device`` is this process's device (``cuda:LOCAL_RANK`` on GPUs). ``is_main`` is rank 0, the one that writes
    the run folder, logs and checkpoints. A single-process context (the default) has no process group and every
    collective below returns its input.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    backend: str | None = None
    owns_group: bool = False  # this context initialised the process group (and destroy() ends it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str | torch.device | None = "auto", backend: str | None = None,
                 timeout_s: float | None = None) -> DistContext:
        """The context torchrun's environment describes, joining (initialising) the default process group.

        Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, through ``env://``, ``MASTER_ADDR``/``MASTER_PORT``).
        ``WORLD_SIZE`` absent or 1: a single-process context, no process group. ``device``: ``"auto"`` (CUDA
        when available), ``"cpu"``, ``"cuda"``; the backend is NCCL on CUDA and gloo on the CPU unless
        ``backend`` says otherwise. ``timeout_s``: the process group's timeout for a collective (torch's default,
        10 min for NCCL and 30 min for gloo, when None): the last resort against a rank that hangs without failing;
        a rank that *fails* stops the others at once through :func:`run_guarded`.
        """
        world_size = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        dev = _resolve_device(device, local_rank)
        if world_size <= 1:
            return cls(rank=0, world_size=1, local_rank=0, device=dev, is_main=True)
        if not 0 <= rank < world_size:
            raise FermetricError(f"distributed: RANK={rank} is not in [0, WORLD_SIZE={world_size})")
        if not dist.is_available():
            raise FermetricError("distributed: this PyTorch build has no torch.distributed")
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        if dist.is_initialized():  # someone (a test, a notebook) already joined: use that group
            if dist.get_world_size() != world_size or dist.get_rank() != rank:
                raise FermetricError("distributed: an initialised process group disagrees with RANK/WORLD_SIZE")
            return cls(rank, world_size, local_rank, dev, rank == 0, dist.get_backend(), owns_group=False)
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise FermetricError(
                f"distributed: WORLD_SIZE={world_size} but {' and '.join(missing)} unset; launch with torchrun "
                "(torchrun --nproc_per_node N -m fermetric run RECIPE)"
            )
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        kwargs: dict[str, Any] = {}
        if timeout_s is not None:
            kwargs["timeout"] = timedelta(seconds=float(timeout_s))
        if dev.type == "cuda" and backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank, **kwargs)
        return cls(rank, world_size, local_rank, dev, rank == 0, backend, owns_group=True)

    # -- collectives (no-ops in a single process) ----------------------------------------------------------------

    def barrier(self) -> None:
        if not self.distributed:
            return
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """``src``'s ``obj`` on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks, in place (also returned). The tensor must be on :attr:`device` for NCCL."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def destroy(self, wait_for_peers: bool = True) -> None:
        """Leave the process group (if this context created it).

        ``wait_for_peers``: meet every rank at a barrier first, so that no rank tears its connections down while
        another still uses them (gloo aborts the process then: "terminate called without an active exception").
        Skipped when a rank failed: the others are not coming."""
        if self.owns_group and dist.is_initialized():
            if wait_for_peers:
                try:
                    self.barrier()
                except Exception:  # noqa: BLE001 - a peer that is gone: leave anyway
                    pass
            dist.destroy_process_group()
        self.owns_group = False

    def wrap_model(self, model: nn.Module, *, find_unused_parameters: bool = False,
                   sync_batchnorm: bool = False, **ddp_kwargs) -> nn.Module:
        """``model`` in DistributedDataParallel (the model itself in a single process).

        ``find_unused_parameters=True`` when some parameters may get no gradient in a step (e.g. a metric-only
        recipe whose classifier head reaches no loss). ``sync_batchnorm`` converts BatchNorm layers to
        SyncBatchNorm (global batch statistics; CUDA only in PyTorch, so ignored on the CPU).
        """
        if not self.distributed:
            return model
        if sync_batchnorm and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs
        )


def is_main() -> bool:
    """True on rank 0 (and in a single process). Before the process group exists, reads torchrun's ``RANK``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Run ``fn`` on rank 0 only; elsewhere the call does nothing and returns None (callbacks that write files,
    logging). Never decorate something that takes part in a collective: the other ranks would wait for it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if is_main():
            return fn(*args, **kwargs)
        return None

    return wrapper


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers (for state_dict,
    checkpoints, evaluation)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------------------------------------------
# Failure propagation
# ----------------------------------------------------------------------------------------------------------------


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: no watchdog, the process group timeout is the backstop
        return None


def _describe(exc: BaseException, rank: int) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
    return json.dumps({"rank": rank, "error": f"{type(exc).__name__}: {exc}", "traceback": tb,
                       "interrupted": isinstance(exc, KeyboardInterrupt),
                       "exit_code": int(getattr(exc, "exit_code", 130 if isinstance(exc, KeyboardInterrupt) else 1))})


def _read_failure(store) -> dict | None:
    if not store.check([FAILURE_KEY]):
        return None
    return json.loads(store.get(FAILURE_KEY).decode())


class _Watchdog(threading.Thread):
    """Polls the store for another rank's failure; then stops this rank (see :func:`run_guarded`)."""

    def __init__(self, ctx: DistContext, store, poll_s: float, grace_s: float):
        super().__init__(name="fermetric-dist-watchdog", daemon=True)
        self.ctx, self.store, self.poll_s, self.grace_s = ctx, store, poll_s, grace_s
        self.stopped = threading.Event()
        self.peer: dict | None = None
        self.target_ident = threading.get_ident()  # built in the thread that calls run_guarded

    def run(self) -> None:
        lost_since = None
        while not self.stopped.wait(self.poll_s):
            try:
                failure = _read_failure(self.store)
                lost_since = None
            except Exception:  # noqa: BLE001 - the store's host (rank 0 or the launcher) is gone
                if self.stopped.is_set():
                    return
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since < self.grace_s:
                    continue
                failure = {"rank": -1, "error": "lost contact with the rendezvous store: its host (rank 0, or the "
                           "launcher) has stopped", "traceback": ""}
            if failure is None or failure["rank"] == self.ctx.rank or self.stopped.is_set():
                continue
            self.peer = failure
            try:
                self.store.add(FAILURE_SEEN_KEY, 1)
            except Exception:  # noqa: BLE001
                pass
            # Raise PeerFailure in run_guarded's thread at its next Python instruction (a rank busy computing)...
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target_ident), ctypes.py_object(PeerFailure))
            # ... and if it is stuck in C++ (an NCCL collective waiting for the dead rank), end the process.
            if not self.stopped.wait(self.grace_s):
                print(f"[rank {self.ctx.rank}] stopping: {_peer_message(failure)}", file=sys.stderr, flush=True)
                os._exit(1)
            return


def _peer_message(failure: dict) -> str:
    who = "another rank" if failure["rank"] < 0 else f"rank {failure['rank']}"
    return f"{who} failed: {failure['error']}" + (f"\n{failure['traceback']}" if failure.get("traceback") else "")


def run_guarded(fn: Callable[..., T], ctx: DistContext, *args, poll_s: float = 0.5, grace_s: float = 5.0,
                **kwargs) -> T:
    """``fn(*args, **kwargs)`` on this rank, such that a rank that fails stops every other rank with its error.

    Mechanism (no hang, whatever the others are doing when one fails):

    1. The failing rank writes its error (type, message, traceback tail) under ``fermetric/failure`` in the
       process group's rendezvous store (the TCPStore torchrun or ``env://`` set up; first failure wins), then
       re-raises: its process exits non-zero, as torchrun and ``torch.multiprocessing.spawn`` expect.
    2. Every rank runs a watchdog thread polling that key every ``poll_s`` seconds. When another rank's failure
       appears, it raises :class:`PeerFailure` (message: that rank's error) in the thread running ``fn``; a rank
       that sits in a collective fails there anyway (gloo sees the dead peer's closed connection) and that error
       is also turned into PeerFailure. A rank stuck in C++ for ``grace_s`` more seconds (an NCCL collective
       waiting for the dead rank) prints the error and exits with ``os._exit(1)``.
    3. If rank 0 fails (it hosts the store when launched with ``env://`` outside torchrun), it waits up to
       ``grace_s`` for the others to have read the error before exiting; a watchdog that loses the store for
       ``grace_s`` stops its rank too.
    4. On success every rank stops its watchdog, then counts itself done in the store; rank 0 leaves last (or
       raises PeerFailure if a rank fails meanwhile), so no watchdog mistakes a finished rank 0 for a failed one.

    The process group's timeout (``DistContext.from_env(timeout_s=...)``) remains the backstop for a rank
    that hangs without raising. In a single process this is just ``fn(*args, **kwargs)``.
    """
    store = _store() if ctx.distributed else None
    if store is None:
        return fn(*args, **kwargs)
    watchdog = _Watchdog(ctx, store, poll_s, grace_s)
    watchdog.start()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        watchdog.stopped.set()
        peer = watchdog.peer
        if peer is None:
            try:
                peer = _read_failure(store)
            except Exception:  # noqa: BLE001
                peer = None
        if peer is not None and peer["rank"] != ctx.rank:
            if isinstance(exc, KeyboardInterrupt):
                raise  # interrupted itself: torchrun forwards Ctrl-C and SIGTERM to every rank
            if peer.get("interrupted"):
                raise PeerInterrupted(_peer_message(peer), int(peer.get("exit_code", 130))) from None
            raise PeerFailure(_peer_message(peer)) from (None if isinstance(exc, PeerFailure) else exc)
        try:
            store.compare_set(FAILURE_KEY, "", _describe(exc, ctx.rank))
            if ctx.rank == 0:  # the store may live in this process: let the others read it first
                deadline = time.monotonic() + grace_s
                while store.add(FAILURE_SEEN_KEY, 0) < ctx.world_size - 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the store is gone too: the launcher and the timeout remain
            pass
        raise
    try:
        watchdog.stopped.set()
        watchdog.join()
    except PeerFailure:  # the watchdog's exception landed just as fn returned
        pass
    if watchdog.peer is not None:  # a peer failed as we finished: do not report success
        raise PeerFailure(_peer_message(watchdog.peer))
    store.add(DONE_KEY, 1)
    if ctx.rank == 0:  # leave last (the store may live here): until every rank is done, or one has failed
        deadline = time.monotonic() + 1800.0
        while store.add(DONE_KEY, 0) < ctx.world_size and time.monotonic() < deadline:
            failure = _read_failure(store)
            if failure is not None:
                raise PeerFailure(_peer_message(failure))
            time.sleep(0.05)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Sharding the batches
# ----------------------------------------------------------------------------------------------------------------


def check_global_batch(batch_size: int, world_size: int) -> int:
    """The per-rank batch size of a global ``batch_size`` over ``world_size`` processes, or a RecipeError.

    The engine calls this before anything runs: the global batch must split evenly (else 2 processes do not
    train on the batches one process does) and leave each rank at least 2 images (BatchNorm in training mode
    and pair-based losses need them).
    """
    if world_size > 1 and (batch_size % world_size or batch_size // world_size < 2):
        raise RecipeError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over {world_size} processes "
            f"with at least 2 images each; use a multiple of {world_size} (>= {2 * world_size})"
        )
    return batch_size // max(1, world_size)


def _class_block(batch_sampler) -> int | None:
    """``m`` of a class-balanced sampler whose batches are laid out class by class, ``m`` indices per class."""
    block = getattr(batch_sampler, "class_block", None)
    if block:
        return int(block)
    inner = getattr(batch_sampler, "_sampler", None)  # fermetric's m_per_class wraps PML's MPerClassSampler
    try:
        from pytorch_metric_learning.samplers import MPerClassSampler
    except ImportError:  # pragma: no cover - PML is a dependency
        return None
    if isinstance(inner, MPerClassSampler) and inner.batch_size is not None:
        return int(inner.m_per_class)
    return None


class ShardedBatchSampler:
    """This rank's share of every global batch of ``batch_sampler``.

    ``batch_sampler``: an iterable of index lists with ``len()`` and ``set_epoch(epoch)`` (fermetric's
    samplers). Every rank builds the same sampler (same labels, batch size and seed), so every rank iterates the
    same global batches, deterministic per (seed, epoch): resume is exact. ``len()`` is the wrapped sampler's,
    the same on every rank (so every rank takes part in the same number of DDP steps); ``set_epoch`` forwards.

    Split of a global batch of ``n`` indices over ``W = world_size`` ranks (each rank gets ``n // W``):

    * Generic (``random``): rank ``r`` takes the contiguous chunk ``[r*n//W, (r+1)*n//W)``, so the ranks'
      batches concatenated in rank order are the global batch in its own order (what :class:`GlobalBatchLoss`
      sees). **Uneven batches: the last ``n % W`` indices are dropped** (at most ``W - 1`` images of that batch,
      a random choice since batches are shuffled; every rank must have the same batch size for the all-gather
      and DDP's averaging to be exact). A batch with fewer than ``W`` indices (a training set smaller than
      the number of processes) is padded by repeating its indices cyclically, so that no rank ever gets an
      empty batch and ``len()`` stays true. :func:`check_global_batch` keeps recipes away from both cases.
    * Class-balanced (``m_per_class``, batches laid out class by class, ``m`` consecutive indices per class as
      PML's MPerClassSampler yields them): if ``W`` divides ``m``, **each rank takes ``m / W`` images of every
      class of the batch**, so each rank's batch is a miniature of the global one: the same expressions in the
      same proportions, which keeps each rank's BatchNorm statistics and its local cross-entropy representative
      (taking whole classes would give each rank only some expressions). Otherwise, if ``W`` divides the
      number of classes per batch ``n / m``, each rank takes whole classes (``n / (m W)`` classes of ``m``
      images): still balanced, less representative. Neither: a RecipeError naming what would work.
      ``class_block`` (``m``) is read from the sampler (a ``class_block`` attribute, or the PML
      MPerClassSampler that fermetric's ``m_per_class`` wraps); pass it for another class-balanced sampler.
    """

    def __init__(self, batch_sampler, rank: int, world_size: int, class_block: int | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardedBatchSampler: rank {rank} not in [0, {world_size})")
        self.batch_sampler = batch_sampler
        self.rank, self.world_size = int(rank), int(world_size)
        self.class_block = int(class_block) if class_block else _class_block(batch_sampler)
        self.mode = "chunks"
        if self.class_block and world_size > 1:
            m, batch_size = self.class_block, getattr(batch_sampler, "batch_size", None)
            if m % world_size == 0:
                self.mode = "within_class"
            elif batch_size is not None and (batch_size // m) % world_size == 0:
                self.mode = "whole_classes"
            else:
                raise RecipeError(
                    f"m_per_class sampler over {world_size} processes: m={m} images per class must be a multiple of "
                    f"{world_size} (each process takes m/{world_size} of every class), or the {batch_size}//{m} "
                    f"classes per batch must be; e.g. m={world_size * max(1, m // world_size)}"
                )

    @property
    def epoch(self) -> int:
        return getattr(self.batch_sampler, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for batch in self.batch_sampler:
            yield self.shard(list(batch))

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's part of one global batch (see the class docstring)."""
        w, r = self.world_size, self.rank
        if w == 1:
            return batch
        n = len(batch)
        if self.mode != "chunks" and n % self.class_block == 0:
            m = self.class_block
            blocks = [batch[i : i + m] for i in range(0, n, m)]
            if self.mode == "within_class":
                s = m // w
                return [i for block in blocks for i in block[r * s : (r + 1) * s]]
            if len(blocks) % w == 0:
                k = len(blocks) // w
                return [i for block in blocks[r * k : (r + 1) * k] for i in block]
        if 0 < n < w:
            batch = [batch[i % n] for i in range(w)]
            n = w
        per = n // w
        return batch[r * per : (r + 1) * per]


# ----------------------------------------------------------------------------------------------------------------
# Global-batch losses
# ----------------------------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, without gradient (labels). Same shape on
    every rank."""
    rank, world = _world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, the local slice keeping its autograd graph.

    The other ranks' slices are constants here: the gradient of anything computed from the result flows back to
    this rank's ``tensor`` only (the corresponding slice of the gradient, unscaled), with no communication in
    the backward pass. Every rank must pass the same shape (:class:`ShardedBatchSampler` guarantees it). Use
    :class:`GlobalBatchLoss` for losses: it applies the gradient scaling DDP's averaging requires.
    """
    rank, world = _world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank] = tensor
    return torch.cat(parts)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class GlobalBatchLoss(nn.Module):
    """A loss computed on the global batch: every rank's inputs and labels all-gathered, the loss computed on
    their concatenation (rank order). In a single process it is the wrapped loss, unchanged.

    **Scaling rule.** The returned value is exactly the single-process loss ``L`` of the concatenated batch (so
    logged losses mean the same at any world size). The gradient reaching this rank's local inputs is
    ``world_size * dL/d(local slice)``: every rank computes the same ``L`` but differentiates only through its own
    slice, and DDP *averages* parameter gradients over ranks, so the model's gradients after DDP equal the
    single-process gradients ``sum_r dL/de_r * de_r/dtheta``. (PML's ``DistributedLossWrapper`` returns
    ``world_size * L`` instead: the same model gradients, but a scaled value and scaled gradients for a loss's
    own parameters.) The loss's own parameters (centres, proxies, ArcFace weights) get the plain ``dL/dtheta``,
    identical on every rank since every rank computes ``L`` on the same global batch; keep them identical with
    :func:`sync_loss_parameters`.

    ``miner``: run on the global batch (a miner's indices from a local batch would not address the global one,
    so ``indices_tuple`` may not be passed to ``forward``).

    Losses with ``uses_logits = True`` (cross-entropy) need no gather: the mean over a rank's batch, averaged by
    DDP over equal-sized rank batches, is the global mean. (Not exactly with ``class_weights``, a weighted mean
    whose denominator differs per rank: wrap such a loss too if that matters; the wrapper passes
    ``uses_logits`` through and gathers the logits.)

    ``state_dict()`` / ``load_state_dict()`` have the wrapped loss's keys, so checkpoints move between 1 and N
    processes.
    """

    def __init__(self, loss: nn.Module, miner: Callable | None = None):
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.uses_logits = bool(getattr(loss, "uses_logits", False))
        self._register_state_dict_hook(_strip_prefix)
        self._register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("GlobalBatchLoss: pass the miner to the wrapper (it mines the global batch), not an "
                             "indices_tuple of the local batch")
        _, world = _world()
        if world > 1:
            embeddings = gather_with_grad(_ScaleGrad.apply(embeddings, float(world)))
            labels = all_gather_tensor(labels.to(embeddings.device))
        if self.miner is not None:
            return self.loss(embeddings, labels, indices_tuple=self.miner(embeddings, labels))
        return self.loss(embeddings, labels)

    def extra_repr(self) -> str:
        return "gathered over ranks"


def _strip_prefix(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "loss.")]:
        state_dict[prefix + key[len(prefix) + len("loss."):]] = state_dict.pop(key)
    return state_dict


def _add_prefix(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "loss.")]:
        state_dict[prefix + "loss." + key[len(prefix):]] = state_dict.pop(key)


def distribute_objective(objective, world_size: int, gather_logit_losses: bool = False):
    """Wrap the metric terms of a :class:`fermetric.training.objective.Objective` in :class:`GlobalBatchLoss`
    (in place; the term's miner moves into the wrapper). Terms on logits stay local unless
    ``gather_logit_losses``. A no-op for ``world_size == 1``. Returns ``objective``."""
    if world_size <= 1:
        return objective
    for term in objective.terms:
        if isinstance(term.module, GlobalBatchLoss) or (term.uses_logits and not gather_logit_losses):
            continue
        term.module = GlobalBatchLoss(term.module, miner=term.miner)
        term.miner = None
    return objective


# ----------------------------------------------------------------------------------------------------------------
# Loss-owned parameters
# ----------------------------------------------------------------------------------------------------------------


def _tensors(modules: Iterable[nn.Module], buffers: bool) -> list[torch.Tensor]:
    seen, out = set(), []
    for module in modules:
        items = list(module.parameters()) + (list(module.buffers()) if buffers else [])
        for t in items:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


@torch.no_grad()
def broadcast_parameters(modules: Iterable[nn.Module], src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers of ``modules`` (the loss modules) to every rank. Call once after
    building and moving them to the device (NCCL broadcasts device tensors), and after loading a checkpoint if
    only rank 0 loaded it. DDP does the same for the model when it wraps it."""
    _, world = _world()
    if world == 1:
        return
    for t in _tensors(modules, buffers=True):
        dist.broadcast(t.data, src=src)


@torch.no_grad()
def sync_loss_parameters(modules: Iterable[nn.Module]) -> None:
    """Average the gradients of the loss modules' parameters over ranks (one all-reduce for all of them).

    Call after ``backward()`` and before unscaling, clipping and the optimizer step: with identical starting
    values (:func:`broadcast_parameters`) and identical averaged gradients, every rank's optimizer keeps the
    loss parameters identical. This is fermetric's rule for loss-owned parameters, rather than putting the loss
    modules in the DDP-wrapped module (they run outside the model's forward, where DDP's reducer does not
    expect them). For a :class:`GlobalBatchLoss` the gradients are already the same on every rank, and averaging
    keeps them so; for a loss left local it turns per-rank gradients into their mean, the global gradient of a
    per-sample mean. No host synchronisation: a parameter's gradient must be None on every rank or on none (it is,
    for losses computed on every rank, as the gathered ones must be); one without a gradient contributes zeros
    and keeps None.
    """
    _, world = _world()
    if world == 1:
        return
    params = [p for p in _tensors(modules, buffers=False) if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
