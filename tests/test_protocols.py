"""Evaluation protocols: subject-independent folds, given splits, validation carved from training data only.

The CK+48 and FER2013 tests read only the manifests (no image is decoded): a ``Prepared`` is built from the
dataset's samples and labels with 1x1 dummy images. They skip when ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fermetric.components.datasets import manifest_dataset
from fermetric.contracts import FaceDataset, Sample
from fermetric.errors import FermetricError, RecipeError
from fermetric.data.pipeline import Prepared
from fermetric.data.protocols import Fold, groups_of, make_folds
from fermetric.recipe import SCHEMA

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def eval_cfg(**changes) -> dict:
    return {key: default for key, (_, default) in SCHEMA["eval"].items()} | changes


def prepared_of(dataset: FaceDataset) -> Prepared:
    index = {c: i for i, c in enumerate(dataset.classes)}
    labels = torch.tensor([index[s.label] for s in dataset.samples])
    return Prepared(torch.zeros((len(labels), 1, 1, 1), dtype=torch.uint8), labels, dataset.samples, dataset.classes, False)


def manifest(name: str) -> Prepared:
    path = SHARED_DATA / name / "manifest.csv"
    if not path.is_file():
        pytest.skip(f"needs {path} (the shared datasets are not beside this checkout)")
    return prepared_of(manifest_dataset(path))


@pytest.fixture(scope="module")
def ckplus() -> Prepared:
    return manifest("ckplus48")


@pytest.fixture(scope="module")
def fer2013() -> Prepared:
    return manifest("fer2013")


def toy(subjects: int = 12, per_class: int = 3, classes: int = 4, with_subjects: bool = True) -> Prepared:
    names = [f"c{i}" for i in range(classes)]
    samples = [
        Sample(key=f"s{s}/{c}/{k}", label=names[c], subject=f"s{s}" if with_subjects else None, meta={"split": "train" if s < subjects - 3 else "test"})
        for s in range(subjects) for c in range(classes) for k in range(per_class)
    ]
    return prepared_of(FaceDataset("toy", names, samples))


def subjects(prepared: Prepared, idx: np.ndarray) -> set[str]:
    return {prepared.samples[i].subject for i in idx}


def assert_disjoint(fold: Fold) -> None:
    assert not set(fold.train) & set(fold.test)
    assert not set(fold.val) & set(fold.test), "validation images taken from the test set"
    assert not set(fold.train) & set(fold.val)


def assert_subject_independent(prepared: Prepared, fold: Fold) -> None:
    test = subjects(prepared, fold.test)
    assert not test & subjects(prepared, fold.train), f"fold {fold.index}: a test subject is in training"
    assert not test & subjects(prepared, fold.val), f"fold {fold.index}: a test subject is in validation"
    assert not subjects(prepared, fold.train) & subjects(prepared, fold.val), f"fold {fold.index}: validation shares subjects with training"


# -- CK+48: 10-fold by subject ------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_ckplus_kfold_by_subject(ckplus):
    folds = make_folds(ckplus, eval_cfg(protocol="kfold", folds=10, group_by="subject"), 0.1, seed=0)
    assert len(folds) == 10
    n = len(ckplus.labels)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests) == list(range(n)), "the test folds are a partition of the dataset"
    seen: dict[str, int] = {}
    for fold in folds:
        for subject in subjects(ckplus, fold.test):
            assert subject not in seen, f"subject {subject} is in test folds {seen[subject]} and {fold.index}"
            seen[subject] = fold.index
        assert_disjoint(fold)
        assert_subject_independent(ckplus, fold)
        assert len(fold.train) + len(fold.val) + len(fold.test) == n
        assert 0.05 < len(fold.val) / (len(fold.train) + len(fold.val)) < 0.2
    assert len(seen) == 118
    # Stratified where possible: every expression in every test fold, in roughly the dataset's proportions.
    overall = np.bincount(ckplus.labels.numpy(), minlength=7) / n
    for fold in folds:
        share = np.bincount(ckplus.labels[fold.test].numpy(), minlength=7) / len(fold.test)
        assert (share > 0).all()
        assert np.abs(share - overall).max() < 0.08


@pytest.mark.shared_data
def test_ckplus_folds_are_deterministic_for_a_seed(ckplus):
    cfg = eval_cfg(protocol="kfold", folds=10, group_by="subject")
    a, b = make_folds(ckplus, cfg, 0.1, seed=3), make_folds(ckplus, cfg, 0.1, seed=3)
    for fa, fb in zip(a, b):
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(fa, part), getattr(fb, part))
    c = make_folds(ckplus, cfg, 0.1, seed=4)
    assert any(not np.array_equal(fa.test, fc.test) for fa, fc in zip(a, c)), "another seed should give other folds"


@pytest.mark.shared_data
def test_ckplus_auto_groups_by_subject_and_holdout_is_subject_independent(ckplus):
    assert groups_of(ckplus, "auto") is not None
    (fold,) = make_folds(ckplus, eval_cfg(protocol="holdout", test_fraction=0.2, group_by="auto"), 0.1, seed=0)
    assert_disjoint(fold)
    assert_subject_independent(ckplus, fold)
    assert 0.1 < len(fold.test) / len(ckplus.labels) < 0.3


# -- FER2013: the given split, no subjects ------------------------------------------------------------------
@pytest.mark.shared_data
def test_fer2013_split_protocol_uses_the_usage_column(fer2013):
    cfg = eval_cfg(protocol="split", split_column="usage", train_split="Training", test_split="PublicTest")
    (fold,) = make_folds(fer2013, cfg, 0.1, seed=0)
    usage = np.array([s.meta["usage"] for s in fer2013.samples])
    assert (usage[fold.test] == "PublicTest").all() and len(fold.test) == 3589
    assert (usage[fold.train] == "Training").all() and (usage[fold.val] == "Training").all()
    assert len(fold.train) + len(fold.val) == 28709
    assert 0.08 < len(fold.val) / 28709 < 0.12, "validation carved from the training split"
    assert_disjoint(fold)
    (again,) = make_folds(fer2013, cfg, 0.1, seed=0)
    assert np.array_equal(fold.val, again.val)


@pytest.mark.shared_data
@pytest.mark.parametrize("protocol", ["split", "kfold", "holdout"])
def test_fer2013_group_by_subject_is_an_error_that_says_so(fer2013, protocol):
    cfg = eval_cfg(protocol=protocol, split_column="usage", train_split="Training", test_split="PublicTest", group_by="subject")
    with pytest.raises(RecipeError, match="subject"):
        make_folds(fer2013, cfg, 0.1, seed=0)
    assert groups_of(fer2013, "auto") is None


# -- small generated sets: run everywhere -------------------------------------------------------------------
def test_toy_kfold_groups_and_determinism():
    prepared = toy()
    cfg = eval_cfg(protocol="kfold", folds=3, group_by="subject")
    folds = make_folds(prepared, cfg, 0.2, seed=1)
    assert sorted(np.concatenate([f.test for f in folds])) == list(range(len(prepared.labels)))
    for fold in folds:
        assert_disjoint(fold)
        assert_subject_independent(prepared, fold)
        assert len(fold.val), "validation comes from the training folds"
    again = make_folds(prepared, cfg, 0.2, seed=1)
    assert all(np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test) for a, b in zip(folds, again))


def test_subject_grouping_needs_every_subject():
    with pytest.raises(RecipeError, match="subject"):
        make_folds(toy(with_subjects=False), eval_cfg(protocol="kfold", folds=3, group_by="subject"), 0.1, seed=0)
    prepared = toy()
    prepared.samples[0].subject = None
    with pytest.raises(RecipeError, match="1 of .* no subject"):
        groups_of(prepared, "subject")


def test_without_subjects_auto_is_ungrouped_and_stratified():
    prepared = toy(with_subjects=False)
    folds = make_folds(prepared, eval_cfg(protocol="kfold", folds=3, group_by="auto"), 0.2, seed=0)
    for fold in folds:
        assert_disjoint(fold)
        assert sorted(np.bincount(prepared.labels[fold.test].numpy()).tolist()) == [12, 12, 12, 12]


def test_split_protocol_with_a_val_split_that_overlaps_test_is_refused():
    prepared = toy()
    cfg = eval_cfg(protocol="split", val_split="test")
    with pytest.raises(RecipeError, match="overlaps"):
        make_folds(prepared, cfg, 0.1, seed=0)
    with pytest.raises(RecipeError, match="share"):
        make_folds(prepared, eval_cfg(protocol="split", train_split=["train", "test"]), 0.1, seed=0)
    (fold,) = make_folds(prepared, eval_cfg(protocol="split", group_by="subject"), 0.25, seed=0)
    assert_disjoint(fold)
    assert not subjects(prepared, fold.train) & subjects(prepared, fold.val)


def test_split_protocol_without_the_column_names_it():
    with pytest.raises(RecipeError, match="usage"):
        make_folds(toy(), eval_cfg(protocol="split", split_column="usage"), 0.1, seed=0)


def test_kfold_bounds():
    with pytest.raises(RecipeError, match="at least 2"):
        make_folds(toy(), eval_cfg(protocol="kfold", folds=1), 0.1, seed=0)
    with pytest.raises(FermetricError, match="only 12 groups"):
        make_folds(toy(), eval_cfg(protocol="kfold", folds=13, group_by="subject"), 0.1, seed=0)


def test_validation_needs_two_training_subjects():
    # 2 subjects, 2 folds: each training side holds one person, so no validation can be carved without leaking.
    prepared = toy(subjects=2)
    for fold in make_folds(prepared, eval_cfg(protocol="kfold", folds=2, group_by="subject"), 0.5, seed=0):
        assert len(fold.val) == 0 and len(fold.train) and len(fold.test)
        assert_subject_independent(prepared, fold)


def test_split_protocol_refuses_a_subject_on_both_sides():
    import torch

    from fermetric.components.datasets import Sample
    from fermetric.data.pipeline import Prepared
    from fermetric.data.protocols import make_folds

    samples = [Sample(key=f"k{i}", label="a" if i % 2 else "b", subject=f"s{i // 4}", meta={"split": "test" if i in (3, 4) else "train"})
               for i in range(16)]
    prepared = Prepared(torch.zeros(16, 1, 4, 4, dtype=torch.uint8), torch.tensor([i % 2 for i in range(16)]), samples, ["b", "a"], False)
    cfg = {"protocol": "split", "split_column": "split", "train_split": "train", "test_split": "test", "val_split": "", "group_by": "subject"}
    with pytest.raises(RecipeError, match=r"groups are in both the training and the test split \(e.g. s0, s1\)"):
        make_folds(prepared, cfg, 0.0, 0)
    assert len(make_folds(prepared, cfg | {"group_by": "none"}, 0.0, 0)[0].test) == 2
