"""The plugin's distance, miner and callback: each against a brute-force reference, then all three in one recipe
run through the installed entry point."""

from __future__ import annotations

import csv
import importlib.metadata
import itertools
from pathlib import Path

import pytest
import torch

from fermetric_example_training import GradNorm, NearestNegativeMiner, manhattan

DIST = "fermetric-example-training"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "extras.toml"


def test_manhattan_is_the_l1_distance_of_l1_normalised_embeddings():
    x = torch.randn(6, 4, dtype=torch.float64)
    z = x / x.abs().sum(dim=1, keepdim=True)
    expected = torch.tensor([[float((z[i] - z[j]).abs().sum()) for j in range(6)] for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(manhattan()(x), expected)


def test_nearest_negative_matches_brute_force():
    torch.manual_seed(0)
    x = torch.randn(10, 5)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 2, 1])
    distance = manhattan()
    a, p, n = NearestNegativeMiner(distance=distance)(x, y)
    d = distance(x)
    expected = []
    for i, j in itertools.permutations(range(10), 2):
        if y[i] == y[j]:
            negatives = [k for k in range(10) if y[k] != y[i]]
            expected.append((i, j, min(negatives, key=lambda k: float(d[i, k]))))
    assert sorted(zip(a.tolist(), p.tolist(), n.tolist())) == sorted(expected)


def test_grad_norm_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="every"):
        GradNorm(every=0)


def _installed_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{DIST} is not pip-installed here (scripts/bootstrap.sh installs it: pip install -e plugins/{DIST})")


def test_a_recipe_uses_the_plugins_distance_miner_and_callback_through_the_entry_point(tmp_path, monkeypatch):
    from fermetric.engine import run_recipe
    from fermetric.plugins import PluginHost
    from fermetric.runfolder import RunFolder

    version = _installed_version()
    monkeypatch.setenv("MPLBACKEND", "Agg")
    host = PluginHost(allow=[DIST])
    assert {"manhattan"} <= set(host.registry("distance").names())
    assert host.registry("miner").get("nearest_negative").distribution == DIST
    overrides = ["data.subjects=6", "data.per_class=3", "train.epochs=2", "train.batch_size=28", "train.sampler.m=4",
                 "eval.tsne=false", "eval.knn=false", f'train.cache_dir="{tmp_path / "cache"}"']
    metrics, out = run_recipe(str(RECIPE), str(tmp_path / "run"), overrides, host=host)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    run = RunFolder(out).run_info()
    mine = {(c["kind"], c["name"]) for c in run["components"] if c["distribution"] == DIST and c["version"] == version}
    assert mine == {("distance", "manhattan"), ("miner", "nearest_negative"), ("callback", "grad_norm")}
    with (out / "grad_norm.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["mean_grad_norm"]) > 0 for r in rows)
    assert "loss_triplet" in RunFolder(out).history()[0]
