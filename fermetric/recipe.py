"""TOML recipes: loading, inheritance (``extends``), command-line overrides and validation.

A recipe is a plain nested dict once loaded. Component tables (``[data]``, ``[crop]``, ``[backbone]``, each
``[[loss]]``) name a registered component with ``name`` and give its parameters; the engine's own tables
(``[model]``, ``[train]``, ``[eval]``, ``[ablate]``) have the fixed keys in :data:`SCHEMA`. Everything is
checked by :func:`validate` before any work starts, and every problem is a :class:`RecipeError` naming the key.
The reference is ``docs/recipes.md``.
"""

from __future__ import annotations

import contextvars
import copy
import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from .errors import RecipeError
from .plugins import Param, PluginHost, check_value

# Keys of a component table that the engine reads itself; they are not passed to the component's factory.
ENGINE_KEYS = {
    "data": {"name"},
    "crop": {"name", "on_no_face", "cache", "color"},
    "backbone": {"name"},
    "loss": {"name", "weight", "lr", "miner"},
}
# The recipe section that holds each kind's table.
SECTION_OF_KIND = {"dataset": "data", "cropper": "crop", "backbone": "backbone", "loss": "loss"}


def engine_keys(kind: str) -> set[str]:
    """The keys of a kind's table that the engine reads itself (``name`` at least); the rest are parameters."""
    return ENGINE_KEYS.get(SECTION_OF_KIND.get(kind, kind), {"name"})

# Engine tables: key -> (accepted types, default). ``None`` as a default means "not set".
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "model": {
        "embedding_dim": ((int,), 128),
        "dropout": ((int, float), 0.0),
        "init_from": ((str,), ""),
        "init_parts": ((str,), "backbone+embedding"),
        "normalization": ((str,), "minus_one_to_one"),
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
        "backbone_lr_mult": ((int, float), 1.0),
        "freeze_backbone_epochs": ((int,), 0),
        "store": ((str,), "auto"),
        "workers": ((int,), 0),
        "compile": ((bool,), False),
        "channels_last": ((bool,), True),
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
    ("model", "init_parts"): ("backbone", "backbone+embedding"),
    ("train", "scheduler"): ("cosine", "step", "none"),
    ("train", "select"): ("best", "last"),
    ("eval", "protocol"): ("holdout", "split", "kfold"),
    ("eval", "tta"): ("none", "flip", "ten_crop"),
    ("crop", "on_no_face"): ("fallback", "skip", "error"),
    ("crop", "color"): ("gray", "rgb"),
    ("model", "normalization"): ("minus_one_to_one", "imagenet"),
    ("train", "store"): ("auto", "memory", "mmap"),
}

# Allowed ranges of the engine's numbers: (low, high, low inclusive, high inclusive); None is unbounded.
RANGES: dict[tuple[str, str], tuple[float | None, float | None, bool, bool]] = {
    # Upper bounds far above any real setting stop a typo from allocating gigabytes (found by fuzzing).
    ("model", "embedding_dim"): (1, 65536, True, True),
    ("model", "dropout"): (0, 1, True, False),
    ("train", "epochs"): (1, None, True, True),
    ("train", "batch_size"): (1, None, True, True),
    ("train", "lr"): (0, None, True, True),  # 0 trains nothing, which a probe of a loaded model may want
    ("train", "weight_decay"): (0, None, True, True),
    ("train", "momentum"): (0, 1, True, False),
    ("train", "warmup_epochs"): (0, None, True, True),
    ("train", "val_fraction"): (0, 1, True, False),
    ("train", "patience"): (0, None, True, True),
    ("train", "grad_clip"): (0, None, True, True),
    ("train", "backbone_lr_mult"): (0, None, True, True),
    ("train", "freeze_backbone_epochs"): (0, None, True, True),
    ("train", "workers"): (0, None, True, True),
    ("train", "seed"): (0, 2**63 - 1, True, True),
    ("eval", "test_fraction"): (0, 1, False, False),
    ("eval", "folds"): (2, None, True, True),
    ("eval", "tsne_max_points"): (5, None, True, True),
    ("ablate", "seeds"): (1, None, True, True),
}
AUGMENT_RANGES = {"shift": (0, 1), "rotate": (0, 180), "scale": (0, 1)}
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def range_text(low, high, low_in: bool = True, high_in: bool = True) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``: how an allowed range reads in a message."""
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    if low is None:
        return f"{'<=' if high_in else '<'} {high}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def in_range(value: float, low, high, low_in: bool = True, high_in: bool = True) -> bool:
    if value != value:  # NaN is in no range
        return False
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    return not (high is not None and (value > high or (value == high and not high_in)))


COMPONENT_SECTIONS = ("data", "crop", "backbone")
TOP_LEVEL = {"extends", "name", "description", "loss", "callback", *COMPONENT_SECTIONS, *SCHEMA}

# Component parameters that name a component of another kind (``distance = "cosine"``): checked and built
# from that kind's registry (see fermetric.build).
NESTED_KINDS = ("distance", "miner")


# Packaged recipes (``fermetric/recipes``, installed with the package) are named ``fermetric:<path>``, in
# ``extends`` and on the command line: ``extends = "fermetric:pidml/base.toml"``.
PACKAGED_PREFIX = "fermetric:"
# Private top-level key of a loaded (not yet validated) recipe: dotted key -> folder that its relative paths
# are read from (the folder of the recipe file that set the key, or the current folder for ``--set``).
# :func:`validate` consumes it; a validated recipe holds absolute paths and not this key.
ORIGINS = "__origins__"
# "pkg:<package>/<file>", "fermetric:<recipe>": values that name a resource, not a relative path.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-_]+:")


def packaged_dir() -> Path:
    """The folder of the recipes installed with fermetric (``fermetric recipes`` lists them)."""
    return Path(__file__).resolve().parent / "recipes"


def packaged_recipes() -> list[str]:
    """Names (``pidml/base.toml``) of the packaged recipes, sorted."""
    root = packaged_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.toml"))


def resolve_recipe_path(spec: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """The file a recipe reference names: ``fermetric:NAME`` (packaged), ``~`` expanded, a relative path
    read from ``relative_to`` (the extending recipe's folder) or else the current folder."""
    text = os.fspath(spec)
    if text.startswith(PACKAGED_PREFIX):
        name = text[len(PACKAGED_PREFIX):].lstrip("/")
        root = packaged_dir()
        path = (root / name).resolve()
        if not path.is_file() and path.suffix != ".toml":
            path = path.with_name(path.name + ".toml")
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            raise RecipeError(f"{text}: no such packaged recipe (`fermetric recipes` lists them)")
        return path
    path = Path(text).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    return path.resolve()


def packaged_description(name: str) -> str:
    """A packaged recipe's own ``description``, else the first sentence of the comment that opens it."""
    path = resolve_recipe_path(PACKAGED_PREFIX + name)
    text = path.read_text()
    try:
        own = tomllib.loads(text).get("description")
    except tomllib.TOMLDecodeError:
        own = None
    if isinstance(own, str) and own:
        return own
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    words = " ".join(c for c in comment if c)
    end = words.find(". ")
    return words[: end + 1] if end >= 0 else words


def packaged_copy_text(name: str, host: PluginHost | None = None) -> str:
    """The text of packaged recipe ``name`` made to work from anywhere: relative ``extends`` become
    ``fermetric:`` references, and relative path parameters it sets become absolute (read from the packaged
    file's folder, as they would be there). Comments and layout are kept."""
    path = resolve_recipe_path(PACKAGED_PREFIX + name)
    text = path.read_text()
    root = packaged_dir().resolve()

    def packaged_ref(match: re.Match) -> str:
        ref = match.group(1)
        if ref.startswith(PACKAGED_PREFIX) or _SCHEME.match(ref) or os.path.isabs(os.path.expanduser(ref)):
            return match.group(0)
        target = (path.parent / ref).resolve()
        if not target.is_relative_to(root):
            return f'"{target.as_posix()}"'
        return f'"{PACKAGED_PREFIX}{target.relative_to(root).as_posix()}"'

    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if re.match(r"\s*extends\s*=", line):
            lines[i] = re.sub(r'"([^"]*)"', packaged_ref, line)
    if host is not None:
        own = dict(_string_leaves({k: v for k, v in tomllib.loads(text).items() if k != "extends"}, ""))
        resolved = _flat_strings(validate(load(path), host, check_paths=False))
        for key, raw in own.items():
            new = resolved.get(key)
            if new is None or new == raw or os.path.isabs(os.path.expanduser(raw)):
                continue
            pattern = re.compile(rf'^(\s*"?{re.escape(key.split(".")[-1])}"?\s*=\s*)"{re.escape(raw)}"')
            lines = [pattern.sub(lambda m: f'{m.group(1)}"{new}"', line) for line in lines]
    return "".join(lines)


def _flat_strings(recipe: dict[str, Any]) -> dict[str, str]:
    return dict(_string_leaves(recipe, ""))


def recipe_stem(spec: str | os.PathLike) -> str:
    """The recipe's file name without ``.toml`` (``fermetric:pidml/base.toml`` -> ``base``): the default run
    folder is ``runs/<stem>``."""
    text = os.fspath(spec)
    if text.startswith(PACKAGED_PREFIX):
        text = text[len(PACKAGED_PREFIX):]
    return Path(text).stem


def resolve_path_value(value: str, folder: str | os.PathLike | None = None) -> str:
    """A path value of a recipe made absolute: ``~`` expanded; relative to ``folder`` (the folder of the
    recipe file that set it) or else the current folder; absolute paths and ``pkg:``-style names unchanged."""
    if not isinstance(value, str) or not value or _SCHEME.match(value):
        return value
    path = os.path.expanduser(value)
    if os.path.isabs(path):
        return path if path != value else os.path.normpath(path)
    return os.path.normpath(os.path.join(os.fspath(folder) if folder else os.getcwd(), path))


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a recipe, resolve ``extends`` and apply ``--set`` overrides. Not yet validated.

    The result carries :data:`ORIGINS` (which folder each string value's relative path is read from), for
    :func:`validate`, which turns the path parameters into absolute paths.
    """
    recipe, origins = _load_with_bases(resolve_recipe_path(path), ())
    recipe[ORIGINS] = origins
    for item in overrides or []:
        apply_override(recipe, item)
    recipe.pop("extends", None)
    return recipe


def _string_leaves(value: Any, prefix: str):
    """(dotted key, value) of every string inside tables and arrays (array items by 0-based index)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _string_leaves(item, f"{prefix}.{i}")
    elif isinstance(value, str):
        yield prefix, value


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe in ``path`` merged onto its bases, and the origin folder of every string it holds (a key set
    by several files has the folder of the last, the one whose value is kept)."""
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
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from None
    if ORIGINS in data:
        raise RecipeError(f"{path}: {ORIGINS!r} is a reserved key")
    bases = data.pop("extends", None)
    own = {key: str(path.parent) for key, _ in _string_leaves(data, "")}
    if bases is None:
        return data, own
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(f"{path}: 'extends' must be a path or a list of paths, relative to the recipe,"
                          f" or {PACKAGED_PREFIX}NAME for a packaged recipe")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for base in bases:
        try:
            base_path = resolve_recipe_path(base, path.parent)
        except RecipeError as exc:
            raise RecipeError(f"{exc} (extended by {path})") from None
        base_data, base_origins = _load_with_bases(base_path, (*chain, path))
        merged = deep_merge(merged, base_data)
        origins.update(base_origins)
    origins.update(own)
    return deep_merge(merged, data), origins


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
        node = _step(node, part, parts[: i + 1], create=True, array_next=parts[i + 1].isdigit())
    last = parts[-1]
    value = parse_value(text.strip())
    _set_origin(recipe, ".".join(parts), value, os.getcwd())
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


def _set_origin(recipe: dict[str, Any], key: str, value: Any, folder: str) -> None:
    """Relative paths in ``value`` (set at dotted ``key``, e.g. by ``--set``) are read from ``folder``."""
    origins = recipe.get(ORIGINS)
    if not isinstance(origins, dict):
        return  # not a loaded recipe: every relative path is read from the current folder anyway
    for old in [k for k in origins if k == key or k.startswith(key + ".")]:
        del origins[old]
    origins.update({k: folder for k, _ in _string_leaves(value, key)})


def _renames(table: dict[str, Any], new_name: Any) -> bool:
    return isinstance(new_name, str) and "name" in table and table["name"] != new_name


def _engine_part(table: dict[str, Any], section: str) -> dict[str, Any]:
    keys = ENGINE_KEYS.get(section, set()) - {"name"}
    return {k: v for k, v in table.items() if k in keys}


def _step(node: Any, part: str, path: list[str], create: bool, array_next: bool = False) -> Any:
    if isinstance(node, list):
        index = _index(node, part, path, allow_append=create)
        if index == len(node):
            node.append({})
        return node[index]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a table")
    if part not in node:
        node[part] = [] if array_next else {}  # --set callback.0.name=... starts an array of tables
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
    if "cache_dir" not in (recipe.get("train") or {}) and os.environ.get("FERMETRIC_CACHE_DIR"):
        # One crop cache for every recipe that does not name its own (a shared disk, a test session).
        out["train"]["cache_dir"] = os.environ["FERMETRIC_CACHE_DIR"]
    out.setdefault("crop", {}).setdefault("on_no_face", "fallback")
    out["crop"].setdefault("cache", True)
    for term in out.get("loss", []):
        term.setdefault("weight", 1.0)
    return out


def validate(recipe: dict[str, Any], host: PluginHost, check_paths: bool = True) -> dict[str, Any]:
    """Check everything a run will need and return the recipe with defaults filled in.

    Raises :class:`RecipeError` on the first problem, naming the key. Path parameters (annotated ``Path``) and
    ``train.cache_dir`` come back absolute: a relative one is read from the folder of the recipe file that
    set it (as :func:`load` recorded), from the current folder if it came from ``--set`` or a default.
    """
    origins = recipe.get(ORIGINS) or {}
    token = _ORIGINS_NOW.set(origins)
    try:
        resolved = _validate({k: v for k, v in recipe.items() if k != ORIGINS}, host, check_paths)
    finally:
        _ORIGINS_NOW.reset(token)
    train = resolved["train"]
    train["cache_dir"] = resolve_path_value(train["cache_dir"], origins.get("train.cache_dir"))
    return resolved


# The origins of the recipe being validated (see ORIGINS), for the path checks deep inside _check_component.
_ORIGINS_NOW: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("recipe_origins", default={})


def _validate(recipe: dict[str, Any], host: PluginHost, check_paths: bool) -> dict[str, Any]:
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
            bounds = RANGES.get((section, key))
            if bounds and not in_range(value, *bounds):
                raise RecipeError(f"{section}.{key} = {value!r}: must be {range_text(*bounds)}")
    if not DEVICE.match(recipe["train"]["device"]):
        raise RecipeError(f"train.device = {recipe['train']['device']!r}: expected auto, cpu, cuda, cuda:N or mps")
    if recipe["train"]["warmup_epochs"] >= recipe["train"]["epochs"] and recipe["train"]["warmup_epochs"]:
        raise RecipeError(f"train.warmup_epochs = {recipe['train']['warmup_epochs']}: must be < train.epochs"
                          f" ({recipe['train']['epochs']}), or the schedule never leaves its warm-up")
    augment = recipe["train"]["augment"]
    defaults = SCHEMA["train"]["augment"][1]
    _check_known(augment.keys(), defaults.keys(), "key", "train.augment.")
    for key, value in augment.items():
        want = type(defaults[key])
        if isinstance(value, bool) != (want is bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"train.augment.{key}: expected {want.__name__}, got {type(value).__name__} {value!r}")
        if key in AUGMENT_RANGES and not in_range(float(value), *AUGMENT_RANGES[key]):
            raise RecipeError(f"train.augment.{key} = {value!r}: must be {range_text(*AUGMENT_RANGES[key])}")
    # A partial table changes only the keys it names (the documented defaults stay for the others).
    recipe["train"]["augment"] = {**defaults, **augment}
    crop_choice = recipe["crop"].get("on_no_face")
    if crop_choice not in CHOICES[("crop", "on_no_face")]:
        raise RecipeError(f"crop.on_no_face = {crop_choice!r}: expected one of {', '.join(CHOICES[('crop', 'on_no_face')])}")
    color = recipe["crop"].get("color", "gray")  # absent means gray: recipes (and digests) from before colour hold
    if color not in CHOICES[("crop", "color")]:
        raise RecipeError(f"crop.color = {color!r}: expected one of {', '.join(CHOICES[('crop', 'color')])}")
    if "name" not in recipe["crop"]:
        recipe["crop"]["name"] = "full_face"
    for section in COMPONENT_SECTIONS:
        injected = {"in_chans"} if section == "backbone" else frozenset()
        _check_component(host, _kind(section), recipe[section], section, check_paths, injected=injected)
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
            _check_nested(host, "miner", miner, f"{where}.miner", check_paths)
    if not losses_of(recipe):
        raise RecipeError("every [[loss]] has weight = 0: nothing to optimise")
    sampler = recipe["train"]["sampler"]
    sampler_table = {"name": sampler} if isinstance(sampler, str) else sampler  # paths resolved in place
    _check_component(host, "sampler", sampler_table, "train.sampler", check_paths,
                     injected={"labels", "batch_size", "seed"}, engine_keys={"name"})
    callbacks = recipe.get("callback", [])
    if not isinstance(callbacks, list):
        raise RecipeError("callback: expected an array of tables ([[callback]] name = \"tensorboard\")")
    for i, table in enumerate(callbacks):
        if not isinstance(table, dict):
            raise RecipeError(f"callback.{i}: expected a table")
        _check_component(host, "callback", table, f"callback.{i}", check_paths, engine_keys={"name"})
    return recipe


def _check_nested(host: PluginHost, kind: str, spec: Any, where: str, check_paths: bool) -> None:
    """A component named by a parameter of another (``miner = "batch_hard"``, ``distance = {name = ...}``)."""
    if not isinstance(spec, (str, dict)):
        raise RecipeError(f"{where}: expected the name of a registered {kind} or a table with its name, got {spec!r}")
    table = {"name": spec} if isinstance(spec, str) else spec
    _check_component(host, kind, table, where, check_paths, engine_keys={"name"})


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
        if key in NESTED_KINDS and isinstance(value, (str, dict)) and (key in component.params or component.accepts_any):
            _check_nested(host, key, value, f"{where}.{key}", check_paths)
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
        if _is_path_param(param) and isinstance(value, str) and value:
            folder = _ORIGINS_NOW.get().get(f"{where}.{key}")
            table[key] = path = resolve_path_value(value, folder)
            if check_paths and not _SCHEME.match(path) and not Path(path).exists():
                raise RecipeError(f"{where}.{key}: path does not exist: {path}{_relative_note(value, folder)}")
    for pname, param in component.params.items():
        if param.required and pname not in params and pname not in injected:
            raise RecipeError(f"{where}.{pname}: {kind} {name!r} needs parameter {pname!r}")


def _relative_note(value: str, folder: str | None) -> str:
    """Where a relative path that does not exist was read from (and a hint when it exists from here)."""
    if os.path.isabs(os.path.expanduser(value)):
        return ""
    folder = folder or os.getcwd()
    note = f" ({value!r} is relative to {folder}"
    if os.path.normpath(folder) != os.getcwd() and Path(value).exists():
        note += ("; it exists relative to the current folder, but a path in a recipe file is read from that"
                 " file's folder: write it relative to the recipe or absolute, or give it with --set")
    return note + ")"


def _is_path_param(param: Param) -> bool:
    ann = param.annotation
    return ann is Path or (isinstance(ann, type) and issubclass(ann, os.PathLike)) or any(
        a is Path for a in getattr(ann, "__args__", ()) or ()
    )


def _check_known(keys, known, what: str, prefix: str) -> None:
    for key in keys:
        if key not in known:
            raise RecipeError(f"{prefix}{key}: unknown {what}{_did_you_mean(key, known, prefix=prefix)}")


def _did_you_mean(word: str, choices, n: int = 2, prefix: str = "") -> str:
    """'; did you mean 'a' or 'b'?' for the choices close to a misspelt word, '' when none is."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""


def plain(value: Any) -> Any:
    """A deep copy of a recipe table made only of JSON types (what a checkpoint's metadata stores)."""
    import json

    return json.loads(json.dumps(value))


def dumps(recipe: dict[str, Any]) -> str:
    return tomli_w.dumps(recipe)


def matches_file(path: Path, recipe: dict[str, Any]) -> bool:
    """Whether a run folder's saved ``recipe.toml`` holds this resolved recipe (the guard against resuming or
    reusing a folder made by another recipe). Compared as TOML would read it back.

    ``train.cache_dir``, ``train.store`` and ``train.workers`` are not compared (:data:`RESULT_NEUTRAL`): crops are
    cached by content, so where and how they are read cannot change a
    result. A relative path saved by an older fermetric (which read data paths from the current folder) equals
    the absolute path it names from the current folder.
    """
    try:
        saved = tomllib.loads(Path(path).read_text())
        current = tomllib.loads(dumps(recipe))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    for table in (saved, current):
        _drop_neutral(table)
    _drop_added_defaults(saved, current)
    return _same(saved, current)


def _drop_added_defaults(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Engine keys a newer fermetric added hold their defaults in a run started before they existed: a saved recipe
    without such a key, where the current one has the default, is the same recipe (its run can be resumed)."""
    for section, keys in SCHEMA.items():
        old, new = saved.get(section), current.get(section)
        if not (isinstance(old, dict) and isinstance(new, dict)):
            continue
        for key, (_, default) in keys.items():
            if key not in old and key in new and new[key] == default:
                del new[key]


# Engine keys that say where or how data is read, not what is trained: a run may resume with other values.
RESULT_NEUTRAL = ("cache_dir", "store", "workers")


def _drop_neutral(table: dict[str, Any]) -> None:
    if isinstance(table.get("train"), dict):
        for key in RESULT_NEUTRAL:
            table["train"].pop(key, None)


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key = new (was old)`` for every dotted key where two resolved recipes differ (as :func:`matches_file`
    compares them), for the message that refuses a resume."""
    out = []
    if not prefix and isinstance(saved, dict) and isinstance(current, dict):
        saved, current = copy.deepcopy(saved), copy.deepcopy(current)
        _drop_added_defaults(saved, current)
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            where = f"{prefix}{key}"
            if where in {f"train.{k}" for k in RESULT_NEUTRAL}:
                continue
            if key not in saved:
                out.append(f"{where} = {current[key]!r} (not in the saved recipe)")
            elif key not in current:
                out.append(f"{where} is gone (was {saved[key]!r})")
            else:
                out += differences(saved[key], current[key], f"{where}.")
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            out += differences(a, b, f"{prefix}{i}.")
        return out
    return [] if _same(saved, current) else [f"{prefix.rstrip('.')} = {current!r} (was {saved!r})"]


def digest(recipe: dict[str, Any]) -> str:
    """A fingerprint of a resolved recipe, compared like :func:`matches_file` (``train.cache_dir`` left out): what
    run.json and checkpoints record, so a resume is checked even when recipe.toml was deleted."""
    import hashlib
    import json

    table = tomllib.loads(dumps(recipe))
    _drop_neutral(table)
    return hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode()).hexdigest()


def _same(saved: Any, current: Any) -> bool:
    if isinstance(saved, dict) and isinstance(current, dict):
        return saved.keys() == current.keys() and all(_same(saved[k], current[k]) for k in saved)
    if isinstance(saved, list) and isinstance(current, list):
        return len(saved) == len(current) and all(_same(a, b) for a, b in zip(saved, current))
    if (isinstance(saved, str) and isinstance(current, str) and saved != current and saved
            and os.path.isabs(current) and not os.path.isabs(saved) and not _SCHEME.match(saved)):
        return resolve_path_value(saved) == current
    return saved == current
