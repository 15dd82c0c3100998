"""``fermetric ablate``: grid expansion, cell ids, resume, results.csv / results.md, the paired test."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import fermetric
import fermetric.engine
from fermetric.ablation import (
    cell_recipe, expand, find_baseline, grid_from_table, paired_wilcoxon, parse_grid_option, run_ablation, split_top_level,
    toml_literal,
)
from fermetric.cli import cli
from fermetric.contracts import Callback
from fermetric.plugins import PluginHost
from fermetric.errors import FermetricError, RecipeError
from fermetric.recipe import dumps, load, parse_value
from fermetric.runfolder import AblationFolder, RunFolder, Status, write_json

BASE = """
name = "tiny"
[data]
name = "synthetic"
subjects = 8
per_class = 2
size = 32
[crop]
name = "full_face"
landmarks = "dataset"
size = 24
[backbone]
name = "fer_cnn"
width = 8
depth = 2
[model]
embedding_dim = 16
[[loss]]
name = "cross_entropy"
[[loss]]
name = "emlf"
weight = 0.5
[train]
epochs = 1
batch_size = 28
device = "cpu"
cache_dir = "{cache}"
[eval]
protocol = "kfold"
folds = 2
tsne = false
knn = false
"""

GRID = ["model.embedding_dim=16,32", "loss.1.weight=0,0.5"]


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(BASE.format(cache=tmp_path / "cache"))
    return path


class FakeEngine:
    """Stands in for engine.run: writes a finished k-fold run folder (through RunFolder) whose accuracy depends on
    the cell.

    Accuracy is 0.5 + 0.1 (embedding_dim 32) + 0.01 * fold + 0.001 * seed, so the embedding_dim axis makes a
    consistent difference and the loss-weight axis none at all.
    """

    def __init__(self, interrupt_at: int | None = None, fail_cell: str | None = None):
        self.calls: list[dict] = []
        self.interrupt_at = interrupt_at
        self.fail_cell = fail_cell

    def __call__(self, recipe, out, resume=False, fold=None, host=None, recipe_path=""):
        self.calls.append({"recipe": recipe, "out": out, "resume": resume, "recipe_path": recipe_path})
        folder = RunFolder(out)
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.recipe_file.write_text(dumps(recipe))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            write_json({"status": Status.INTERRUPTED}, folder.run_file)
            raise KeyboardInterrupt
        if self.fail_cell and self.fail_cell in str(out):
            raise FermetricError("loss became nan")
        seed = recipe["train"]["seed"]
        per_fold = []
        for k in range(2):
            acc = 0.5 + 0.1 * (recipe["model"]["embedding_dim"] == 32) + 0.01 * k + 0.001 * seed
            per_fold.append({"fold": k, "accuracy": acc, "macro_f1": acc - 0.1, "n_test": 50, "tta": "none",
                             "per_class_recall": {"happy": acc, "sad": 1 - acc},
                             "embedding": {"intra_inter_ratio": 0.7, "knn_precision_at_1": acc}, "synthetic_data": True})
        write_json({"protocol": "kfold", "accuracy": 0.5, "per_fold": per_fold}, folder.metrics_file)
        write_json({"status": Status.FINISHED, "started": "2024-01-01T00:00:00+00:00",
                    "finished": "2024-01-01T00:01:00+00:00"}, folder.run_file)
        return {}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- grid, ids, baseline ------------------------------------------------------------------------------------
def test_grid_values_split_outside_brackets_and_round_trip():
    assert split_top_level('a,[1, 2],"x,y",{k = "v,w"}') == ["a", "[1, 2]", '"x,y"', '{k = "v,w"}']
    key, values = parse_grid_option('crop={name = "full_face"},{name = "au_partial", regions = ["mouth"]}')
    assert key == "crop" and [v.value["name"] for v in values] == ["full_face", "au_partial"]
    for value in ("emlf", 0.5, 3, True, [1, "a"], {"name": "m_per_class", "m": 4}, 'quo"te'):
        assert parse_value(toml_literal(value)) == value
    with pytest.raises(RecipeError, match="KEY=V1"):
        parse_grid_option("loss.1.name")
    with pytest.raises(RecipeError, match="--seeds"):
        parse_grid_option("train.seed=1,2")


def test_cells_are_the_product_with_stable_readable_ids():
    grid = dict(parse_grid_option(g) for g in ["crop.name=full_face,au_partial", "loss.1.name=emlf,triplet,center"])
    cells = expand(grid)
    assert len(cells) == 6 and len({c.id for c in cells}) == 6
    assert cells[0].label == "crop.name=full_face, loss.1.name=emlf"
    assert cells[0].id.startswith("crop.name-full_face__loss.1.name-emlf-")
    reordered = expand(dict(reversed(list(grid.items()))))
    assert {c.id for c in cells} == {c.id for c in reordered}, "ids do not depend on the order of --grid options"
    assert expand(grid_from_table({"crop": {"name": ["full_face", "au_partial"]}, "loss.1.name": ["emlf", "triplet", "center"]})) \
        and {c.id for c in expand(grid_from_table({"crop.name": ["full_face", "au_partial"], "loss.1.name": ["emlf", "triplet", "center"]}))} \
        == {c.id for c in cells}
    # 0.5 typed as text and as a TOML number is the same cell
    assert expand(dict([parse_grid_option("loss.1.weight=0.5")]))[0].id == expand(grid_from_table({"loss.1.weight": [0.5]}))[0].id
    with pytest.raises(RecipeError, match="twice"):
        expand(dict([parse_grid_option("loss.1.name=emlf,emlf")]))


def test_baseline_by_id_or_overrides():
    cells = expand(dict(parse_grid_option(g) for g in GRID))
    assert find_baseline(cells, "") is cells[0]
    assert find_baseline(cells, cells[2].id) is cells[2]
    assert find_baseline(cells, "model.embedding_dim=32,loss.1.weight=0.5") is cells[3]
    with pytest.raises(RecipeError, match="2 cells"):
        find_baseline(cells, "model.embedding_dim=32")
    with pytest.raises(RecipeError, match="not a grid key"):
        find_baseline(cells, "train.lr=1")


def test_loss_name_none_drops_the_term(recipe_file, host):
    base = load(recipe_file)
    dropped = expand(dict([parse_grid_option("loss.1.name=none")]))[0]
    recipe = cell_recipe(base, dropped, host)
    assert [t["name"] for t in recipe["loss"]] == ["cross_entropy"]
    off = expand(dict([parse_grid_option("loss.1.weight=0")]))[0]
    assert [t["weight"] for t in cell_recipe(base, off, host)["loss"]] == [1.0, 0]
    with pytest.raises(RecipeError, match="cell loss.1.name=tripplet"):
        cell_recipe(base, expand(dict([parse_grid_option("loss.1.name=tripplet")]))[0], host)


def test_renamed_component_keeps_parameters_given_in_the_grid_or_with_set(recipe_file, host):
    base = load(recipe_file)
    grid = dict(parse_grid_option(g) for g in ["crop.size=16,20", "crop.name=full_face,au_partial"])
    for cell in expand(grid):
        recipe = cell_recipe(base, cell, host, ["crop.landmarks=dataset", "train.lr=0.01"])
        assert recipe["crop"]["name"] == cell.text_of("crop.name")
        assert recipe["crop"]["size"] == int(cell.text_of("crop.size")) and recipe["crop"]["landmarks"] == "dataset"
        assert recipe["train"]["lr"] == 0.01
    with pytest.raises(RecipeError, match="also a grid key"):
        cell_recipe(base, expand(grid)[0], host, ["crop.size=8"])


# -- the paired test ----------------------------------------------------------------------------------------
def test_wilcoxon_gives_p_or_na():
    base = {(0, k): 0.5 for k in range(8)}
    better = {(0, k): 0.6 + 0.01 * k for k in range(8)}
    result = paired_wilcoxon(better, base)
    assert result["n"] == 8 and 0 < result["p"] < 0.05 and result["note"].startswith("p=")
    same = paired_wilcoxon(dict(base), base)
    assert same["p"] is None and "all differences 0" in same["note"]
    one = paired_wilcoxon({(0, 0): 0.7}, {(0, 0): 0.5})
    assert one["p"] is None and "too few" in one["note"]
    assert paired_wilcoxon({(1, 0): 0.7, (1, 1): 0.6}, base)["n"] == 0, "only the same (seed, fold) pairs count"


# -- whole ablations with a stand-in engine ------------------------------------------------------------------
def test_grid_results_csv_and_md(recipe_file, tmp_path, monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(fermetric.engine, "run", fake)
    out = tmp_path / "abl"
    result = run_ablation(str(recipe_file), GRID, seeds=2, out=str(out), show_table=False)
    assert len(fake.calls) == 4 * 2
    assert [c["recipe"]["train"]["seed"] for c in fake.calls] == [0] * 4 + [1] * 4, \
        "seed by seed: every cell at seed 0 before any at seed 1, so a stopped ablation still pairs its cells"
    rows = read_csv(AblationFolder(out).results_csv)
    assert len(rows) == 4 * 2 * 2
    assert {"cell", "model.embedding_dim", "loss.1.weight", "seed", "train_seed", "fold", "accuracy", "macro_f1",
            "knn_precision_at_1", "intra_inter_ratio", "recall_happy"} <= set(rows[0])
    assert {(r["model.embedding_dim"], r["loss.1.weight"]) for r in rows} == {("16", "0"), ("16", "0.5"), ("32", "0"), ("32", "0.5")}
    for cell in result.cells:
        assert AblationFolder(out).cell(cell.id).seed(1).metrics_file.is_file()
        assert AblationFolder(out).cell(cell.id).recipe_file.is_file()
    md = AblationFolder(out).results_md.read_text()
    # baseline = first cell (16, 0): accuracies 0.5/0.51 at seed 0, 0.501/0.511 at seed 1
    assert "0.5055 ± 0.0058" in md
    assert "+0.1000" in md and "p=0.125 (n=4)" in md, "the 32-dim cells differ consistently: exact p for n=4"
    assert "n/a (n=4: all differences 0)" in md, "the loss-weight axis changes nothing here"
    assert "SYNTHETIC" in md
    assert result.baseline is result.cells[0]


def test_interrupted_ablation_resumes_without_retraining(recipe_file, tmp_path, monkeypatch):
    out = tmp_path / "abl"
    first = FakeEngine(interrupt_at=3)
    monkeypatch.setattr(fermetric.engine, "run", first)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(str(recipe_file), GRID, out=str(out), show_table=False)
    assert len(first.calls) == 3
    assert len(read_csv(AblationFolder(out).results_csv)) == 2 * 2, "partial results are written on interruption"
    again = FakeEngine()
    monkeypatch.setattr(fermetric.engine, "run", again)
    result = run_ablation(str(recipe_file), GRID, out=str(out), show_table=False)
    trained = [Path(c["out"]).parent.name for c in again.calls]
    assert trained == [c.id for c in result.cells[2:]], "finished cells are skipped"
    assert [c["resume"] for c in again.calls] == [True, False], "the interrupted cell continues through --resume"
    assert len(read_csv(AblationFolder(out).results_csv)) == 4 * 2
    assert result.runs_started == 2
    # Nothing left: a third run trains nothing and rewrites the same results.
    monkeypatch.setattr(fermetric.engine, "run", third := FakeEngine())
    run_ablation(str(recipe_file), GRID, out=str(out), show_table=False)
    assert third.calls == []


def test_changed_base_recipe_is_refused_in_the_same_folder(recipe_file, tmp_path, monkeypatch):
    monkeypatch.setattr(fermetric.engine, "run", FakeEngine())
    out = tmp_path / "abl"
    run_ablation(str(recipe_file), GRID, out=str(out), show_table=False)
    with pytest.raises(FermetricError, match="another recipe"):
        run_ablation(str(recipe_file), GRID, out=str(out), overrides=["train.lr=0.1"], show_table=False)


def test_ablate_table_in_the_recipe_and_failed_cells(recipe_file, tmp_path, monkeypatch):
    recipe_file.write_text(recipe_file.read_text() + '\n[ablate]\ngrid = { "model.embedding_dim" = [16, 32] }\n'
                           'seeds = 2\nbaseline = "model.embedding_dim=32"\n')
    cells = expand(grid_from_table({"model.embedding_dim": [16, 32]}))
    fake = FakeEngine(fail_cell=cells[0].id)
    monkeypatch.setattr(fermetric.engine, "run", fake)
    out = tmp_path / "abl"
    result = run_ablation(str(recipe_file), out=str(out), show_table=False)
    assert len(fake.calls) == 4 and result.baseline.id == cells[1].id
    assert set(result.failed) == {cells[0].id} and AblationFolder(out).cell(cells[0].id).error_file.is_file()
    md = AblationFolder(out).results_md.read_text()
    assert "failed" in md and "Unfinished cells" in md


def test_cli_dry_run_and_run(recipe_file, tmp_path, monkeypatch):
    monkeypatch.setattr(fermetric.engine, "run", FakeEngine())
    out = tmp_path / "abl"
    runner = CliRunner()
    dry = runner.invoke(cli, ["ablate", str(recipe_file), "--grid", GRID[0], "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert not out.exists()
    done = runner.invoke(cli, ["ablate", str(recipe_file), "--grid", GRID[0], "--grid", GRID[1], "--out", str(out),
                               "--baseline", "model.embedding_dim=16,loss.1.weight=0.5"])
    assert done.exit_code == 0, done.output
    assert "Wilcoxon" in done.output and AblationFolder(out).results_md.is_file()
    bad = runner.invoke(cli, ["ablate", str(recipe_file), "--grid", "loss.1.name=tripplet", "--out", str(out / "x")])
    assert bad.exit_code == 2 and "tripplet" in bad.output


# -- the real engine ----------------------------------------------------------------------------------------
class FoldRecorder(Callback):
    """Records which (cell, fold) each training starts and finishes, and interrupts the ``interrupt_at``-th one."""

    started: list = []
    trained: list = []
    interrupt_at = 0

    def on_fit_start(self, loop):
        FoldRecorder.started.append((loop.folder.root.parent.parent.name, loop.fold))
        if len(FoldRecorder.started) == FoldRecorder.interrupt_at:
            raise KeyboardInterrupt

    def on_fit_end(self, loop):
        FoldRecorder.trained.append((loop.folder.root.parent.parent.name, loop.fold))


class RecorderPlugin:
    @fermetric.hookimpl
    def register_callbacks(self, register):
        register("fold_recorder", FoldRecorder)


@pytest.mark.slow
def test_real_2x2_grid_interrupted_and_resumed(recipe_file, tmp_path):
    """Real training (1 epoch, 2 folds, 112 synthetic images): Ctrl-C during fold 1 of cell 3, then resume."""
    host = PluginHost(entry_points=False)
    host.add_plugin(RecorderPlugin(), "recorder")
    recipe_file.write_text(recipe_file.read_text() + '\n[[callback]]\nname = "fold_recorder"\n')
    FoldRecorder.started, FoldRecorder.trained = [], []
    FoldRecorder.interrupt_at = 6  # cells 1 and 2: 4 folds; cell 3: fold 0 finishes, fold 1 is interrupted
    grid = ["loss.1.name=emlf,none", "model.embedding_dim=16,8"]
    out = tmp_path / "abl"
    with pytest.raises(KeyboardInterrupt):
        run_ablation(str(recipe_file), grid, out=str(out), host=host, show_table=False)
    cells = expand(dict(parse_grid_option(g) for g in grid))
    assert [c for c, _ in FoldRecorder.started] == [cells[0].id] * 2 + [cells[1].id] * 2 + [cells[2].id] * 2
    assert len(FoldRecorder.trained) == 5
    assert len(read_csv(AblationFolder(out).results_csv)) == 2 * 2
    FoldRecorder.started, FoldRecorder.trained, FoldRecorder.interrupt_at = [], [], 0
    result = run_ablation(str(recipe_file), grid, out=str(out), host=host, show_table=False)
    assert FoldRecorder.trained == [(cells[2].id, 1), (cells[3].id, 0), (cells[3].id, 1)], \
        "the two finished cells are not run again, and cell 3 resumes at its unfinished fold"
    rows = read_csv(AblationFolder(out).results_csv)
    assert len(rows) == 4 * 2 and {r["fold"] for r in rows} == {"0", "1"}
    metrics = AblationFolder(out).cell(result.cells[0].id).seed(0).metrics()
    assert metrics["tta"] == "none" and len(metrics["per_fold"]) == 2
    dropped = tomllib.loads(AblationFolder(out).cell(cells[2].id).recipe_file.read_text())
    assert [t["name"] for t in dropped["loss"]] == ["cross_entropy"]
    md = AblationFolder(out).results_md.read_text()
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(table) == 4 and all(line.count(" ± ") == 3 for line in table), "mean ± std of accuracy, macro-F1, intra/inter (k-NN is off)"
    wilcoxon = [line.rstrip(" |").rsplit("| ", 1)[-1] for line in table]
    assert wilcoxon[0] == "—" and all(re.fullmatch(r"p=\S+ \(n=2.*\)|n/a \(n=2.*\)", w) for w in wilcoxon[1:]), wilcoxon
