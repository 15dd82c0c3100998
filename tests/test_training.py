"""The training pieces on their own: schedules, optimizers, early stopping, test-time augmentation, metrics, and the
recipe reference listing every engine key."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score

from fermetric import engine
from fermetric.evaluation.metrics import aggregate, classification_metrics, distance_stats
from fermetric.model import _tta_views
from fermetric.recipe import SCHEMA
from fermetric.runfolder import RunFolder
from fermetric.training.callbacks import EarlyStopping, ModelSelection
from fermetric.training.optim import lr_factor, make_optimizer, make_scheduler

QUICKSTART = "recipes/quickstart.toml"
REPO = Path(__file__).resolve().parents[1]


# -- schedules and optimizers ---------------------------------------------------------------------------------
def test_step_schedule_divides_by_ten_at_each_third_after_warm_up():
    # 2 warm-up epochs, then 9 epochs in thirds of 3: x1, x0.1, x0.01
    factors = [lr_factor("step", e, 11, 2) for e in range(11)]
    assert factors == pytest.approx([0.5, 1.0, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    factors = [lr_factor("cosine", e, 10, 3) for e in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert factors[3] == pytest.approx(1.0) and all(a > b for a, b in zip(factors[3:], factors[4:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 7)))
    assert [lr_factor("none", e, 10, 0) for e in range(10)] == [1.0] * 10


def test_scheduler_applies_the_factor_per_epoch():
    param = torch.nn.Parameter(torch.zeros(1))
    cfg = {"lr": 0.1, "weight_decay": 0.0, "optimizer": "sgd", "momentum": 0.9, "scheduler": "step", "epochs": 6,
           "warmup_epochs": 0}
    optimizer = make_optimizer([{"params": [param]}], cfg)
    scheduler = make_scheduler(optimizer, cfg)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizers_and_their_options(name, cls):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}, {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.5}]
    cfg = {"lr": 0.01, "weight_decay": 1e-3, "optimizer": name, "momentum": 0.8}
    optimizer = make_optimizer(groups, cfg)
    assert type(optimizer) is cls
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.5], "a group's own lr wins over train.lr"
    assert optimizer.param_groups[0]["weight_decay"] == 1e-3
    if name == "sgd":
        assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True


def test_sgd_recipe_trains(tmp_path, tiny_overrides):
    metrics, out = engine.run_recipe(QUICKSTART, str(tmp_path / "sgd"), tiny_overrides + [
        'train.optimizer="sgd"', 'train.scheduler="step"', "train.warmup_epochs=1", "train.epochs=3", "train.lr=0.05"])
    lrs = [float(r["lr"]) for r in RunFolder(out).history()]
    assert lrs == pytest.approx([0.05 / 1, 0.05, 0.005]), "warm-up of 1 epoch, then thirds of the 2 left"
    assert 0 <= metrics["accuracy"] <= 1


# -- early stopping and model selection ----------------------------------------------------------------------
class FakeLoop:
    def __init__(self, scores):
        self.scores, self.epoch, self.val, self.should_stop = scores, 0, object(), False
        self.best, self.improved, self.logged = {"score": -1.0, "epoch": -1}, False, []

    def log(self, text):
        self.logged.append(text)


def test_early_stopping_counts_epochs_without_a_better_validation_score():
    loop = FakeLoop([0.5, 0.6, 0.6, 0.55, 0.7])
    selection, stopping = ModelSelection(), EarlyStopping(patience=2)
    stopped_at = None
    for epoch, score in enumerate(loop.scores):
        loop.epoch, loop.row = epoch, {"val_accuracy": score}
        selection.on_epoch_end(loop)
        stopping.on_epoch_end(loop)
        if loop.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 3, "a tie is no improvement: epochs 2 and 3 are stale"
    assert loop.best == {"score": 0.6, "epoch": 1}
    assert stopping.state_dict() == {"stale": 2} and "no validation improvement for 2 epochs" in loop.logged[0]


def test_early_stopping_stops_a_real_run_and_resume_keeps_it_stopped(tmp_path, tiny_overrides):
    # lr 0: the weights never change, so validation never improves after the first epoch
    overrides = tiny_overrides + ["train.epochs=8", "train.patience=2", "train.lr=0.0"]
    out = RunFolder(tmp_path / "run")
    engine.run_recipe(QUICKSTART, str(out.root), overrides)
    assert len(out.history()) == 3, "epoch 1 is the best; 2 and 3 are stale; stop"
    assert torch.load(out.last_checkpoint, weights_only=True)["stopped"] is True


# -- test-time augmentation ------------------------------------------------------------------------------------
def test_tta_views():
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    assert len(_tta_views(x, "none")) == 1
    flip = _tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    ten = _tta_views(x, "ten_crop")
    assert len(ten) == 10 and all(v.shape == x.shape for v in ten)
    # the first view is the top-left 9x9 corner scaled back to 10x10; the sixth its mirror image
    corner = torch.nn.functional.interpolate(x[..., :9, :9], size=(10, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(ten[0], corner) and torch.allclose(ten[5], corner.flip(-1))


def test_tta_is_recorded_and_changes_the_predictions(tmp_path, tiny_overrides):
    plain, _ = engine.run_recipe(QUICKSTART, str(tmp_path / "plain"), tiny_overrides)
    flipped, _ = engine.run_recipe(QUICKSTART, str(tmp_path / "flip"), tiny_overrides + ['eval.tta="flip"'])
    assert plain["tta"] == "none" and flipped["tta"] == "flip"
    assert plain["embedding"]["intra_class_distance"] != flipped["embedding"]["intra_class_distance"]


# -- metrics against references ------------------------------------------------------------------------------
def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    classes = ["a", "b", "c", "d"]
    m = classification_metrics(y_true, y_pred, classes)
    assert m["accuracy"] == pytest.approx(float((y_true == y_pred).mean()))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    for c, name in enumerate(classes):
        assert m["per_class_recall"][name] == pytest.approx(((y_pred == c) & (y_true == c)).sum() / (y_true == c).sum())


def test_distance_stats_brute_force():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(9, 3))
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    z = e / np.linalg.norm(e, axis=1, keepdims=True)
    intra = [np.linalg.norm(z[i] - z[j]) for i in range(9) for j in range(9) if i != j and y[i] == y[j]]
    inter = [np.linalg.norm(z[i] - z[j]) for i in range(9) for j in range(9) if y[i] != y[j]]
    stats = distance_stats(e, y)
    assert stats["intra_class_distance"] == pytest.approx(np.mean(intra), rel=1e-5)
    assert stats["inter_class_distance"] == pytest.approx(np.mean(inter), rel=1e-5)
    assert stats["intra_inter_ratio"] == pytest.approx(np.mean(intra) / np.mean(inter), rel=1e-5)


def test_aggregate_is_mean_and_sample_std_of_every_number():
    folds = [{"accuracy": 0.5, "embedding": {"r": 1.0}, "tta": "none"}, {"accuracy": 0.7, "embedding": {"r": 3.0}, "tta": "none"}]
    agg = aggregate(folds)
    assert agg["accuracy"]["mean"] == pytest.approx(0.6) and agg["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert agg["embedding.r"]["values"] == [1.0, 3.0] and "tta" not in agg


# -- the reference documents every key ---------------------------------------------------------------------------
@pytest.mark.parametrize("section", sorted(SCHEMA))
def test_recipe_reference_lists_every_engine_key(section):
    text = (REPO / "docs" / "recipes.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", text, flags=re.M)) | {
        k for row in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)+) \|", text, flags=re.M) for k in re.findall(r"`([a-z_]+)`", row)}
    missing = set(SCHEMA[section]) - documented
    assert not missing, f"docs/recipes.md does not document {section}.{', '.join(sorted(missing))}"
