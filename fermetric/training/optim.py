"""The optimizer step: parameter groups, the learning-rate schedule, AMP loss scaling and gradient clipping."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def make_optimizer(groups: list[dict[str, Any]], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """``train.optimizer`` (adamw | adam | sgd) over parameter groups; ``train.lr`` and ``train.weight_decay``
    are the defaults a group does not set itself."""
    lr, wd, name = float(cfg["lr"]), float(cfg["weight_decay"]), cfg["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def lr_factor(name: str, epoch: int, epochs: int, warmup: int) -> float:
    """The multiplier of the base learning rate at ``epoch`` (0-based): linear warm-up, then cosine, step
    (x0.1 after the first and the second third of the epochs after warm-up) or constant."""
    if warmup and epoch < warmup:
        return (epoch + 1) / warmup
    if name == "cosine":
        progress = (epoch - warmup) / max(1, epochs - warmup)
        return float(0.5 * (1 + np.cos(np.pi * progress)))
    if name == "step":
        third = max(1, -(-(epochs - warmup) // 3))
        return 0.1 ** min(2, (epoch - warmup) // third)
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch schedule (``train.scheduler``, ``train.warmup_epochs``); a group named ``backbone`` is held at
    lr 0 for the first ``train.freeze_backbone_epochs`` epochs (fine-tuning: the new head settles first)."""
    name, epochs, warmup = cfg["scheduler"], int(cfg["epochs"]), int(cfg["warmup_epochs"])
    frozen = int(cfg.get("freeze_backbone_epochs", 0))

    def factor(epoch: int) -> float:
        return lr_factor(name, epoch, epochs, warmup)

    def backbone_factor(epoch: int) -> float:
        return 0.0 if epoch < frozen else lr_factor(name, epoch, epochs, warmup)

    lambdas = [backbone_factor if g.get("name") == "backbone" else factor for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def model_groups(model: torch.nn.Module, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The network's parameter groups: one, or the backbone apart (``train.backbone_lr_mult``,
    ``train.freeze_backbone_epochs``) for fine-tuning."""
    lr = float(cfg["lr"])
    mult, frozen = float(cfg.get("backbone_lr_mult", 1.0)), int(cfg.get("freeze_backbone_epochs", 0))
    if mult == 1.0 and not frozen:
        return [{"params": list(model.parameters()), "lr": lr, "name": "model"}]
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": backbone, "lr": lr * mult, "name": "backbone"}, {"params": head, "lr": lr, "name": "head"}]


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype, or None for full precision: bf16 on GPUs that have it natively (Ampere and newer;
    no loss scaling needed), fp16 with a GradScaler on older ones. Never on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


class OptimizerStep:
    """``step(loss)``: backward (scaled under fp16), optional gradient clipping, optimizer and scaler step.
    ``end_epoch()`` advances the schedule. Checkpointed through ``state_dict``."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler, dtype: torch.dtype | None, grad_clip: float = 0.0,
                 clip_params=(), after_backward=None):
        self.optimizer = optimizer
        self.after_backward = after_backward  # e.g. averaging loss-owned parameters' gradients over processes
        self.clip_params = list(clip_params)  # the network's parameters; a loss's centres are not clipped
        self.scheduler = scheduler
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        self.grad_clip = float(grad_clip)

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.after_backward is not None:
            self.after_backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def end_epoch(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():  # a CPU or bf16 checkpoint has no scaler state
            self.scaler.load_state_dict(state["scaler"])
