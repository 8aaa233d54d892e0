"""What every task of the suite shares: the network from the registry, optimiser and schedule
from the ``optim`` group, the preprocessing record kept in checkpoints, and per-case rows gathered
across ranks and written as CSV."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from mednext.models import build_model

#: Checkpoint entries written next to Lightning's own.
PREPROCESSING_KEY = "mednext_preprocessing"
TASK_KEY = "mednext_task"


def build_network(model: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """The registry network of a ``model:`` group (``name``, ``variant``, options; ``None``
    values mean the preset's or constructor's default)."""
    arguments = {k: v for k, v in model.items() if v is not None}
    name = arguments.pop("name")
    return build_model(name, in_channels=in_channels, num_classes=num_classes, **arguments)


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


def gather_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Every rank's rows on every rank, one per ``row[key]`` (a DistributedSampler may repeat
    items to even out the ranks), sorted by ``key``; the rows themselves on a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return sorted(rows, key=lambda row: row[key])
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, rows)
    unique = {row[key]: row for part in gathered for row in part}
    return [unique[k] for k in sorted(unique)]


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """``rows`` as CSV under ``columns``, written atomically (temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


class PreprocessingRecord:
    """Mixin for LightningModules: keeps the DataModule's ``preprocessing`` (what inference needs
    to reproduce the input pipeline) and the task kind in every checkpoint, so that
    ``mednext predict`` needs nothing but the checkpoint."""

    task_kind: str
    preprocessing: dict[str, Any]

    def _capture_preprocessing(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "preprocessing"):
            self.preprocessing = dict(datamodule.preprocessing)

    def on_fit_start(self) -> None:
        self._capture_preprocessing()

    def on_test_start(self) -> None:
        self._capture_preprocessing()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[PREPROCESSING_KEY] = self.preprocessing
        checkpoint[TASK_KEY] = self.task_kind

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preprocessing = dict(checkpoint.get(PREPROCESSING_KEY, {}))
