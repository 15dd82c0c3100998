"""The engine on tiny synthetic data: learning happens, run folders are complete, resume is exact."""

from __future__ import annotations

import csv
import importlib.metadata
import json

import numpy as np
import pytest
import torch
from PIL import Image

import fermetric
from fermetric import engine
from fermetric.runfolder import RunFolder
from tests.callbacks import armed, host_with_test_callbacks
from fermetric.errors import FermetricError

QUICKSTART = "recipes/quickstart.toml"


def test_run_folder_is_complete_and_loss_decreases(tmp_path, tiny_overrides):
    out = RunFolder(tmp_path / "run")
    metrics, _ = engine.run_recipe(QUICKSTART, str(out.root), tiny_overrides + [
        "train.epochs=4", "eval.tsne=true", "eval.knn=true", 'callback.0.name="tensorboard"'])
    for path in (out.recipe_file, out.run_file, out.history_file, out.metrics_file, out.confusion_json, out.confusion_png,
                 out.tsne_png, out.curves_png, out.last_checkpoint, out.best_checkpoint):
        assert path.is_file(), path
    assert list(out.tensorboard_dir.glob("events.out.tfevents.*")), "TensorBoard event file"
    rows = out.history()
    assert len(rows) == 4
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert {"loss_cross_entropy", "loss_emlf", "val_accuracy", "images_per_s"} <= set(rows[0])
    saved = out.metrics()
    assert saved == metrics
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["macro_f1"] <= 1.0
    assert saved["synthetic_data"] is True
    assert {"intra_inter_ratio", "knn_precision_at_1", "knn_map_at_r"} <= set(saved["embedding"])
    run = out.run_info()
    assert run["status"] == "finished" and run["seed"] == 0
    assert run["versions"]["torch"] == importlib.metadata.version("torch")
    assert {c["kind"] for c in run["components"]} == {"dataset", "cropper", "backbone", "loss", "sampler", "callback"}
    assert all(c["distribution"] == "fermetric" for c in run["components"])
    state = torch.load(out.last_checkpoint, weights_only=True)
    assert state["epoch"] == 3 and state["meta"]["classes"] == saved["confusion_matrix"]["classes"]


def test_tensorboard_scalars_are_the_history(tmp_path, tiny_overrides):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = RunFolder(tmp_path / "run")
    engine.run_recipe(QUICKSTART, str(out.root), tiny_overrides + ["train.epochs=3", 'callback.0.name="tensorboard"'])
    events = EventAccumulator(str(out.tensorboard_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/cross_entropy", "loss/emlf", "accuracy/train", "accuracy/validation", "optim/lr",
            "speed/images_per_s"} <= tags
    rows = out.history()
    logged = [(e.step, e.value) for e in events.Scalars("loss/total")]
    assert [s for s, _ in logged] == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx([float(r["train_loss"]) for r in rows], rel=1e-6)


def test_existing_run_folder_needs_resume(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    with pytest.raises(FermetricError, match="--resume"):
        engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=1"])
    with pytest.raises(FermetricError, match="recipe differs"):
        engine.run_recipe(QUICKSTART, str(out), tiny_overrides + ["train.epochs=2"], resume=True)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["train.epochs=3", "eval.knn=true"]
    straight, _ = engine.run_recipe(QUICKSTART, str(tmp_path / "straight"), overrides)

    host = host_with_test_callbacks()
    out = RunFolder(tmp_path / "resumed")
    killer = overrides + ['callback.0.name="kill_at"', "callback.0.epoch=3"]
    with armed(), pytest.raises(KeyboardInterrupt):
        engine.run_recipe(QUICKSTART, str(out.root), killer, host=host)
    assert out.status() == "interrupted"
    assert torch.load(out.last_checkpoint, weights_only=True)["epoch"] == 1
    assert len(out.history()) == 3, "the killed epoch's history row was written before the kill"

    resumed, _ = engine.run_recipe(QUICKSTART, str(out.root), killer, resume=True, host=host)
    assert resumed["accuracy"] == straight["accuracy"]
    assert resumed["macro_f1"] == straight["macro_f1"]
    assert resumed["embedding"]["knn_precision_at_1"] == straight["embedding"]["knn_precision_at_1"]
    a = torch.load(RunFolder(tmp_path / "straight").last_checkpoint, weights_only=True)["model"]
    b = torch.load(out.last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in out.history()] == ["1", "2", "3"]
    # Each command opens its part of log.txt, so a reader can tell a run done in one command (its wall time is
    # run.json's start to finish) from a resumed one (whose start is its last command's).
    one_go = RunFolder(tmp_path / "straight")
    assert (one_go.commands(), out.commands()) == (1, 2)
    assert one_go.last_command_seconds() >= 0 and out.last_command_seconds() >= 0
    assert RunFolder(tmp_path / "never").commands() == 0 and RunFolder(tmp_path / "never").last_command_seconds() is None


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_overrides, monkeypatch):
    out = RunFolder(tmp_path / "run")
    first, _ = engine.run_recipe(QUICKSTART, str(out.root), tiny_overrides + ["train.epochs=1"])
    run_json, metrics_json = out.run_file.read_text(), out.metrics_file.read_text()
    files = {p: p.stat().st_mtime_ns for p in out.root.rglob("*") if p.is_file()}
    again, _ = engine.run_recipe(QUICKSTART, str(out.root), tiny_overrides + ["train.epochs=1"], resume=True)
    assert again == json.loads(metrics_json) and again["accuracy"] == first["accuracy"]
    assert out.run_file.read_text() == run_json  # start and end times (the run's wall time) kept
    assert out.metrics_file.read_text() == metrics_json
    touched = [p for p, m in files.items() if p != out.recipe_file and p.stat().st_mtime_ns != m]
    assert touched == [], "nothing was trained or evaluated again"


def test_kfold_writes_folds_and_aggregate(tmp_path, tiny_overrides):
    out = RunFolder(tmp_path / "kfold")
    metrics, _ = engine.run_recipe(QUICKSTART, str(out.root), tiny_overrides + ["train.epochs=1", "eval.protocol=kfold", "eval.folds=3"])
    assert out.folds() == [out.fold(0), out.fold(1), out.fold(2)]
    assert len(metrics["per_fold"]) == 3
    accs = [out.fold(i).metrics()["accuracy"] for i in range(3)]
    assert metrics["accuracy"] == pytest.approx(np.mean(accs))
    assert metrics["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))


def _write_image_folder(root, n_per_class=4):
    from fermetric.components import synthetic

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
    data = RunFolder(out).run_info()["data"]
    assert data["unreadable"] == 2
    assert sorted(f["file"].rsplit("/", 1)[-1] for f in data["unreadable_files"]) == ["bad.png", "none.png"]
    assert data["images_used"] == 28



def test_one_fold_of_kfold_is_a_partial_run_and_repeated_losses_get_own_columns(tmp_path, tiny_overrides):
    out = tmp_path / "fold"
    overrides = tiny_overrides + ["train.epochs=1", "eval.protocol=kfold", "eval.folds=3", "loss.2.name=emlf", "loss.2.weight=0.1"]
    engine.run_recipe(QUICKSTART, str(out), overrides, fold=1)
    run = RunFolder(out).run_info()
    assert run["status"] == "partial (1 of 3 folds)" and len(run["folds"]) == 3
    assert RunFolder(out).metrics()["folds"] == [1]
    assert RunFolder(out).metrics()["accuracy_std"] is None, "one fold has no spread to report, not a std of 0"
    assert {"loss_emlf_1", "loss_emlf_2", "loss_cross_entropy"} <= set(RunFolder(out).fold(1).history()[0])
    engine.run_recipe(QUICKSTART, str(out), overrides, fold=0, resume=True)
    assert RunFolder(out).metrics()["folds"] == [0, 1]
    done = RunFolder(out).fold(1).metrics_file.stat().st_mtime_ns
    engine.run_recipe(QUICKSTART, str(out), overrides, fold=1, resume=True)
    assert RunFolder(out).fold(1).metrics_file.stat().st_mtime_ns == done, "--fold K of a finished fold is skipped"


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
    assert RunFolder(out).metrics_file.is_file() and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_memory_mapped_store_trains_the_same_model_as_crops_in_memory(tmp_path, tiny_overrides, workers):
    """The on-disk store read through a DataLoader (with or without worker processes) gives the same batches as the
    crops held in memory, so the run ends with the same weights and metrics."""
    memory, _ = engine.run_recipe(QUICKSTART, str(tmp_path / "memory"), tiny_overrides + ['train.store="memory"'])
    mapped, out = engine.run_recipe(QUICKSTART, str(tmp_path / "mmap"),
                                    tiny_overrides + ['train.store="mmap"', f"train.workers={workers}"])
    assert RunFolder(out).run_info()["data"]["store"]["kind"] == "mmap"
    assert mapped["accuracy"] == memory["accuracy"] and mapped["macro_f1"] == memory["macro_f1"]
    a = torch.load(RunFolder(tmp_path / "memory").last_checkpoint, weights_only=True)["model"]
    b = torch.load(RunFolder(out).last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(float(r["data_seconds"]) >= 0 for r in RunFolder(out).history())
