"""``fermetric ablate``: one recipe, a grid of overrides, every cell trained and compared with a baseline cell.

A grid comes from ``--grid KEY=V1,V2,...`` options (repeatable) or from the recipe's ``[ablate]`` table::

    [ablate]
    grid = { "crop.name" = ["full_face", "au_partial"], "loss.1.weight" = [0, 0.5] }
    seeds = 3
    baseline = "crop.name=full_face,loss.1.weight=0"

``--grid`` options replace the table's grid; ``--seeds`` and ``--baseline`` replace its values. The
Cartesian product of the grid's values gives the cells. ``--set`` overrides apply to every cell, together
with the cell's own values (a key cannot be both); overrides that rename a component (``crop.name=...``)
are applied first, because a renamed component starts its table afresh, so parameters given in the grid or
with ``--set`` always reach the new component. A value is a TOML value or a bare word
(``--grid 'crop={name="full_face"},{name="au_partial",regions=["mouth"]}'`` replaces a whole table;
commas inside brackets, braces and quotes do not split). ``loss.N.name=none`` drops loss term N from that
cell (``loss.N.weight=0`` switches it off too, and keeps the recipe's array indices intact).

Folder layout (``--out``, default ``runs/<recipe>_ablate``)::

    ablation.json                   the recipe, the --set overrides, the grid, the seeds and the cells
    cells/<cell_id>/cell.json       the cell's overrides
    cells/<cell_id>/recipe.toml     the cell's fully resolved recipe (what each seed runs)
    cells/<cell_id>/seed_<s>/       an ordinary ``fermetric run`` folder, with ``train.seed = seed + s``
    cells/<cell_id>/error.txt       the traceback of a failed run (removed once the cell succeeds)
    results.csv                     one row per cell x seed x fold
    results.md                      mean ± std per cell, difference from the baseline, paired Wilcoxon test

A cell id is a readable slug of its overrides plus 8 hex digits of a hash of them (keys sorted, values
parsed), so the same overrides always map to the same folder, whatever the order of the ``--grid``
options. Re-running the same command resumes: a seed whose run folder says it finished is skipped, an
unfinished one continues through the engine's ``--resume`` (first unfinished fold, last checkpoint). A cell
whose recipe no longer matches its ``recipe.toml`` (the base recipe changed) is an error: use another
``--out``. New grid values can be added to an existing ablation folder; finished cells are reused.

Seeds and folds: seed ``s`` of every cell trains with ``train.seed = <recipe's train.seed> + s``, and the
protocol's split is drawn from ``train.seed`` too, so the split changes from seed to seed but is the same for
every cell at the same seed. The paired test therefore pairs (seed, fold) results that were trained and
tested on exactly the same images.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import re
import time
import traceback
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from . import engine
from . import recipe as recipe_mod
from .errors import FermetricError, RecipeError
from .plugins import PluginHost, get_host
from .progress import console as _console


def _say(*args, **kwargs) -> None:
    _console.print(*args, soft_wrap=True, **kwargs)


DROP = "none"  # loss.N.name = none drops the term
LOSS_NAME_KEY = re.compile(r"^loss\.(\d+)\.name$")

# results.csv columns after the cell's overrides (per-class recall columns follow them)
METRIC_COLUMNS = (
    "accuracy", "macro_f1", "knn_precision_at_1", "knn_map_at_r", "intra_inter_ratio",
    "intra_class_distance", "inter_class_distance",
)
SUMMARY_METRICS = (
    ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("knn_precision_at_1", "k-NN P@1"),
    ("knn_map_at_r", "MAP@R"), ("intra_inter_ratio", "intra/inter"),
)


# -- grid ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    """One grid value: the parsed value and the text shown in tables and folder names."""

    value: Any
    text: str


@dataclass
class Cell:
    index: int
    pairs: tuple[tuple[str, Value], ...]  # (key, value) in grid order
    id: str = ""

    @property
    def overrides(self) -> list[str]:
        """``--set`` style overrides (TOML literals) that make this cell from the base recipe."""
        return [f"{key}={toml_literal(v.value)}" for key, v in self.pairs]

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={v.text}" for key, v in self.pairs) or "(base recipe)"

    def text_of(self, key: str) -> str:
        return next((v.text for k, v in self.pairs if k == key), "")


def toml_literal(value: Any) -> str:
    """A TOML value's source text, inline tables included (what ``recipe.parse_value`` reads back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are valid in a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise RecipeError(f"grid value {value!r}: a {type(value).__name__} cannot be written as a TOML value")


def split_top_level(text: str, separators: str = ",") -> list[str]:
    """Split on ``separators`` outside brackets, braces and quotes: ``a,[1,2],"x,y"`` -> 3 items."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch in separators and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def _text_value(text: str) -> Value:
    value = recipe_mod.parse_value(text)
    shown = value if isinstance(value, str) else text
    return Value(value, shown)


def _py_value(value: Any) -> Value:
    return Value(value, value if isinstance(value, str) else toml_literal(value))


def _check_key(key: str, where: str) -> None:
    parts = key.split(".")
    if not key or not all(parts):
        raise RecipeError(f"{where}: empty part in key {key!r}")
    if parts[0] == "ablate":
        raise RecipeError(f"{where}: {key} cannot be varied by the grid")
    if key == "train.seed":
        raise RecipeError(f"{where}: train.seed cannot be a grid axis; use --seeds (seed s runs train.seed + s)")


def parse_grid_option(item: str) -> tuple[str, list[Value]]:
    """``KEY=V1,V2,...`` from the command line."""
    key, sep, text = item.partition("=")
    key = key.strip()
    where = f"--grid {item!r}"
    if not sep or not text.strip():
        raise RecipeError(f"{where}: expected KEY=V1,V2,..., e.g. --grid loss.1.name=emlf,triplet")
    _check_key(key, where)
    texts = split_top_level(text)
    if any(not t for t in texts):
        raise RecipeError(f"{where}: empty value in the list")
    return key, [_text_value(t) for t in texts]


def grid_from_table(table: Any, prefix: str = "") -> dict[str, list[Value]]:
    """``[ablate] grid``: ``{"crop.name" = [...]}``; nested tables (``{crop = {name = [...]}}``) are dotted too."""
    if not isinstance(table, dict):
        raise RecipeError(f"ablate.grid: expected a table of KEY = [values], got {type(table).__name__}")
    grid: dict[str, list[Value]] = {}
    for key, values in table.items():
        full = f"{prefix}{key}"
        if isinstance(values, dict):
            grid |= grid_from_table(values, f"{full}.")
            continue
        where = f"ablate.grid.{full}"
        _check_key(full, where)
        if not isinstance(values, list) or not values:
            raise RecipeError(f"{where}: expected a non-empty array of values, got {values!r}")
        grid[full] = [_py_value(v) for v in values]
    return grid


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cell_id(pairs: tuple[tuple[str, Value], ...]) -> str:
    ordered = sorted(pairs, key=lambda p: p[0])
    digest = hashlib.sha1(_canonical([[k, v.value] for k, v in ordered]).encode()).hexdigest()[:8]
    slug = "__".join(f"{k}-{v.text}" for k, v in ordered) or "base"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip("-.")[:80].rstrip("-.") or "cell"
    return f"{slug}-{digest}"


def expand(grid: dict[str, list[Value]]) -> list[Cell]:
    """The Cartesian product of the grid's values, the first key varying slowest."""
    for key, values in grid.items():
        seen = [_canonical(v.value) for v in values]
        if len(set(seen)) != len(seen):
            raise RecipeError(f"grid {key}: a value is listed twice ({', '.join(v.text for v in values)})")
    keys = list(grid)
    cells = []
    for i, combo in enumerate(product(*(grid[k] for k in keys))):
        pairs = tuple(zip(keys, combo))
        cells.append(Cell(i, pairs, cell_id(pairs)))
    return cells


def _key_of(item: str) -> str:
    return item.partition("=")[0].strip()


def cell_recipe(base: dict[str, Any], cell: Cell, host: PluginHost, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The base recipe with the cell's values and the ``--set`` overrides applied, validated.

    Overrides that name a component (``crop.name=...``) go first: renaming a component starts its table
    afresh (:func:`fermetric.recipe.apply_override`), so parameters given anywhere else, in the grid or with
    ``--set``, are applied to the new component whatever their order. ``loss.N.name=none`` drops term N
    (N counts the recipe's terms, before any is dropped).
    """
    recipe = copy.deepcopy(base)
    grid_items = [f"{key}={toml_literal(value.value)}" for key, value in cell.pairs]
    clash = {_key_of(o) for o in overrides} & {key for key, _ in cell.pairs}
    if clash:
        raise RecipeError(f"--set {', '.join(sorted(clash))}: also a grid key; give it in one place")
    items = [*grid_items, *overrides]
    items.sort(key=lambda item: not _key_of(item).endswith(".name"))  # stable: renames first
    dropped = []
    for item in items:
        recipe_mod.apply_override(recipe, item)
        match = LOSS_NAME_KEY.match(_key_of(item))
        if match and recipe_mod.parse_value(item.partition("=")[2].strip()) == DROP:
            dropped.append(int(match.group(1)))
    for index in sorted(set(dropped), reverse=True):
        del recipe["loss"][index]
    try:
        return recipe_mod.validate(recipe, host)
    except RecipeError as exc:
        raise RecipeError(f"cell {cell.label}: {exc}") from None


def find_baseline(cells: list[Cell], spec: str) -> Cell:
    """The cell named by id (or a unique id prefix) or by ``KEY=VALUE[,KEY=VALUE...]``; default the first."""
    spec = (spec or "").strip()
    if not spec:
        return cells[0]
    for cell in cells:
        if cell.id == spec:
            return cell
    if "=" not in spec:
        matches = [c for c in cells if c.id.startswith(spec)]
    else:
        wanted = {}
        for item in split_top_level(spec, ",;"):
            key, sep, text = item.partition("=")
            if not sep:
                raise RecipeError(f"--baseline {spec!r}: {item!r} is not KEY=VALUE")
            key = key.strip()
            if not any(k == key for k, _ in cells[0].pairs):
                raise RecipeError(f"--baseline {spec!r}: {key} is not a grid key ({', '.join(k for k, _ in cells[0].pairs)})")
            wanted[key] = _canonical(recipe_mod.parse_value(text.strip()))
        matches = [c for c in cells if all(_canonical(v.value) == wanted[k] for k, v in c.pairs if k in wanted)]
    if len(matches) != 1:
        found = "no cell" if not matches else f"{len(matches)} cells ({', '.join(c.id for c in matches)})"
        raise RecipeError(f"--baseline {spec!r} matches {found}; give a cell id or enough KEY=VALUE pairs")
    return matches[0]


# -- results ------------------------------------------------------------------------------------------------
def seed_finished(seed_dir: Path) -> bool:
    run_file, metrics_file = seed_dir / "run.json", seed_dir / "metrics.json"
    if not (run_file.is_file() and metrics_file.is_file()):
        return False
    try:
        return json.loads(run_file.read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def fold_metrics(seed_dir: Path) -> list[dict[str, Any]]:
    """Per-fold test metrics of a finished run folder (k-fold: its ``per_fold``; otherwise the one fold)."""
    metrics = json.loads((seed_dir / "metrics.json").read_text())
    return list(metrics["per_fold"]) if "per_fold" in metrics else [metrics]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def rows_of(cell: Cell, seed: int, train_seed: int, seed_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for m in fold_metrics(seed_dir):
        embedding = m.get("embedding", {})
        row: dict[str, Any] = {"cell": cell.id}
        row |= {key: value.text for key, value in cell.pairs}
        row |= {"seed": seed, "train_seed": train_seed, "fold": m.get("fold", 0)}
        row |= {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1")}
        row |= {k: embedding.get(k, "") for k in METRIC_COLUMNS[2:]}
        row |= {"n_test": m.get("n_test", ""), "n_train": m.get("n_train", ""), "n_val": m.get("n_val", ""),
                "tta": m.get("tta", ""), "synthetic_data": bool(m.get("synthetic_data", False))}
        row |= {f"recall_{c}": r for c, r in m.get("per_class_recall", {}).items()}
        rows.append(row)
    return rows


def paired_wilcoxon(values: dict[tuple[int, int], float], baseline: dict[tuple[int, int], float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``values - baseline`` over the (seed, fold) pairs they share.

    Returns ``p`` (None when the test is not defined: fewer than 2 pairs, or every difference is 0), ``n``
    (pairs), ``n_nonzero`` (pairs that enter the test; zero differences are dropped) and ``note``.
    """
    keys = sorted(set(values) & set(baseline))
    diffs = np.array([values[k] - baseline[k] for k in keys], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    n = len(diffs)
    nonzero = int((np.abs(diffs) > 1e-12).sum())
    out = {"p": None, "n": n, "n_nonzero": nonzero, "note": ""}
    if n < 2:
        out["note"] = f"n/a (n={n}: too few pairs)"
        return out
    if nonzero == 0:
        out["note"] = f"n/a (n={n}: all differences 0)"
        return out
    from scipy.stats import wilcoxon

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(wilcoxon(np.where(np.abs(diffs) > 1e-12, diffs, 0.0), zero_method="wilcox", alternative="two-sided").pvalue)
    except ValueError as exc:
        out["note"] = f"n/a (n={n}: {exc})"
        return out
    if not math.isfinite(p):
        out["note"] = f"n/a (n={n})"
        return out
    zeros = f", {n - nonzero} zero" if nonzero < n else ""
    out |= {"p": p, "note": f"p={p:.3g} (n={n}{zeros})"}
    return out


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    arr = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if not len(arr):
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan, len(arr)


def _fmt_mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.4f}" if not math.isfinite(std) else f"{mean:.4f} ± {std:.4f}"


def _fmt_delta(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.4f}"


@dataclass
class CellSummary:
    cell: Cell
    runs_done: int
    rows: list[dict[str, Any]]
    stats: dict[str, tuple[float, float, int]]
    delta: dict[str, float] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    status: str = "finished"  # finished | partial | not run | failed


def summarise(cells: list[Cell], baseline: Cell, rows_by_cell: dict[str, list[dict[str, Any]]], seeds: int,
              failed: dict[str, str]) -> list[CellSummary]:
    def acc_by_pair(rows):
        return {(int(r["seed"]), int(r["fold"])): _number(r["accuracy"]) for r in rows}

    base_rows = rows_by_cell.get(baseline.id, [])
    base_stats = {key: _mean_std([_number(r[key]) for r in base_rows]) for key, _ in SUMMARY_METRICS}
    out = []
    for cell in cells:
        rows = rows_by_cell.get(cell.id, [])
        runs = len({r["seed"] for r in rows})
        stats = {key: _mean_std([_number(r[key]) for r in rows]) for key, _ in SUMMARY_METRICS}
        status = "failed" if cell.id in failed else "finished" if runs == seeds else "partial" if runs else "not run"
        summary = CellSummary(cell, runs, rows, stats, status=status)
        if cell.id != baseline.id and rows and base_rows:
            summary.delta = {key: stats[key][0] - base_stats[key][0] for key in ("accuracy", "macro_f1")}
            summary.test = paired_wilcoxon(acc_by_pair(rows), acc_by_pair(base_rows))
        out.append(summary)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]], grid_keys: list[str]) -> None:
    fixed = ["cell", *grid_keys, "seed", "train_seed", "fold", *METRIC_COLUMNS, "n_test", "n_train", "n_val", "tta", "synthetic_data"]
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in fixed and k not in extra]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fixed + extra, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    tmp.replace(path)


def markdown(title: str, info: dict[str, Any], summaries: list[CellSummary], baseline: Cell, grid_keys: list[str]) -> str:
    synthetic = any(r.get("synthetic_data") for s in summaries for r in s.rows)
    lines = [f"# Ablation: {title}", ""]
    if synthetic:
        lines += ["**SYNTHETIC data**: these numbers show that the pipeline works, not how well it recognises real faces.", ""]
    lines += [
        f"- recipe: `{info['recipe']}`" + (f" with `--set {' '.join(info['overrides'])}`" if info["overrides"] else ""),
        f"- protocol: {info['protocol']}; seeds: {info['seeds']} (seed s trains with train.seed = {info['base_seed']} + s;"
        " the split depends on train.seed, so all cells share the same splits at the same seed)",
        f"- baseline: `{baseline.id}` ({baseline.label})",
        f"- cells: {len(summaries)}, finished {sum(s.status == 'finished' for s in summaries)}",
        "",
    ]
    header = ["cell", *grid_keys, "runs", *(name for _, name in SUMMARY_METRICS), "Δ accuracy", "Δ macro-F1", "Wilcoxon (accuracy)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        is_base = s.cell.id == baseline.id
        runs = f"{s.runs_done}/{info['seeds']} × {s.stats['accuracy'][2] // max(s.runs_done, 1) if s.runs_done else 0} folds"
        if s.status in ("failed", "not run"):
            runs = s.status
        row = [f"`{s.cell.id}`" + (" (baseline)" if is_base else ""), *(s.cell.text_of(k) for k in grid_keys), runs]
        row += [_fmt_mean_std(s.stats[key][0], s.stats[key][1]) for key, _ in SUMMARY_METRICS]
        if is_base:
            row += ["baseline", "baseline", "—"]
        else:
            row += [_fmt_delta(s.delta.get("accuracy", math.nan)), _fmt_delta(s.delta.get("macro_f1", math.nan)),
                    s.test.get("note") or "n/a (no results)"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation over every (seed, fold) test result of a cell. Δ: the cell's mean minus"
        " the baseline's. Wilcoxon: scipy's two-sided Wilcoxon signed-rank test of the per-(seed, fold) test"
        " accuracies paired with the baseline's at the same seed and fold (n pairs; zero differences are"
        " dropped). With 5 or fewer non-zero pairs no difference can reach p < 0.05; n/a: fewer than 2 pairs, or"
        " every difference is 0.",
    ]
    failed = [s for s in summaries if s.status in ("failed", "partial", "not run")]
    if failed:
        lines += ["", "Unfinished cells (run the same command again to resume them):", ""]
        lines += [f"- `{s.cell.id}` ({s.cell.label}): {s.status}, {s.runs_done}/{info['seeds']} seeds" for s in failed]
    return "\n".join(lines) + "\n"


def print_table(title: str, summaries: list[CellSummary], baseline: Cell, grid_keys: list[str], seeds: int) -> None:
    """The summary as a rich table on stdout (cells by number and hash; results.md has the full ids)."""
    from rich.console import Console
    from rich.table import Table

    probe = Console()
    out = probe if probe.is_terminal else Console(width=200)
    table = Table(title=f"ablation: {title} (baseline: cell {baseline.index + 1})", title_justify="left")
    for col in ("cell", *grid_keys, "seeds", *(name for _, name in SUMMARY_METRICS), "Δ acc", "Wilcoxon"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        is_base = s.cell.id == baseline.id
        row = [f"{s.cell.index + 1} {s.cell.id[-8:]}" + (" (baseline)" if is_base else ""), *(s.cell.text_of(k) for k in grid_keys),
               "failed" if s.status == "failed" else f"{s.runs_done}/{seeds}"]
        row += [_fmt_mean_std(s.stats[key][0], s.stats[key][1]) for key, _ in SUMMARY_METRICS]
        row += ["—", "—"] if is_base else [_fmt_delta(s.delta.get("accuracy", math.nan)), s.test.get("note") or "n/a"]
        table.add_row(*row)
    out.print(table)


# -- the ablation -------------------------------------------------------------------------------------------
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


def _previous_duration(seed_dir: Path) -> float | None:
    from datetime import datetime

    try:
        info = json.loads((seed_dir / "run.json").read_text())
        return (datetime.fromisoformat(info["finished"]) - datetime.fromisoformat(info["started"])).total_seconds()
    except (OSError, KeyError, ValueError, json.JSONDecodeError):
        return None


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
    ablate_sets = [o for o in overrides if _key_of(o).split(".")[0] == "ablate"]
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
    out_dir = Path(out) if out else Path("runs") / f"{Path(recipe_path).stem}_ablate"

    # Everything is checked before the first cell trains: an error in cell 7 of 8 should not wait hours.
    recipes = {cell.id: cell_recipe(base, cell, host, cell_sets) for cell in cells}
    for cell in cells:
        path = out_dir / "cells" / cell.id / "recipe.toml"
        if path.exists() and not recipe_mod.matches_file(path, recipes[cell.id]):
            raise FermetricError(f"{path} holds another recipe for cell {cell.label} (did the base recipe change?); use another --out")
    first = recipes[cells[0].id]
    base_seed = int(first["train"]["seed"])
    ev = first["eval"]
    protocol = f"{ev['protocol']}" + (f", {ev['folds']} folds" if ev["protocol"] == "kfold" else "") + f", group_by {ev['group_by']}"
    title = str(first.get("name") or Path(recipe_path).stem)
    info = {"recipe": str(recipe_path), "overrides": overrides, "seeds": n_seeds, "base_seed": base_seed, "protocol": protocol,
            "grid": {k: [v.value for v in vs] for k, vs in axes.items()}, "baseline": base_cell.id,
            "cells": [{"id": c.id, "overrides": c.overrides, "folder": f"cells/{c.id}"} for c in cells]}
    total_runs = len(cells) * n_seeds
    _say(f"[bold]ablation[/] {title}: {len(cells)} cells × {n_seeds} seeds = {total_runs} runs -> {out_dir}")
    if dry_run:
        for cell in cells:
            mark = " (baseline)" if cell is base_cell else ""
            done = sum(seed_finished(out_dir / "cells" / cell.id / f"seed_{s}") for s in range(n_seeds))
            _say(f"  {cell.id}{mark}: {cell.label} [{done}/{n_seeds} seeds finished]")
        return AblationResult(out_dir, cells, base_cell, [], {}, 0)

    out_dir.mkdir(parents=True, exist_ok=True)
    engine.write_json(info, out_dir / "ablation.json")
    for cell in cells:
        cell_dir = out_dir / "cells" / cell.id
        cell_dir.mkdir(parents=True, exist_ok=True)
        engine.write_json({"id": cell.id, "index": cell.index, "overrides": cell.overrides,
                           "values": {k: v.value for k, v in cell.pairs}}, cell_dir / "cell.json")
        if not (cell_dir / "recipe.toml").exists():
            (cell_dir / "recipe.toml").write_text(recipe_mod.dumps(recipes[cell.id]))

    def seed_dir(cell: Cell, s: int) -> Path:
        return out_dir / "cells" / cell.id / f"seed_{s}"

    todo = [(cell, s) for cell in cells for s in range(n_seeds) if not seed_finished(seed_dir(cell, s))]
    done_before = total_runs - len(todo)
    if done_before:
        _say(f"{done_before} of {total_runs} runs already finished, skipped")
    previous = [d for cell in cells for s in range(n_seeds) if seed_finished(seed_dir(cell, s))
                for d in [_previous_duration(seed_dir(cell, s))] if d is not None]
    durations: list[float] = []
    failed: dict[str, str] = {}
    started = 0

    def cells_done() -> int:
        return sum(all(seed_finished(seed_dir(c, s)) for s in range(n_seeds)) for c in cells)

    def report() -> list[CellSummary]:
        rows_by_cell = {}
        for cell in cells:
            rows = []
            for s in range(n_seeds):
                if seed_finished(seed_dir(cell, s)):
                    rows += rows_of(cell, s, base_seed + s, seed_dir(cell, s))
            rows_by_cell[cell.id] = rows
        summaries = summarise(cells, base_cell, rows_by_cell, n_seeds, failed)
        write_csv(out_dir / "results.csv", [r for c in cells for r in rows_by_cell[c.id]], grid_keys)
        md = markdown(title, info, summaries, base_cell, grid_keys)
        (out_dir / "results.md.tmp").write_text(md)
        (out_dir / "results.md.tmp").replace(out_dir / "results.md")
        return summaries

    try:
        for n, (cell, s) in enumerate(todo):
            cell_dir = out_dir / "cells" / cell.id
            per_run = durations or previous
            left = f", about {_duration(np.mean(per_run) * (len(todo) - n))} left" if per_run else ""
            _say(
                f"[bold cyan]ablate[/] cell {cell.index + 1}/{len(cells)} seed {s + 1}/{n_seeds} ({cell.label})"
                f" | runs {done_before + len(durations)}/{total_runs}, cells {cells_done()}/{len(cells)} done{left}"
            )
            target = seed_dir(cell, s)
            t0 = time.perf_counter()
            started += 1
            try:
                engine.run_recipe(str(cell_dir / "recipe.toml"), str(target), [f"train.seed={base_seed + s}"],
                                  resume=(target / "recipe.toml").exists(), host=host)
            except Exception as exc:  # noqa: BLE001 - one failed cell must not end an hours-long grid
                failed[cell.id] = f"{type(exc).__name__}: {exc}"
                with (cell_dir / "error.txt").open("a") as f:
                    f.write(f"seed {s} (train.seed {base_seed + s}):\n{traceback.format_exc()}\n")
                if fail_fast:
                    report()
                    raise
                _say(f"[red]cell {cell.id} seed {s} failed[/]: {failed[cell.id]} (see {cell_dir / 'error.txt'}); going on")
                continue
            durations.append(time.perf_counter() - t0)
            if all(seed_finished(seed_dir(cell, k)) for k in range(n_seeds)):
                (cell_dir / "error.txt").unlink(missing_ok=True)
    except KeyboardInterrupt:
        report()
        _say(f"[yellow]ablation interrupted[/]; partial results in {out_dir / 'results.md'}. Run the same command"
             " again to resume: finished runs are skipped, the unfinished one continues from its checkpoint.")
        raise
    summaries = report()
    _say(f"[bold green]ablation done[/]: {cells_done()}/{len(cells)} cells finished"
                  + (f", {len(failed)} failed" if failed else "") + f" -> {out_dir / 'results.md'}")
    if show_table:
        print_table(title, summaries, base_cell, grid_keys, n_seeds)
    return AblationResult(out_dir, cells, base_cell, summaries, failed, started)
