"""scripts/reproduce_transfer.sh and reproduce_multiseed.sh, run against a stand-in ``fermetric`` that records its
arguments: which runs and ablations the steps and sources start, and that a misspelt step or source stops the
script before any work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fermetric.ablation.grid import expand, find_baseline, parse_grid_option

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "reproduce_transfer.sh"
MULTISEED = REPO / "scripts" / "reproduce_multiseed.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the reproduce scripts are bash scripts")


def run_script(tmp_path: Path, *args: str, script: Path = SCRIPT, **env: str
               ) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a copy of the script in a tree whose ``.venv/bin/fermetric`` writes one line per call (NUL-separated
    arguments), and return the process and the calls."""
    (tmp_path / "scripts").mkdir(parents=True)
    shutil.copy(script, tmp_path / "scripts" / script.name)
    shutil.copytree(REPO / "scripts" / "lib", tmp_path / "scripts" / "lib")
    stub = tmp_path / ".venv" / "bin" / "fermetric"
    stub.parent.mkdir(parents=True)
    log = tmp_path / "calls"
    stub.write_text(f"#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" >> {log}\nprintf '\\n' >> {log}\n")
    stub.chmod(0o755)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / script.name), *args], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUT": "out", **env}, timeout=60)
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def option(call: list[str], name: str) -> list[str]:
    return [call[i + 1] for i, arg in enumerate(call) if arg == name]


def cells_and_baseline(ablate: list[str], baseline_weight: float = 0) -> tuple[list[str], str]:
    """What `fermetric ablate` makes of the script's --grid and --baseline: every cell's model.init_from, the
    baseline's (the parser's own functions, so a quoting slip shows here), whose EMLF weight is checked."""
    cells = expand(dict(parse_grid_option(g) for g in option(ablate, "--grid")))
    baseline = find_baseline(cells, option(ablate, "--baseline")[0])
    init = lambda cell: dict((k, v.value) for k, v in cell.pairs)["model.init_from"]  # noqa: E731
    assert dict((k, v.value) for k, v in baseline.pairs)["loss.1.weight"] == baseline_weight
    return [init(c) for c in cells], init(baseline)


def test_a_chain_trains_its_source_then_pairs_the_cells_from_it_with_imagenet_only(tmp_path):
    proc, calls = run_script(tmp_path, STEPS="full_face")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["run", "ablate"]
    assert option(calls[0], "--out") == ["out/fer2013_full_face"] and "--resume" in calls[0]
    # The source is trained with the crop of the CK+48 cells it feeds.
    assert option(calls[0], "--set") == option(calls[1], "--set") == ["crop.name=full_face", "crop.size=96"]
    assert option(calls[1], "--grid") == ['model.init_from="out/fer2013_full_face",""', "loss.1.weight=0,0.5"]
    assert cells_and_baseline(calls[1]) == (["out/fer2013_full_face"] * 2 + [""] * 2, "")


def test_from_imagenet_trains_no_source_and_only_the_imagenet_cells_into_the_same_folder(tmp_path):
    proc, calls = run_script(tmp_path, STEPS="full_face", FROM="imagenet")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["ablate"]
    assert option(calls[0], "--out") == ["out/ck48_full_face"]
    assert option(calls[0], "--grid") == ['model.init_from=""', "loss.1.weight=0,0.5"]
    assert cells_and_baseline(calls[0]) == (["", ""], "")


def test_from_fer2013_alone_takes_its_baseline_from_the_source(tmp_path):
    proc, calls = run_script(tmp_path, STEPS="au_partial", FROM="fer2013")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["run", "ablate"]
    assert option(calls[1], "--grid")[0] == 'model.init_from="out/fer2013_au_partial"'
    assert cells_and_baseline(calls[1]) == (["out/fer2013_au_partial"] * 2, "out/fer2013_au_partial")


@pytest.mark.parametrize("losses, weights", [("emlf", "0.5"), ("ce", "0"), ("emlf ce", "0,0.5")])
def test_losses_choose_the_cells_ce_alone_first_as_the_baseline(tmp_path, losses, weights):
    # LOSSES=emlf FROM=fer2013: the one cell left to finish, without training the archived CE-alone cell again.
    proc, calls = run_script(tmp_path, STEPS="full_face", FROM="fer2013", LOSSES=losses)
    assert proc.returncode == 0, proc.stderr
    assert option(calls[1], "--grid") == ['model.init_from="out/fer2013_full_face"', f"loss.1.weight={weights}"]
    inits, baseline = cells_and_baseline(calls[1], baseline_weight=float(weights.split(",")[0]))
    assert inits == ["out/fer2013_full_face"] * len(weights.split(",")) and baseline == "out/fer2013_full_face"


def test_losses_with_both_sources_pair_each_loss_across_them(tmp_path):
    proc, calls = run_script(tmp_path, STEPS="full_face", LOSSES="emlf")
    assert proc.returncode == 0, proc.stderr
    assert option(calls[1], "--grid") == ['model.init_from="out/fer2013_full_face",""', "loss.1.weight=0.5"]
    assert cells_and_baseline(calls[1], baseline_weight=0.5) == (["out/fer2013_full_face", ""], "")


def test_words_keep_the_callers_globbing_and_read_every_line(tmp_path):
    # A newline in STEPS separates words like a blank (read alone would drop every line after the first).
    proc, calls = run_script(tmp_path, STEPS="au_partial\nlong")
    assert proc.returncode == 0, proc.stderr
    assert [option(c, "--out")[0] for c in calls] == ["out/fer2013_au_partial", "out/ck48_au_partial",
                                                      "out/fer2013_full_face_30ep"]
    lib = REPO / "scripts" / "lib" / "words.sh"
    probe = (f"source {lib}; set -f; STEPS='b a'; words got STEPS step x a b; [[ $- == *f* ]] && echo noglob;"
             " set +f; words got STEPS step x a b; [[ $- != *f* ]] && echo glob; IFS=,; has b a b c && echo has;"
             " has '' a b || echo empty-is-not-an-item; echo \"${got[*]}\"")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.split("\n")[:5] == ["noglob", "glob", "has", "empty-is-not-an-item", "b,a"], out.stderr


def test_extra_arguments_reach_every_run_and_ablation_unchanged(tmp_path):
    proc, calls = run_script(tmp_path, "--set", "train.epochs=2", "--set", "data.note=a b,c", STEPS="au_partial long")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["run", "ablate", "run"]
    # Last, so they win over the script's own --set; a space or comma in one stays inside it.
    assert all(call[-4:] == ["--set", "train.epochs=2", "--set", "data.note=a b,c"] for call in calls)


@pytest.mark.parametrize("env, epochs", [({}, "30"), ({"LONG_EPOCHS": "18"}, "18")])
def test_the_long_step_is_one_full_face_run_of_its_own_for_long_epochs(tmp_path, env, epochs):
    proc, calls = run_script(tmp_path, STEPS="long", **env)
    assert proc.returncode == 0, proc.stderr
    # Each length has its own folder (and report row): 18 and 30 epochs are two schedules, not two trainings of one.
    assert len(calls) == 1 and option(calls[0], "--out") == [f"out/fer2013_full_face_{epochs}ep"]
    assert calls[0][:2] == ["run", "recipes/pidml/fer2013_mobilenet_pretrained.toml"] and "--resume" in calls[0]
    assert option(calls[0], "--set") == ["crop.name=full_face", "crop.size=96", f"train.epochs={epochs}"]


@pytest.mark.parametrize("env, message", [
    ({"STEPS": "full_face lnog"}, "unknown step 'lnog'"),
    ({"STEPS": ""}, "STEPS is empty"),
    ({"STEPS": " \t "}, "STEPS is empty"),
    ({"STEPS": "*"}, "unknown step '*'"),
    ({"FROM": "imagenet scratch"}, "unknown source 'scratch'"),
    ({"FROM": ""}, "FROM is empty"),
    ({"FROM": "  "}, "FROM is empty"),
    ({"FROM": "imagenet"}, "step 'long' trains FER2013, which FROM=imagenet leaves out"),  # STEPS has long by default
    ({"LOSSES": "ce triplet"}, "unknown loss 'triplet'"),
    ({"LOSSES": " "}, "LOSSES is empty"),
    ({"OUT": "runs/a,b"}, "OUT='runs/a,b' holds a quote, backslash or comma"),
    ({"LONG_EPOCHS": "0"}, "LONG_EPOCHS='0' is not a whole number of epochs"),
    ({"LONG_EPOCHS": "ten"}, "LONG_EPOCHS='ten' is not a whole number of epochs"),
])
def test_a_misspelt_step_or_source_stops_before_any_work(tmp_path, env, message):
    proc, calls = run_script(tmp_path, **env)
    assert proc.returncode == 2 and message in proc.stderr
    assert calls == []


def test_multiseed_steps_are_three_ablations_of_three_seeds_paired_by_their_folders(tmp_path):
    proc, calls = run_script(tmp_path, "--set", "train.epochs=1", script=MULTISEED)
    assert proc.returncode == 0, proc.stderr
    assert [option(c, "--out") for c in calls] == [["out/emlf_vs_ce"], ["out/full_face_ce"], ["out/emlf_hard"]]
    assert all(option(c, "--seeds") == ["3"] and c[-2:] == ["--set", "train.epochs=1"] for c in calls)
    # The hard variant at the setting of the mean one it is compared with.
    assert option(calls[2], "--set")[:2] == ["loss.1.pos_margin=0.5", "loss.1.variant=hard"]
    assert option(calls[2], "--grid") == ["loss.1.weight=0.05"] and "loss.1.weight=0,0.05" in option(calls[0], "--grid")
    proc, calls = run_script(tmp_path / "one", script=MULTISEED, STEPS="emlf_hard")
    assert [option(c, "--out") for c in calls] == [["out/emlf_hard"]]


@pytest.mark.parametrize("steps, message", [("emlf_hrad", "unknown step 'emlf_hrad'"), (" ", "STEPS is empty")])
def test_a_misspelt_multiseed_step_stops_before_any_work(tmp_path, steps, message):
    proc, calls = run_script(tmp_path, script=MULTISEED, STEPS=steps)
    assert proc.returncode == 2 and message in proc.stderr and calls == []
