"""The engine behind ``fermetric run``: one resolved recipe in, one run folder out (:mod:`fermetric.runfolder`).

It wires the pieces together and owns the run's life: the data (:mod:`fermetric.data`), the protocol's folds,
and per fold a model, an objective and an optimizer step (:mod:`fermetric.build`) handed to the training loop
(:mod:`fermetric.training.loop`) with its callbacks, then the test evaluation and its pictures.
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from . import recipe as recipe_mod
from .build import (build, build_callbacks, build_model, build_objective, build_sampler, component_record, dry_build,
                    recipe_components, versions)
from .data.loader import BatchLoader
from .data.pipeline import Prepared, prepare, summary_lines
from .data.store import CropArray
from .data.protocols import Fold, make_folds
from .errors import FermetricError, RecipeError, Terminated, describe_os_error
from .evaluation.metrics import aggregate, classification_metrics, distance_stats, knn_metrics
from .evaluation.plots import plot_confusion, plot_tsne
from .model import pick_device, predict
from .plugins import PluginHost, get_host
from .progress import console
from .runfolder import COMMAND_MARK, RunFolder, Status, load_checkpoint, write_json
from .training.augment import Augment
from .training.callbacks import Checkpointer, DivergenceMonitor, EarlyStopping, ModelSelection, default_callbacks
from .training.distributed import (DistContext, ShardedBatchSampler, broadcast_parameters, check_global_batch,
                                   distribute_objective, run_guarded, sync_loss_parameters)
from .training.loop import TrainLoop, seed_everything
from .training.optim import OptimizerStep, amp_dtype, make_optimizer, make_scheduler, model_groups
from .training.transfer import check_compatible, load_parts, load_source, record


def load_recipe(path: str | Path, overrides: list[str] | None, host: PluginHost) -> dict[str, Any]:
    return recipe_mod.validate(recipe_mod.load(path, overrides), host)


class Runner:
    """Trains and evaluates one resolved recipe into one run folder.

    Whatever happens, ``run.json`` ends with a final ``status`` and a ``reason`` (finished; interrupted by Ctrl-C or
    SIGTERM, resumable; failed, with the error), the console output is appended to ``log.txt``, and no other
    process can write into the folder while this one runs (a file lock).
    """

    def __init__(self, recipe: dict[str, Any], out: Path | RunFolder, host: PluginHost, resume: bool = False,
                 recipe_path: str = "", overrides: list[str] | None = None):
        self.recipe = recipe
        self.folder = out if isinstance(out, RunFolder) else RunFolder(out)
        self.out = self.folder.root
        self.host = host
        self.resume = resume
        self.recipe_path = recipe_path
        self.overrides = list(overrides or [])
        self.train_cfg = recipe["train"]
        self.seed = int(self.train_cfg["seed"])
        # torchrun's environment (RANK, WORLD_SIZE): one process of N, else the single process it always was.
        self.ctx = DistContext.from_env(device=pick_device(self.train_cfg["device"]))
        self.device = self.ctx.device
        self.main = self.ctx.is_main
        check_global_batch(int(self.train_cfg["batch_size"]), self.ctx.world_size)
        self.init_source = None  # (checkpoint, state, sha256, parts) of model.init_from
        self.digest = recipe_mod.digest(recipe)
        self.run_info: dict[str, Any] = {}
        self._log_file = None

    def log(self, text: str) -> None:
        if not self.main:  # rank 0 speaks for every rank
            return
        console.print(text)
        if self._log_file is not None:
            from rich.text import Text

            self._log_file.write(Text.from_markup(text).plain + "\n")
            self._log_file.flush()

    def warn(self, text: str) -> None:
        """A warning for the console, log.txt and run.json (``warnings``), kept even if the run is killed later."""
        self.log(f"[yellow]warning[/]: {text}")
        if self.main:
            self.run_info.setdefault("warnings", []).append(text)
            write_json(self.run_info, self.folder.run_file)

    def resume_command(self) -> str:
        """The command that continues this run, with the overrides it was started with."""
        import shlex

        parts = ["fermetric", "run", self.recipe_path or str(self.folder.recipe_file), "--out", str(self.out)]
        for item in self.overrides:
            parts += ["--set", item]
        if self.ctx.world_size > 1:  # as many processes again: a run resumes on the global batch it started with
            parts += ["--nproc", str(self.ctx.world_size)]
        return shlex.join(parts + ["--resume"])

    # -- run folder -------------------------------------------------------------------------------------
    def _check_folder(self) -> None:
        """Refuse to overwrite a run, or to resume one with a recipe that did not produce it (naming what differs)."""
        folder = self.folder
        if not folder.has_training():
            # A folder whose first attempt failed before training saved anything holds nothing to lose.
            if self.resume and not folder.run_file.exists():
                self.log(f"nothing to resume in {self.out}: starting a new run")
            return
        if not self.resume:
            raise FermetricError(f"{self.out} already holds a run; pass --resume to continue it, or --out for a new folder")
        saved = None
        if folder.recipe_file.exists():
            try:
                saved = tomllib.loads(folder.recipe_file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                self.log(f"[yellow]{folder.recipe_file} is unreadable[/] ({exc}); checking the recipe against run.json instead")
        if saved is not None:
            if not recipe_mod.matches_file(folder.recipe_file, self.recipe):
                diffs = recipe_mod.differences(saved, tomllib.loads(recipe_mod.dumps(self.recipe)))
                shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
                raise FermetricError(
                    f"--resume: the recipe differs from the one in {folder.recipe_file}: {shown}. To continue the saved"
                    f" run as it was started: fermetric run {folder.recipe_file} --out {self.out} --resume"
                    " (or start a new run with another --out)"
                )
            return
        recorded = (folder.run_info() or {}).get("recipe_digest") or self._checkpoint_digest()
        if recorded is None:
            raise FermetricError(
                f"--resume: {folder.recipe_file} is missing or unreadable, and nothing in {self.out} records which recipe"
                " produced its checkpoints, so resuming could mix two recipes in one run; use another --out"
            )
        if recorded != self.digest:
            raise FermetricError(
                f"--resume: {folder.recipe_file} is missing or unreadable, and this recipe is not the one that produced"
                f" the checkpoints in {self.out} (its fingerprint differs from the one recorded); use the original recipe"
                " and --set options, or another --out"
            )
        self.log(f"{folder.recipe_file} was missing or unreadable: rewritten (the recipe matches the recorded fingerprint)")

    def _checkpoint_digest(self) -> str | None:
        for candidate in [self.folder, *self.folder.folds()]:
            if candidate.last_checkpoint.exists():
                meta = load_checkpoint(candidate.last_checkpoint).get("meta", {})
                return meta.get("recipe_digest")
        return None

    def _finish(self, status: str, reason: str) -> None:
        if not self.main:
            return
        self.run_info.update(status=status, reason=reason, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        try:
            write_json(self.run_info, self.folder.run_file)
        except OSError:
            pass  # the folder cannot be written (full disk, read-only): the error being raised says so already

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self, only_fold: int | None = None) -> dict[str, Any]:
        if self.resume and self.folder.is_finished() and recipe_mod.matches_file(self.folder.recipe_file, self.recipe):
            # Resuming a finished run is a no-op, and writes nothing (the folder may be read-only): evaluating
            # again would cost minutes and rewrite the run's start and end times, which reports read as wall time.
            self.log(f"{self.out}: already finished, skipped")
            return self.folder.metrics()
        finished_together = False
        # Only rank 0 owns the folder (lock, recipe.toml, run.json, log.txt); every rank trains. The lock is let go
        # only after the handlers below have written the final status: whoever waits for the folder (a --resume,
        # scripts/device_long.sh) must find "interrupted" or "failed", not "running", and never have it written
        # over its own run's status.
        folder_lock = ExitStack()
        try:
            if self.main:
                folder_lock.enter_context(self.folder.lock())
                self._check_folder()
                self.folder.recipe_file.write_text(recipe_mod.dumps(self.recipe))
                self._log_file = self.folder.log_file.open("a")
                self._log_file.write(f"{COMMAND_MARK}{datetime.now(timezone.utc).isoformat(timespec='seconds')}: {' '.join(sys.argv)}\n")
            self.run_info = {
                "fermetric": __version__, "recipe_file": self.recipe_path, "command": " ".join(sys.argv),
                "overrides": self.overrides, "recipe_digest": self.digest, "seed": self.seed, "device": str(self.device),
                "processes": self.ctx.world_size, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "status": Status.RUNNING,
            }
            if self.main:
                write_json(self.run_info, self.folder.run_file)
            with _sigterm_as_interrupt():
                metrics = run_guarded(self._run, self.ctx, only_fold)
            finished_together = True
            return metrics
        except KeyboardInterrupt as exc:
            if self.run_info:
                signal_name = ("SIGTERM" if isinstance(exc, Terminated) or getattr(exc, "exit_code", 130) == 143 else "Ctrl-C")
                self._finish(Status.INTERRUPTED, f"{signal_name}; resumable")
                self.log(f"[yellow]interrupted ({signal_name})[/]; continue with: {self.resume_command()}")
            raise
        except OSError as exc:
            self._finish(Status.FAILED, describe_os_error(exc))
            raise FermetricError(describe_os_error(exc)) from exc
        except BaseException as exc:
            if self.run_info:
                self._finish(Status.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            with folder_lock:  # the final status is written by now; a hanging teardown must not hold the folder
                if self._log_file is not None:
                    self._log_file.close()
                    self._log_file = None
            # Ranks that all finished leave together; after a failure the others are not coming to a barrier.
            self.ctx.destroy(wait_for_peers=finished_together)

    def _run(self, only_fold: int | None) -> dict[str, Any]:
        seed_everything(self.seed)
        dataset, _ = build(self.host, "dataset", self.recipe["data"], where="data")
        cropper, crop_component = build(self.host, "cropper", self.recipe["crop"], where="crop")
        # Before any data work, every component is built once with the recipe's values: a bad value must not
        # wait for 30,000 crops to be found.
        dry_build(self.host, self.recipe, len(dataset.classes), check_source=False)  # the source: loaded and checked below
        if self.recipe["model"]["init_from"]:
            ckpt, state, sha = load_source(self.recipe["model"]["init_from"])
            parts = self.recipe["model"]["init_parts"]
            check_compatible(state["meta"], self.recipe, tuple(cropper.output_size),
                             int(self.recipe["backbone"].get("in_chans", 1)), parts)
            self.init_source = (ckpt, state, sha, parts)
        if not self.main:
            self.ctx.barrier()  # rank 0 crops first; the others then read its crop cache
        prepared = prepare(
            dataset, cropper, self.recipe["crop"], Path(self.train_cfg["cache_dir"]),
            cropper_version=crop_component.version, description=f"cropping {dataset.name}",
            store=self.train_cfg["store"], log=self.log,
        )
        if self.main:
            self.ctx.barrier()
        folds = make_folds(prepared, self.recipe["eval"], float(self.train_cfg["val_fraction"]), self.seed)
        all_folds = folds
        if only_fold is not None:
            if not 0 <= only_fold < len(folds):
                raise RecipeError(f"--fold {only_fold}: the protocol has folds 0..{len(folds) - 1}")
            folds = [folds[only_fold]]
        components = recipe_components(self.host, self.recipe)
        self.run_info |= {
            "versions": versions(components),
            "synthetic_data": prepared.synthetic,
            "components": [component_record(c) for c in components],
            "data": dict(prepared.report) | {"classes": prepared.classes},
            "folds": [{"fold": f.index, "train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in all_folds],
        }
        if self.init_source is not None:
            ckpt, state, sha, parts = self.init_source
            self.run_info["init_from"] = record(ckpt, state, sha, parts)
        if self.main:
            write_json(self.run_info, self.folder.run_file)
        self._summarise_data(prepared)
        single = self.recipe["eval"]["protocol"] != "kfold"
        # n_folds is the protocol's, not how many run now: --fold K of 10 is fold K/10 (and is skipped when done).
        per_fold = [self.run_fold(prepared, fold, self.folder if single else self.folder.fold(fold.index), len(all_folds))
                    for fold in folds]
        status = Status.FINISHED
        if not single and only_fold is not None:
            # One fold of several (--fold): aggregate whichever folds exist so far, and say the run is partial.
            folds = [f for f in all_folds if self.folder.fold(f.index).fold_done()]
            per_fold = [self.folder.fold(f.index).metrics() for f in folds]
            if len(folds) < len(all_folds):
                status = f"{Status.PARTIAL} ({len(folds)} of {len(all_folds)} folds)"
        if not self.main:
            return {}  # rank 0 evaluates and writes the results
        metrics = per_fold[0] if single else self._aggregate(per_fold, folds)
        metrics["synthetic_data"] = prepared.synthetic
        write_json(metrics, self.folder.metrics_file)
        self._finish(status, "all folds evaluated" if status == Status.FINISHED else "--fold ran some of the folds")
        return metrics

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
        self.log(
            f"data: {r['images_used']} images used of {r['images_listed']}{label}; {r['unreadable']} unreadable,"
            f" {r['no_face']} without a face ({r['no_face_policy']}); crop cache hits {r['cache_hits']}"
        )
        if r["unreadable"]:
            for line in summary_lines(r):
                self.log(f"  [yellow]{line}[/]")

    # -- one fold -----------------------------------------------------------------------------------------
    def run_fold(self, prepared: Prepared, fold: Fold, folder: RunFolder, n_folds: int) -> dict[str, Any]:
        if n_folds > 1 and folder.fold_done():
            self.log(f"fold {fold.index}: already finished, skipped")
            return folder.metrics()
        if self.main:
            folder.mkdir()
        cfg = self.train_cfg
        fold_seed = self.seed + 1009 * fold.index
        seed_everything(fold_seed)
        model = build_model(self.host, self.recipe, len(prepared.classes)).to(self.device)
        objective, _ = build_objective(self.host, self.recipe, len(prepared.classes), model.embedding_dim)
        objective.to(self.device)
        # N processes: metric losses see the global batch, loss-owned parameters start (and stay) equal on every rank.
        distribute_objective(objective, self.ctx.world_size)
        loss_modules = [t.module for t in objective.terms]
        broadcast_parameters(loss_modules)
        dtype = amp_dtype(self.device, bool(cfg["amp"]))
        if self.init_source is not None:
            ckpt, state, _, parts = self.init_source
            loaded, adapted = load_parts(model, state, parts)
            channels = (f"; {', '.join(adapted)} adapted from {state['meta']['backbone'].get('in_chans', 1)} to"
                        f" {self.recipe['backbone'].get('in_chans', 1)} input channels (exact for grey input)") if adapted else ""
            self.log(f"initialised {len(loaded)} tensors ({parts}) from {ckpt}; new classifier for"
                     f" {len(prepared.classes)} classes{channels}")
        optimizer = make_optimizer([*model_groups(model, cfg), *objective.parameter_groups(float(cfg["lr"]))], cfg)
        step = OptimizerStep(optimizer, make_scheduler(optimizer, cfg), dtype, float(cfg["grad_clip"]), model.parameters(),
                             after_backward=(lambda: sync_loss_parameters(loss_modules)) if self.ctx.distributed else None)
        train_labels = prepared.labels[fold.train]
        sampler = ShardedBatchSampler(build_sampler(self.host, self.recipe, train_labels.tolist(), fold_seed),
                                      self.ctx.rank, self.ctx.world_size)
        # Convolutions on CUDA run fastest with NHWC tensors (Tensor Cores); the CPU keeps NCHW.
        channels_last = bool(cfg["channels_last"]) and self.device.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # A metric-only recipe's classifier gets no gradient: DDP must be told, or it waits for one.
        wrapped = self.ctx.wrap_model(model, find_unused_parameters=not any(t.uses_logits for t in objective.terms))
        if cfg["compile"]:
            wrapped = torch.compile(wrapped)
        extra, _ = build_callbacks(self.host, self.recipe)
        meta = self._meta(prepared, fold, model.embedding_dim)
        title = self._title(prepared)
        callbacks = [*default_callbacks(int(cfg["patience"]), title, len(prepared.classes)), *extra, Checkpointer(meta)]
        if not self.main:  # files, console and loggers are rank 0's; selection and stopping run everywhere alike
            callbacks = [c for c in callbacks if isinstance(c, (ModelSelection, EarlyStopping, DivergenceMonitor))]
        if isinstance(prepared.images, CropArray):
            # Crops larger than memory stay on disk: a DataLoader (with workers) reads each batch from the store.
            train_images = prepared.images.subset(fold.train)
            loader = BatchLoader(train_images, train_labels, sampler, device=self.device, workers=int(cfg["workers"]))
        else:  # crops that fit are held on the device once, and indexed there batch by batch
            train_images, loader = prepared.images[fold.train].to(self.device), None
        loop = TrainLoop(
            model=wrapped, objective=objective, step=step, sampler=sampler, ctx=self.ctx,
            images=train_images, labels=train_labels.to(self.device),
            device=self.device, epochs=int(cfg["epochs"]), seed=fold_seed, augment=Augment(cfg["augment"]),
            callbacks=callbacks, folder=folder,
            val=(self._images(prepared, fold.val), prepared.labels[fold.val]) if len(fold.val) else None,
            classes=prepared.classes, amp_dtype=dtype, fold=fold.index, n_folds=n_folds, log=self.log, warn=self.warn,
            channels_last=channels_last,
        )
        loop.loader = loader
        if folder.last_checkpoint.exists():
            if not self.resume:
                raise FermetricError(f"{folder.last_checkpoint} exists; pass --resume to continue it")
            self._restore(loop, folder, prepared, fold)
        loop.run()
        if self.device.type == "cuda":  # what a GPU run needs, for the next one's batch size
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.run_info["gpu_peak_memory_mb"] = round(max(peak, self.run_info.get("gpu_peak_memory_mb", 0.0)), 1)
        if not self.main:
            self.ctx.barrier()  # wait while rank 0 tests: the test evaluation runs once
            return {}
        metrics = self._evaluate(loop.net, prepared, fold, folder, loop.best)
        self.ctx.barrier()
        return metrics

    def _restore(self, loop: TrainLoop, folder: RunFolder, prepared: Prepared, fold: Fold) -> None:
        state = load_checkpoint(folder.last_checkpoint, self.device, needs=("model", "meta", "losses", "epoch", "best"))
        saved_digest = state["meta"].get("split_digest")  # absent in checkpoints of fermetric before it was kept
        if saved_digest is not None and saved_digest != self._split_digest(prepared, fold):
            raise FermetricError(
                f"--resume: the data or the split of fold {fold.index} changed since {folder.last_checkpoint} was written"
                " (images added, removed, skipped or re-labelled); continuing would test on images the checkpoint trained"
                " on. Use another --out."
            )
        loop.load_state_dict(state)
        self.log(f"resumed from {folder.last_checkpoint} at epoch {loop.start_epoch}")

    @staticmethod
    def _images(prepared: Prepared, index) -> Any:
        """A part of the crops: a tensor in memory, or a view of the on-disk store that reads batch by batch."""
        return prepared.images.subset(index) if isinstance(prepared.images, CropArray) else prepared.images[index]

    @staticmethod
    def _split_digest(prepared: Prepared, fold: Fold) -> str:
        """Which images (by key and label) a fold trains, selects and tests on: a resumed fold must see the same."""
        digest = hashlib.sha1()
        for part in (fold.train, fold.val, fold.test):
            for i in part:
                digest.update(f"{prepared.samples[i].key}\t{int(prepared.labels[i])}\n".encode())
            digest.update(b"|")
        return digest.hexdigest()

    def _title(self, prepared: Prepared) -> str:
        tag = "SYNTHETIC data - " if prepared.synthetic else ""
        return f"{tag}{self.recipe.get('name') or Path(self.recipe_path).stem}"

    def _meta(self, prepared: Prepared, fold: Fold, embedding_dim: int) -> dict[str, Any]:
        """What a checkpoint says about itself: enough to use the model without its run folder."""
        return {
            "fermetric": __version__,
            "classes": list(prepared.classes),
            "embedding_dim": embedding_dim,
            "backbone": recipe_mod.plain(self.recipe["backbone"]),
            "crop": recipe_mod.plain(self.recipe["crop"]),
            "model": recipe_mod.plain(self.recipe["model"]),
            "input_size": list(prepared.images.shape[-2:]),
            "in_chans": int(prepared.images.shape[1]),
            "normalization": self.recipe["model"]["normalization"],
            "fold": fold.index,
            "split_digest": self._split_digest(prepared, fold),
            "seed": self.seed,
            "synthetic_data": prepared.synthetic,
            "recipe_digest": self.digest,
            # The network this one started from, kept with the weights: run.json is rewritten on every resume,
            # and a report built from a fold must know its lineage after the run folder has moved on.
            "init_from": ({"sha256": self.init_source[2], "parts": self.init_source[3]}
                          if self.init_source is not None else None),
        }

    def _evaluate(self, model, prepared: Prepared, fold: Fold, folder: RunFolder, best: dict[str, Any]) -> dict[str, Any]:
        cfg_eval = self.recipe["eval"]
        selected = "last"
        if self.train_cfg["select"] == "best" and len(fold.val) and folder.best_checkpoint.exists():
            model.load_state_dict(load_checkpoint(
                folder.best_checkpoint, self.device,
                advice="Its best epoch cannot be tested: delete it and resume, and the fold is tested with its last epoch")["model"])
            selected = f"best (epoch {best['epoch'] + 1}, val accuracy {best['score']:.4f})"
        test_y = prepared.labels[fold.test].numpy()
        test_emb, test_logits = predict(model, self._images(prepared, fold.test), self.device, tta=cfg_eval["tta"])
        metrics = classification_metrics(test_y, test_logits.argmax(1), prepared.classes)
        embedding = distance_stats(test_emb, test_y)
        if cfg_eval["knn"]:
            train_emb, _ = predict(model, self._images(prepared, fold.train), self.device)
            embedding |= knn_metrics(test_emb, test_y, train_emb, prepared.labels[fold.train].numpy())
        metrics["embedding"] = embedding
        metrics |= {"fold": fold.index, "selected_checkpoint": selected, "tta": cfg_eval["tta"],
                    "n_train": len(fold.train), "n_val": len(fold.val), "synthetic_data": prepared.synthetic}
        title = f"{self._title(prepared)} fold {fold.index}: acc {metrics['accuracy']:.3f}"
        write_json(metrics["confusion_matrix"], folder.confusion_json)
        plot_confusion(metrics["confusion_matrix"]["matrix"], prepared.classes, folder.confusion_png, title)
        if cfg_eval["tsne"]:
            ratio = embedding["intra_inter_ratio"]
            plot_tsne(test_emb, test_y, prepared.classes, folder.tsne_png,
                      f"{title}, intra/inter distance {ratio:.3f}", int(cfg_eval["tsne_max_points"]), self.seed)
        write_json(metrics, folder.metrics_file)
        self.log(
            f"[bold]test[/] accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}"
            f" intra/inter {embedding['intra_inter_ratio']:.3f} ({len(fold.test)} images{', SYNTHETIC' if prepared.synthetic else ''})"
        )
        return metrics


def run(recipe: dict[str, Any], out: str | Path, resume: bool = False, fold: int | None = None,
        host: PluginHost | None = None, recipe_path: str = "", overrides: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate an already resolved (validated) recipe into ``out``."""
    return Runner(recipe, Path(out), host or get_host(), resume=resume, recipe_path=recipe_path,
                  overrides=overrides).run(only_fold=fold)


def run_recipe(recipe_path: str, out: str | None = None, overrides: list[str] | None = None, resume: bool = False,
               fold: int | None = None, host: PluginHost | None = None) -> tuple[dict[str, Any], Path]:
    """``fermetric run``: load, resolve and validate a recipe file, then :func:`run` it."""
    host = host or get_host()
    recipe = load_recipe(recipe_path, overrides, host)
    out_dir = Path(out) if out else Path("runs") / recipe_mod.recipe_stem(recipe_path)
    return run(recipe, out_dir, resume=resume, fold=fold, host=host, recipe_path=str(recipe_path),
               overrides=overrides), out_dir


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread, so a scheduler's kill ends the run
    like Ctrl-C: status interrupted, resumable, exit 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
