"""The layers of docs/architecture.md, enforced: a module imports only from its own layer or the layers below it,
and built-in components import only the contracts, like any third-party plugin."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fermetric"

# (layer, module prefixes), bottom first. The package root ``fermetric`` (hookimpl, __version__) is a contract.
LAYERS = [
    ("contracts", ("fermetric", "fermetric.errors", "fermetric.contracts", "fermetric.geometry", "fermetric.hookspecs",
                   "fermetric.progress")),
    ("core", ("fermetric.plugins", "fermetric.recipe", "fermetric.runfolder", "fermetric.model")),
    ("components", ("fermetric.components",)),
    ("data and evaluation", ("fermetric.data", "fermetric.evaluation")),
    ("training", ("fermetric.training",)),
    ("engine", ("fermetric.build", "fermetric.engine")),
    ("applications", ("fermetric.ablation", "fermetric.inference")),
    ("command line", ("fermetric.cli", "fermetric.__main__")),
]
# Who may import whom, beyond "same layer or below": components see only the contracts (they are plugins like
# any other), and nothing below the engine sees the built-in components (it reaches them through the registry).
ONLY = {"components": {"contracts", "components"}}
NEVER = {layer: {"components"} for layer in ("core", "data and evaluation", "training")}


def layer_of(module: str) -> str:
    best = max(((prefix, name) for name, prefixes in LAYERS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=lambda pn: len(pn[0]))
    return best[1]


RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every fermetric import, function-level ones included."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fermetric"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fermetric":
                continue
            # ``from fermetric.x import y`` may name a submodule y: count it as importing fermetric.x.y if it exists.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (REPO / Path(*sub.split("."))).with_suffix(".py").is_file() or (REPO / Path(*sub.split("."))).is_dir()
                out.append((node.lineno, sub if is_module else target))
    return out


SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_layers(path):
    importer = module_name(path)
    if importer == "fermetric":
        return  # the package root's lazy ``load_model`` is a facade over the layers, not one of them
    mine = layer_of(importer)
    wrong = []
    for line, target in imports(path):
        theirs = layer_of(target)
        allowed = RANK[theirs] <= RANK[mine] and theirs in ONLY.get(mine, {theirs}) and theirs not in NEVER.get(mine, set())
        if not allowed:
            wrong.append(f"line {line}: {importer} ({mine}) imports {target} ({theirs})")
    assert wrong == [], "see docs/architecture.md for the layers"


def test_every_module_has_a_layer_and_the_doc_names_each_layer():
    text = (REPO / "docs" / "architecture.md").read_text()
    for name, _ in LAYERS:
        assert name in text, f"docs/architecture.md does not describe the {name!r} layer"
    for path in SOURCES:
        layer_of(module_name(path))  # raises if a module matches no layer


def test_run_folder_file_names_live_in_one_module():
    """Run-folder file names are spelled, as paths, in fermetric/runfolder.py only: anywhere else (engine,
    ablation, inference, scripts, tests) a string literal that *is* such a name (``"run.json"``, ``"checkpoints/last.pt"``,
    the ``fold_`` / ``seed_`` of an f-string) is a second owner. Messages and report prose that mention a file for
    a reader are not paths and do not count."""
    names = {"recipe.toml", "run.json", "metrics.json", "history.csv", "log.txt", "last.pt", "best.pt", "ablation.json",
             "results.csv", "results.md", "cell.json", "error.txt", "training_curves.png", "confusion_matrix.json",
             "confusion_matrix.png", "embeddings_tsne.png", "checkpoints/last.pt", "checkpoints/best.pt"}
    pieces = {"fold_", "seed_", "cells"}
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = []
    for rel in tracked:
        if rel == "tests/test_architecture.py" or not (REPO / rel).is_file():
            continue
        tree = ast.parse((REPO / rel).read_text())
        in_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            value = node.value.strip()
            is_path = value in names
            if is_path or (id(node) in in_fstring and value in pieces):
                offenders.append(f"{rel}:{node.lineno} {value!r}")
    assert offenders and all(o.startswith("fermetric/runfolder.py:") for o in offenders), [
        o for o in offenders if not o.startswith("fermetric/runfolder.py:")]
