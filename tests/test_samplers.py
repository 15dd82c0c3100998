"""Batch samplers: batch composition, length, and batches that depend only on (seed, epoch)."""

from collections import Counter

import numpy as np
import pluggy
import pytest

import fermetric.components.samplers
from fermetric import hookspecs
from fermetric.errors import RecipeError
from fermetric.components.samplers import MPerClassBatchSampler, RandomBatchSampler

# Unbalanced like a FER training set: one frequent expression, one with fewer images than m.
LABELS = [0] * 40 + [1] * 20 + [2] * 15 + [3] * 10 + [4] * 8 + [5] * 4 + [6] * 3


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_hook_registers_both_samplers():
    pm = pluggy.PluginManager("fermetric")
    pm.add_hookspecs(hookspecs)
    pm.register(fermetric.components.samplers)
    registered = {}
    pm.hook.register_samplers(register=registered.__setitem__)
    assert registered == {"random": RandomBatchSampler, "m_per_class": MPerClassBatchSampler}


@pytest.mark.parametrize("m, batch_size", [(4, 16), (4, 28), (2, 8)])
def test_m_per_class_batches_hold_m_samples_of_each_class(m, batch_size):
    sampler = MPerClassBatchSampler(LABELS, batch_size, seed=0, m=m)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == len(LABELS) // batch_size
    for batch in batches:
        assert len(batch) == batch_size
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == batch_size // m
        assert all(c == m for c in counts.values())  # so >= 2 per class present: positives for every anchor


def test_m_per_class_batches_depend_only_on_seed_and_epoch():
    fresh = MPerClassBatchSampler(LABELS, 16, seed=3, m=4)
    used = MPerClassBatchSampler(LABELS, 16, seed=3, m=4)
    for epoch in range(3):  # iterating earlier epochs must not change epoch 3 (resume == uninterrupted)
        _epoch(used, epoch)
    assert _epoch(fresh, 3) == _epoch(used, 3)
    assert _epoch(fresh, 3) == _epoch(fresh, 3)
    assert _epoch(fresh, 3) != _epoch(fresh, 4)
    assert _epoch(fresh, 3) != _epoch(MPerClassBatchSampler(LABELS, 16, seed=4, m=4), 3)


def test_m_per_class_leaves_the_global_numpy_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    _epoch(MPerClassBatchSampler(LABELS, 16, seed=0, m=4), 0)
    assert np.random.rand() == expected


def test_m_per_class_rejects_an_impossible_m_with_working_values():
    with pytest.raises(RecipeError, match=r"Use m in \[16, 32, 64\]"):
        MPerClassBatchSampler(LABELS, 64, seed=0, m=4)  # 7 classes x 4 < 64
    with pytest.raises(RecipeError, match="m=3 does not fit"):
        MPerClassBatchSampler(LABELS, 16, seed=0, m=3)  # 3 does not divide 16


def test_random_covers_every_sample_once_per_epoch():
    sampler = RandomBatchSampler(LABELS, 16, seed=0, drop_last=False)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == 7
    assert sorted(i for b in batches for i in b) == list(range(len(LABELS)))


def test_random_drop_last():
    sampler = RandomBatchSampler(LABELS, 16, seed=0)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == len(LABELS) // 16
    assert all(len(b) == 16 for b in batches)
    # A training set smaller than a batch still trains.
    assert _epoch(RandomBatchSampler([0, 1, 0], 16, seed=0), 0) != []


def test_random_batches_depend_only_on_seed_and_epoch():
    a, b = RandomBatchSampler(LABELS, 16, seed=1), RandomBatchSampler(LABELS, 16, seed=1)
    _epoch(b, 0)
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(a, 2) != _epoch(a, 1)
    assert _epoch(a, 2) != _epoch(RandomBatchSampler(LABELS, 16, seed=2), 2)
