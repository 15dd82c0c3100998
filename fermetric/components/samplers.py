"""Batch samplers: which training images go into each batch.

Every sampler is built as ``factory(labels, batch_size, seed, **params)``, yields lists of dataset indices
and has ``set_epoch(epoch)``: the batches of epoch ``e`` depend only on ``(seed, e)``, never on what was
iterated before, so a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run would.

* ``random``: a shuffled pass over the training set.
* ``m_per_class``: batches of ``batch_size / m`` expressions with ``m`` images each (PML's
  MPerClassSampler), so that every batch has positives and negatives for the metric losses.
"""

import math

import numpy as np
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch.utils.data import Sampler

import fermetric
from fermetric.errors import RecipeError


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    # SeedSequence mixes (seed, epoch) properly: nearby pairs give unrelated streams.
    return np.random.default_rng([seed, epoch])


class _EpochSampler(Sampler):
    """Shared epoch bookkeeping."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class RandomBatchSampler(_EpochSampler):
    """Shuffled batches covering the training set once per epoch.

    ``drop_last`` (default on) drops the final short batch: a batch of one sample breaks BatchNorm in
    training mode and has no pairs for a metric loss. A training set smaller than one batch still gives one.
    """

    def __init__(self, labels: list[int], batch_size: int, seed: int, drop_last: bool = True):
        super().__init__(seed)
        if batch_size < 1:
            raise RecipeError(f"random sampler: batch_size must be >= 1, got {batch_size}")
        self.num_samples = len(labels)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __len__(self) -> int:
        if self.num_samples == 0:
            return 0
        if self.drop_last:
            return max(1, self.num_samples // self.batch_size)
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        order = _epoch_rng(self.seed, self.epoch).permutation(self.num_samples).tolist()
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class MPerClassBatchSampler(_EpochSampler):
    """Batches of ``batch_size // m`` distinct expressions, ``m`` images each, from PML's MPerClassSampler.

    An epoch has as many batches as a pass over the training set would (at least one); images of rare
    expressions repeat within an epoch, those of frequent ones are sub-sampled, which balances the classes.
    A class with fewer than ``m`` images is sampled with replacement.
    """

    def __init__(self, labels: list[int], batch_size: int, seed: int, m: int = 4):
        super().__init__(seed)
        _check_m_per_class(labels, batch_size, m)
        self.batch_size = int(batch_size)
        # Batches are laid out class by class, m images each: what a per-process shard must keep whole (DDP).
        self.class_block = int(m)
        self.num_batches = max(1, len(labels) // self.batch_size)
        self._sampler = MPerClassSampler(
            list(labels), m, batch_size=self.batch_size, length_before_new_iter=self.num_batches * self.batch_size
        )
        # MPerClassSampler shuffles this list in place, so each __iter__ restarts from the same order.
        self._class_order = list(self._sampler.labels)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        # MPerClassSampler draws from PML's module-level NumPy RNG; lend it a generator seeded from
        # (seed, epoch) for the duration of one epoch, leaving the global NumPy state alone.
        rng = np.random.RandomState(_epoch_rng(self.seed, self.epoch).integers(2**32))
        self._sampler.labels = list(self._class_order)
        saved = pml_common.NUMPY_RANDOM
        pml_common.NUMPY_RANDOM = rng
        try:
            indices = [int(i) for i in self._sampler]
        finally:
            pml_common.NUMPY_RANDOM = saved
        for b in range(self.num_batches):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]


def _check_m_per_class(labels, batch_size, m) -> None:
    """Reject what MPerClassSampler would assert on, with values that would work."""
    num_classes = len(set(labels))
    if m < 1 or batch_size < 1 or num_classes == 0:
        raise RecipeError(f"m_per_class sampler: need m >= 1, batch_size >= 1 and labelled data (m={m})")
    if batch_size % m == 0 and m * num_classes >= batch_size:
        return
    valid_m = [k for k in range(1, batch_size + 1) if batch_size % k == 0 and k * num_classes >= batch_size]
    raise RecipeError(
        f"m_per_class sampler: m={m} does not fit batch_size={batch_size} with {num_classes} classes "
        f"(m must divide batch_size, and batch_size / m classes must exist). "
        f"Use m in {valid_m}, or a batch_size that is a multiple of m up to {m * num_classes}."
    )


@fermetric.hookimpl
def register_samplers(register):
    register("random", RandomBatchSampler)
    register("m_per_class", MPerClassBatchSampler)
