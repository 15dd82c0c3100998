"""Ablation grids: ``KEY=V1,V2`` axes, their Cartesian product of cells, stable cell ids, each cell's recipe."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass
from itertools import product
from typing import Any

from fermetric import recipe as recipe_mod
from fermetric.errors import RecipeError
from fermetric.plugins import PluginHost

DROP = "none"  # loss.N.name = none drops the term
LOSS_NAME_KEY = re.compile(r"^loss\.(\d+)\.name$")
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


def key_of(item: str) -> str:
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
    clash = {key_of(o) for o in overrides} & {key for key, _ in cell.pairs}
    if clash:
        raise RecipeError(f"--set {', '.join(sorted(clash))}: also a grid key; give it in one place")
    items = [*grid_items, *overrides]
    items.sort(key=lambda item: not key_of(item).endswith(".name"))  # stable: renames first
    dropped = []
    for item in items:
        recipe_mod.apply_override(recipe, item)
        match = LOSS_NAME_KEY.match(key_of(item))
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


