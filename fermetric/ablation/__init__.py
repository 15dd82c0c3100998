"""``fermetric ablate``: one recipe, a grid of overrides, every cell trained and compared with a baseline cell.

A grid comes from ``--grid KEY=V1,V2,...`` options (repeatable) or from the recipe's ``[ablate]`` table::

    [ablate]
    grid = { "crop.name" = ["full_face", "au_partial"], "loss.1.weight" = [0, 0.5] }
    seeds = 3
    baseline = "crop.name=full_face,loss.1.weight=0"

``--grid`` options replace the table's grid; ``--seeds`` and ``--baseline`` replace its values. The
Cartesian product of the grid's values gives the cells. ``--set`` overrides apply to every cell, together
with the cell's own values (a key cannot be both); overrides that rename a component (``crop.name=...``)
are applied first, because a renamed component starts its table afresh, so parameters given in the grid or
with ``--set`` always reach the new component. A value is a TOML value or a bare word
(``--grid 'crop={name="full_face"},{name="au_partial",regions=["mouth"]}'`` replaces a whole table;
commas inside brackets, braces and quotes do not split). ``loss.N.name=none`` drops loss term N from that
cell (``loss.N.weight=0`` switches it off too, and keeps the recipe's array indices intact).

Folder layout (``--out``, default ``runs/<recipe>_ablate``)::

    ablation.json                   the recipe, the --set overrides, the grid, the seeds and the cells
    cells/<cell_id>/cell.json       the cell's overrides
    cells/<cell_id>/recipe.toml     the cell's fully resolved recipe (what each seed runs)
    cells/<cell_id>/seed_<s>/       an ordinary ``fermetric run`` folder, with ``train.seed = seed + s``
    cells/<cell_id>/error.txt       the traceback of a failed run (removed once the cell succeeds)
    results.csv                     one row per cell x seed x fold
    results.md                      mean ± std per cell, difference from the baseline, paired Wilcoxon test

A cell id is a readable slug of its overrides plus 8 hex digits of a hash of them (keys sorted, values
parsed), so the same overrides always map to the same folder, whatever the order of the ``--grid``
options. Re-running the same command resumes: a seed whose run folder says it finished is skipped, an
unfinished one continues through the engine's ``--resume`` (first unfinished fold, last checkpoint). A cell
whose recipe no longer matches its ``recipe.toml`` (the base recipe changed) is an error: use another
``--out``. New grid values can be added to an existing ablation folder; finished cells are reused.

Seeds and folds: seed ``s`` of every cell trains with ``train.seed = <recipe's train.seed> + s``, and the
protocol's split is drawn from ``train.seed`` too, so the split changes from seed to seed but is the same for
every cell at the same seed. The paired test therefore pairs (seed, fold) results that were trained and
tested on exactly the same images.
"""

from fermetric.ablation.grid import Cell, Value, cell_id, cell_recipe, expand, find_baseline, grid_from_table, parse_grid_option, split_top_level, toml_literal
from fermetric.ablation.report import CellSummary, markdown, print_table, rows_of, summarise, write_csv
from fermetric.ablation.runner import AblationResult, run_ablation
from fermetric.ablation.stats import format_mean_std, format_p, mean_std, number, paired_wilcoxon

__all__ = [
    "AblationResult", "Cell", "CellSummary", "Value", "cell_id", "cell_recipe", "expand", "find_baseline", "format_mean_std",
    "format_p", "grid_from_table", "markdown", "mean_std", "number", "paired_wilcoxon", "parse_grid_option", "print_table",
    "rows_of", "run_ablation", "split_top_level", "summarise", "toml_literal", "write_csv",
]
