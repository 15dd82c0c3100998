"""Built-in registered callbacks (``register_callbacks``): loggers a recipe switches on with ``[[callback]]``.

``tensorboard``: scalars per epoch (every loss term, train accuracy, validation scores, learning rate,
throughput) in the fold's ``tensorboard/`` folder; view with ``tensorboard --logdir RUN_FOLDER``.
"""

from __future__ import annotations

from typing import Any

import fermetric
from fermetric.contracts import Callback
from fermetric.errors import RecipeError

# history row key -> TensorBoard tag
TAGS = {"train_loss": "loss/total", "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/validation",
        "val_macro_f1": "macro_f1/validation", "lr": "optim/lr", "images_per_s": "speed/images_per_s"}


class TensorBoardLogger(Callback):
    """Writes the epoch's figures as TensorBoard scalars (step = epoch number, 1-based).

    flush_secs: how often the event file is flushed. A resumed run purges the events of epochs after its
    checkpoint, so curves never double back.
    """

    def __init__(self, flush_secs: int = 30):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:
            raise RecipeError(f"callback 'tensorboard' needs the tensorboard package: pip install tensorboard ({exc})") from None
        if int(flush_secs) < 1:
            raise RecipeError(f"callback.flush_secs = {flush_secs}: at least 1")
        self.flush_secs = int(flush_secs)
        self.writer = None

    def on_fit_start(self, loop) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(loop.folder.tensorboard_dir), flush_secs=self.flush_secs,
                                    purge_step=loop.start_epoch + 1 if loop.start_epoch else None)

    def on_epoch_end(self, loop) -> None:
        step = loop.epoch + 1
        for key, value in loop.row.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            tag = TAGS.get(key) or (f"loss/{key.removeprefix('loss_')}" if key.startswith("loss_") else f"other/{key}")
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def on_fit_end(self, loop) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        return {}


@fermetric.hookimpl
def register_callbacks(register):
    register("tensorboard", TensorBoardLogger)
