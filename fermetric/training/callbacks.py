"""The engine's own callbacks: model selection, early stopping, history, progress, curves, checkpoints.

Every run uses them in the order of :func:`default_callbacks`; the recipe's ``[[callback]]`` tables (registered
callbacks such as ``tensorboard``) run after them and before the checkpointer, which is always last so that a
checkpoint holds every callback's state as of the end of the epoch.
"""

from __future__ import annotations

from typing import Any

from rich.progress import TextColumn

from fermetric.contracts import Callback
from fermetric.progress import progress_bar
from fermetric.runfolder import save_checkpoint


class ModelSelection(Callback):
    """Tracks the epoch selected so far: the best validation accuracy (ties keep the earlier epoch), or the
    last epoch when there is no validation data. Sets ``loop.improved`` and ``loop.best``."""

    def on_epoch_end(self, loop) -> None:
        score = loop.row["val_accuracy"] if "val_accuracy" in loop.row else float(loop.epoch)
        loop.improved = score > loop.best["score"]
        if loop.improved:
            loop.best = {"score": score, "epoch": loop.epoch}


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without a better validation score (0: never; no validation data: never)."""

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.stale = 0

    def on_epoch_end(self, loop) -> None:
        self.stale = 0 if loop.improved else self.stale + 1
        if self.patience and loop.val is not None and self.stale >= self.patience:
            loop.should_stop = True
            loop.log(f"early stop: no validation improvement for {self.stale} epochs")

    def state_dict(self) -> dict[str, Any]:
        return {"stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stale = int(state.get("stale", 0))


class HistoryCSV(Callback):
    """One row per epoch in the fold's ``history.csv``; a resumed run drops rows after its checkpoint."""

    def on_fit_start(self, loop) -> None:
        if loop.start_epoch:
            loop.folder.truncate_history(loop.start_epoch)
        else:
            loop.folder.history_file.unlink(missing_ok=True)

    def on_epoch_end(self, loop) -> None:
        loop.folder.append_history(loop.row)


class ConsoleProgress(Callback):
    """A progress bar per epoch on a terminal (loss and img/s refreshed every ``refresh_every`` batches, the only
    device reads inside an epoch), and one log line per epoch everywhere."""

    def __init__(self, refresh_every: int = 10):
        self.refresh_every = max(1, int(refresh_every))
        self._bar = self._task = None

    def on_epoch_start(self, loop) -> None:
        fold = f"fold {loop.fold + 1}/{loop.n_folds} " if loop.n_folds > 1 else ""
        self._bar = progress_bar(TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s"))
        self._bar.__enter__()
        self._task = self._bar.add_task(f"{fold}epoch {loop.epoch + 1}/{loop.epochs}", total=loop.batches, loss=0.0, ips=0.0)

    def on_batch_end(self, loop) -> None:
        if self._bar.disable:
            return
        fields = {}
        if loop.step % self.refresh_every == 0 or loop.step == loop.batches:
            import time

            loss, _ = loop.running()
            fields = {"loss": loss, "ips": loop._seen / max(time.perf_counter() - loop._t0, 1e-9)}
        self._bar.update(self._task, advance=1, **fields)

    def on_epoch_end(self, loop) -> None:
        self._close()
        row = loop.row
        fold = f"fold {loop.fold + 1}/{loop.n_folds} " if loop.n_folds > 1 else ""
        val = f" val_acc {row['val_accuracy']:.3f}" if "val_accuracy" in row else ""
        terms = " ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
        terms = terms if len(loop.objective.terms) > 1 else ""
        loop.log(f"{fold}epoch {loop.epoch + 1}/{loop.epochs} loss {row['train_loss']:.4f} {terms} train_acc"
                 f" {row['train_accuracy']:.3f}{val} {row['images_per_s']:.0f} img/s")

    def on_fit_end(self, loop) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class TrainingCurves(Callback):
    """``training_curves.png``: every loss term and train/validation accuracy per epoch, from the whole history
    (resumed attempts included)."""

    def __init__(self, title: str = ""):
        self.title = title

    def on_fit_end(self, loop) -> None:
        from fermetric.evaluation.plots import plot_curves

        rows = loop.folder.history()
        if rows:
            plot_curves(rows, loop.folder.curves_png, self.title)


class Checkpointer(Callback):
    """``last.pt`` after every epoch (everything :meth:`TrainLoop.state_dict` holds, plus ``meta``), and
    ``best.pt`` (model, losses, metadata) when the epoch is the selected one so far."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    def on_epoch_end(self, loop) -> None:
        state = loop.state_dict() | {"meta": self.meta}
        if loop.improved:
            # before last.pt: a kill between the two writes must not leave last.pt naming a best.pt that is older
            save_checkpoint({"model": state["model"], "losses": state["losses"], "epoch": loop.epoch, "meta": self.meta},
                            loop.folder.best_checkpoint)
        save_checkpoint(state, loop.folder.last_checkpoint)


class DivergenceMonitor(Callback):
    """Notices a run that trains without learning, which no NaN check sees (AdamW at lr 1000 stays finite and at
    chance): after ``epochs`` consecutive epochs whose training loss is above the first epoch's, or whose training
    accuracy is at chance (at most 1/classes + 2 points), it warns once (console, log.txt and run.json's
    ``warnings``). Training goes on: the epoch selection and the test still report what the run is worth."""

    def __init__(self, num_classes: int, epochs: int = 3):
        self.chance = 1.0 / max(int(num_classes), 1)
        self.epochs = int(epochs)
        self.first_loss: float | None = None
        self.bad = 0
        self.warned = False

    def on_epoch_end(self, loop) -> None:
        row = loop.row
        if self.first_loss is None:
            self.first_loss = float(row["train_loss"])
            return
        above = float(row["train_loss"]) > self.first_loss
        at_chance = float(row["train_accuracy"]) <= self.chance + 0.02
        self.bad = self.bad + 1 if (above or at_chance) else 0
        if self.bad >= self.epochs and not self.warned:
            self.warned = True
            why = "the training loss is above its first epoch's" if above else f"training accuracy is at chance ({self.chance:.3f})"
            loop.warn(f"{loop.folder.root.name}: training looks diverged at epoch {loop.epoch + 1}: {why} for {self.bad}"
                      f" epochs in a row (train.lr = {loop.row['lr']:.3g}); lower train.lr or check the loss parameters")

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss, "bad": self.bad, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_loss, self.bad, self.warned = state.get("first_loss"), int(state.get("bad", 0)), bool(state.get("warned"))


def default_callbacks(patience: int, title: str = "", num_classes: int = 2) -> list[Callback]:
    """The engine's callbacks, in the order they run (the checkpointer is added last by the engine)."""
    return [ModelSelection(), HistoryCSV(), ConsoleProgress(), EarlyStopping(patience), DivergenceMonitor(num_classes),
            TrainingCurves(title)]
