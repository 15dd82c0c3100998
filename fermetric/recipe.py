"""TOML recipes: loading, inheritance (``extends``), command-line overrides and validation.

A recipe is a plain nested dict once loaded. Component tables (``[data]``, ``[crop]``, ``[backbone]``, each
``[[loss]]``) name a registered component with ``name`` and give its parameters; the engine's own tables
(``[model]``, ``[train]``, ``[eval]``, ``[ablate]``) have the fixed keys in :data:`SCHEMA`. Everything is
checked by :func:`validate` before any work starts, and every problem is a :class:`RecipeError` naming the key.
The reference is ``docs/recipes.md``.
"""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .errors import RecipeError
from .plugins import Param, PluginHost, check_value, factory_params

# Keys of a component table that the engine reads itself; they are not passed to the component's factory.
ENGINE_KEYS = {
    "data": {"name"},
    "crop": {"name", "on_no_face", "cache"},
    "backbone": {"name"},
    "loss": {"name", "weight", "lr", "miner"},
}

# Engine tables: key -> (accepted types, default). ``None`` as a default means "not set".
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "model": {
        "embedding_dim": ((int,), 128),
        "dropout": ((int, float), 0.0),
    },
    "train": {
        "epochs": ((int,), 10),
        "batch_size": ((int,), 64),
        "lr": ((int, float), 1e-3),
        "weight_decay": ((int, float), 1e-4),
        "optimizer": ((str,), "adamw"),
        "momentum": ((int, float), 0.9),
        "scheduler": ((str,), "cosine"),
        "warmup_epochs": ((int,), 0),
        "sampler": ((str, dict), "random"),
        "device": ((str,), "auto"),
        "amp": ((bool,), True),
        "seed": ((int,), 0),
        "val_fraction": ((int, float), 0.1),
        "select": ((str,), "best"),
        "patience": ((int,), 0),
        "augment": ((dict,), {"flip": True, "shift": 0.1, "rotate": 10.0, "scale": 0.1}),
        "cache_dir": ((str,), ".fermetric-cache"),
        "grad_clip": ((int, float), 0.0),
    },
    "eval": {
        "protocol": ((str,), "holdout"),
        "test_fraction": ((int, float), 0.2),
        "folds": ((int,), 10),
        "group_by": ((str,), "auto"),
        "split_column": ((str,), "split"),
        "train_split": ((str, list), "train"),
        "test_split": ((str, list), "test"),
        "val_split": ((str, list), ""),
        "tta": ((str,), "none"),
        "tsne": ((bool,), True),
        "tsne_max_points": ((int,), 2000),
        "knn": ((bool,), True),
    },
    "ablate": {
        "grid": ((dict,), {}),
        "seeds": ((int,), 1),
        "baseline": ((str,), ""),
    },
}

CHOICES = {
    ("train", "optimizer"): ("adamw", "adam", "sgd"),
    ("train", "scheduler"): ("cosine", "step", "none"),
    ("train", "select"): ("best", "last"),
    ("eval", "protocol"): ("holdout", "split", "kfold"),
    ("eval", "tta"): ("none", "flip", "ten_crop"),
    ("crop", "on_no_face"): ("fallback", "skip", "error"),
}

COMPONENT_SECTIONS = ("data", "crop", "backbone")
TOP_LEVEL = {"extends", "name", "description", "loss", *COMPONENT_SECTIONS, *SCHEMA}


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a recipe, resolve ``extends`` and apply ``--set`` overrides. Not yet validated."""
    recipe = _load_with_bases(Path(path).resolve(), ())
    for item in overrides or []:
        apply_override(recipe, item)
    recipe.pop("extends", None)
    return recipe


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path in chain:
        cycle = " -> ".join(str(p.name) for p in (*chain, path))
        raise RecipeError(f"{chain[0]}: recipes extend each other in a cycle: {cycle}")
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise RecipeError(f"recipe file not found: {path}{where}")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: TOML syntax error: {exc}") from None
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(f"{path}: 'extends' must be a path or a list of paths, relative to the recipe")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases((path.parent / base).resolve(), (*chain, path)))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (arrays such as ``[[loss]]`` included) is replaced whole.

    A component table that names another component starts afresh: the base's parameters belonged to the
    base's component (the engine's own keys, such as a loss's ``weight``, are kept).
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if _renames(out[key], value.get("name")):
                out[key] = _engine_part(out[key], key)
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``0.2``, ``true``, ``"x"``, ``[1, 2]``); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(recipe: dict[str, Any], item: str) -> None:
    """Apply ``dotted.key=value`` in place. Array items are addressed by 0-based index (``loss.1.weight``);
    the index one past the end appends a new table."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"--set {item!r}: empty part in key {key!r}")
    node: Any = recipe
    for i, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[: i + 1], create=True)
    last = parts[-1]
    value = parse_value(text.strip())
    if isinstance(node, list):
        index = _index(node, last, parts, allow_append=False)
        node[index] = value
        return
    if last == "name" and _renames(node, value):
        # A new component's table starts afresh, keeping only the engine's keys (weight, lr, on_no_face, ...).
        section = parts[0]
        kept = _engine_part(node, section)
        node.clear()
        node.update(kept)
    node[last] = value


def _renames(table: dict[str, Any], new_name: Any) -> bool:
    return isinstance(new_name, str) and "name" in table and table["name"] != new_name


def _engine_part(table: dict[str, Any], section: str) -> dict[str, Any]:
    keys = ENGINE_KEYS.get(section, set()) - {"name"}
    return {k: v for k, v in table.items() if k in keys}


def _step(node: Any, part: str, path: list[str], create: bool) -> Any:
    if isinstance(node, list):
        index = _index(node, part, path, allow_append=create)
        if index == len(node):
            node.append({})
        return node[index]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a table")
    if part not in node:
        node[part] = {}
    return node[part]


def _index(node: list, part: str, path: list[str], allow_append: bool) -> int:
    if not part.isdigit():
        raise RecipeError(f"--set {'.'.join(path)}: {part!r} must be an index (0-based) into the array")
    index = int(part)
    limit = len(node) + (1 if allow_append else 0)
    if index >= limit:
        raise RecipeError(f"--set {'.'.join(path)}: index {index} is out of range (the array has {len(node)} items)")
    return index


def losses_of(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's loss terms that are switched on (``weight = 0`` switches a term off)."""
    return [t for t in recipe.get("loss", []) if float(t.get("weight", 1.0)) != 0.0]


def with_defaults(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every engine default written out: what a run folder records."""
    out = copy.deepcopy(recipe)
    for section, keys in SCHEMA.items():
        table = out.setdefault(section, {})
        for key, (_, default) in keys.items():
            table.setdefault(key, copy.deepcopy(default))
    out.setdefault("crop", {}).setdefault("on_no_face", "fallback")
    out["crop"].setdefault("cache", True)
    for term in out.get("loss", []):
        term.setdefault("weight", 1.0)
    return out


def validate(recipe: dict[str, Any], host: PluginHost, check_paths: bool = True) -> dict[str, Any]:
    """Check everything a run will need and return the recipe with defaults filled in.

    Raises :class:`RecipeError` on the first problem, naming the key.
    """
    _check_known(recipe.keys(), TOP_LEVEL, "top-level key", "")
    for section in ("data", "backbone"):
        if section not in recipe:
            raise RecipeError(f"missing table [{section}] (it names the {section} component with name = \"...\")")
    recipe = with_defaults(recipe)
    for section in SCHEMA:
        table = recipe[section]
        if not isinstance(table, dict):
            raise RecipeError(f"[{section}] must be a table")
        _check_known(table.keys(), SCHEMA[section].keys(), "key", f"{section}.")
        for key, value in table.items():
            types_, _ = SCHEMA[section][key]
            if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
                want = " or ".join(t.__name__ for t in types_)
                raise RecipeError(f"{section}.{key}: expected {want}, got {type(value).__name__} {value!r}")
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise RecipeError(f"{section}.{key} = {value!r}: expected one of {', '.join(choices)}")
    augment = recipe["train"]["augment"]
    defaults = SCHEMA["train"]["augment"][1]
    _check_known(augment.keys(), defaults.keys(), "key", "train.augment.")
    for key, value in augment.items():
        want = type(defaults[key])
        if isinstance(value, bool) != (want is bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"train.augment.{key}: expected {want.__name__}, got {type(value).__name__} {value!r}")
    # A partial table changes only the keys it names (the documented defaults stay for the others).
    recipe["train"]["augment"] = {**defaults, **augment}
    crop_choice = recipe["crop"].get("on_no_face")
    if crop_choice not in CHOICES[("crop", "on_no_face")]:
        raise RecipeError(f"crop.on_no_face = {crop_choice!r}: expected one of {', '.join(CHOICES[('crop', 'on_no_face')])}")
    if "name" not in recipe["crop"]:
        recipe["crop"]["name"] = "full_face"
    for section in COMPONENT_SECTIONS:
        _check_component(host, _kind(section), recipe[section], section, check_paths)
    losses = recipe.get("loss")
    if not isinstance(losses, list) or not losses:
        raise RecipeError("no [[loss]] table: a recipe needs at least one loss, e.g. [[loss]] name = \"cross_entropy\"")
    for i, term in enumerate(losses):
        where = f"loss.{i}"
        if not isinstance(term, dict):
            raise RecipeError(f"{where}: expected a table")
        weight = term.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise RecipeError(f"{where}.weight: expected float, got {type(weight).__name__} {weight!r}")
        lr = term.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
            raise RecipeError(f"{where}.lr: expected float, got {type(lr).__name__} {lr!r}")
        _check_component(host, "loss", term, where, check_paths, injected={"num_classes", "embedding_size"})
        miner = term.get("miner")
        if miner is not None:
            _check_miner(miner, where)
    if not losses_of(recipe):
        raise RecipeError("every [[loss]] has weight = 0: nothing to optimise")
    sampler = recipe["train"]["sampler"]
    sampler_table = {"name": sampler} if isinstance(sampler, str) else dict(sampler)
    _check_component(host, "sampler", sampler_table, "train.sampler", check_paths,
                     injected={"labels", "batch_size", "seed"}, engine_keys={"name"})
    return recipe


def _kind(section: str) -> str:
    return {"data": "dataset", "crop": "cropper", "backbone": "backbone"}[section]


def _check_component(host: PluginHost, kind: str, table: dict[str, Any], where: str, check_paths: bool,
                     injected: set[str] = frozenset(), engine_keys: set[str] | None = None) -> None:
    name = table.get("name")
    registry = host.registry(kind)
    if not isinstance(name, str):
        raise RecipeError(f"{where}.name: missing; name one of the registered {kind}s: {', '.join(registry.names())}")
    if name not in registry:
        hint = _did_you_mean(name, registry.names(), n=3)
        raise RecipeError(
            f"{where}.name: unknown {kind} {name!r}{hint} (registered: {', '.join(registry.names())};"
            f" `fermetric plugins` lists them)"
        )
    component = registry.get(name)
    engine = engine_keys if engine_keys is not None else ENGINE_KEYS.get(where.split(".")[0], {"name"})
    params = {k: v for k, v in table.items() if k not in engine}
    for key, value in params.items():
        if key in injected:
            continue
        param = component.params.get(key)
        if param is None:
            if component.accepts_any:
                continue
            valid = [p for p in component.params if p not in injected]
            raise RecipeError(
                f"{where}.{key}: {kind} {name!r} has no parameter {key!r}{_did_you_mean(key, valid)}"
                f" (its parameters: {', '.join(valid) or 'none'})"
            )
        expected = check_value(param, value)
        if expected is not None:
            raise RecipeError(f"{where}.{key}: {kind} {name!r} expects {expected}, got {type(value).__name__} {value!r}")
        if check_paths and _is_path_param(param) and isinstance(value, str) and value and not Path(value).exists():
            raise RecipeError(f"{where}.{key}: path does not exist: {value} (relative paths are read from {Path.cwd()})")
    for pname, param in component.params.items():
        if param.required and pname not in params and pname not in injected and pname != "in_chans":
            raise RecipeError(f"{where}.{pname}: {kind} {name!r} needs parameter {pname!r}")


def _is_path_param(param: Param) -> bool:
    ann = param.annotation
    return ann is Path or (isinstance(ann, type) and issubclass(ann, os.PathLike)) or any(
        a is Path for a in getattr(ann, "__args__", ()) or ()
    )


def _check_miner(miner: Any, where: str) -> None:
    from .losses import MINERS

    name = miner if isinstance(miner, str) else miner.get("name") if isinstance(miner, dict) else None
    if name not in MINERS:
        hint = _did_you_mean(str(name), MINERS)
        raise RecipeError(f"{where}.miner: unknown miner {name!r}{hint} (known: {', '.join(sorted(MINERS))})")
    if isinstance(miner, dict):
        params, accepts_any = factory_params(MINERS[name])
        for key, value in miner.items():
            if key == "name" or (key not in params and accepts_any):
                continue
            if key not in params:
                hint = _did_you_mean(key, params)
                raise RecipeError(f"{where}.miner.{key}: miner {name!r} has no parameter {key!r}{hint} (its parameters: {', '.join(params)})")
            expected = check_value(params[key], value)
            if expected is not None and key != "distance":
                raise RecipeError(f"{where}.miner.{key}: miner {name!r} expects {expected}, got {type(value).__name__} {value!r}")


def _check_known(keys, known, what: str, prefix: str) -> None:
    for key in keys:
        if key not in known:
            raise RecipeError(f"{prefix}{key}: unknown {what}{_did_you_mean(key, known, prefix=prefix)}")


def _did_you_mean(word: str, choices, n: int = 2, prefix: str = "") -> str:
    """'; did you mean 'a' or 'b'?' for the choices close to a misspelt word, '' when none is."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""


def dumps(recipe: dict[str, Any]) -> str:
    return tomli_w.dumps(recipe)


def matches_file(path: Path, recipe: dict[str, Any]) -> bool:
    """Whether a run folder's saved ``recipe.toml`` holds this resolved recipe (the guard against resuming or
    reusing a folder made by another recipe). Compared as TOML would read it back."""
    try:
        return tomllib.loads(Path(path).read_text()) == tomllib.loads(dumps(recipe))
    except (OSError, tomllib.TOMLDecodeError):
        return False
