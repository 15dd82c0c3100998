"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Keep every test on the CPU and off the user's cache.
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_data(name: str) -> Path:
    """Path of a dataset folder in ../shared/data, or skip the test."""
    path = SHARED_DATA / name
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"needs {path} (the shared datasets are not beside this checkout)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _crop_cache_outside_the_checkout(tmp_path_factory):
    """Every test (and every subprocess it starts) caches crops in a session folder, never in the checkout's
    .fermetric-cache, which a user's quick start would then read."""
    cache = tmp_path_factory.mktemp("crop-cache")
    previous = os.environ.get("FERMETRIC_CACHE_DIR")
    os.environ["FERMETRIC_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("FERMETRIC_CACHE_DIR", None)
    else:
        os.environ["FERMETRIC_CACHE_DIR"] = previous


@pytest.fixture
def host():
    from fermetric.plugins import get_host

    return get_host()


# A recipe small enough to train in a few seconds on one core.
TINY = [
    "data.subjects=6",
    "data.per_class=3",
    "train.epochs=2",
    "train.batch_size=28",
    "train.sampler.m=4",
    "eval.tsne=false",
    "eval.knn=false",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY + [f'train.cache_dir="{tmp_path / "cache"}"']
