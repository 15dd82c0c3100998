"""Statistics of an ablation and their one text format: mean ± std over (seed, fold) results, paired Wilcoxon.

``scripts/make_results.py`` and ``results.md`` both format with these functions, so a p-value reads the same
everywhere: ``p=0.129 (n=10)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


def number(value: Any) -> float:
    """A float for a number, NaN for anything else (None, "", bools)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def paired_wilcoxon(values: dict[tuple[int, int], float], baseline: dict[tuple[int, int], float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``values - baseline`` over the (seed, fold) pairs they share.

    Returns ``p`` (None when the test is not defined: fewer than 2 pairs, or every difference is 0), ``n``
    (pairs), ``n_nonzero`` (pairs that enter the test; zero differences are dropped) and ``note``.
    """
    keys = sorted(set(values) & set(baseline))
    diffs = np.array([values[k] - baseline[k] for k in keys], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    n = len(diffs)
    nonzero = int((np.abs(diffs) > 1e-12).sum())
    out = {"p": None, "n": n, "n_nonzero": nonzero, "note": ""}
    if n < 2:
        out["note"] = f"n/a (n={n}: too few pairs)"
        return out
    if nonzero == 0:
        out["note"] = f"n/a (n={n}: all differences 0)"
        return out
    from scipy.stats import wilcoxon

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(wilcoxon(np.where(np.abs(diffs) > 1e-12, diffs, 0.0), zero_method="wilcox", alternative="two-sided").pvalue)
    except ValueError as exc:
        out["note"] = f"n/a (n={n}: {exc})"
        return out
    if not math.isfinite(p):
        out["note"] = f"n/a (n={n})"
        return out
    out |= {"p": p, "note": format_p(p, n, n - nonzero)}
    return out


def format_p(p: float, n: int, zeros: int = 0) -> str:
    """The one way fermetric writes a paired test's result: ``p=0.129 (n=10)``, ``p=0.5 (n=10, 2 zero)``."""
    return f"p={p:.3g} (n={n}" + (f", {zeros} zero" if zeros else "") + ")"


def mean_std(values: list[float]) -> tuple[float, float, int]:
    arr = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if not len(arr):
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan, len(arr)


def format_mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.4f}" if not math.isfinite(std) else f"{mean:.4f} ± {std:.4f}"


def format_delta(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.4f}"


