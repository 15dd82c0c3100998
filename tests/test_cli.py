"""The command line, through click's runner and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from fermetric.cli import cli

from .conftest import REPO
from fermetric.runfolder import RunFolder


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_misspelt_loss_exits_2_with_suggestion():
    result = invoke("run", "recipes/quickstart.toml", "--set", "loss.1.name=emfl")
    assert result.exit_code == 2
    assert "unknown loss 'emfl'; did you mean 'emlf'?" in result.output
    assert "Traceback" not in result.output


def test_missing_recipe_and_syntax_error_exit_2(tmp_path):
    assert invoke("run", str(tmp_path / "none.toml")).exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    result = invoke("run", str(bad))
    assert result.exit_code == 2 and "TOML syntax error" in result.output and "line 1" in result.output


def test_plugins_json_lists_builtins_with_versions():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    names = {kind: {c["name"]: c for c in items} for kind, items in data["components"].items()}
    assert {"au_partial", "full_face"} <= set(names["cropper"])
    assert {"emlf", "cross_entropy", "triplet", "center", "island", "arcface"} <= set(names["loss"])
    assert {"fer_cnn", "timm"} <= set(names["backbone"])
    assert {"manifest", "folders", "synthetic"} <= set(names["dataset"])
    emlf = names["loss"]["emlf"]
    assert emlf["distribution"] == "fermetric" and emlf["version"] and emlf["plugin"] == "fermetric.components.losses"
    assert "pos_margin" in emlf["params"]


def test_plugins_table_and_recipe_command():
    assert "au_partial" in invoke("plugins", "--kind", "cropper").output
    result = invoke("recipe", "recipes/quickstart.toml", "--set", "train.epochs=1")
    assert result.exit_code == 0 and "epochs = 1" in result.output and "batch_size" in result.output


def test_crop_preview_writes_png(tmp_path):
    out = tmp_path / "preview.png"
    result = invoke("crop", "recipes/quickstart.toml", "--preview", "4", "--out", str(out), "--set", "data.subjects=2", "--set", "data.per_class=1")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_as_subprocess(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fermetric", "run", "recipes/quickstart.toml", "--out", str(out),
           "--set", "data.subjects=6", "--set", "data.per_class=2", "--set", "train.epochs=1", "--set", "train.batch_size=28",
           "--set", "train.sampler.m=4", "--set", "eval.tsne=false", "--set", f'train.cache_dir="{tmp_path / "cache"}"']
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SYNTHETIC" in proc.stderr
    assert RunFolder(out).metrics()["synthetic_data"] is True
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
