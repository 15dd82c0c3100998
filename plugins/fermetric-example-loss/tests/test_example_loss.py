"""Tests of the focal loss plugin: the loss against a brute-force reference, its gradients, its registration
through fermetric's hook and entry point, and one tiny training run through fermetric's engine.

The file name is unique across fermetric and its plugins on purpose: pytest imports test modules by basename
when test folders have no ``__init__.py``. Copying this template? Rename this file too.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import pluggy
import pytest
import torch
import torch.nn.functional as F

from fermetric import hookspecs
from fermetric.errors import RecipeError
from fermetric.runfolder import RunFolder

fermetric_example_loss = pytest.importorskip(
    "fermetric_example_loss", reason="fermetric-example-loss is not installed (pip install -e plugins/fermetric-example-loss)"
)
FocalLoss = fermetric_example_loss.FocalLoss

DIST = "fermetric-example-loss"
PLUGIN_ROOT = Path(__file__).resolve().parents[1]
RECIPE = PLUGIN_ROOT / "recipes" / "focal.toml"


def reference_focal(logits, labels, gamma, alpha=None) -> float:
    """The formula, one image at a time, in Python floats: -alpha_y (1 - p_y)^gamma log p_y, averaged."""
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        log_p = row[y] - log_z
        p = math.exp(log_p)
        total += -(1.0 if alpha is None else alpha[y]) * (1.0 - p) ** gamma * log_p
    return total / len(labels)


def _batch(seed: int, batch: int = 12, classes: int = 7, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (batch,), generator=g)
    return logits, labels


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_matches_brute_force_reference(gamma, with_alpha):
    logits, labels = _batch(seed=int(gamma * 10) + with_alpha)
    alpha = [0.5 + 0.25 * c for c in range(7)] if with_alpha else None
    got = FocalLoss(gamma=gamma, alpha=alpha, num_classes=7)(logits, labels)
    assert got.item() == pytest.approx(reference_focal(logits, labels, gamma, alpha), rel=1e-10, abs=1e-12)


def test_gamma_zero_is_cross_entropy():
    logits, labels = _batch(seed=3)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels))


def test_focusing_down_weights_easy_images():
    # A confident, correct image loses far more of its loss than a wrong one as gamma grows.
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, labels, reduction="none")
    easy, hard = (FocalLoss(gamma=2.0)(logits[i : i + 1], labels[i : i + 1]) for i in range(2))
    assert easy / ce[0] < 1e-4 < 0.5 < hard / ce[1]


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradients_match_finite_differences(gamma):
    logits, labels = _batch(seed=7, batch=5, classes=4, scale=1.5)
    logits.requires_grad_(True)
    loss = FocalLoss(gamma=gamma, alpha=[1.0, 2.0, 0.5, 1.5])
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-7)


def test_confident_images_give_finite_loss_and_gradients():
    # float32, as the engine calls it: p == 1.0 exactly for the first row.
    logits = torch.tensor([[60.0, -60.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    for gamma in (0.0, 0.5, 2.0):
        logits.grad = None
        value = FocalLoss(gamma=gamma)(logits, labels)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"alpha": [1.0, 1.0], "num_classes": 3}, "alpha has 2 values but the model has 3 classes"),
        ({"alpha": [1.0, -1.0, 1.0]}, "alpha values must be >= 0"),
    ],
)
def test_bad_parameters_are_recipe_errors(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        FocalLoss(**kwargs)


def test_registered_through_the_hook():
    pm = pluggy.PluginManager("fermetric")
    pm.add_hookspecs(hookspecs)
    pm.register(fermetric_example_loss)
    registered = {}
    pm.hook.register_losses(register=registered.__setitem__)
    assert registered == {"focal": FocalLoss}
    assert FocalLoss.uses_logits is True


def _installed_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{DIST} is not pip-installed here (scripts/bootstrap.sh installs it: pip install -e plugins/{DIST})")


def test_entry_point_lists_focal_with_distribution_and_version():
    from fermetric.plugins import PluginHost

    version = _installed_version()
    host = PluginHost(allow=[DIST])
    focal = host.registry("loss").get("focal")
    assert (focal.plugin, focal.distribution, focal.version) == (DIST, DIST, version)
    assert not [p for p in host.problems if p.plugin == DIST]
    assert "cross_entropy" in host.registry("loss")  # the built-ins are all there beside it


def test_recipe_trains_and_records_the_plugin(tmp_path, monkeypatch):
    from fermetric.engine import run_recipe
    from fermetric.plugins import PluginHost

    version = _installed_version()
    monkeypatch.setenv("MPLBACKEND", "Agg")
    overrides = [
        "data.subjects=8",
        "data.per_class=2",
        "train.epochs=1",
        'train.device="cpu"',
        "eval.tsne=false",
        "eval.knn=false",
        f'train.cache_dir="{tmp_path / "cache"}"',
    ]
    metrics, out = run_recipe(str(RECIPE), str(tmp_path / "run"), overrides, host=PluginHost(allow=[DIST]))
    assert 0.0 <= metrics["accuracy"] <= 1.0
    run = RunFolder(out).run_info()
    assert run["status"] == "finished"
    losses = [c for c in run["components"] if c["kind"] == "loss"]
    assert {"kind": "loss", "name": "focal", "plugin": DIST, "distribution": DIST, "version": version} in losses
    history = RunFolder(out).history()
    assert "loss_focal" in history[0] and len(history) == 1
