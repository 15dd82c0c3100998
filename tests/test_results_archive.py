"""scripts/make_results_13.py keeps every finished fold's numbers in a committed archive, so the #13 report outlives
the run folders (ignored, and gone with the machine): merged from folders, exact fractions, no downgrade."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fermetric.runfolder import AblationFolder, RunFolder, write_json

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("make_results_13", ROOT / "scripts" / "make_results_13.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _fold(run: RunFolder, index: int, matrix: list[list[int]], seconds: float = 10.0) -> None:
    fold = run.fold(index)
    fold.root.mkdir(parents=True)
    correct, total = sum(matrix[i][i] for i in range(len(matrix))), sum(map(sum, matrix))
    write_json({"accuracy": correct / total, "macro_f1": 0.5, "confusion_matrix": {"classes": ["a", "b"],
                                                                                   "matrix": matrix}},
               fold.metrics_file)
    fold.append_history({"epoch": 1, "seconds": seconds, "val_accuracy": 0.5})


def _ablation(root: Path, cells: list[tuple[str, dict, list[list[list[int]]]]], source_sha: str | None = None) -> None:
    folder = AblationFolder(root)
    root.mkdir(parents=True)
    write_json({"seeds": 1, "cells": [{"id": cid} for cid, _, _ in cells]}, folder.ablation_file)
    for cid, values, folds in cells:
        cell = folder.cell(cid)
        cell.root.mkdir(parents=True)
        write_json({"values": values}, cell.cell_file)
        run = cell.seed(0)
        run.root.mkdir()
        info = {"device": "cpu", "status": "finished"}
        if values.get("model.init_from"):
            info["init_from"] = {"sha256": source_sha}
        write_json(info, run.run_file)
        for index, matrix in enumerate(folds):
            _fold(run, index, matrix)


def test_folds_merge_into_the_archive_and_stay_when_the_folders_are_gone(report, tmp_path):
    transfer = tmp_path / "transfer"
    source = str(transfer / "fer2013_full_face")
    _fer_run(transfer / "fer2013_full_face", 2, finished=True)
    best = RunFolder(transfer / "fer2013_full_face").best_checkpoint
    best.parent.mkdir()
    best.write_bytes(b"the selected weights")
    sha = hashlib.sha256(b"the selected weights").hexdigest()
    # 2 of 3 right in fold 0, 3 of 3 in fold 1: the from-FER2013 CE cell; the ImageNet-only one 1 of 3, 2 of 3.
    _ablation(transfer / "ck48_full_face", [
        ("c0", {"loss.1.weight": 0, "model.init_from": source}, [[[1, 1], [0, 1]], [[2, 0], [0, 1]]]),
        ("c1", {"loss.1.weight": 0, "model.init_from": ""}, [[[1, 0], [2, 0]], [[1, 1], [0, 1]]]),
    ], source_sha=sha)
    archive: dict = {}
    changed = report.update_archive(archive, tmp_path / "no_multiseed", transfer)
    assert len(changed) == 5 and archive["fer2013"]["full_face"]["sha256"] == sha
    entry = archive["cells"]["transfer/ck48_full_face: from FER2013, CE alone"]["folds"]
    assert entry["0/0"]["correct"] == 2 and entry["0/0"]["total"] == 3 and entry["0/1"]["correct"] == 3
    assert entry["0/0"]["train_seconds"] == 10.0 and entry["0/0"]["macro_f1"] == 0.5

    # Written, read back, merged again from the same folders: nothing new.
    archive = json.loads(json.dumps(archive))
    assert report.update_archive(archive, tmp_path / "no_multiseed", transfer) == []
    # The folders gone (a new machine): the report still has every fold, as exact fractions.
    lines = report.section(archive, tmp_path / "elsewhere")
    text = "\n".join(lines)
    assert "| from FER2013, CE alone | 83.33 ± 23.57 | 50.00 ± 0.00 | 2/10 |" in text
    assert "| ImageNet only, CE alone | 50.00 ± 23.57 |" in text
    assert "from FER2013 against ImageNet only, CE alone: **+33.33 points** over 2 paired" in text
    cell = report.cell_from(archive, "transfer/ck48_full_face", "from FER2013, CE alone")
    assert cell.accuracy == {(0, 0): 2 / 3, (0, 1): 1.0}
    assert f"- source: every fold started from the FER2013 run above (best.pt sha256 {sha[:12]}...)." in text

    # The source trained again (a new machine) and one fold redone from it: the report says the cell mixes networks.
    archive["cells"]["transfer/ck48_full_face: from FER2013, CE alone"]["folds"]["0/1"]["source_sha256"] = "f" * 64
    text = "\n".join(report.section(archive, tmp_path / "elsewhere"))
    assert "**the folds started from 2 different FER2013 checkpoints**" in text


def _fer_run(root: Path, epochs: int, finished: bool) -> None:
    run = RunFolder(root)
    root.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, epochs + 1):
        run.append_history({"epoch": epoch, "seconds": 60, "val_accuracy": 0.5 + epoch / 100})
    write_json({"status": "finished" if finished else "running", "device": "cpu"}, run.run_file)
    if finished:
        write_json({"accuracy": 0.6, "macro_f1": 0.55}, run.metrics_file)


def test_a_restarted_fer2013_run_never_replaces_a_finished_ones_figures(report, tmp_path):
    transfer = tmp_path / "transfer"
    _fer_run(transfer / "fer2013_full_face", 3, finished=True)
    archive: dict = {}
    report.update_archive(archive, tmp_path, transfer)
    assert archive["fer2013"]["full_face"]["accuracy"] == 0.6
    assert archive["fer2013"]["full_face"]["selected_epoch"] == 3

    # A new machine runs it again from nothing: one epoch so far must not replace the finished figures.
    for child in sorted((transfer / "fer2013_full_face").rglob("*"), reverse=True):
        child.unlink()
    _fer_run(transfer / "fer2013_full_face", 1, finished=False)
    assert report.update_archive(archive, tmp_path, transfer) == []
    row = report.fer_row("full face", archive["fer2013"]["full_face"])
    assert "| full face | 3 | 3 of 3 (53.00%) | **60.00** | 55.00 | 3 min on cpu |" == row
    # A run still going is shown as such.
    assert "1 so far (running)" in report.fer_row("full face", report.fer_record(RunFolder(transfer / "fer2013_full_face")))


def test_the_committed_archive_renders_the_committed_report(report):
    """docs/results_13.json is the source of docs/results.md's #13 section: rendering it gives the same tables."""
    archive = json.loads(report.ARCHIVE.read_text(encoding="utf-8"))
    rendered = report.section(archive, ROOT / "runs" / "transfer")
    committed = (ROOT / archive["report"]).read_text(encoding="utf-8")  # the report the archive belongs to
    for line in rendered:
        if line.startswith("Generated "):  # carries the time it was written
            continue
        assert line in committed, line
