"""The optimisers and learning-rate schedules of the ``optim`` group, shared by every task."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch


def lr_factor(
    schedule: str, total: int, warmup: int = 0, power: float = 0.9, floor: float = 0.0
) -> Callable[[int], float]:
    """The multiplier of the base learning rate at step (or epoch) ``t`` of ``total``.

    - ``poly`` (nnU-Net, MedNeXt, TransUNet): ``(1 - t/total) ** power``;
    - ``cosine`` (ConvNeXt/DeiT-style classifier training): linear warm-up from ``1/warmup`` to
      1 over ``warmup`` steps, then half a cosine from 1 down to ``floor``;
    - ``none``: 1.
    """
    if schedule == "none":
        return lambda t: 1.0
    if schedule == "poly":
        return lambda t: max(0.0, 1.0 - t / total) ** power

    def cosine(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        progress = min(1.0, (t - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return cosine


def configure_optimizers(module: L.LightningModule, optim: Mapping[str, Any]) -> Any:
    """AdamW, Adam or SGD on ``module``'s parameters with the ``optim`` group's schedule."""
    if optim["name"] == "sgd":
        optimizer = torch.optim.SGD(
            module.parameters(),
            lr=optim["lr"],
            momentum=optim["momentum"],
            nesterov=optim["nesterov"],
            weight_decay=optim["weight_decay"],
        )
    elif optim["name"] == "adam":
        # L2 regularisation through the gradient, as torch.optim.Adam does (MT-UNet's recipe).
        optimizer = torch.optim.Adam(
            module.parameters(),
            lr=optim["lr"],
            weight_decay=optim["weight_decay"],
            eps=optim["eps"],
        )
    else:
        optimizer = torch.optim.AdamW(
            module.parameters(),
            lr=optim["lr"],
            weight_decay=optim["weight_decay"],
            eps=optim["eps"],
        )
    if optim["scheduler"] == "none":
        return optimizer
    trainer = module.trainer
    interval = optim["scheduler_interval"]
    total = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
    if not total or total < 0 or math.isinf(total):
        raise ValueError(
            f"the {optim['scheduler']} schedule needs a finite length: set trainer.max_epochs "
            "(or trainer.max_steps with optim.scheduler_interval=step)"
        )
    total = int(total)
    warmup = 0
    if optim["warmup_epochs"]:
        per_epoch = 1 if interval == "epoch" else total / max(1, trainer.max_epochs or 1)
        warmup = min(total, round(optim["warmup_epochs"] * per_epoch))
    factor = lr_factor(
        optim["scheduler"],
        total,
        warmup=warmup,
        power=optim["poly_power"],
        floor=optim["min_lr"] / optim["lr"] if optim["lr"] else 0.0,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
