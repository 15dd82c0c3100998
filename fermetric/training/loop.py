"""The training loop: epochs of batches, and callbacks at documented events (:class:`fermetric.contracts.Callback`).

Everything that is not "forward, objective, optimizer step" is a callback: history, checkpoints, early stopping,
console progress, curves, loggers. The loop keeps its running sums on the device and reads them once per epoch
(callbacks that want them sooner call :meth:`TrainLoop.running`), so a GPU step never waits for the host.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np
import torch

from fermetric.contracts import Callback
from fermetric.errors import FermetricError
from fermetric.evaluation.metrics import classification_metrics
from fermetric.model import FERModel, predict
from fermetric.runfolder import RunFolder
from fermetric.training.augment import Augment
from fermetric.training.distributed import DistContext, unwrap
from fermetric.training.objective import Objective
from fermetric.training.optim import OptimizerStep

EVENTS = ("on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainLoop:
    """Trains ``model`` on ``images[labels]`` batches from ``sampler`` for ``epochs`` epochs.

    ``images`` are uint8 (N, C, H, W) crops (on ``device`` or the host), ``val`` an optional (images, labels) pair
    scored after every epoch. ``seed`` makes epoch ``e``'s randomness (augmentation, dropout) a function of
    ``(seed, e)`` alone, so a run resumed at epoch ``e`` continues exactly as an uninterrupted one.
    """

    def __init__(self, *, model: torch.nn.Module, objective: Objective, step: OptimizerStep, sampler, images: torch.Tensor,
                 labels: torch.Tensor, device: torch.device, epochs: int, seed: int, augment: Augment,
                 callbacks: list[Callback], folder: RunFolder, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                 classes: list[str] | None = None, amp_dtype: torch.dtype | None = None, fold: int = 0, n_folds: int = 1,
                 log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
                 ctx: DistContext | None = None, channels_last: bool = False):
        self.ctx = ctx or DistContext()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.loader = None  # set to an iterable of (images, labels) batches to read from a store instead of ``images``
        # ``model`` may be DDP-wrapped (it runs the forward and reduces gradients); ``net`` is the network itself,
        # which validation, checkpoints and callbacks use.
        self.model, self.net = model, unwrap(model)
        self.objective, self.stepper, self.sampler = objective, step, sampler
        self.images, self.labels, self.val, self.classes = images, labels, val, classes or []
        self.device, self.epochs, self.seed, self.augment = device, int(epochs), int(seed), augment
        self.callbacks, self.folder, self.amp_dtype = list(callbacks), folder, amp_dtype
        self.fold, self.n_folds, self.log = fold, n_folds, log
        self.warn = warn or (lambda text: log(f"warning: {text}"))
        self.start_epoch = self.epoch = 0
        self.step = 0
        self.batches = len(sampler)
        self.row: dict[str, Any] = {}
        self.should_stop = False
        self.improved = False
        self.best: dict[str, Any] = {"score": -1.0, "epoch": -1}
        self._sums = self._correct = self._seen = None
        self._t0 = 0.0

    # -- events ---------------------------------------------------------------------------------------------
    def emit(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.emit("on_fit_start")
        for epoch in range(self.start_epoch, self.epochs):
            if self.should_stop:
                break
            self.run_epoch(epoch)
        self.emit("on_fit_end")

    def run_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0
        epoch_seed = self.seed * 100003 + epoch
        # Each process draws its own augmentation and dropout (rank 0's stream is the single process's).
        seed_everything(epoch_seed + 7919 * self.ctx.rank)
        self._gen = torch.Generator().manual_seed(epoch_seed + 7919 * self.ctx.rank)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.model.train()
        self.objective.train()
        self._sums = torch.zeros(1 + len(self.objective.terms), device=self.device, dtype=torch.float64)
        self._correct = torch.zeros((), device=self.device, dtype=torch.long)
        self._seen = 0
        self._data_s = 0.0
        self._t0 = time.perf_counter()
        self.emit("on_epoch_start")
        batches = iter(self.batches_of_epoch())
        while True:
            t_wait = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            self._data_s += time.perf_counter() - t_wait  # host time waiting for the batch (no device sync)
            self.run_iter(x, y)
        lr = self.stepper.lr
        self.stepper.end_epoch()
        self.row = self._epoch_row(lr)
        if self.val is not None:
            self.row |= self.validate()
        self.emit("on_epoch_end")

    def batches_of_epoch(self):
        """(uint8 images, labels) on the device, batch by batch in the sampler's order. Crops held on the device are
        indexed there; a :attr:`loader` (a DataLoader over a memory-mapped store) is used when one is set."""
        if self.loader is not None:
            # BatchLoader has copied them (pinned, non-blocking) and .to() is then free; another loader may not have.
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        for batch in self.sampler:
            idx = torch.as_tensor(batch, device=self.images.device)
            yield self.images[idx].to(self.device, non_blocking=True), self.labels[idx].to(self.device, non_blocking=True)

    def run_iter(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = self.augment(self.net.normalize(x), self._gen).contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            embeddings, logits = self.model(x)
        total, parts = self.objective(embeddings, logits, y)
        self.stepper(total)
        n = len(y)
        self._sums += torch.stack([total.detach(), *(p.detach() for p in parts)]).double() * n
        self._correct += (logits.detach().argmax(1) == y).sum()
        self._seen += n
        self.step += 1
        self.emit("on_batch_end")

    def validate(self) -> dict[str, float]:
        """Validation scores, computed once (rank 0) and shared, so model selection and early stopping agree on
        every process."""
        scores = None
        if self.ctx.is_main:
            images, labels = self.val
            _, logits = predict(self.net, images, self.device)
            m = classification_metrics(labels.numpy(), logits.argmax(1), self.classes)
            scores = {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}
        return self.ctx.broadcast_object(scores)

    # -- figures --------------------------------------------------------------------------------------------
    def running(self) -> tuple[float, float]:
        """Mean loss and training accuracy of the epoch so far (one read from the device)."""
        seen = max(self._seen, 1)
        return float(self._sums[0]) / seen, int(self._correct) / seen

    def _epoch_row(self, lr: float) -> dict[str, Any]:
        if self.ctx.distributed:  # the epoch's figures over every process's batches: one all-reduce per epoch
            totals = torch.cat([self._sums, self._correct.double().reshape(1),
                                torch.tensor([float(self._seen)], dtype=torch.float64, device=self._sums.device)])
            self.ctx.all_reduce_sum(totals)
            self._sums, self._correct, self._seen = totals[:-2], totals[-2].long(), int(totals[-1])
        sums = self._sums.tolist()
        seen = max(self._seen, 1)
        if not all(np.isfinite(sums)):
            terms = ", ".join(f"{name}={v / seen:.4g}" for name, v in zip(self.objective.labels, sums[1:]))
            raise FermetricError(
                f"loss became {sums[0] / seen} in epoch {self.epoch + 1} (terms: {terms}); lower train.lr or check the"
                " loss parameters"
            )
        seconds = time.perf_counter() - self._t0
        row = {"epoch": self.epoch + 1, "lr": lr, "train_loss": sums[0] / seen}
        row |= {f"loss_{name}": v / seen for name, v in zip(self.objective.labels, sums[1:])}
        row |= {"train_accuracy": int(self._correct) / seen, "seconds": round(seconds, 3),
                "images_per_s": round(self._seen / seconds, 1) if seconds > 0 else 0.0,
                "data_seconds": round(self._data_s, 3)}
        return row

    # -- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: weights, optimizer, schedule, scaler, callbacks."""
        return {
            "model": self.net.state_dict(),
            "losses": self.objective.state_dict(),
            **self.stepper.state_dict(),
            "epoch": self.epoch,
            "best": dict(self.best),
            "stopped": self.should_stop,
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks if c.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.objective.load_state_dict(state["losses"])
        self.stepper.load_state_dict(state)
        self.start_epoch = self.epoch = int(state["epoch"]) + 1
        self.best = dict(state["best"])
        self.should_stop = bool(state.get("stopped", False))
        saved = state.get("callbacks", {})
        for callback in self.callbacks:
            name = type(callback).__name__
            if name in saved:
                callback.load_state_dict(saved[name])
            elif "stale" in state and hasattr(callback, "stale"):  # checkpoints of fermetric 0.1 kept it at the top
                callback.load_state_dict({"stale": int(state["stale"])})
