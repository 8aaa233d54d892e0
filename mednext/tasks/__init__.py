"""The tasks of the suite by kind, and the one table of what callers need to know about each kind.

A DataModule declares the kind of its batches (``task``: ``segmentation`` or ``classification``);
``TASKS[kind].load()`` imports the LightningModule that trains them (a subclass of
``mednext.tasks.base.EvaluationTask``). The headline metrics of each kind (what a finished run
prints, what selects ``best.ckpt``, what ranks the leaderboard, what a W&B sweep optimises) are
declared here once. Nothing here imports torch: the leaderboard and the sweep runner read the
table without loading a network.

A new kind of task is a module with an ``EvaluationTask`` subclass and one entry in ``TASKS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskKind:
    """One kind of task.

    Attributes:
        name: the kind, as DataModules declare it.
        module, class_name: where its LightningModule lives (imported on ``load``).
        headline: ``(results.json key, printed name)`` of the metrics a run reports first; the
            first one selects ``best.ckpt`` by validation and ranks the leaderboard.
    """

    name: str
    module: str
    class_name: str
    headline: tuple[tuple[str, str], ...]

    @property
    def monitor(self) -> str:
        """The validation metric that picks ``best.ckpt`` unless ``eval.monitor`` names another."""
        return self.headline[0][0]

    def load(self) -> type:
        """The LightningModule class of this kind."""
        return getattr(importlib.import_module(self.module), self.class_name)


TASKS: dict[str, TaskKind] = {
    "segmentation": TaskKind(
        name="segmentation",
        module="mednext.tasks.segmentation",
        class_name="SegmentationTask",
        headline=(("dice_mean", "mean Dice"), ("hd95_mean", "mean HD95")),
    ),
    "classification": TaskKind(
        name="classification",
        module="mednext.tasks.classification",
        class_name="ClassificationTask",
        headline=(
            ("acc", "accuracy"),
            ("balanced_acc", "balanced accuracy"),
            ("f1_macro", "macro F1"),
            ("auroc", "macro AUROC"),
        ),
    ),
}

#: Per kind, the keys of its headline metrics, in order.
HEADLINE: dict[str, tuple[str, ...]] = {
    kind: tuple(key for key, _ in spec.headline) for kind, spec in TASKS.items()
}
#: Per kind, the validation metric that picks ``best.ckpt`` by default.
MONITOR: dict[str, str] = {kind: spec.monitor for kind, spec in TASKS.items()}


def task_kind(name: str) -> TaskKind:
    """The kind called ``name``; ``KeyError`` listing the known kinds."""
    if name not in TASKS:
        raise KeyError(f"unknown task kind {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def minimised(metric: str) -> bool:
    """Whether lower values of ``metric`` (a results.json key) are better: the Hausdorff
    distances; every other metric of the suite is better when higher."""
    return metric.startswith("hd95")


def headline_lines(summary: Mapping[str, Any], stage: str = "test") -> list[str]:
    """The lines a finished run or test prints: ``test mean Dice: 0.8540`` and the like."""
    return [
        f"{stage} {label}: {summary[key]:.4f}"
        for spec in TASKS.values()
        for key, label in spec.headline
        if summary.get(key) is not None
    ]
