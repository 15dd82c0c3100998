"""Training-time augmentation on the device: random flips and small affine jitter of normalised batches."""

from __future__ import annotations

from typing import Any

import torch


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
