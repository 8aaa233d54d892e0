"""Ensembles of trained runs for ``mednext predict`` and ``mednext test``: several run folders or
checkpoints (the folds of a cross-validation, or other networks of the same dataset) whose class
probabilities are averaged before the argmax (``mednext.models.ensemble``).

The members must agree on what they predict and how their input is prepared: the same kind of
task, the same classes and the same preprocessing record (target spacing, intensity
normalisation, ...), so that one preprocessed input serves all of them. Sliding-window inference
uses the first member's window and ``eval`` settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mednext.runs.layout import CHECKPOINTS, best_checkpoint


def is_model_reference(path: Path) -> bool:
    """Whether ``path`` names a trained model: a ``.ckpt`` file or a run folder (one with a
    ``checkpoints/`` folder)."""
    if path.is_file():
        return path.suffix == ".ckpt"
    return path.is_dir() and (path / CHECKPOINTS).is_dir()


def split_models_and_inputs(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """The leading model references of ``paths`` and the inputs after them; a ``ValueError`` when
    no model or no input is given."""
    models: list[Path] = []
    for path in paths:
        if models and not is_model_reference(path):
            break
        if not is_model_reference(path):
            if path.suffix == ".ckpt":
                raise FileNotFoundError(f"checkpoint not found: {path}")
            raise ValueError(
                f"{path}: not a checkpoint (.ckpt) or a run folder with {CHECKPOINTS}/; name the "
                "model(s) first, then the inputs"
            )
        models.append(path)
    inputs = list(paths[len(models) :])
    if not inputs:
        raise ValueError("no input given after the model(s)")
    return models, inputs


def member_checkpoint(reference: Path) -> tuple[Path, str | None]:
    """The checkpoint of a model reference and, for a run folder, the line saying which of its
    checkpoints is used (``best.ckpt``, else ``last.ckpt``)."""
    if reference.is_file():
        return reference, None
    checkpoint = best_checkpoint(reference)
    if checkpoint is None:
        raise FileNotFoundError(f"{reference}: no {CHECKPOINTS}/best.ckpt or last.ckpt")
    return checkpoint, f"{reference}: using {checkpoint.relative_to(reference)}"


def _class_names(task: Any) -> list[str]:
    hparams = task.hparams
    if "class_names" in hparams:
        return list(hparams["class_names"])
    return list(task.preprocessing.get("class_names", []))


def check_members(tasks: Sequence[Any], names: Sequence[Path]) -> None:
    """One ``ValueError`` naming the first member that predicts other classes or prepares its
    input differently from the first one."""
    first = tasks[0]
    reference = json.dumps(first.preprocessing, sort_keys=True, default=str)
    for task, name in zip(tasks[1:], names[1:], strict=True):
        if type(task) is not type(first):
            kinds = type(task).__name__, type(first).__name__
            raise ValueError(f"{name}: a {kinds[0]}, {names[0]} a {kinds[1]}")
        if _class_names(task) != _class_names(first):
            raise ValueError(
                f"{name}: classes {_class_names(task)} differ from {names[0]}'s "
                f"{_class_names(first)}; an ensemble averages the same classes"
            )
        if json.dumps(task.preprocessing, sort_keys=True, default=str) != reference:
            raise ValueError(
                f"{name}: its preprocessing {task.preprocessing} differs from {names[0]}'s "
                f"{first.preprocessing}; ensemble members must share spacing and normalisation"
            )


def combine(tasks: Sequence[Any], names: Sequence[Path]) -> Any:
    """The first task with its network replaced by the ensemble of every task's network (each
    checked by ``check_members``); a single task is returned as it is."""
    from mednext.models.ensemble import EnsembleNetwork

    if len(tasks) == 1:
        return tasks[0]
    check_members(tasks, names)
    first = tasks[0]
    first.net = EnsembleNetwork([task.net for task in tasks]).eval()
    return first
