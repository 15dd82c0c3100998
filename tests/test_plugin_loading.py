"""Plugin loading as a third-party package sees it: entry points from a real (throwaway) distribution.

Each test writes plugin modules and a ``<name>-<version>.dist-info`` folder (METADATA + entry_points.txt) into
tmp_path and puts tmp_path on sys.path: that is all importlib.metadata needs to see an installed distribution,
so the code path is the one a pip-installed plugin takes, without installing anything.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap
import uuid

import pytest

import fermetric.plugins as plugins_mod
from fermetric.plugins import PluginHost, get_host

LOSS_PLUGIN = """
import torch
import fermetric


class {cls}(torch.nn.Module):
    def __init__(self, margin: float = 0.5, num_classes: int | None = None):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings, labels):
        return embeddings.pow(2).mean() * self.margin


@fermetric.hookimpl
def register_losses(register):
    register({name!r}, {cls})
"""


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """``make_plugin(dist, source, version=..., entry_point=...)`` -> (entry point name, module name)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(dist: str, source: str, version: str = "1.2.3", entry_point: str | None = None) -> tuple[str, str]:
        module = f"fmtest_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        ep = entry_point or dist
        (info / "entry_points.txt").write_text(f"[fermetric]\n{ep} = {module}\n")
        created.append(module)
        return ep, module

    yield make
    for module in created:
        sys.modules.pop(module, None)


def loss_plugin(name: str) -> str:
    return LOSS_PLUGIN.format(name=name, cls="Loss_" + name)


def problems_of(host: PluginHost, plugin: str) -> list[str]:
    return [f"{p.plugin} ({p.distribution}): {p.error}" for p in host.problems if p.plugin == plugin]


def test_third_party_loss_is_listed_with_distribution_and_version(make_plugin):
    make_plugin("fmtest-loss", loss_plugin("fmtest_margin"), version="1.2.3")
    host = PluginHost()
    component = host.registry("loss").get("fmtest_margin")
    assert (component.plugin, component.distribution, component.version) == ("fmtest-loss", "fmtest-loss", "1.2.3")
    assert set(component.params) == {"margin", "num_classes"}
    listed = {c["name"]: c for c in host.describe()["loss"]}
    assert listed["fmtest_margin"]["distribution"] == "fmtest-loss" and listed["fmtest_margin"]["version"] == "1.2.3"
    assert listed["cross_entropy"]["distribution"] == "fermetric"  # beside the built-ins
    assert problems_of(host, "fmtest-loss") == []


@pytest.mark.parametrize(
    "failure, reported",
    [
        ("raise RuntimeError('boom at import')", "RuntimeError: boom at import"),
        ("import fmtest_no_such_module", "ModuleNotFoundError: No module named 'fmtest_no_such_module'"),
        ("raise SystemExit(3)", "SystemExit: 3"),
    ],
)
def test_plugin_failing_at_import_is_reported_and_the_rest_loads(make_plugin, failure, reported):
    make_plugin("fmtest-broken", f"import fermetric\n{failure}\n")
    make_plugin("fmtest-fine", loss_plugin("fmtest_fine"))
    host = PluginHost()
    assert problems_of(host, "fmtest-broken") == [f"fmtest-broken (fmtest-broken): failed to load: {reported}"]
    assert "fmtest_fine" in host.registry("loss")
    for kind, name in [("loss", "cross_entropy"), ("cropper", "au_partial"), ("dataset", "synthetic"), ("backbone", "fer_cnn"), ("sampler", "random")]:
        assert name in host.registry(kind)


def test_hook_that_raises_is_reported(make_plugin):
    make_plugin("fmtest-raises", """
        import fermetric

        @fermetric.hookimpl
        def register_losses(register):
            raise ValueError("cannot register")
    """)
    host = PluginHost()
    assert problems_of(host, "fmtest-raises") == [
        "fmtest-raises (fmtest-raises): register_losses failed: ValueError: cannot register"
    ]


def test_hook_name_typo_is_reported(make_plugin):
    make_plugin("fmtest-typo", """
        import fermetric

        @fermetric.hookimpl
        def register_loss(register):
            register("fmtest_never", object)
    """)
    host = PluginHost()
    assert problems_of(host, "fmtest-typo") == [
        "fmtest-typo (fmtest-typo): unknown hook 'register_loss' (did you mean 'register_losses'?)"
    ]
    assert "fmtest_never" not in host.registry("loss")


def test_hook_without_the_marker_is_reported(make_plugin):
    make_plugin("fmtest-unmarked", """
        def register_croppers(register):
            register("fmtest_never", object)
    """)
    host = PluginHost()
    assert problems_of(host, "fmtest-unmarked") == [
        "fmtest-unmarked (fmtest-unmarked): register_croppers is not marked with @fermetric.hookimpl, so it is ignored"
    ]


def test_allow_list_filters_by_entry_point_or_distribution_name(make_plugin):
    make_plugin("fmtest-a", loss_plugin("fmtest_a"), entry_point="alpha")
    make_plugin("fmtest-b", loss_plugin("fmtest_b"))
    make_plugin("fmtest-c", "raise RuntimeError('never imported when blocked')")
    by_entry_point = PluginHost(allow=["alpha"])
    assert "fmtest_a" in by_entry_point.registry("loss") and "fmtest_b" not in by_entry_point.registry("loss")
    assert problems_of(by_entry_point, "fmtest-c") == []  # blocked, so not even imported
    by_dist = PluginHost(allow=["FMTEST_B", "fmtest-a"])  # distribution names compare as pip does
    assert {"fmtest_a", "fmtest_b"} <= set(by_dist.registry("loss").names())
    none = PluginHost(allow=[])
    assert not [c for c in none.registry("loss") if c.distribution != "fermetric"]
    assert "cross_entropy" in none.registry("loss")  # built-ins always load
    typo = PluginHost(allow=["fmtest-aa"])
    assert problems_of(typo, "fmtest-aa") == [
        "fmtest-aa (None): named in FERMETRIC_PLUGINS / --plugins, but no installed plugin or distribution has that"
        " name (`fermetric plugins` lists what loaded)"
    ]


def test_FERMETRIC_PLUGINS_environment_variable(make_plugin, monkeypatch, capsys):
    make_plugin("fmtest-env-a", loss_plugin("fmtest_env_a"))
    make_plugin("fmtest-env-b", loss_plugin("fmtest_env_b"))
    monkeypatch.setattr(plugins_mod, "_host", None)
    monkeypatch.setenv("FERMETRIC_PLUGINS", " fmtest-env-a , ")
    host = get_host()
    assert "fmtest_env_a" in host.registry("loss") and "fmtest_env_b" not in host.registry("loss")
    monkeypatch.setenv("FERMETRIC_PLUGINS", "fmtest-env-b")
    host = get_host()  # a changed variable reloads the host
    assert "fmtest_env_b" in host.registry("loss") and "fmtest_env_a" not in host.registry("loss")
    monkeypatch.setattr(plugins_mod, "_host", None)


def test_name_registered_twice_is_an_error_naming_both_plugins(make_plugin):
    make_plugin("fmtest-first", loss_plugin("fmtest_dup"), version="1.0")
    make_plugin("fmtest-second", loss_plugin("fmtest_dup"), version="2.0")
    host = PluginHost(allow=["fmtest-first", "fmtest-second"])
    problems = problems_of(host, "fmtest-first") + problems_of(host, "fmtest-second")
    assert len(problems) == 1
    (problem,) = problems
    assert "loss 'fmtest_dup' is registered twice" in problem
    assert "'fmtest-first' (fmtest-first)" in problem and "'fmtest-second' (fmtest-second)" in problem
    kept = host.registry("loss").get("fmtest_dup")
    assert f"{kept.plugin!r} keeps the name" in problem


def test_a_plugin_cannot_take_a_built_in_name(make_plugin):
    make_plugin("fmtest-shadow", """
        import torch
        import fermetric

        @fermetric.hookimpl
        def register_losses(register):
            register("cross_entropy", torch.nn.CrossEntropyLoss)
            register("fmtest_shadow_extra", torch.nn.CrossEntropyLoss)
    """)
    host = PluginHost(allow=["fmtest-shadow"])
    (problem,) = problems_of(host, "fmtest-shadow")
    assert "loss 'cross_entropy' is registered twice: by plugin 'fermetric.components.losses' (fermetric) and by plugin" in problem
    assert "'fmtest-shadow' (fmtest-shadow)" in problem
    assert host.registry("loss").get("cross_entropy").plugin == "fermetric.components.losses"
    assert host.registry("loss").get("fmtest_shadow_extra").plugin == "fmtest-shadow"  # its other names still register


def test_two_distributions_with_one_entry_point_name(make_plugin):
    make_plugin("fmtest-one", loss_plugin("fmtest_one"), entry_point="fmtest-same")
    make_plugin("fmtest-two", loss_plugin("fmtest_two"), entry_point="fmtest-same")
    host = PluginHost(allow=["fmtest-same"])
    loaded = [n for n in ("fmtest_one", "fmtest_two") if n in host.registry("loss")]
    assert len(loaded) == 1
    (problem,) = problems_of(host, "fmtest-same")
    assert "is already taken by" in problem


# ------------------------------------------------------------------------------------------- the CLI


def test_cli_plugins_json_lists_the_example_loss_plugin(monkeypatch):
    from click.testing import CliRunner

    from fermetric.cli import cli

    dist = "fermetric-example-loss"
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (scripts/bootstrap.sh installs plugins/{dist})")
    monkeypatch.setattr(plugins_mod, "_host", None)
    # --plugins sets os.environ itself: setenv first so that monkeypatch restores the variable afterwards.
    monkeypatch.setenv("FERMETRIC_PLUGINS", "")
    monkeypatch.delenv("FERMETRIC_PLUGINS")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    focal = {c["name"]: c for c in listed["components"]["loss"]}["focal"]
    assert (focal["plugin"], focal["distribution"], focal["version"]) == (dist, dist, version)
    assert [p for p in listed["problems"] if p["plugin"] == dist] == []

    only = CliRunner().invoke(cli, ["--plugins", "fermetric-insightface", "plugins", "--json", "--kind", "loss"])
    assert only.exit_code == 0, only.output
    assert "focal" not in {c["name"] for c in json.loads(only.stdout)["components"]["loss"]}
    monkeypatch.setattr(plugins_mod, "_host", None)


DETECTOR_PLUGIN = """
import fermetric
from fermetric.contracts import DetectedFace


class CentreFace:
    def __init__(self, share: float = 0.6):
        self.share = share

    def __call__(self, gray):
        h, w = gray.shape
        dx, dy = w * (1 - self.share) / 2, h * (1 - self.share) / 2
        return [DetectedFace((dx, dy, w - dx, h - dy))]


@fermetric.hookimpl
def register_face_detectors(register):
    register("fmtest_centre", CentreFace)
"""


def test_a_plugins_face_detector_is_listed_and_used_by_name_with_its_parameters(make_plugin):
    import numpy as np

    from fermetric.inference.faces import FaceFinder, detector_names

    make_plugin("fmtest-detector", DETECTOR_PLUGIN)
    host = PluginHost()
    component = host.registry("face_detector").get("fmtest_centre")
    assert component.distribution == "fmtest-detector" and "share" in component.params
    assert "fmtest_centre" in detector_names(host)
    finder = FaceFinder({"name": "au_partial", "landmarks": "template"}, (48, 48), detect="fmtest_centre",
                        detector_params={"share": 0.5}, host=host)
    (face,) = finder.find(np.zeros((200, 300), np.uint8))
    # The box as the detector gave it (columns 75..224, rows 50..149: first pixel and one past the last).
    assert face.method == "fmtest_centre" and face.box == pytest.approx((75.0, 50.0, 225.0, 150.0))
    assert "the 'fmtest_centre' face detector" in finder.describe()
