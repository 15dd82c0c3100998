"""An ablation's results: rows per (cell, seed, fold), per-cell summaries against the baseline, results.csv / .md."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fermetric.ablation.grid import Cell
from fermetric.ablation.stats import format_delta, format_mean_std, mean_std, number, paired_wilcoxon
from fermetric.runfolder import RunFolder

# results.csv columns after the cell's overrides (per-class recall columns follow them)
METRIC_COLUMNS = (
    "accuracy", "macro_f1", "knn_precision_at_1", "knn_map_at_r", "intra_inter_ratio",
    "intra_class_distance", "inter_class_distance",
)
SUMMARY_METRICS = (
    ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("knn_precision_at_1", "k-NN P@1"),
    ("knn_map_at_r", "MAP@R"), ("intra_inter_ratio", "intra/inter"),
)




def rows_of(cell: Cell, seed: int, train_seed: int, run: RunFolder) -> list[dict[str, Any]]:
    """results.csv rows (one per fold) of a finished run folder."""
    rows = []
    for m in run.fold_metrics():
        embedding = m.get("embedding", {})
        row: dict[str, Any] = {"cell": cell.id}
        row |= {key: value.text for key, value in cell.pairs}
        row |= {"seed": seed, "train_seed": train_seed, "fold": m.get("fold", 0)}
        row |= {"accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1")}
        row |= {k: embedding.get(k, "") for k in METRIC_COLUMNS[2:]}
        row |= {"n_test": m.get("n_test", ""), "n_train": m.get("n_train", ""), "n_val": m.get("n_val", ""),
                "tta": m.get("tta", ""), "synthetic_data": bool(m.get("synthetic_data", False))}
        row |= {f"recall_{c}": r for c, r in m.get("per_class_recall", {}).items()}
        rows.append(row)
    return rows


@dataclass
class CellSummary:
    cell: Cell
    runs_done: int
    rows: list[dict[str, Any]]
    stats: dict[str, tuple[float, float, int]]
    delta: dict[str, float] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    status: str = "finished"  # finished | partial | not run | failed


def summarise(cells: list[Cell], baseline: Cell, rows_by_cell: dict[str, list[dict[str, Any]]], seeds: int,
              failed: dict[str, str]) -> list[CellSummary]:
    def acc_by_pair(rows):
        return {(int(r["seed"]), int(r["fold"])): number(r["accuracy"]) for r in rows}

    base_rows = rows_by_cell.get(baseline.id, [])
    base_stats = {key: mean_std([number(r[key]) for r in base_rows]) for key, _ in SUMMARY_METRICS}
    out = []
    for cell in cells:
        rows = rows_by_cell.get(cell.id, [])
        runs = len({r["seed"] for r in rows})
        stats = {key: mean_std([number(r[key]) for r in rows]) for key, _ in SUMMARY_METRICS}
        status = "failed" if cell.id in failed else "finished" if runs == seeds else "partial" if runs else "not run"
        summary = CellSummary(cell, runs, rows, stats, status=status)
        if cell.id != baseline.id and rows and base_rows:
            summary.delta = {key: stats[key][0] - base_stats[key][0] for key in ("accuracy", "macro_f1")}
            summary.test = paired_wilcoxon(acc_by_pair(rows), acc_by_pair(base_rows))
        out.append(summary)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]], grid_keys: list[str]) -> None:
    fixed = ["cell", *grid_keys, "seed", "train_seed", "fold", *METRIC_COLUMNS, "n_test", "n_train", "n_val", "tta", "synthetic_data"]
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in fixed and k not in extra]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fixed + extra, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    tmp.replace(path)


def markdown(title: str, info: dict[str, Any], summaries: list[CellSummary], baseline: Cell, grid_keys: list[str]) -> str:
    synthetic = any(r.get("synthetic_data") for s in summaries for r in s.rows)
    lines = [f"# Ablation: {title}", ""]
    if synthetic:
        lines += ["**SYNTHETIC data**: these numbers show that the pipeline works, not how well it recognises real faces.", ""]
    lines += [
        f"- recipe: `{info['recipe']}`" + (f" with `--set {' '.join(info['overrides'])}`" if info["overrides"] else ""),
        f"- protocol: {info['protocol']}; seeds: {info['seeds']} (seed s trains with train.seed = {info['base_seed']} + s;"
        " the split depends on train.seed, so all cells share the same splits at the same seed)",
        f"- baseline: `{baseline.id}` ({baseline.label})",
        f"- cells: {len(summaries)}, finished {sum(s.status == 'finished' for s in summaries)}",
        "",
    ]
    header = ["cell", *grid_keys, "runs", *(name for _, name in SUMMARY_METRICS), "Δ accuracy", "Δ macro-F1", "Wilcoxon (accuracy)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        is_base = s.cell.id == baseline.id
        runs = f"{s.runs_done}/{info['seeds']} × {s.stats['accuracy'][2] // max(s.runs_done, 1) if s.runs_done else 0} folds"
        if s.status in ("failed", "not run"):
            runs = s.status
        row = [f"`{s.cell.id}`" + (" (baseline)" if is_base else ""), *(s.cell.text_of(k) for k in grid_keys), runs]
        row += [format_mean_std(s.stats[key][0], s.stats[key][1]) for key, _ in SUMMARY_METRICS]
        if is_base:
            row += ["baseline", "baseline", "—"]
        else:
            row += [format_delta(s.delta.get("accuracy", math.nan)), format_delta(s.delta.get("macro_f1", math.nan)),
                    s.test.get("note") or "n/a (no results)"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation over every (seed, fold) test result of a cell. Δ: the cell's mean minus"
        " the baseline's. Wilcoxon: scipy's two-sided Wilcoxon signed-rank test of the per-(seed, fold) test"
        " accuracies paired with the baseline's at the same seed and fold (n pairs; zero differences are"
        " dropped). With 5 or fewer non-zero pairs no difference can reach p < 0.05; n/a: fewer than 2 pairs, or"
        " every difference is 0.",
    ]
    failed = [s for s in summaries if s.status in ("failed", "partial", "not run")]
    if failed:
        lines += ["", "Unfinished cells (run the same command again to resume them):", ""]
        lines += [f"- `{s.cell.id}` ({s.cell.label}): {s.status}, {s.runs_done}/{info['seeds']} seeds" for s in failed]
    return "\n".join(lines) + "\n"


def print_table(title: str, summaries: list[CellSummary], baseline: Cell, grid_keys: list[str], seeds: int) -> None:
    """The summary as a rich table on stdout (cells by number and hash; results.md has the full ids)."""
    from rich.console import Console
    from rich.table import Table

    probe = Console()
    out = probe if probe.is_terminal else Console(width=200)
    table = Table(title=f"ablation: {title} (baseline: cell {baseline.index + 1})", title_justify="left")
    for col in ("cell", *grid_keys, "seeds", *(name for _, name in SUMMARY_METRICS), "Δ acc", "Wilcoxon"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        is_base = s.cell.id == baseline.id
        row = [f"{s.cell.index + 1} {s.cell.id[-8:]}" + (" (baseline)" if is_base else ""), *(s.cell.text_of(k) for k in grid_keys),
               "failed" if s.status == "failed" else f"{s.runs_done}/{seeds}"]
        row += [format_mean_std(s.stats[key][0], s.stats[key][1]) for key, _ in SUMMARY_METRICS]
        row += ["—", "—"] if is_base else [format_delta(s.delta.get("accuracy", math.nan)), s.test.get("note") or "n/a"]
        table.add_row(*row)
    out.print(table)


# -- the ablation -------------------------------------------------------------------------------------------
