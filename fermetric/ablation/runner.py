"""Running an ablation: every cell x seed through the engine, resumable, then the report."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fermetric import engine
from fermetric import recipe as recipe_mod
from fermetric.ablation.grid import Cell, Value, key_of, cell_recipe, expand, find_baseline, grid_from_table, parse_grid_option
from fermetric.ablation.report import CellSummary, markdown, print_table, rows_of, summarise, write_csv
from fermetric.errors import FermetricError, RecipeError
from fermetric.plugins import PluginHost, get_host
from fermetric.progress import console as _console
from fermetric.runfolder import AblationFolder, RunFolder, write_json


def _say(*args, **kwargs) -> None:
    _console.print(*args, soft_wrap=True, **kwargs)


@dataclass
class AblationResult:
    out: Path
    cells: list[Cell]
    baseline: Cell
    summaries: list[CellSummary]
    failed: dict[str, str]
    runs_started: int


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _dry_build_cells(cells: list[Cell], recipes: dict[str, dict[str, Any]], host: PluginHost) -> None:
    """Every cell's components built once with its values (fermetric.build.dry_build), before the first cell
    trains; a dataset is listed once per distinct ``[data]`` table, for its class count."""
    import json

    from fermetric.build import build, dry_build

    classes: dict[str, int] = {}
    for cell in cells:
        recipe = recipes[cell.id]
        key = json.dumps(recipe["data"], sort_keys=True, default=str)
        try:
            if key not in classes:
                classes[key] = len(build(host, "dataset", recipe["data"], where="data")[0].classes)
            dry_build(host, recipe, classes[key])
        except FermetricError as exc:
            if exc.exit_code != 2:  # a broken plugin, not a bad value: its own message says so
                raise
            raise RecipeError(f"cell {cell.label}: {exc}") from None


def _ablate_table(base: dict[str, Any]) -> dict[str, Any]:
    table = base.pop("ablate", {})
    if not isinstance(table, dict):
        raise RecipeError("[ablate] must be a table")
    schema = recipe_mod.SCHEMA["ablate"]
    for key, value in table.items():
        if key not in schema:
            raise RecipeError(f"ablate.{key}: unknown key (known: {', '.join(schema)})")
        types_ = schema[key][0]
        if not isinstance(value, types_) or isinstance(value, bool):
            raise RecipeError(f"ablate.{key}: expected {' or '.join(t.__name__ for t in types_)}, got {value!r}")
    return table


def run_ablation(recipe_path: str, grid: list[str] | tuple[str, ...] = (), seeds: int | None = None, out: str | None = None,
                 overrides: list[str] | tuple[str, ...] = (), baseline: str | None = None, host: PluginHost | None = None,
                 dry_run: bool = False, fail_fast: bool = False, show_table: bool = True) -> AblationResult:
    """Run (or resume) every cell x seed of the grid one after another, then write results.csv and results.md."""
    host = host or get_host()
    overrides = list(overrides)
    # --set ablate.* shapes the grid; every other --set applies to each cell, together with the cell's values.
    ablate_sets = [o for o in overrides if key_of(o).split(".")[0] == "ablate"]
    cell_sets = [o for o in overrides if o not in ablate_sets]
    base = recipe_mod.load(recipe_path, ablate_sets)
    table = _ablate_table(base)
    if grid:
        axes: dict[str, list[Value]] = {}
        for item in grid:
            key, values = parse_grid_option(item)
            if key in axes:
                raise RecipeError(f"--grid {key} is given twice; list all its values in one option")
            axes[key] = values
    else:
        axes = grid_from_table(table.get("grid", {}))
    n_seeds = int(seeds if seeds is not None else table.get("seeds", 1))
    if n_seeds < 1:
        raise RecipeError(f"--seeds {n_seeds}: at least 1")
    cells = expand(axes)
    if len({c.id for c in cells}) != len(cells):
        raise RecipeError("two grid cells got the same id; make the grid values distinct")
    base_cell = find_baseline(cells, baseline if baseline is not None else table.get("baseline", ""))
    grid_keys = list(axes)
    out_dir = Path(out) if out else Path("runs") / f"{recipe_mod.recipe_stem(recipe_path)}_ablate"
    folder = AblationFolder(out_dir)

    # Everything is checked before the first cell trains: an error in cell 7 of 8 should not wait hours.
    recipes = {cell.id: cell_recipe(base, cell, host, cell_sets) for cell in cells}
    _dry_build_cells(cells, recipes, host)
    for cell in cells:
        path = folder.cell(cell.id).recipe_file
        if path.exists() and not recipe_mod.matches_file(path, recipes[cell.id]):
            raise FermetricError(f"{path} holds another recipe for cell {cell.label} (did the base recipe change?); use another --out")
    first = recipes[cells[0].id]
    base_seed = int(first["train"]["seed"])
    ev = first["eval"]
    protocol = f"{ev['protocol']}" + (f", {ev['folds']} folds" if ev["protocol"] == "kfold" else "") + f", group_by {ev['group_by']}"
    title = str(first.get("name") or Path(recipe_path).stem)
    info = {"recipe": str(recipe_path), "overrides": overrides, "seeds": n_seeds, "base_seed": base_seed, "protocol": protocol,
            "grid": {k: [v.value for v in vs] for k, vs in axes.items()}, "baseline": base_cell.id,
            "cells": [{"id": c.id, "overrides": c.overrides, "folder": folder.cell_relpath(c.id)} for c in cells]}
    total_runs = len(cells) * n_seeds
    _say(f"[bold]ablation[/] {title}: {len(cells)} cells × {n_seeds} seeds = {total_runs} runs -> {out_dir}")
    if dry_run:
        for cell in cells:
            mark = " (baseline)" if cell is base_cell else ""
            done = sum(folder.cell(cell.id).seed(s).is_finished() for s in range(n_seeds))
            _say(f"  {cell.id}{mark}: {cell.label} [{done}/{n_seeds} seeds finished]")
        return AblationResult(out_dir, cells, base_cell, [], {}, 0)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(info, folder.ablation_file)
    for cell in cells:
        cell_folder = folder.cell(cell.id)
        cell_folder.root.mkdir(parents=True, exist_ok=True)
        write_json({"id": cell.id, "index": cell.index, "overrides": cell.overrides,
                    "values": {k: v.value for k, v in cell.pairs}}, cell_folder.cell_file)
        if not cell_folder.recipe_file.exists():
            cell_folder.recipe_file.write_text(recipe_mod.dumps(recipes[cell.id]))

    def seed_run(cell: Cell, s: int) -> RunFolder:
        return folder.cell(cell.id).seed(s)

    # Seed by seed, every cell at seed 0 first: an ablation stopped part-way still holds complete paired comparisons
    # (the same folds in every cell) instead of every seed of the first cells and nothing of the others.
    todo = [(cell, s) for s in range(n_seeds) for cell in cells if not seed_run(cell, s).is_finished()]
    done_before = total_runs - len(todo)
    if done_before:
        _say(f"{done_before} of {total_runs} runs already finished, skipped")
    previous = [d for cell in cells for s in range(n_seeds) if seed_run(cell, s).is_finished()
                for d in [seed_run(cell, s).last_command_seconds()] if d is not None]
    durations: list[float] = []
    failed: dict[str, str] = {}
    started = 0

    def cells_done() -> int:
        return sum(all(seed_run(c, s).is_finished() for s in range(n_seeds)) for c in cells)

    def report() -> list[CellSummary]:
        rows_by_cell = {}
        for cell in cells:
            rows = []
            for s in range(n_seeds):
                if seed_run(cell, s).is_finished():
                    rows += rows_of(cell, s, base_seed + s, seed_run(cell, s))
            rows_by_cell[cell.id] = rows
        summaries = summarise(cells, base_cell, rows_by_cell, n_seeds, failed)
        write_csv(folder.results_csv, [r for c in cells for r in rows_by_cell[c.id]], grid_keys)
        tmp = folder.results_md.with_name(folder.results_md.name + ".tmp")
        tmp.write_text(markdown(title, info, summaries, base_cell, grid_keys))
        tmp.replace(folder.results_md)
        return summaries

    try:
        for n, (cell, s) in enumerate(todo):
            cell_folder = folder.cell(cell.id)
            per_run = durations or previous
            left = f", about {_duration(np.mean(per_run) * (len(todo) - n))} left" if per_run else ""
            _say(
                f"[bold cyan]ablate[/] cell {cell.index + 1}/{len(cells)} seed {s + 1}/{n_seeds} ({cell.label})"
                f" | runs {done_before + len(durations)}/{total_runs}, cells {cells_done()}/{len(cells)} done{left}"
            )
            target = seed_run(cell, s)
            t0 = time.perf_counter()
            started += 1
            try:
                seeded = recipe_mod.plain(recipes[cell.id])
                seeded["train"]["seed"] = base_seed + s
                engine.run(seeded, target.root, resume=target.recipe_file.exists(), host=host,
                           recipe_path=str(cell_folder.recipe_file))
            except Exception as exc:  # noqa: BLE001 - one failed cell must not end an hours-long grid
                failed[cell.id] = f"{type(exc).__name__}: {exc}"
                with cell_folder.error_file.open("a") as f:
                    f.write(f"seed {s} (train.seed {base_seed + s}):\n{traceback.format_exc()}\n")
                if fail_fast:
                    report()
                    raise
                _say(f"[red]cell {cell.id} seed {s} failed[/]: {failed[cell.id]} (see {cell_folder.error_file}); going on")
                continue
            durations.append(time.perf_counter() - t0)
            if all(seed_run(cell, k).is_finished() for k in range(n_seeds)):
                cell_folder.error_file.unlink(missing_ok=True)
    except KeyboardInterrupt:
        report()
        _say(f"[yellow]ablation interrupted[/]; partial results in {folder.results_md}. Run the same command"
             " again to resume: finished runs are skipped, the unfinished one continues from its checkpoint.")
        raise
    summaries = report()
    _say(f"[bold green]ablation done[/]: {cells_done()}/{len(cells)} cells finished"
                  + (f", {len(failed)} failed" if failed else "") + f" -> {folder.results_md}")
    if show_table:
        print_table(title, summaries, base_cell, grid_keys, n_seeds)
    return AblationResult(out_dir, cells, base_cell, summaries, failed, started)
