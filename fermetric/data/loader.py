"""Training batches through ``torch.utils.data.DataLoader``: crops gathered by workers, copied to the device.

:class:`BatchLoader` yields the batches of a batch sampler (an iterable of index lists with ``len()``, iterated
again each epoch, such as fermetric's samplers), in the sampler's order, as ``(images uint8 (B, C, H, W), labels
(B,))`` on the device. The images come from a :class:`~fermetric.data.store.CropArray` (each worker opens the
store's file itself: the array pickles as its path) or from a tensor in host memory. A batch is gathered in one
call (``__getitems__``), not image by image. The DataLoader gets its own ``torch.Generator``, so creating its
iterator draws nothing from the global RNG: training with the loader sees the same random numbers (dropout,
initialisation of later folds) as direct indexing.

The time spent waiting for data is measured by the consumer (the training loop's ``data_seconds``, for every
batch source alike), not here.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fermetric.data.store import CropArray


class CropBatches(Dataset):
    """(images, labels) of a :class:`CropArray` or a uint8 tensor, gathered a batch at a time."""

    def __init__(self, images: CropArray | torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels).cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        images = self.images[idx] if isinstance(self.images, CropArray) else self.images[torch.from_numpy(idx)]
        return images, self.labels[torch.from_numpy(idx)]


def _as_batch(batch: Any) -> Any:
    """collate_fn: ``__getitems__`` returns the batch already."""
    return batch


class BatchLoader:
    """The batches of ``batch_sampler`` over ``images``/``labels``, through a DataLoader, on ``device``.

    workers: DataLoader worker processes (0: gathered in this process). pin_memory: page-locked host batches
    (only when CUDA is available), copied with ``non_blocking=True``. persistent_workers: keep the workers between
    epochs (with workers > 0). prefetch_factor: batches each worker prepares ahead.
    """

    def __init__(self, images: CropArray | torch.Tensor, labels: torch.Tensor, batch_sampler: Iterable,
                 device: torch.device | str = "cpu", workers: int = 0, pin_memory: bool = True,
                 persistent_workers: bool = True, prefetch_factor: int = 2, timeout: float = 0):
        if isinstance(images, torch.Tensor) and images.device.type != "cpu":
            raise ValueError("BatchLoader reads images from the host (a CropArray or a CPU tensor); a tensor already"
                             " on the device is indexed directly")
        self.batch_sampler = batch_sampler
        self.device = torch.device(device)
        self.workers = int(workers)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available() and self.device.type == "cuda"
        self.dataset = CropBatches(images, labels)
        kwargs: dict[str, Any] = {}
        if self.workers > 0:
            kwargs = dict(persistent_workers=bool(persistent_workers), prefetch_factor=int(prefetch_factor),
                          timeout=timeout)
        self.loader = DataLoader(self.dataset, batch_sampler=batch_sampler, num_workers=self.workers,
                                 pin_memory=self.pin_memory, collate_fn=_as_batch,
                                 generator=torch.Generator().manual_seed(0), **kwargs)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
