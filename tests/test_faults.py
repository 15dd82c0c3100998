"""Hardening (issue #12): every bad value is an early exit 2 naming the key, every fault leaves a final run status
and a loadable previous checkpoint, and the exit codes follow the documented contract."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fermetric
from fermetric import engine
from fermetric import recipe as recipe_mod
from fermetric.build import dry_build
from fermetric.cli import cli
from fermetric.contracts import Callback
from fermetric.errors import FermetricError, RecipeError
from fermetric.plugins import PluginHost, get_host
from fermetric.runfolder import RunFolder
from tests.callbacks import armed, host_with_test_callbacks

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "recipes/quickstart.toml"
TINY = ["data.subjects=6", "data.per_class=3", "train.epochs=2", "train.batch_size=28", "train.sampler.m=4",
        "eval.tsne=false", "eval.knn=false"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def sets(items):
    return [x for item in items for x in ("--set", item)]


# -- bad values: exit 2, the key named, no traceback, no data work ---------------------------------------------
BAD_VALUES = [
    ("train.lr=-1", "train.lr = -1: must be >= 0"),
    ("model.embedding_dim=0", "model.embedding_dim = 0: must be in [1, 65536]"),
    ('train.device="gpu"', "train.device = 'gpu'"),
    ("train.epochs=0", "train.epochs = 0: must be >= 1"),
    ("backbone.depth=-4", "backbone.depth: backbone 'fer_cnn' expects int in [1, 8], got int -4"),
    ("backbone.width=-8", "backbone.width: backbone 'fer_cnn' expects int in [1, 1024], got int -8"),
    ("eval.test_fraction=1.5", "eval.test_fraction = 1.5: must be in (0, 1)"),
    ("eval.test_fraction=0", "eval.test_fraction = 0: must be in (0, 1)"),
    ("train.val_fraction=1.0", "train.val_fraction = 1.0: must be in [0, 1)"),
    ("train.batch_size=0", "train.batch_size = 0: must be >= 1"),
    ("train.warmup_epochs=20", "train.warmup_epochs = 20: must be < train.epochs"),
    ("train.augment.rotate=500", "train.augment.rotate = 500: must be in [0, 180]"),
    ("train.momentum=1.5", "train.momentum = 1.5: must be in [0, 1)"),
    ("eval.folds=1", "eval.folds = 1: must be >= 2"),
    ('loss.0.weight="x"', "loss.0.weight: expected float"),
    ('callback.0.name="tensorbord"', "did you mean 'tensorboard'"),
    ('loss.1.variant="semihard"', "emlf: unknown variant 'semihard'"),
    ("train.sampler.m=5", "m_per_class sampler: m=5 does not fit batch_size=56"),
    ('loss.1.distance="manhatan"', "loss.1.distance.name: unknown distance 'manhatan'"),
    ("data.subjects=-3", "data.subjects: dataset 'synthetic' expects int in [2, 10000], got int -3"),
    ("data.per_class=-1", "data.per_class: dataset 'synthetic' expects int in [1, 1000], got int -1"),
    ("data.size=4", "data.size: dataset 'synthetic' expects int in [16, 1024]"),
    # Sizes that would allocate gigabytes (the fuzz test below once drove the machine out of memory with one).
    ("backbone.width=20000", "backbone.width: backbone 'fer_cnn' expects int in [1, 1024], got int 20000"),
    ("model.embedding_dim=1280000", "model.embedding_dim = 1280000: must be in [1, 65536]"),
    ("crop.size=48000", "size = 48000 is outside [8, 1024] pixels"),
    ("data.subjects=100000", "data.subjects: dataset 'synthetic' expects int in [2, 10000]"),
]
TIMM = ['backbone.name="timm"', 'backbone.model="resnet1888"']
WEIGHTS = ['backbone.name="mobilenet_v2"', 'backbone.weights_file="pkg:no_such_weights_pkg/w.pth"']


@pytest.mark.parametrize("overrides, message", [([o], m) for o, m in BAD_VALUES if m] + [
    (TIMM, "timm has no model 'resnet1888'"),
    (WEIGHTS, "weights package 'no_such_weights_pkg' is not installed"),
    (["backbone.width=1024", "backbone.depth=5"], "backbone: width = 1024 with depth = 5 makes a last block of 16384 channels"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_values_exit_2_naming_the_key_before_any_data_work(tmp_path, overrides, message):
    cache = tmp_path / "cache"
    result = invoke("run", QUICKSTART, "--out", tmp_path / "run", *sets(overrides + [f'train.cache_dir="{cache}"']))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not cache.exists(), "the error came before any crop was made"


def test_a_bad_value_in_the_second_cell_of_an_ablation_stops_it_before_the_first_trains(tmp_path):
    out = tmp_path / "abl"
    result = invoke("ablate", QUICKSTART, "--grid", "loss.1.variant=mean,semihard", "--out", out,
                    *sets(TINY + [f'train.cache_dir="{tmp_path / "c"}"']))
    assert result.exit_code == 2 and "loss.1.variant=semihard" in result.output and "unknown variant" in result.output
    assert not out.exists()


SCALARS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3))
KEYS = ["train.lr", "train.epochs", "train.batch_size", "train.seed", "train.optimizer", "train.val_fraction",
        "train.augment.shift", "train.sampler.m", "model.embedding_dim", "model.dropout", "eval.protocol",
        "eval.test_fraction", "eval.folds", "eval.tta", "backbone.width", "backbone.depth", "crop.size", "crop.margin",
        "crop.layout", "loss.1.weight", "loss.1.pos_margin", "loss.1.neg_margin", "data.subjects", "data.per_class"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=SCALARS)
def test_fuzzed_recipe_values_are_accepted_or_a_recipe_error(key, value):
    """Whatever value a key gets, validation and the dry build either accept it or raise a RecipeError (exit 2)
    naming the key: never another exception, which would be a traceback for the user."""
    literal = json.dumps(value) if isinstance(value, (str, list)) else repr(value).lower() if isinstance(value, bool) else \
        ("nan" if value != value else "inf" if value == float("inf") else "-inf" if value == float("-inf") else repr(value))
    host = get_host()
    try:
        recipe = recipe_mod.validate(recipe_mod.load(QUICKSTART, [f"{key}={literal}"]), host)
        dry_build(host, recipe, 7)
    except RecipeError as exc:
        assert key.split(".")[0] in str(exc) or key.rsplit(".", 1)[-1] in str(exc), str(exc)
    except FermetricError as exc:
        assert exc.exit_code == 2, f"{type(exc).__name__}: {exc}"


# -- faults ---------------------------------------------------------------------------------------------------
@pytest.fixture
def host(monkeypatch):
    """A plugin host with the fault callbacks, also the one the CLI gets (the commands call get_host())."""
    import fermetric.plugins

    host = host_with_test_callbacks()
    monkeypatch.setattr(fermetric.plugins, "get_host", lambda refresh=False: host)
    monkeypatch.setattr(engine, "get_host", lambda refresh=False: host)
    return host


def _killed_run(tmp_path, host, epochs=3, kill=2):
    out = RunFolder(tmp_path / "run")
    overrides = TINY + [f"train.epochs={epochs}", f'train.cache_dir="{tmp_path / "c"}"', 'callback.0.name="kill_at"',
                        f"callback.0.epoch={kill}"]
    with armed(), pytest.raises(KeyboardInterrupt):
        engine.run_recipe(QUICKSTART, str(out.root), overrides, host=host)
    return out, overrides


def test_interrupted_run_has_a_final_status_a_log_and_a_hint_with_its_overrides(tmp_path, host, capsys):
    out, overrides = _killed_run(tmp_path, host)
    info = out.run_info()
    assert info["status"] == "interrupted" and "Ctrl-C" in info["reason"] and info["finished"]
    log = out.log_file.read_text()
    assert "epoch 1/3" in log and "interrupted" in log
    hint = capsys.readouterr().err.split("continue with: ")[-1].strip()
    assert hint.endswith("--resume") and all(shlex.quote(o) in hint or o in hint for o in overrides)


def test_the_final_status_is_written_before_the_folder_is_let_go(tmp_path, host, monkeypatch):
    # Whoever waits for the folder (a --resume, scripts/device_long.sh) must find the final status, not "running".
    at_release, real_lock = [], RunFolder.lock

    @contextmanager
    def noting_lock(self):
        with real_lock(self) as folder:
            try:
                yield folder
            finally:
                at_release.append(self.status())

    monkeypatch.setattr(RunFolder, "lock", noting_lock)
    _killed_run(tmp_path, host)
    assert at_release == ["interrupted"]


def test_a_failure_is_a_final_failed_status_with_the_reason(tmp_path, monkeypatch):
    out = RunFolder(tmp_path / "run")

    def broken(*args, **kwargs):
        raise FermetricError("the disk said no")

    monkeypatch.setattr(engine, "prepare", broken)
    with pytest.raises(FermetricError):
        engine.run_recipe(QUICKSTART, str(out.root), TINY)
    assert out.status() == "failed" and "the disk said no" in out.run_info()["reason"]


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "weights only"])
def test_a_damaged_checkpoint_is_a_clear_error_and_best_still_loads(tmp_path, host, damage):
    out, overrides = _killed_run(tmp_path, host)
    data = out.last_checkpoint.read_bytes()
    if damage == "weights only":  # a torch file, but without the training state resuming needs
        torch.save({"model": torch.load(out.last_checkpoint, weights_only=True)["model"]}, out.last_checkpoint)
    else:
        out.last_checkpoint.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}[damage])
    result = CliRunner().invoke(cli, ["run", QUICKSTART, "--out", str(out.root), "--resume", *sets(overrides)], obj=None)
    assert result.exit_code == 1, result.output
    assert ("is damaged" if damage != "weights only" else "expected a dict with 'model' and 'meta' and 'losses'") in result.output
    assert "delete it" in result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert torch.load(out.best_checkpoint, weights_only=True)["epoch"] == 0, "the previous checkpoint is intact"


def test_recipe_toml_deleted_or_damaged_then_resume(tmp_path, host):
    out, overrides = _killed_run(tmp_path, host)
    out.recipe_file.unlink()
    other = invoke("run", QUICKSTART, "--out", out.root, "--resume", *sets(overrides + ["train.lr=0.01"]))
    assert other.exit_code == 1 and "recipe.toml is missing or unreadable" in other.output and "fingerprint" in other.output
    out.recipe_file.write_text("this is [not toml")
    same = CliRunner().invoke(cli, ["run", QUICKSTART, "--out", str(out.root), "--resume", *sets(overrides)])
    assert same.exit_code == 0, same.output
    assert recipe_mod.matches_file(out.recipe_file, engine.load_recipe(QUICKSTART, overrides, host)), "rewritten"
    assert out.status() == "finished"


def test_a_changed_recipe_names_the_keys_and_how_to_continue(tmp_path, host):
    out, overrides = _killed_run(tmp_path, host)
    result = invoke("run", QUICKSTART, "--out", out.root, "--resume", *sets(overrides + ["train.lr=0.01", "model.dropout=0.2"]))
    assert result.exit_code == 1
    assert "train.lr = 0.01 (was 0.005)" in result.output and "model.dropout = 0.2 (was 0.0)" in result.output
    assert f"fermetric run {out.recipe_file} --out {out.root} --resume" in result.output


def test_the_saved_recipe_resumes_its_own_run(tmp_path, host):
    out, _ = _killed_run(tmp_path, host)
    result = CliRunner().invoke(cli, ["run", str(out.recipe_file), "--out", str(out.root), "--resume"])
    assert result.exit_code == 0, result.output
    assert out.status() == "finished" and len(out.history()) == 3


def test_resume_into_an_empty_folder_says_it_starts_afresh(tmp_path, capsys):
    engine.run_recipe(QUICKSTART, str(tmp_path / "new"), TINY + ["train.epochs=1"], resume=True)
    assert "nothing to resume" in capsys.readouterr().err


def test_a_second_run_into_a_locked_folder_fails_at_once(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        result = invoke("run", QUICKSTART, "--out", folder.root, *sets(TINY))
    assert result.exit_code == 1 and "in use by another fermetric run (pid" in result.output
    assert not folder.history_file.exists()


def test_two_processes_into_one_folder(tmp_path):
    """Started together: one trains, the other is refused; the history is one run's, not two mixed."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fermetric", "run", QUICKSTART, "--out", str(out),
           *sets(TINY + ["train.epochs=3", f'train.cache_dir="{tmp_path / "c"}"'])]
    env = os.environ | {"MPLBACKEND": "Agg"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "in use by another fermetric run" in refused or "already holds a run" in refused
    assert [r["epoch"] for r in RunFolder(out).history()] == ["1", "2", "3"]


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signals_end_with_their_exit_code_a_final_status_and_resume(tmp_path, sig, code, reason):
    out = RunFolder(tmp_path / "run")
    overrides = TINY + ["train.epochs=40", f'train.cache_dir="{tmp_path / "c"}"']
    cmd = [sys.executable, "-m", "fermetric", "run", QUICKSTART, "--out", str(out.root), *sets(overrides)]
    # The run gets Ctrl-C as a terminal's foreground job would: a test suite started in the background (`cmd &`)
    # ignores SIGINT, the child would inherit that, and Python would then rightly not turn SIGINT into Ctrl-C.
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | {"MPLBACKEND": "Agg"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not out.last_checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    info = out.run_info()
    assert info["status"] == "interrupted" and reason in info["reason"]
    assert "Aborted" not in err and "Traceback" not in err
    hint = err.split("continue with: ")[-1].strip().splitlines()[0]
    words = shlex.split(hint)
    assert words[0] == "fermetric", hint  # run exactly what was printed, as `python -m fermetric ...`
    resumed = subprocess.run([sys.executable, "-m", *words], cwd=REPO, env=os.environ | {"MPLBACKEND": "Agg"},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert out.status() == "finished" and [int(r["epoch"]) for r in out.history()] == list(range(1, 41))


def test_divergence_is_noticed(tmp_path):
    out = RunFolder(tmp_path / "run")
    engine.run_recipe(QUICKSTART, str(out.root), TINY + ["train.epochs=5", "train.lr=1000", "loss.1.weight=0",
                                                         f'train.cache_dir="{tmp_path / "c"}"'])
    warnings = out.run_info().get("warnings", [])
    assert any("training looks diverged" in w for w in warnings), warnings
    assert "training looks diverged" in out.log_file.read_text()


def test_a_healthy_run_has_no_divergence_warning(tmp_path):
    out = RunFolder(tmp_path / "run")
    engine.run_recipe(QUICKSTART, str(out.root), ["train.epochs=6", "eval.tsne=false", "eval.knn=false",
                                                  f'train.cache_dir="{tmp_path / "c"}"'])
    assert not out.run_info().get("warnings")


# -- read-only and full output folders (a small tmpfs; skipped where mounting is not allowed) ------------------
@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()

    def make(size: str):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return mount

    yield make
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_read_only_output_folder(tmp_path, tmpfs):
    mount = tmpfs("8m")
    finished = mount / "done"
    engine.run_recipe(QUICKSTART, str(finished), TINY + ["train.epochs=1", f'train.cache_dir="{tmp_path / "c"}"'])
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    again = invoke("run", QUICKSTART, "--out", finished, "--resume", *sets(TINY + ["train.epochs=1", f'train.cache_dir="{tmp_path / "c"}"']))
    assert again.exit_code == 0 and "already finished" in again.output, again.output
    new = invoke("run", QUICKSTART, "--out", mount / "new", *sets(TINY + [f'train.cache_dir="{tmp_path / "c"}"']))
    assert new.exit_code == 1 and "Read-only file system" in new.output and "Traceback" not in new.output


class FillDisk(Callback):
    """Fills the output's file system at the end of epoch 2, before the checkpointer writes that epoch."""

    def on_epoch_end(self, loop):
        if loop.epoch == 1:
            with open(loop.folder.root / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass


class FillPlugin:
    @fermetric.hookimpl
    def register_callbacks(self, register):
        register("fill_disk", FillDisk)


def test_full_disk_while_checkpointing_says_so_and_the_previous_checkpoint_survives(tmp_path, tmpfs):
    mount = tmpfs("16m")
    host = PluginHost(entry_points=False)
    host.add_plugin(FillPlugin(), "fill")
    out = RunFolder(mount / "run")
    with pytest.raises(FermetricError, match="No space left on device") as info:
        engine.run_recipe(QUICKSTART, str(out.root), TINY + ["train.epochs=3", f'train.cache_dir="{tmp_path / "c"}"',
                                                             'callback.0.name="fill_disk"'], host=host)
    assert "previous checkpoint is intact" in str(info.value)
    assert torch.load(out.last_checkpoint, weights_only=True)["epoch"] == 0, "epoch 1's checkpoint still loads"
    assert not list(out.checkpoint_dir.glob("*.tmp")), "no half-written file left behind"


def test_history_stays_aligned_when_a_resumed_run_logs_a_new_column(tmp_path):
    """A run started by an older fermetric and resumed by one that logs more columns (data_seconds, once): the
    file is rewritten with every column, so no value lands under another column's name."""
    folder = RunFolder(tmp_path / "run").mkdir()
    folder.append_history({"epoch": 1, "seconds": 2.0, "val_accuracy": 0.5})
    folder.append_history({"epoch": 2, "seconds": 2.5, "val_accuracy": 0.6})
    folder.append_history({"epoch": 3, "seconds": 3.0, "data_seconds": 0.1, "val_accuracy": 0.7})
    folder.append_history({"epoch": 4, "seconds": 3.5, "data_seconds": 0.2, "val_accuracy": 0.8})
    rows = folder.history()
    assert [r["val_accuracy"] for r in rows] == ["0.5", "0.6", "0.7", "0.8"]
    assert [r["data_seconds"] for r in rows] == ["", "", "0.1", "0.2"] and None not in rows[-1]
    folder.truncate_history(3)
    assert [r["epoch"] for r in folder.history()] == ["1", "2", "3"] and folder.history()[2]["data_seconds"] == "0.1"
