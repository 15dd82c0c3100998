"""The engine on tiny synthetic data: learning happens, run folders are complete, resume is exact."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fermetric import engine
from fermetric.errors import FermetricError

QUICKSTART = "recipes/quickstart.toml"


def history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_is_complete_and_loss_decreases(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    metrics, _ = engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=4", "eval.tsne=true", "eval.knn=true"])
    for name in ("recipe.toml", "run.json", "history.csv", "metrics.json", "confusion_matrix.json",
                 "confusion_matrix.png", "embeddings_tsne.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    rows = history(out / "history.csv")
    assert len(rows) == 4
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert {"loss_cross_entropy", "loss_emlf", "val_accuracy", "images_per_s"} <= set(rows[0])
    saved = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["macro_f1"] <= 1.0
    assert saved["synthetic_data"] is True
    assert {"intra_inter_ratio", "knn_precision_at_1", "knn_map_at_r"} <= set(saved["embedding"])
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["seed"] == 0
    assert run["versions"]["torch"] == torch.__version__.split("+")[0] or run["versions"]["torch"]
    assert {c["kind"] for c in run["components"]} == {"dataset", "cropper", "backbone", "loss", "sampler"}
    assert all(c["distribution"] == "fermetric" for c in run["components"])
    state = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["meta"]["classes"] == saved["confusion_matrix"]["classes"]


def test_existing_run_folder_needs_resume(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    with pytest.raises(FermetricError, match="--resume"):
        engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    with pytest.raises(FermetricError, match="recipe differs"):
        engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=2"], resume=True)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, tiny_overrides, monkeypatch):
    overrides = tiny_overrides + ["train.epochs=3", "eval.knn=true"]
    straight, _ = engine.run_recipe(QUICKSTART, str(tmp_path / "straight"), overrides)

    calls = {"n": 0}
    real_append = engine._append_history

    def dying_append(path, row):
        calls["n"] += 1
        if calls["n"] == 3:  # killed while finishing epoch 3: the epoch-2 checkpoint is the last one saved
            raise KeyboardInterrupt
        real_append(path, row)

    monkeypatch.setattr(engine, "_append_history", dying_append)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        engine.run_recipe(QUICKSTART, str(out), overrides)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert torch.load(out / "checkpoints/last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(engine, "_append_history", real_append)

    resumed, _ = engine.run_recipe(QUICKSTART, str(out), overrides, resume=True)
    assert resumed["accuracy"] == straight["accuracy"]
    assert resumed["macro_f1"] == straight["macro_f1"]
    assert resumed["embedding"]["knn_precision_at_1"] == straight["embedding"]["knn_precision_at_1"]
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in history(out / "history.csv")] == ["1", "2", "3"]


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_overrides, monkeypatch):
    out = tmp_path / "run"
    first, _ = engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    run_json, metrics_json = (out / "run.json").read_text(), (out / "metrics.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(engine.Runner, "run_fold", no_training)
    again, _ = engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"], resume=True)
    assert again == json.loads(metrics_json) and again["accuracy"] == first["accuracy"]
    assert (out / "run.json").read_text() == run_json  # start and end times (the run's wall time) kept
    assert (out / "metrics.json").read_text() == metrics_json


def test_kfold_writes_folds_and_aggregate(tmp_path, tiny_overrides):
    out = tmp_path / "kfold"
    metrics, _ = engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1", "eval.protocol=kfold", "eval.folds=3"])
    assert [p.name for p in sorted(out.glob("fold_*"))] == ["fold_00", "fold_01", "fold_02"]
    assert len(metrics["per_fold"]) == 3
    accs = [json.loads((out / f"fold_{i:02d}/metrics.json").read_text())["accuracy"] for i in range(3)]
    assert metrics["accuracy"] == pytest.approx(np.mean(accs))
    assert metrics["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))


def _write_image_folder(root, n_per_class=4):
    from fermetric import synthetic

    faces = synthetic.generate(n_subjects=4, per_class=1, size=48, seed=3)
    rows = ["path,label,subject"]
    for i, face in enumerate(faces):
        rel = f"{face.label}/{i}.png"
        (root / face.label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(face.image).save(root / rel)
        rows.append(f"{rel},{face.label},{face.subject}")
    (root / "broken").mkdir()
    (root / "broken" / "bad.png").write_bytes(b"not a png")
    rows.append("broken/bad.png,happy,s9")
    rows.append("missing/none.png,happy,s9")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_unreadable_files_are_reported_and_skipped(tmp_path):
    manifest = _write_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    overrides = [
        'data.name="manifest"', f'data.manifest="{manifest}"',
        "train.epochs=1", "eval.tsne=false", "eval.knn=false", "eval.group_by=none", "train.val_fraction=0",
        'train.sampler="random"', "train.batch_size=8", f'train.cache_dir="{tmp_path / "cache"}"',
    ]
    recipe = engine.recipe_mod.load(QUICKSTART, overrides)
    recipe["crop"] = {"name": "full_face", "landmarks": "template"}
    from fermetric.plugins import get_host

    host = get_host()
    runner = engine.Runner(engine.recipe_mod.validate(recipe, host), out, host)
    runner.run()
    data = json.loads((out / "run.json").read_text())["data"]
    assert data["unreadable"] == 2
    assert sorted(f["file"].rsplit("/", 1)[-1] for f in data["unreadable_files"]) == ["bad.png", "none.png"]
    assert data["images_used"] == 28



def test_one_fold_of_kfold_is_a_partial_run_and_repeated_losses_get_own_columns(tmp_path, tiny_overrides):
    out = tmp_path / "fold"
    overrides = tiny_overrides + ["train.epochs=1", "eval.protocol=kfold", "eval.folds=3", "loss.2.name=emlf", "loss.2.weight=0.1"]
    engine.run_recipe(QUICKSTART, str(out), overrides, fold=1)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "partial (1 of 3 folds)" and len(run["folds"]) == 3
    assert json.loads((out / "metrics.json").read_text())["folds"] == [1]
    assert {"loss_emlf_1", "loss_emlf_2", "loss_cross_entropy"} <= set(history(out / "fold_01/history.csv")[0])
    engine.run_recipe(QUICKSTART, str(out), overrides, fold=0, resume=True)
    assert json.loads((out / "metrics.json").read_text())["folds"] == [0, 1]


def test_a_run_that_failed_before_training_can_be_rerun_without_resume(tmp_path, tiny_overrides, monkeypatch):
    out = tmp_path / "run"
    real_prepare = engine.prepare

    def failing(*args, **kwargs):
        raise FermetricError("disk full")

    monkeypatch.setattr(engine, "prepare", failing)
    with pytest.raises(FermetricError, match="disk full"):
        engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    monkeypatch.setattr(engine, "prepare", real_prepare)
    metrics, _ = engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    assert (out / "metrics.json").is_file() and 0 <= metrics["accuracy"] <= 1
