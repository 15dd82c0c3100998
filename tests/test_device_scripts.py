"""scripts/device_setup.sh and device_long.sh, the route to a GPU machine that has no network: their refusals, and
that device_long.sh hands back a run's final status, not the "running" of a run still writing it. The whole route
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


def test_setup_without_the_pack_says_to_make_it(tmp_path):
    proc = bash(tree(tmp_path, "device_setup.sh"), "device_setup.sh")
    assert proc.returncode == 2 and "run bash scripts/device_pack.sh" in proc.stderr


def test_setup_over_a_python_without_torch_names_the_variable(tmp_path):
    root = tree(tmp_path, "device_setup.sh")
    (root / ".device" / "wheels").mkdir(parents=True)
    no_torch = root / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    proc = bash(root, "device_setup.sh", DEVICE_PYTHON=str(no_torch))
    assert proc.returncode == 2 and "set DEVICE_PYTHON" in proc.stderr
    assert not (root / ".venv").exists()


def test_long_needs_the_folder_that_comes_back(tmp_path):
    proc = bash(tree(tmp_path, "device_long.sh"), "device_long.sh")
    assert proc.returncode != 0 and "OUT names the folder" in proc.stderr


# Stands in for `fermetric run` cut off by SIGTERM: the script around it is gone at once, while fermetric still holds
# the folder for a moment before it writes the final status (the order that made the first copies say "running").
SLOW_STOP = """
import sys, time
from pathlib import Path
from fermetric.runfolder import RunFolder, write_json
run = RunFolder(Path(sys.argv[1]))
with run.lock():
    write_json({"status": "running"}, run.run_file)
    run.append_history({"epoch": 1, "val_accuracy": 0.5})
    Path(sys.argv[2]).touch()  # the lock is held: the stand-in script may exit
    time.sleep(2)
    write_json({"status": "interrupted", "reason": "SIGTERM; resumable"}, run.run_file)
"""


def test_long_copies_the_runs_final_status_after_it_lets_the_folder_go(tmp_path):
    root = tree(tmp_path, "device_long.sh")
    (root / "scripts" / "device_setup.sh").write_text("exit 0\n")
    (root / "slow_stop.py").write_text(SLOW_STOP)
    (root / "scripts" / "reproduce_transfer.sh").write_text(
        f'{sys.executable} slow_stop.py "$OUT/fer2013_full_face_long" held &\n'
        "until [ -e held ]; do sleep 0.1; done\nexit 143\n")
    python = root / ".venv" / "bin" / "python"  # this test's Python, which has fermetric (a link would lose its venv)
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    back = tmp_path / "back"
    proc = bash(root, "device_long.sh", OUT=str(back), RUNS=str(tmp_path / "runs"))
    assert proc.returncode == 143, proc.stderr
    copied = RunFolder(back / "fer2013_full_face_long")
    assert json.loads(copied.run_file.read_text())["status"] == Status.INTERRUPTED
    assert [row["epoch"] for row in copied.history()] == ["1"]
    assert "status 'interrupted', 1 epochs" in proc.stdout
