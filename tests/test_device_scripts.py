"""scripts/device_setup.sh and device_long.sh, the route to a GPU machine that has no network: their refusals, and
that device_long.sh stops the run at its deadline and hands back its final status, not the "running" of a run still
writing it. The whole route
(device_pack.sh here, device_setup.sh over a Python that has PyTorch but not fermetric's three missing packages)
needs the network and ../shared, so it is checked by hand (docs/performance.md, GPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fermetric.runfolder import RunFolder, Status

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the device scripts are bash scripts")


def tree(tmp_path: Path, *scripts: str) -> Path:
    (tmp_path / "scripts").mkdir(parents=True)
    for name in scripts:
        shutil.copy(REPO / "scripts" / name, tmp_path / "scripts" / name)
    return tmp_path


def bash(root: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / script)], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=60)


def this_python_as_venv(root: Path) -> Path:
    """``.venv/bin/python`` in ``root`` running this test's Python, which has fermetric (a link to it would lose its
    venv)."""
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.parametrize("pack", [False, True])
def test_setup_without_the_pack_says_to_make_it(tmp_path, pack):
    root = tree(tmp_path, "device_setup.sh")
    if pack:  # made, but its wheels are gone
        (root / ".device" / "wheels").mkdir(parents=True)
    proc = bash(root, "device_setup.sh")
    assert proc.returncode == 2 and "run bash scripts/device_pack.sh" in proc.stderr


def test_setup_over_a_python_without_torch_names_the_variable(tmp_path):
    root = tree(tmp_path, "device_setup.sh")
    (root / ".device" / "wheels").mkdir(parents=True)
    (root / ".device" / "wheels" / "tomli_w-1.2.0-py3-none-any.whl").touch()
    no_torch = root / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    proc = bash(root, "device_setup.sh", DEVICE_PYTHON=str(no_torch))
    assert proc.returncode == 2 and "set DEVICE_PYTHON" in proc.stderr
    assert not (root / ".venv").exists()


def test_long_needs_the_folder_that_comes_back(tmp_path):
    proc = bash(tree(tmp_path, "device_long.sh"), "device_long.sh")
    assert proc.returncode != 0 and "OUT names the folder" in proc.stderr


# Stands in for `fermetric run`, stopped by SIGTERM in the order the engine follows: it lets the run folder go, then
# (here after a pause longer than a copy takes to start) writes the final status.
SLOW_STOP = """
import signal, sys, time
from pathlib import Path
from fermetric.runfolder import RunFolder, write_json
run = RunFolder(Path(sys.argv[sys.argv.index("--out") + 1]))
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
with run.lock():
    write_json({"status": "running"}, run.run_file)
    run.append_history({"epoch": 1, "val_accuracy": 0.5})
    while not stopped:
        time.sleep(0.05)
time.sleep(3)
write_json({"status": "interrupted", "reason": "SIGTERM; resumable"}, run.run_file)
sys.exit(143)
"""


def test_long_stops_at_its_deadline_and_hands_back_the_runs_final_status(tmp_path):
    root = tree(tmp_path, "device_long.sh", "reproduce_transfer.sh")
    shutil.copytree(REPO / "scripts" / "lib", root / "scripts" / "lib")
    (root / "scripts" / "device_setup.sh").write_text("exit 0\n")
    fermetric = this_python_as_venv(root).with_name("fermetric")
    fermetric.write_text(f"#!{sys.executable}\n{SLOW_STOP}")
    fermetric.chmod(0o755)
    back = tmp_path / "back"
    proc = bash(root, "device_long.sh", OUT=str(back), RUNS=str(tmp_path / "runs"), DEADLINE="2", LONG_EPOCHS="12")
    # 3, not timeout's 124, which the device tool would read as its own time-out.
    assert proc.returncode == 3 and "stopped at DEADLINE=2 s" in proc.stderr, proc.stderr
    copied = RunFolder(back / "fer2013_full_face_12ep")
    assert json.loads(copied.run_file.read_text())["status"] == Status.INTERRUPTED
    assert [row["epoch"] for row in copied.history()] == ["1"]
    assert "status 'interrupted', 1 epochs" in proc.stdout


def test_long_says_when_the_step_never_began(tmp_path):
    root = tree(tmp_path, "device_long.sh")
    (root / "scripts" / "device_setup.sh").write_text("exit 0\n")
    (root / "scripts" / "reproduce_transfer.sh").write_text("exit 2\n")  # e.g. a recipe error, before any run
    this_python_as_venv(root)
    proc = bash(root, "device_long.sh", OUT=str(tmp_path / "back"), RUNS=str(tmp_path / "runs"))
    assert proc.returncode == 1 and "the step stopped before it began" in proc.stderr
