"""The ``fermetric`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import FermetricError, RecipeError, handle_errors
from .plugins import KINDS

SET_HELP = "Override a recipe key, e.g. --set train.epochs=3 --set loss.1.weight=0.2 (arrays are 0-based). Repeatable."


class Context:
    def __init__(self, debug: bool):
        self.debug = debug


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--plugins", "allow", metavar="NAMES", help="Comma-separated third-party plugins to load (default: all; env FERMETRIC_PLUGINS).")
@click.version_option(package_name="fermetric")
@click.pass_context
def cli(ctx: click.Context, debug: bool, allow: str | None) -> None:
    """Facial expression recognition with partial images and deep metric learning."""
    if allow is not None:
        os.environ["FERMETRIC_PLUGINS"] = allow
    ctx.obj = Context(debug)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False),
              help="Run folder (default: runs/<recipe file name without .toml>, e.g. runs/ck48_pidml for"
                   " recipes/pidml/ck48_pidml.toml; the recipe's `name` does not matter).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (and first unfinished fold).")
@click.option("--fold", type=int, help="Run only this fold (0-based) of a k-fold protocol.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes on this machine (one per GPU): relaunches itself under torchrun --standalone. For several"
                   " machines call torchrun yourself: torchrun --nnodes M --nproc_per_node N ... -m fermetric run RECIPE.")
@handle_errors
def run(recipe: str, out: str | None, overrides: tuple[str, ...], resume: bool, fold: int | None, nproc: int) -> None:
    """Train and evaluate RECIPE; write a run folder with metrics, plots and checkpoints.

    RECIPE is a file or a packaged recipe, fermetric:NAME (`fermetric recipes` lists them). Under torchrun (or with
    --nproc N) the same recipe trains on N processes: train.batch_size is the global batch.
    """
    from .engine import run_recipe
    from .progress import console
    from .recipe import recipe_stem

    if nproc < 1:
        raise RecipeError(f"--nproc {nproc}: at least 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(nproc)
    out = out or str(Path("runs") / recipe_stem(recipe))
    metrics, out_dir = run_recipe(recipe, out, list(overrides), resume=resume, fold=fold)
    if not metrics:  # a process other than rank 0: rank 0 reports
        return
    # A standard deviation needs two folds: one fold (--fold K, holdout, split) reports none.
    std = f" ± {metrics['accuracy_std']:.4f} over {len(metrics['folds'])} folds" if len(metrics.get("folds", [])) > 1 else ""
    tag = " (SYNTHETIC data)" if metrics.get("synthetic_data") else ""
    console.print(f"[bold green]done[/]: accuracy {metrics['accuracy']:.4f}{std}, macro-F1 {metrics['macro_f1']:.4f}{tag} -> {out_dir}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--kind", type=click.Choice(list(KINDS.values())), help="Only this kind.")
@handle_errors
def plugins(as_json: bool, kind: str | None) -> None:
    """List every registered component by kind: name, plugin, distribution and version, parameters."""
    from .plugins import get_host

    host = get_host()
    described = host.describe()
    if kind:
        described = {kind: described[kind]}
    problems = [{"plugin": p.plugin, "distribution": p.distribution, "error": p.error} for p in host.problems]
    if as_json:
        click.echo(json.dumps({"components": described, "problems": problems}, indent=2))
        return
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        # A pipe or a file: plain lines that no table layout can wrap into columns.
        click.echo(_plain_plugins(described, problems, out.width), nl=False)
        return
    from rich.table import Table

    for k, items in described.items():
        table = Table(title=_plural(k), title_justify="left", show_lines=False)
        for col in ("name", "plugin", "distribution", "parameters"):
            table.add_column(col, overflow="fold")
        for item in items:
            table.add_row(item["name"], item["plugin"], f"{item['distribution']} {item['version']}", ", ".join(_param_texts(item)))
        out.print(table)
    for p in problems:
        out.print(f"[red]plugin problem[/] {p['plugin']} ({p['distribution']}): {p['error']}")


KIND_PLURALS = {"loss": "losses"}


def _plural(kind: str) -> str:
    return KIND_PLURALS.get(kind, kind + "s")


def _param_texts(item: dict, short: bool = False) -> list[str]:
    """``name: type = default`` per parameter; ``short`` drops module paths from types (``Path``, not ``pathlib.Path``)."""
    import re

    def typ(text: str) -> str:
        return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text) if short else text

    return [f"{n}: {typ(p['type'])}" + (f" = {p['default']!r}" if "default" in p else "") for n, p in item["params"].items()]


def _plain_plugins(described: dict, problems: list[dict], width: int) -> str:
    """``fermetric plugins`` for a pipe: per kind a heading, per component a line ``name  plugin (distribution
    version)`` and its parameters on indented lines, wrapped between parameters at ``width``."""
    lines = []
    for k, items in described.items():
        lines.append(f"{_plural(k)} ({len(items)})")
        pad = max((len(item["name"]) for item in items), default=0)
        for item in items:
            source = f"{item['distribution']} {item['version']}"
            if item["plugin"] != item["distribution"]:
                source = f"{item['plugin']} ({source})"
            lines.append(f"  {item['name']:<{pad}}  {source}")
            line = "      "
            for text in _param_texts(item, short=True) or ["(no parameters)"]:
                if line.strip() and len(line) + len(text) + 2 > width:
                    lines.append(line.rstrip() + ",")
                    line = "      "
                line += (", " if line.strip() else "") + text
            lines.append(line)
        lines.append("")
    lines += [f"plugin problem {p['plugin']} ({p['distribution']}): {p['error']}" for p in problems]
    return "\n".join(lines) + ("\n" if problems else "")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@handle_errors
def recipe(recipe: str, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE and print it fully resolved (extends, overrides and defaults applied).

    RECIPE is a file or a packaged recipe, fermetric:NAME. Paths come out absolute: a relative path in a recipe
    file is read from that file's folder, one given with --set from the current folder.
    """
    from .engine import load_recipe
    from .plugins import get_host
    from .recipe import dumps

    click.echo(dumps(load_recipe(recipe, list(overrides), get_host())))


@cli.command("recipes")
@click.option("--copy", "copy", nargs=2, metavar="NAME DEST",
              help="Copy packaged recipe NAME to DEST (a file, or a folder to copy into) to edit it: its extends"
                   " become fermetric:... references and its relative paths absolute, so the copy works anywhere.")
@click.option("--force", is_flag=True, help="With --copy: overwrite DEST.")
@handle_errors
def recipes(copy: tuple[str, str] | None, force: bool) -> None:
    """List the recipes installed with fermetric (use them as fermetric:NAME), or copy one to edit."""
    import shutil
    import textwrap

    from .recipe import PACKAGED_PREFIX, packaged_copy_text, packaged_description, packaged_recipes, resolve_recipe_path

    if copy:
        name, dest = copy
        name = name.removeprefix(PACKAGED_PREFIX)
        source = resolve_recipe_path(PACKAGED_PREFIX + name)
        target = Path(dest).expanduser()
        if target.is_dir() or dest.endswith(("/", os.sep)):
            target = target / source.name
        if target.exists() and not force:
            raise FermetricError(f"{target} exists; pass --force to overwrite it")
        from .plugins import get_host

        text = packaged_copy_text(name, get_host())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        click.echo(f"copied {PACKAGED_PREFIX}{name} to {target.resolve()}")
        return
    names = packaged_recipes()
    width = max(40, shutil.get_terminal_size().columns)
    pad = max(len(n) for n in names) + 2
    intro = (f"{len(names)} packaged recipes: use one as fermetric:NAME (`fermetric run fermetric:quickstart.toml`,"
             f" `extends = \"fermetric:pidml/base.toml\"`), or copy it to edit with `fermetric recipes --copy NAME DEST`.")
    click.echo("\n".join(textwrap.wrap(intro, width)))
    beside = width - pad - 2 >= 50  # else each description goes on indented lines below its name
    for name in names:
        text = packaged_description(name)
        if beside:
            lines = textwrap.wrap(text, width - pad - 2) or [""]
            click.echo(f"  {name:<{pad}}{lines[0]}")
            click.echo("".join(f"{' ' * (pad + 2)}{line}\n" for line in lines[1:]), nl=False)
        else:
            click.echo(f"  {name}")
            click.echo(textwrap.fill(text, width, initial_indent="      ", subsequent_indent="      "))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--preview", "n", type=int, default=16, show_default=True, help="Number of original/crop pairs in the grid.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="PNG to write (default: runs/<recipe file name without .toml>/crop_preview.png, beside the run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@handle_errors
def crop(recipe: str, n: int, out: str | None, overrides: tuple[str, ...]) -> None:
    """Write a PNG grid of N original/cropped pairs from RECIPE's data, to check the crops by eye.

    Do not publish grids of dataset faces whose terms forbid it (CK+, FER2013).
    """
    import numpy as np

    from .build import build
    from .components.croppers import preview_grid
    from .data.decode import UnreadableImage
    from .data.pipeline import decode, face_of
    from .engine import load_recipe
    from .errors import NoFace
    from .plugins import get_host
    from .recipe import recipe_stem

    host = get_host()
    resolved = load_recipe(recipe, list(overrides), host)
    out = out or str(Path("runs") / recipe_stem(recipe) / "crop_preview.png")
    dataset, _ = build(host, "dataset", resolved["data"], where="data")
    cropper, _ = build(host, "cropper", resolved["crop"], where="crop")
    picks = np.linspace(0, len(dataset.samples) - 1, min(n, len(dataset.samples))).round().astype(int)
    pairs, titles = [], []
    unreadable = []
    for i in picks:
        sample = dataset.samples[i]
        try:
            image = decode(sample)
        except UnreadableImage as exc:  # one bad file must not cost the whole preview
            unreadable.append(f"{sample.key}: {exc}")
            continue
        try:
            pairs.append((image, cropper(face_of(sample, image))))
        except NoFace:
            pairs.append((image, None))
        titles.append(sample.label)
    if not pairs:
        raise FermetricError(f"none of the {len(picks)} images picked could be read: " + "; ".join(unreadable[:3]))
    written = preview_grid(pairs, Path(out), titles=titles)
    skipped = f", {len(unreadable)} unreadable skipped (first: {unreadable[0]})" if unreadable else ""
    click.echo(f"wrote {Path(written).resolve()} ({len(pairs)} pairs, {sum(c is None for _, c in pairs)} without a face{skipped})")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="A grid axis, e.g. --grid crop.name=full_face,au_partial --grid loss.1.name=emlf,triplet,none"
                   " (none drops the loss term). Repeatable; replaces the recipe's [ablate] grid.")
@click.option("--seeds", type=int, help="Seeds per cell: seed s trains with train.seed + s (default: [ablate] seeds or 1).")
@click.option("--baseline", metavar="CELL_OR_OVERRIDES",
              help="The cell the others are compared with: a cell id or KEY=VALUE[,KEY=VALUE] (default: the first cell).")
@click.option("--out", type=click.Path(file_okay=False), help="Ablation folder (default: runs/<recipe file name without .toml>_ablate).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP + " Applies to every cell.")
@click.option("--dry-run", is_flag=True, help="List the cells and their ids; train nothing.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed run instead of going on with the other cells.")
@handle_errors
def ablate(recipe: str, grid: tuple[str, ...], seeds: int | None, baseline: str | None, out: str | None,
           overrides: tuple[str, ...], dry_run: bool, fail_fast: bool) -> None:
    """Train every cell of a grid of overrides of RECIPE (x seeds), one after another, and compare them.

    Writes OUT/results.csv (one row per cell x seed x fold) and OUT/results.md (mean ± std per cell, the
    difference from the baseline cell and a paired Wilcoxon test). Run the same command again to resume.
    """
    from .ablation import run_ablation

    result = run_ablation(recipe, list(grid), seeds=seeds, out=out, overrides=list(overrides), baseline=baseline,
                          dry_run=dry_run, fail_fast=fail_fast)
    if result.failed:
        raise FermetricError(f"{len(result.failed)} cell(s) failed: {', '.join(result.failed)}; see error.txt in their folders")


# Using a trained model (fermetric.inference; imported here, its heavy modules load when a command runs).
from .inference.commands import embed, evaluate, explain, export, predict  # noqa: E402

for _command in (predict, evaluate, export, embed, explain):
    cli.add_command(_command)


def _relaunch_under_torchrun(nproc: int) -> None:
    """``fermetric run --nproc N ...`` is ``torchrun --standalone --nproc_per_node N -m fermetric run ...``: the same
    command in N processes (torchrun sets RANK/WORLD_SIZE, so they do not relaunch again)."""
    import subprocess

    args, skip = [], False
    for i, arg in enumerate(sys.argv[1:]):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "fermetric", *args]
    raise SystemExit(subprocess.call(command))


def main() -> None:
    cli(prog_name="fermetric")


if __name__ == "__main__":
    main()
