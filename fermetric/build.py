"""From a validated recipe's tables to objects: every component is built here, through the plugin registries.

One rule for every kind: a table's ``name`` picks the registered factory, the table's other keys (less the
engine's own, :data:`fermetric.recipe.ENGINE_KEYS`) are its parameters, values the engine knows (``in_chans``,
``num_classes``, ``embedding_size``, a sampler's ``labels``...) are filled in when the factory asks for them, and a
parameter named after a component kind (``distance``, ``miner``) that is given a name or a table is built from that
kind's registry first. :func:`dry_build` builds every data-free component of a recipe before any data work.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import platform
from typing import Any

import torch

from . import __version__
from . import recipe as recipe_mod
from .errors import FermetricError, RecipeError
from .model import FERModel
from .plugins import Component, PluginHost
from .training.objective import LossTerm, Objective

# The kinds a parameter of another component may name (``distance = "cosine"``, ``miner = {...}``).
NESTED_KINDS = recipe_mod.NESTED_KINDS


def table_of(spec: str | dict[str, Any]) -> dict[str, Any]:
    """A component given as a bare name or as a table, as a table."""
    return {"name": spec} if isinstance(spec, str) else dict(spec)


def build(host: PluginHost, kind: str, table: dict[str, Any], engine_keys: set[str] | None = None, where: str = "",
          **injected: Any) -> tuple[Any, Component]:
    """Call a registered factory with the table's parameters plus the injected values it accepts."""
    component = host.registry(kind).get(table["name"])
    engine_keys = engine_keys if engine_keys is not None else recipe_mod.engine_keys(kind)
    where = where or kind
    params = {k: v for k, v in table.items() if k not in engine_keys}
    for key, value in list(params.items()):
        if key in NESTED_KINDS and isinstance(value, (str, dict)):
            params[key], _ = build(host, key, table_of(value), {"name"}, where=f"{where}.{key}")
    for key, value in injected.items():
        if key in component.params or component.accepts_any:
            params.setdefault(key, value)
    try:
        inspect.signature(component.factory).bind(**params)
    except TypeError as exc:
        raise RecipeError(f"{where}: {kind} {table['name']!r} rejected its parameters {sorted(params)}: {exc}") from exc
    except ValueError:
        pass  # no introspectable signature: let the call decide
    try:
        return component.factory(**params), component
    except RecipeError as exc:
        # A component names its parameter ("size = 48000 ..."); the user needs the recipe key it came from.
        if str(exc).startswith(where):
            raise
        raise RecipeError(f"{where}: {exc}") from None
    except FermetricError:
        raise
    except Exception as exc:
        raise FermetricError(
            f"{where}: {kind} {table['name']!r} ({component.plugin}, {component.distribution or 'no distribution'}) failed:"
            f" {type(exc).__name__}: {exc}"
        ) from exc


def build_objective(host: PluginHost, recipe: dict[str, Any], num_classes: int, embedding_size: int) -> tuple[Objective, list[Component]]:
    """The weighted loss terms of the recipe's ``[[loss]]`` tables (those with a non-zero weight)."""
    terms, components = [], []
    for i, table in enumerate(recipe_mod.losses_of(recipe)):
        where = f"loss.{recipe['loss'].index(table) if table in recipe['loss'] else i}"
        module, component = build(host, "loss", table, where=where, num_classes=num_classes, embedding_size=embedding_size)
        if not isinstance(module, torch.nn.Module):
            raise FermetricError(f"{where}: loss {table['name']!r} ({component.plugin}) did not return a torch.nn.Module")
        miner = None
        if table.get("miner"):
            spec = table_of(table["miner"])
            if "indices_tuple" not in inspect.signature(module.forward).parameters and not _accepts_kwargs(module.forward):
                raise RecipeError(f"{where}.miner: loss {table['name']!r} takes no indices_tuple, so it cannot use miner {spec['name']!r}")
            miner, miner_component = build(host, "miner", spec, {"name"}, where=f"{where}.miner")
            components.append(miner_component)
        terms.append(LossTerm(table["name"], float(table.get("weight", 1.0)), module, miner, table.get("lr")))
        components.append(component)
    return Objective(terms), components


def _accepts_kwargs(fn) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def build_model(host: PluginHost, recipe: dict[str, Any], num_classes: int) -> FERModel:
    """Backbone -> embedding -> classifier, as the recipe's ``[backbone]`` and ``[model]`` tables say."""
    backbone_table = dict(recipe["backbone"])
    in_chans = int(backbone_table.get("in_chans", 1))
    backbone, _ = build(host, "backbone", backbone_table, where="backbone", in_chans=in_chans)
    model_cfg = recipe["model"]
    return FERModel(backbone, num_classes, int(model_cfg["embedding_dim"]), float(model_cfg["dropout"]), in_chans,
                    normalization=model_cfg["normalization"])


def build_sampler(host: PluginHost, recipe: dict[str, Any], labels: list[int], seed: int):
    table = table_of(recipe["train"]["sampler"])
    sampler, _ = build(host, "sampler", table, {"name"}, where="train.sampler", labels=labels,
                       batch_size=int(recipe["train"]["batch_size"]), seed=seed)
    return sampler


def build_callbacks(host: PluginHost, recipe: dict[str, Any]) -> tuple[list[Any], list[Component]]:
    """The recipe's ``[[callback]]`` tables, built in order."""
    built, components = [], []
    for i, table in enumerate(recipe.get("callback", [])):
        callback, component = build(host, "callback", table, {"name"}, where=f"callback.{i}")
        built.append(callback)
        components.append(component)
    return built, components


def recipe_components(host: PluginHost, recipe: dict[str, Any]) -> list[Component]:
    """The registry entry of every component a recipe uses, nested ones (a loss's distance, its miner and the
    miner's distance) included, in recipe order: what run.json records."""
    found: list[Component] = []

    def visit(kind: str, spec: Any) -> None:
        table = table_of(spec)
        found.append(host.registry(kind).get(table["name"]))
        for key in NESTED_KINDS:
            if isinstance(table.get(key), (str, dict)):
                visit(key, table[key])

    visit("dataset", recipe["data"])
    visit("cropper", recipe["crop"])
    visit("backbone", recipe["backbone"])
    for table in recipe_mod.losses_of(recipe):
        visit("loss", table)
    visit("sampler", recipe["train"]["sampler"])
    for table in recipe.get("callback", []):
        visit("callback", table)
    return found


def dry_build(host: PluginHost, recipe: dict[str, Any], num_classes: int, check_source: bool = True) -> None:
    """Build every data-free component of a resolved recipe once (model, losses, miners, distances, sampler on
    stand-in labels, callbacks), so a value only its factory can judge (a timm model name, an EMLF variant, an
    ``m_per_class`` that does not fit the batch, a missing weights package, a ``model.init_from`` source that is
    missing or does not fit; ``check_source=False`` for a caller that loads and checks it itself) fails before any
    data work, naming its key. Nothing is kept."""
    model = build_model(host, recipe, num_classes)
    if check_source and recipe["model"].get("init_from"):
        # Every cell of an ablation is dry-built before the first trains: a source that is missing or does not fit
        # must stop it then (the input size, which needs the cropper, is checked again when the run starts).
        from .training.transfer import check_compatible, load_source

        _, state, _ = load_source(recipe["model"]["init_from"])
        check_compatible(state["meta"], recipe, None, int(recipe["backbone"].get("in_chans", 1)),
                         recipe["model"]["init_parts"])
    build_objective(host, recipe, num_classes, model.embedding_dim)
    batch = int(recipe["train"]["batch_size"])
    labels = [i % num_classes for i in range(max(2 * batch, 4 * num_classes))]
    build_sampler(host, recipe, labels, int(recipe["train"]["seed"]))
    build_callbacks(host, recipe)


def component_record(component: Component) -> dict[str, Any]:
    return {"kind": component.kind, "name": component.name, "plugin": component.plugin,
            "distribution": component.distribution, "version": component.version}


def versions(components: list[Component] = ()) -> dict[str, Any]:
    """Python, platform, fermetric and its declared dependencies, the distributions that provided the run's
    components, and the GPU: what a run needs to be reproduced."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "fermetric": __version__}
    names = [_requirement_name(r) for r in (importlib.metadata.requires("fermetric") or []) if "extra ==" not in r]
    names += [c.distribution for c in components if c.distribution and c.distribution != "fermetric"]
    for dist in dict.fromkeys(names):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def _requirement_name(requirement: str) -> str:
    import re

    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
