"""Plugin loading and the component registries.

fermetric owns one :class:`Registry` per kind of component. Plugins fill them through the hooks in
:mod:`fermetric.hookspecs`; fermetric's own components are plugins too (``DEFAULT_PLUGINS``), loaded the same
way as third-party packages found through the entry-point group ``fermetric``.

``FERMETRIC_PLUGINS=name1,name2`` (or ``fermetric --plugins``) limits which third-party plugins load (entry-point or
distribution names; an empty value loads none). A plugin that fails to import or to register, a hook name with a
typo, and a component name registered twice are reported by plugin and distribution (``PluginHost.problems``,
``fermetric plugins``) and never stop the others; a clashing name stays with whoever registered it first
(built-ins first).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
import types
import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .contracts import Range
from .errors import FermetricError

ENTRY_POINT_GROUP = "fermetric"

# fermetric's own components, registered through the same hooks as any plugin.
DEFAULT_PLUGINS = (
    "fermetric.components.datasets",
    "fermetric.components.croppers",
    "fermetric.components.backbones",
    "fermetric.components.losses",
    "fermetric.components.distances",
    "fermetric.components.miners",
    "fermetric.components.samplers",
    "fermetric.components.callbacks",
    "fermetric.components.detectors",
)

# hook name -> registry kind
KINDS = {
    "register_datasets": "dataset",
    "register_croppers": "cropper",
    "register_backbones": "backbone",
    "register_losses": "loss",
    "register_samplers": "sampler",
    "register_distances": "distance",
    "register_miners": "miner",
    "register_callbacks": "callback",
    "register_face_detectors": "face_detector",
}

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a component factory, as read from its signature."""

    name: str
    default: Any = _MISSING
    annotation: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def type_name(self) -> str:
        if self.annotation is not _MISSING:
            return _type_name(self.annotation)
        if self.default is not _MISSING and self.default is not None:
            return type(self.default).__name__
        return "any"


@dataclass
class Component:
    """A registered factory with who registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str | None
    version: str | None
    params: dict[str, Param] = field(default_factory=dict)
    accepts_any: bool = False  # the factory takes **kwargs we could not resolve to names
    example: dict[str, Any] | None = None  # parameters that build a working instance (smoke tests)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "factory": f"{getattr(self.factory, '__module__', '?')}.{getattr(self.factory, '__qualname__', self.factory)}",
            "params": {
                p.name: {
                    "type": p.type_name(),
                    **({"default": _jsonable(p.default)} if not p.required else {"required": True}),
                }
                for p in self.params.values()
            },
        }


class Registry:
    """Components of one kind, by name. The host owns it; plugins only call ``register``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Component] = {}

    def add(self, component: Component) -> None:
        existing = self._items.get(component.name)
        if existing is not None:
            raise FermetricError(
                f"{self.kind} {component.name!r} is registered twice: by plugin {existing.plugin!r}"
                f" ({existing.distribution or 'no distribution'}) and by plugin {component.plugin!r}"
                f" ({component.distribution or 'no distribution'})"
            )
        self._items[component.name] = component

    def get(self, name: str) -> Component:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(sorted(self._items.values(), key=lambda c: c.name))

    def names(self) -> list[str]:
        return sorted(self._items)


@dataclass
class PluginProblem:
    plugin: str
    distribution: str | None
    error: str


class PluginHost:
    """Loads plugins once and holds the registries and the problems met while loading."""

    def __init__(self, allow: list[str] | None = None, entry_points: bool = True):
        self.pm = pluggy.PluginManager("fermetric")
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in KINDS.values()}
        self.problems: list[PluginProblem] = []
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        # Registration order decides who keeps a name registered twice: built-ins first, then entry points in
        # discovery order. (pm.get_plugins() is a set, so its order cannot be used.)
        self._order: list[str] = []
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=module_name)
            self._dists[module_name] = ("fermetric", _dist_version("fermetric"))
            self._order.append(module_name)
        if entry_points:
            self._load_entry_points(allow)
        for plugin_name in self._order:
            self._register_components(self.pm.get_plugin(plugin_name))

    def _load_entry_points(self, allow: list[str] | None) -> None:
        wanted = {_normalize(a): a for a in allow} if allow is not None else None
        matched: set[str] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            if wanted is not None:
                hits = {_normalize(ep.name), _normalize(dist or "")} & set(wanted)
                if not hits:
                    continue
                matched |= hits
            if self.pm.get_plugin(ep.name) is not None or ep.name in self._dists:
                other = self._dists.get(ep.name, (None, None))[0]
                if other != dist:  # the same distribution seen twice on sys.path is not a problem
                    self.problems.append(PluginProblem(
                        ep.name, dist, f"not loaded: the plugin name {ep.name!r} is already taken by"
                        f" {other or 'another plugin'}; rename one of the entry points"))
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
                self.problems.append(PluginProblem(ep.name, dist, f"failed to load: {type(exc).__name__}: {exc}"))
                continue
            self._dists[ep.name] = (dist, version)
            self._order.append(ep.name)
            self._check_hook_names(ep.name, module, dist)
        for key in sorted(set(wanted or ()) - matched):
            self.problems.append(PluginProblem(
                wanted[key], None, "named in FERMETRIC_PLUGINS / --plugins, but no installed plugin or distribution"
                " has that name (`fermetric plugins` lists what loaded)"))

    def _check_hook_names(self, name: str, module: Any, dist: str | None) -> None:
        # pluggy silently ignores a marked function whose name matches no hook; a typo would then register nothing.
        known = set(KINDS)
        for attr in dir(module):
            obj = getattr(module, attr, None)
            if not callable(obj):
                continue
            if hasattr(obj, "fermetric_impl") and attr not in known:
                import difflib

                close = difflib.get_close_matches(attr, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problems.append(PluginProblem(name, dist, f"unknown hook {attr!r}{hint}"))
            elif attr in known and not hasattr(obj, "fermetric_impl") and not hasattr(obj, "fermetric_spec"):
                # Without the marker pluggy ignores the function, and the plugin would register nothing.
                self.problems.append(PluginProblem(name, dist, f"{attr} is not marked with @fermetric.hookimpl, so it is ignored"))

    def _register_components(self, plugin: Any) -> None:
        plugin_name = self.pm.get_name(plugin)
        dist, version = self._dists.get(plugin_name, (None, None))
        for hook_name, kind in KINDS.items():
            impl = getattr(plugin, hook_name, None)
            if impl is None or not hasattr(impl, "fermetric_impl"):
                continue
            registry = self.registries[kind]

            def register(name: str, factory: Callable[..., Any], example: dict[str, Any] | None = None,
                         _kind=kind, _reg=registry) -> None:
                params, accepts_any = factory_params(factory)
                try:
                    _reg.add(Component(_kind, name, factory, plugin_name, dist, version, params, accepts_any, example))
                except FermetricError as exc:
                    if plugin_name in DEFAULT_PLUGINS:
                        raise  # two built-ins with one name is a bug in fermetric itself
                    # A name clash must not stop the other plugins (nor the clashing plugin's other components):
                    # the first registration (built-ins first, then entry-point order) keeps the name.
                    kept = _reg.get(name)
                    self.problems.append(PluginProblem(
                        plugin_name, dist, f"{exc}; {kept.plugin!r} keeps the name (choose with FERMETRIC_PLUGINS)"))

            try:
                impl(register=register)
            except Exception as exc:
                if plugin_name in DEFAULT_PLUGINS:
                    raise  # fermetric's own components failing is a bug to see, not a plugin problem
                self.problems.append(PluginProblem(plugin_name, dist, f"{hook_name} failed: {type(exc).__name__}: {exc}"))

    def add_plugin(self, plugin: Any, name: str, distribution: str | None = None, version: str | None = None) -> None:
        """Register one more plugin (a module or any object with marked hook functions) after start-up: what a
        test, a notebook or a script uses instead of an entry point. Its problems are reported like an entry
        point's (``self.problems``)."""
        self.pm.register(plugin, name=name)
        self._dists[name] = (distribution, version)
        self._order.append(name)
        self._check_hook_names(name, plugin, distribution)
        self._register_components(plugin)

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def describe(self) -> dict[str, list[dict[str, Any]]]:
        return {kind: [c.describe() for c in reg] for kind, reg in self.registries.items()}


_host: PluginHost | None = None
_host_allow_env: str | None = None


def get_host(refresh: bool = False) -> PluginHost:
    """The process-wide plugin host, loaded on first use (and again if FERMETRIC_PLUGINS changed since)."""
    global _host, _host_allow_env
    allow_env = os.environ.get("FERMETRIC_PLUGINS")
    if _host is None or refresh or allow_env != _host_allow_env:
        allow = [p.strip() for p in allow_env.split(",") if p.strip()] if allow_env is not None else None
        _host = PluginHost(allow=allow)
        _host_allow_env = allow_env
        for problem in _host.problems:
            print(
                f"fermetric: plugin {problem.plugin!r} ({problem.distribution or 'no distribution'}): {problem.error}",
                file=sys.stderr,
            )
    return _host


def factory_params(factory: Callable[..., Any]) -> tuple[dict[str, Param], bool]:
    """Keyword parameters of a factory, following ``**kwargs`` up a class's MRO.

    pytorch-metric-learning losses pass ``**kwargs`` to their base classes (distance, reducer, ...); walking the
    MRO lets the recipe validator know those names too, so a misspelt parameter is caught before training.
    """
    params: dict[str, Param] = {}
    targets = [c.__init__ for c in inspect.getmro(factory) if "__init__" in vars(c)] if inspect.isclass(factory) else [factory]
    for target in targets:
        if target is object.__init__:
            break
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return params, True
        own = [p for p in sig.parameters.values() if p.name != "self"]
        if own and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in own):
            continue  # a pure pass-through (torch.nn.Module's ``*args, **kwargs``) names nothing: look further up
        try:
            hints = typing.get_type_hints(target, include_extras=True)  # keep Annotated[..., Range(...)]
        except Exception:
            hints = {}
        has_var_kw = False
        for p in own:
            if p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                has_var_kw = True
                continue
            if target is not targets[0] and p.default is _MISSING:
                continue  # a base class's required argument is the subclass's business, not the recipe's
            if p.name not in params:
                annotation = hints.get(p.name, p.annotation)
                params[p.name] = Param(p.name, p.default, annotation)
        if not has_var_kw:
            return params, False
    # Every ``**kwargs`` was followed up the MRO to a class that names its parameters (or to object): none is open.
    return params, inspect.isclass(factory) is False and _has_var_kw(factory)


def _has_var_kw(fn: Callable[..., Any]) -> bool:
    try:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True


def check_value(param: Param, value: Any) -> str | None:
    """None if ``value`` fits the parameter's type (and its declared :class:`~fermetric.contracts.Range`), else what
    was expected ("int", "int >= 1")."""
    expected = param.annotation
    if typing.get_origin(expected) is typing.Annotated:
        base, *extras = typing.get_args(expected)
        problem = check_value(Param(param.name, param.default, base), value)
        if problem is not None:
            return problem
        for extra in extras:
            if isinstance(extra, Range) and value is not None and value not in extra:
                return f"{_type_name(base)} {extra}"
        return None
    if expected is _MISSING:
        if param.default is _MISSING or param.default is None:
            return None
        # An unannotated int default often stands for a real number (PML: neg_margin=1, alpha=2).
        expected = float if type(param.default) is int else type(param.default)
    return None if _fits(expected, value) else _type_name(expected)


def _fits(expected: Any, value: Any) -> bool:
    if expected in (Any, _MISSING) or isinstance(expected, str):
        return True
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin is typing.Annotated:
        return _fits(args[0], value)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if expected is type(None):
        return value is None
    if expected is Path or (isinstance(expected, type) and issubclass(expected, os.PathLike)):
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple, typing.Sequence) or expected in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args and origin is not tuple else (args[0] if args and len(args) == 2 and args[1] is Ellipsis else None)
        return inner is None or all(_fits(inner, v) for v in value)
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        return " ".join([_type_name(base), *(str(e) for e in extras if isinstance(e, Range))])
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def _normalize(name: str) -> str:
    """Distribution/plugin names compared as pip does: case and runs of ``-_.`` do not matter."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
