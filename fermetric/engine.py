"""The training engine behind ``fermetric run``: one recipe in, one run folder out.

Run folder (one per recipe run; with k folds, each fold has the per-fold files in ``fold_XX/``)::

    recipe.toml            the fully resolved recipe, defaults written out
    run.json               versions, seed, device, components and the distributions that provided them,
                           data summary (unreadable files, images without a face)
    history.csv            one row per epoch: learning rate, each loss term, throughput, validation scores
    checkpoints/last.pt    state_dict + optimizer + metadata, written atomically every epoch (--resume)
    checkpoints/best.pt    the epoch selected on validation data
    metrics.json           test metrics (aggregated mean/std over folds at the top level for k-fold)
    confusion_matrix.json / .png, embeddings_tsne.png
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn

from . import __version__
from . import recipe as recipe_mod
from .errors import FermetricError, RecipeError
from .evaluation import aggregate, classification_metrics, distance_stats, knn_metrics, plot_confusion, plot_tsne, predict
from .model import FERModel
from .pipeline import Prepared, prepare
from .plugins import Component, PluginHost, get_host
from .progress import console, progress_bar
from .protocols import Fold, make_folds


@dataclass
class LossTerm:
    """One ``[[loss]]`` table: the loss module, its weight, and what it is fed."""

    name: str
    weight: float
    module: torch.nn.Module
    miner: Any = None
    lr: float | None = None

    @property
    def uses_logits(self) -> bool:
        return bool(getattr(self.module, "uses_logits", False))

    def __call__(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.uses_logits:
            return self.module(logits.float(), labels)
        embeddings = embeddings.float()
        if self.miner is not None:
            return self.module(embeddings, labels, indices_tuple=self.miner(embeddings, labels))
        return self.module(embeddings, labels)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FermetricError(f"train.device = {name!r} but CUDA is not available here; use \"auto\" or \"cpu\"")
    return torch.device(name)


def build(host: PluginHost, kind: str, table: dict[str, Any], engine_keys: set[str], **injected: Any) -> tuple[Any, Component]:
    """Call a registered factory with the recipe table's parameters plus the injected values it accepts."""
    component = host.registry(kind).get(table["name"])
    params = {k: v for k, v in table.items() if k not in engine_keys}
    for key, value in injected.items():
        if key in component.params or component.accepts_any:
            params.setdefault(key, value)
    if kind == "loss" and isinstance(params.get("distance"), str):
        from .losses import make_distance

        params["distance"] = make_distance(params["distance"])
    try:
        inspect.signature(component.factory).bind(**params)
    except TypeError as exc:
        raise RecipeError(f"{kind} {table['name']!r} rejected its parameters {params}: {exc}") from exc
    except ValueError:
        pass  # no introspectable signature: let the call decide
    try:
        return component.factory(**params), component
    except FermetricError:
        raise
    except Exception as exc:
        raise FermetricError(
            f"{kind} {table['name']!r} ({component.plugin}, {component.distribution or 'no distribution'}) failed:"
            f" {type(exc).__name__}: {exc}"
        ) from exc


def build_losses(host: PluginHost, recipe: dict[str, Any], num_classes: int, embedding_size: int) -> tuple[list[LossTerm], list[Component]]:
    from .losses import make_miner

    terms, components = [], []
    for table in recipe_mod.losses_of(recipe):
        module, component = build(host, "loss", table, recipe_mod.ENGINE_KEYS["loss"], num_classes=num_classes, embedding_size=embedding_size)
        if not isinstance(module, torch.nn.Module):
            raise FermetricError(f"loss {table['name']!r} ({component.plugin}) did not return a torch.nn.Module")
        miner = None
        if table.get("miner"):
            spec = table["miner"]
            spec = {"name": spec} if isinstance(spec, str) else dict(spec)
            if "indices_tuple" not in inspect.signature(module.forward).parameters and not _accepts_kwargs(module.forward):
                raise RecipeError(f"loss {table['name']!r} takes no indices_tuple, so it cannot use miner {spec['name']!r}")
            miner = make_miner(spec.pop("name"), **spec)
        terms.append(LossTerm(table["name"], float(table.get("weight", 1.0)), module, miner, table.get("lr")))
        components.append(component)
    return terms, components


def _accepts_kwargs(fn) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def component_record(component: Component) -> dict[str, Any]:
    return {"kind": component.kind, "name": component.name, "plugin": component.plugin,
            "distribution": component.distribution, "version": component.version}


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "fermetric": __version__}
    for dist in ("torch", "torchvision", "pytorch-metric-learning", "timm", "numpy", "scikit-learn", "opencv-python-headless", "pluggy", "dlib-bin", "insightface"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None, host: PluginHost) -> dict[str, Any]:
    return recipe_mod.validate(recipe_mod.load(path, overrides), host)


class Augment:
    """Random flips and small affine jitter on a batch of normalised images, drawn from a seeded generator."""

    def __init__(self, cfg: dict[str, Any]):
        self.flip = bool(cfg.get("flip", False))
        self.shift = float(cfg.get("shift", 0.0))
        self.rotate = float(cfg.get("rotate", 0.0))
        self.scale = float(cfg.get("scale", 0.0))

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        rand = lambda *shape: torch.rand(*shape, generator=gen).to(x.device)  # noqa: E731
        if self.flip:
            mask = rand(b) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        if self.shift or self.rotate or self.scale:
            angle = (rand(b) * 2 - 1) * self.rotate * torch.pi / 180
            scale = 1 + (rand(b) * 2 - 1) * self.scale
            shift = (rand(b, 2) * 2 - 1) * self.shift * 2
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
        return x


class Runner:
    """Trains and evaluates one recipe into one run folder."""

    def __init__(self, recipe: dict[str, Any], out: Path, host: PluginHost, resume: bool = False, recipe_path: str = ""):
        self.recipe = recipe
        self.out = out
        self.host = host
        self.resume = resume
        self.recipe_path = recipe_path
        self.train_cfg = recipe["train"]
        self.seed = int(self.train_cfg["seed"])
        self.device = pick_device(self.train_cfg["device"])

    # -- run folder -------------------------------------------------------------------------------------
    def _open_folder(self) -> None:
        recipe_file = self.out / "recipe.toml"
        # A folder whose first attempt failed before training saved anything holds nothing to lose.
        trained = (self.out / "metrics.json").exists() or any(self.out.glob("**/checkpoints/last.pt"))
        if recipe_file.exists() and trained:
            if not self.resume:
                raise FermetricError(f"{self.out} already holds a run; pass --resume to continue it, or --out for a new folder")
            if not recipe_mod.matches_file(recipe_file, self.recipe):
                raise FermetricError(f"--resume: the recipe differs from the one in {recipe_file}; use another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(recipe_mod.dumps(self.recipe))

    def _finished_metrics(self) -> dict[str, Any] | None:
        """The metrics of this folder's run when --resume finds it finished (the recipe was checked to match)."""
        run_file, metrics_file = self.out / "run.json", self.out / "metrics.json"
        if not (self.resume and run_file.exists() and metrics_file.exists()):
            return None
        try:
            finished = json.loads(run_file.read_text()).get("status") == "finished"
        except json.JSONDecodeError:
            return None
        return json.loads(metrics_file.read_text()) if finished else None

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self, only_fold: int | None = None) -> dict[str, Any]:
        self._open_folder()
        finished = self._finished_metrics()
        if finished is not None:
            # Resuming a finished run is a no-op: evaluating again would cost minutes and rewrite the
            # run's start and end times, which reports read as its wall time.
            console.print(f"{self.out}: already finished, skipped")
            return finished
        seed_everything(self.seed)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        dataset, data_component = build(self.host, "dataset", self.recipe["data"], recipe_mod.ENGINE_KEYS["data"])
        cropper, crop_component = build(self.host, "cropper", self.recipe["crop"], recipe_mod.ENGINE_KEYS["crop"])
        backbone_component = self.host.registry("backbone").get(self.recipe["backbone"]["name"])
        loss_components = [self.host.registry("loss").get(t["name"]) for t in recipe_mod.losses_of(self.recipe)]
        sampler_component = self.host.registry("sampler").get(self._sampler_table()["name"])
        prepared = prepare(
            dataset, cropper, self.recipe["crop"], Path(self.train_cfg["cache_dir"]),
            cropper_version=crop_component.version, description=f"cropping {dataset.name}",
        )
        folds = make_folds(prepared, self.recipe["eval"], float(self.train_cfg["val_fraction"]), self.seed)
        all_folds = folds
        if only_fold is not None:
            if not 0 <= only_fold < len(folds):
                raise RecipeError(f"--fold {only_fold}: the protocol has folds 0..{len(folds) - 1}")
            folds = [folds[only_fold]]
        run_info = {
            "fermetric": __version__,
            "recipe_file": self.recipe_path,
            "command": " ".join(sys.argv),
            "seed": self.seed,
            "device": str(self.device),
            "started": started,
            "versions": versions(),
            "synthetic_data": prepared.synthetic,
            "components": [component_record(c) for c in (data_component, crop_component, backbone_component, *loss_components, sampler_component)],
            "data": {k: v for k, v in prepared.report.items()} | {"classes": prepared.classes},
            "folds": [{"fold": f.index, "train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in all_folds],
            "status": "running",
        }
        write_json(run_info, self.out / "run.json")
        self._summarise_data(prepared)
        per_fold = []
        single = self.recipe["eval"]["protocol"] != "kfold"
        try:
            for fold in folds:
                per_fold.append(self.run_fold(prepared, fold, self.out if single else self._fold_dir(fold), len(folds)))
        except KeyboardInterrupt:
            run_info["status"] = "interrupted"
            write_json(run_info, self.out / "run.json")
            console.print(f"[yellow]interrupted[/]; continue with: fermetric run {self.recipe_path or 'RECIPE'} --out {self.out} --resume")
            raise
        status = "finished"
        if not single and only_fold is not None:
            # One fold of several (--fold): aggregate whichever folds exist so far, and say the run is partial.
            folds = [f for f in all_folds if (self._fold_dir(f) / "metrics.json").exists()]
            per_fold = [json.loads((self._fold_dir(f) / "metrics.json").read_text()) for f in folds]
            if len(folds) < len(all_folds):
                status = f"partial ({len(folds)} of {len(all_folds)} folds)"
        metrics = per_fold[0] if single else self._aggregate(per_fold, folds)
        metrics["synthetic_data"] = prepared.synthetic
        write_json(metrics, self.out / "metrics.json")
        run_info.update(status=status, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json(run_info, self.out / "run.json")
        return metrics

    def _fold_dir(self, fold: Fold) -> Path:
        return self.out / f"fold_{fold.index:02d}"

    def _aggregate(self, per_fold: list[dict[str, Any]], folds: list[Fold]) -> dict[str, Any]:
        agg = aggregate(per_fold)
        return {
            "protocol": "kfold",
            "folds": [f.index for f in folds],
            "tta": self.recipe["eval"]["tta"],
            "accuracy": agg["accuracy"]["mean"],
            "accuracy_std": agg["accuracy"]["std"],
            "macro_f1": agg["macro_f1"]["mean"],
            "macro_f1_std": agg["macro_f1"]["std"],
            "aggregate": agg,
            "per_fold": [{k: v for k, v in m.items() if k != "confusion_matrix"} for m in per_fold],
            "confusion_matrix": {
                "classes": per_fold[0]["confusion_matrix"]["classes"],
                "matrix": np.sum([m["confusion_matrix"]["matrix"] for m in per_fold], axis=0).tolist(),
            },
        }

    def _summarise_data(self, prepared: Prepared) -> None:
        r = prepared.report
        label = " [bold magenta]SYNTHETIC data[/]" if prepared.synthetic else ""
        console.print(
            f"data: {r['images_used']} images used of {r['images_listed']}{label}; {r['unreadable']} unreadable,"
            f" {r['no_face']} without a face ({r['no_face_policy']}); crop cache hits {r['cache_hits']}"
        )
        for item in r["unreadable_files"][:5]:
            console.print(f"  [yellow]unreadable[/] {item['file']}: {item['error']}")

    # -- one fold -----------------------------------------------------------------------------------------
    def run_fold(self, prepared: Prepared, fold: Fold, fold_dir: Path, n_folds: int) -> dict[str, Any]:
        metrics_file = fold_dir / "metrics.json"
        if n_folds > 1 and metrics_file.exists():
            console.print(f"fold {fold.index}: already finished, skipped")
            return json.loads(metrics_file.read_text())
        fold_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir = fold_dir / "checkpoints"
        ckpt_dir.mkdir(exist_ok=True)
        cfg = self.train_cfg
        fold_seed = self.seed + 1009 * fold.index
        seed_everything(fold_seed)
        num_classes = len(prepared.classes)
        embedding_dim = int(self.recipe["model"]["embedding_dim"])
        backbone_table = dict(self.recipe["backbone"])
        in_chans = int(backbone_table.get("in_chans", 1))
        backbone, _ = build(self.host, "backbone", backbone_table, recipe_mod.ENGINE_KEYS["backbone"], in_chans=in_chans)
        model = FERModel(backbone, num_classes, embedding_dim, float(self.recipe["model"]["dropout"]), in_chans).to(self.device)
        terms, _ = build_losses(self.host, self.recipe, num_classes, embedding_dim)
        for term in terms:
            term.module.to(self.device)
        optimizer = self._optimizer(model, terms)
        epochs = int(cfg["epochs"])
        scheduler = self._scheduler(optimizer, epochs)
        sampler_table = self._sampler_table()
        train_labels = prepared.labels[fold.train]
        sampler, _ = build(self.host, "sampler", sampler_table, {"name"}, labels=train_labels.tolist(),
                           batch_size=int(cfg["batch_size"]), seed=fold_seed)
        use_amp = bool(cfg["amp"]) and self.device.type == "cuda"
        # Native bf16 (Ampere and newer) needs no loss scaling; older GPUs get fp16 with a GradScaler. Emulated
        # bf16 would be slow, so compute capability decides, on the device actually used.
        native_bf16 = use_amp and torch.cuda.get_device_capability(self.device)[0] >= 8
        amp_dtype = torch.bfloat16 if native_bf16 else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        augment = Augment(cfg["augment"])

        start_epoch, best = 0, {"score": -1.0, "epoch": -1}
        stale, stopped = 0, False
        last = ckpt_dir / "last.pt"
        history_file = fold_dir / "history.csv"
        if last.exists():
            if not self.resume:
                raise FermetricError(f"{last} exists; pass --resume to continue it")
            state = torch.load(last, map_location=self.device, weights_only=True)
            model.load_state_dict(state["model"])
            for term, term_state in zip(terms, state["losses"]):
                term.module.load_state_dict(term_state)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["scaler"] and scaler.is_enabled():  # a CPU or bf16 checkpoint has no scaler state
                scaler.load_state_dict(state["scaler"])
            saved_digest = state["meta"].get("split_digest")  # absent in checkpoints of fermetric before it was kept
            if saved_digest is not None and saved_digest != self._split_digest(prepared, fold):
                raise FermetricError(
                    f"--resume: the data or the split of fold {fold.index} changed since {last} was written (images"
                    " added, removed, skipped or re-labelled); continuing would test on images the checkpoint trained"
                    " on. Use another --out."
                )
            start_epoch, best = int(state["epoch"]) + 1, dict(state["best"])
            stale, stopped = int(state.get("stale", 0)), bool(state.get("stopped", False))
            _truncate_history(history_file, start_epoch)
            console.print(f"resumed from {last} at epoch {start_epoch}")
        elif history_file.exists():
            history_file.unlink()

        train_images = prepared.images[fold.train].to(self.device)
        train_targets = train_labels.to(self.device)
        has_val = len(fold.val) > 0
        fold_name = f"fold {fold.index + 1}/{n_folds} " if n_folds > 1 else ""
        # history columns per term: the loss name, numbered when a recipe uses one loss twice
        labels = [t.name if [u.name for u in terms].count(t.name) == 1 else f"{t.name}_{i}" for i, t in enumerate(terms)]
        for epoch in range(start_epoch, epochs if not stopped else start_epoch):
            epoch_seed = fold_seed * 100003 + epoch
            seed_everything(epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            model.train()
            for term in terms:
                term.module.train()
            sums = {label: 0.0 for label in labels}
            total, correct, seen, steps = 0.0, 0, 0, 0
            t0 = time.perf_counter()
            with progress_bar(TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.0f} img/s")) as bar:
                task = bar.add_task(f"{fold_name}epoch {epoch + 1}/{epochs}", total=len(sampler), loss=0.0, ips=0.0)
                for batch in sampler:
                    idx = torch.as_tensor(batch, device=self.device)
                    x = augment(FERModel.normalize(train_images[idx]), gen)
                    y = train_targets[idx]
                    with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                        embeddings, logits = model(x)
                    parts = [term(embeddings, logits, y) for term in terms]
                    loss = sum(t.weight * p for t, p in zip(terms, parts))
                    if not torch.isfinite(loss):
                        raise FermetricError(
                            f"loss became {loss.item()} at epoch {epoch + 1} (terms: "
                            + ", ".join(f"{t.name}={p.item():.4g}" for t, p in zip(terms, parts))
                            + "); lower train.lr or check the loss parameters"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg["grad_clip"]:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
                    scaler.step(optimizer)
                    scaler.update()
                    n = len(batch)
                    total += loss.item() * n
                    for label, p in zip(labels, parts):
                        sums[label] += p.item() * n
                    correct += int((logits.argmax(1) == y).sum())
                    seen += n
                    steps += 1
                    bar.update(task, advance=1, loss=total / seen, ips=seen / (time.perf_counter() - t0))
            lr_now = optimizer.param_groups[0]["lr"]
            scheduler.step()
            seconds = time.perf_counter() - t0
            row = {"epoch": epoch + 1, "lr": lr_now, "train_loss": total / max(seen, 1)}
            row |= {f"loss_{name}": v / max(seen, 1) for name, v in sums.items()}
            row |= {"train_accuracy": correct / max(seen, 1), "seconds": round(seconds, 3), "images_per_s": round(seen / seconds, 1)}
            if has_val:
                _, val_logits = predict(model, prepared.images[fold.val], self.device)
                val_m = classification_metrics(prepared.labels[fold.val].numpy(), val_logits.argmax(1), prepared.classes)
                row |= {"val_accuracy": val_m["accuracy"], "val_macro_f1": val_m["macro_f1"]}
                score = val_m["accuracy"]
            else:
                score = float(epoch)  # no validation data: the last epoch is the selected one
            improved = score > best["score"]
            if improved:
                best = {"score": score, "epoch": epoch}
                stale = 0
            else:
                stale += 1
            stopped = bool(cfg["patience"] and has_val and stale >= int(cfg["patience"]))
            _append_history(history_file, row)
            state = {
                "model": model.state_dict(),
                "losses": [t.module.state_dict() for t in terms],
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best": best,
                "stale": stale,
                "stopped": stopped,
                "meta": self._meta(prepared, fold, embedding_dim),
            }
            if improved:  # before last.pt: a kill between the two writes must not leave last.pt naming a best.pt that is older
                atomic_save({"model": state["model"], "losses": state["losses"], "epoch": epoch, "meta": state["meta"]}, ckpt_dir / "best.pt")
            atomic_save(state, last)
            val_text = f" val_acc {row['val_accuracy']:.3f}" if has_val else ""
            terms_text = " ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in row.items() if k.startswith("loss_")) if len(terms) > 1 else ""
            console.print(
                f"{fold_name}epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} {terms_text} train_acc"
                f" {row['train_accuracy']:.3f}{val_text} {row['images_per_s']:.0f} img/s"
            )
            if stopped:
                console.print(f"early stop: no validation improvement for {stale} epochs")
                break
        return self._evaluate(model, prepared, fold, fold_dir, ckpt_dir, best)

    @staticmethod
    def _split_digest(prepared: Prepared, fold: Fold) -> str:
        """Which images (by key and label) a fold trains, selects and tests on: a resumed fold must see the same."""
        digest = hashlib.sha1()
        for part in (fold.train, fold.val, fold.test):
            for i in part:
                digest.update(f"{prepared.samples[i].key}\t{int(prepared.labels[i])}\n".encode())
            digest.update(b"|")
        return digest.hexdigest()

    def _sampler_table(self) -> dict[str, Any]:
        spec = self.train_cfg["sampler"]
        return {"name": spec} if isinstance(spec, str) else dict(spec)

    def _meta(self, prepared: Prepared, fold: Fold, embedding_dim: int) -> dict[str, Any]:
        return {
            "fermetric": __version__,
            "classes": list(prepared.classes),
            "embedding_dim": embedding_dim,
            "backbone": json.loads(json.dumps(self.recipe["backbone"])),
            "crop": json.loads(json.dumps(self.recipe["crop"])),
            "input_size": list(prepared.images.shape[-2:]),
            "fold": fold.index,
            "split_digest": self._split_digest(prepared, fold),
            "seed": self.seed,
            "synthetic_data": prepared.synthetic,
        }

    def _evaluate(self, model, prepared: Prepared, fold: Fold, fold_dir: Path, ckpt_dir: Path, best: dict[str, Any]) -> dict[str, Any]:
        cfg_eval = self.recipe["eval"]
        selected = "last"
        if self.train_cfg["select"] == "best" and len(fold.val) and (ckpt_dir / "best.pt").exists():
            model.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=self.device, weights_only=True)["model"])
            selected = f"best (epoch {best['epoch'] + 1}, val accuracy {best['score']:.4f})"
        test_y = prepared.labels[fold.test].numpy()
        test_emb, test_logits = predict(model, prepared.images[fold.test], self.device, tta=cfg_eval["tta"])
        metrics = classification_metrics(test_y, test_logits.argmax(1), prepared.classes)
        embedding = distance_stats(test_emb, test_y)
        if cfg_eval["knn"]:
            train_emb, _ = predict(model, prepared.images[fold.train], self.device)
            embedding |= knn_metrics(test_emb, test_y, train_emb, prepared.labels[fold.train].numpy())
        metrics["embedding"] = embedding
        metrics |= {"fold": fold.index, "selected_checkpoint": selected, "tta": cfg_eval["tta"],
                    "n_train": len(fold.train), "n_val": len(fold.val), "synthetic_data": prepared.synthetic}
        tag = "SYNTHETIC data - " if prepared.synthetic else ""
        title = f"{tag}{self.recipe.get('name') or Path(self.recipe_path).stem} fold {fold.index}: acc {metrics['accuracy']:.3f}"
        write_json(metrics["confusion_matrix"], fold_dir / "confusion_matrix.json")
        plot_confusion(metrics["confusion_matrix"]["matrix"], prepared.classes, fold_dir / "confusion_matrix.png", title)
        if cfg_eval["tsne"]:
            ratio = embedding["intra_inter_ratio"]
            plot_tsne(test_emb, test_y, prepared.classes, fold_dir / "embeddings_tsne.png",
                      f"{title}, intra/inter distance {ratio:.3f}", int(cfg_eval["tsne_max_points"]), self.seed)
        write_json(metrics, fold_dir / "metrics.json")
        console.print(
            f"[bold]test[/] accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}"
            f" intra/inter {embedding['intra_inter_ratio']:.3f} ({len(fold.test)} images{', SYNTHETIC' if prepared.synthetic else ''})"
        )
        return metrics

    def _optimizer(self, model: FERModel, terms: list[LossTerm]) -> torch.optim.Optimizer:
        cfg = self.train_cfg
        lr = float(cfg["lr"])
        groups = [{"params": list(model.parameters()), "lr": lr, "name": "model"}]
        for term in terms:
            params = [p for p in term.module.parameters() if p.requires_grad]
            if params:
                # Loss parameters (centres, proxies) often want another learning rate and no weight decay.
                groups.append({"params": params, "lr": float(term.lr if term.lr is not None else lr), "weight_decay": 0.0, "name": f"loss:{term.name}"})
        wd = float(cfg["weight_decay"])
        name = cfg["optimizer"]
        if name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd, nesterov=True)
        if name == "adam":
            return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)

    def _scheduler(self, optimizer: torch.optim.Optimizer, epochs: int):
        name = self.train_cfg["scheduler"]
        warmup = int(self.train_cfg["warmup_epochs"])

        def factor(epoch: int) -> float:
            if warmup and epoch < warmup:
                return (epoch + 1) / warmup
            if name == "cosine":
                progress = (epoch - warmup) / max(1, epochs - warmup)
                return float(0.5 * (1 + np.cos(np.pi * progress)))
            if name == "step":  # x0.1 after the first and the second third of the epochs after warm-up
                third = max(1, -(-(epochs - warmup) // 3))
                return 0.1 ** min(2, (epoch - warmup) // third)
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _append_history(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history rows of epochs after the checkpoint (a run killed after logging but before saving)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if int(r["epoch"]) <= epochs_done]
    if not rows:
        path.unlink()
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_recipe(recipe_path: str, out: str | None = None, overrides: list[str] | None = None, resume: bool = False,
               fold: int | None = None, host: PluginHost | None = None) -> tuple[dict[str, Any], Path]:
    host = host or get_host()
    recipe = load_recipe(recipe_path, overrides, host)
    out_dir = Path(out) if out else Path("runs") / Path(recipe_path).stem
    runner = Runner(recipe, out_dir, host, resume=resume, recipe_path=str(recipe_path))
    return runner.run(only_fold=fold), out_dir
