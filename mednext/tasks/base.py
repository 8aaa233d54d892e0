"""What every task of the suite shares: the evaluation lifecycle of a LightningModule.

A task trains a registry network (``mednext.models``) and evaluates it on the validation and test
loaders of a DataModule. ``EvaluationTask`` holds everything around the numbers: the network built
from the ``model`` group, the optimiser from the ``optim`` group, the validation and test steps,
the epoch hooks (rows collected per rank, gathered, summarised, logged, written as CSV; the sanity
check discarded), figures saved into the run folder and logged to W&B, and the preprocessing
record kept in every checkpoint so that ``mednext predict`` needs nothing else. A subclass says
what one evaluation batch yields (``evaluate_batch``), how rows become summary metrics
(``summarise``), and how it is built from an experiment (``from_experiment``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import nn

from mednext.config import ConfigError
from mednext.files import atomic_write
from mednext.models import build_model
from mednext.models.runtime import compile_network, split_run_options, use_channels_last
from mednext.tasks.optim import configure_optimizers

#: Checkpoint entries written next to Lightning's own.
PREPROCESSING_KEY = "mednext_preprocessing"
TASK_KEY = "mednext_task"
STAGES = ("val", "test")


def build_network(model: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """The registry network of a ``model:`` group (``name``, ``variant``, options; ``None``
    values mean the preset's or constructor's default), in the layout ``model.channels_last``
    asks for (``mednext.models.runtime``). A constructor that refuses an option (an odd width, an
    unknown preset) is a ``ConfigError`` naming the model."""
    name = model["name"]
    try:
        arguments, options = split_run_options(model)
        arguments = {k: v for k, v in arguments.items() if v is not None and k != "name"}
        net = build_model(name, in_channels=in_channels, num_classes=num_classes, **arguments)
        return use_channels_last(net, name) if options["channels_last"] else net
    except ValueError as error:
        raise ConfigError(f"model {name}: {error}") from error


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
    """``rows`` as CSV under ``columns``, written atomically."""
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


class EvaluationTask(L.LightningModule):
    """A LightningModule that trains ``self.net`` and evaluates it per stage (``val``, ``test``).

    Args (every task's; a task may add its own):
        model: registry arguments (``name``, ``variant``, options); ``in_channels`` and
            ``num_classes`` come from the dataset.
        in_channels, num_classes, class_names: from the DataModule.
        optim, loss: the ``optim`` and ``loss`` configuration groups; ``loss.name`` must be one
            of the subclass's ``LOSSES``.
        log_images: save and log the figures of each evaluation.

    The constructor records every argument, a subclass's too, as hyperparameters (Lightning's
    ``save_hyperparameters``, which ``load_from_checkpoint`` reads back). After every evaluation
    ``last_evaluation`` is ``{"stage", "summary", "cases"}`` (read by the run's callbacks), the
    rows are in ``output_dir/<rows_file>`` when ``output_dir`` is set, and the summary metrics are
    logged as ``<stage>/<key>``.
    """

    #: The kind of task (a key of ``mednext.tasks.TASKS``), recorded in checkpoints.
    task_kind: ClassVar[str]
    #: The values of ``loss.name`` this task trains with.
    LOSSES: ClassVar[tuple[str, ...]]
    #: The column that identifies an evaluation row (a case, an image).
    ROW_KEY: ClassVar[str]

    def __init__(
        self,
        model: Mapping[str, Any],
        in_channels: int,
        num_classes: int,
        class_names: Sequence[str],
        optim: Mapping[str, Any],
        loss: Mapping[str, Any],
        log_images: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if loss.get("name", self.LOSSES[0]) not in self.LOSSES:
            raise ConfigError(
                f"loss.name={loss['name']!r}: a {self.task_kind} task trains with "
                f"{' or '.join(self.LOSSES)}"
            )
        self.net = build_network(model, in_channels, num_classes)
        self.class_names = list(class_names)
        self.build_task(loss)
        # Set by whoever runs the task (the CLI): where tables and figures go.
        self.output_dir: Path | None = None
        # What predict needs to reproduce the preprocessing; filled from the DataModule.
        self.preprocessing: dict[str, Any] = {}
        self._rows: list[dict[str, Any]] = []
        self.last_evaluation: dict[str, Any] | None = None

    @classmethod
    def from_experiment(cls, config: Mapping[str, Any], datamodule: Any) -> EvaluationTask:
        """The task of an experiment's resolved configuration on ``datamodule`` (a subclass with
        arguments of its own adds them to ``experiment_arguments``)."""
        return cls(**cls.experiment_arguments(config, datamodule))

    @staticmethod
    def experiment_arguments(config: Mapping[str, Any], datamodule: Any) -> dict[str, Any]:
        """The arguments every task takes, from the configuration and the DataModule."""
        return dict(
            model=config["model"],
            in_channels=datamodule.in_channels,
            num_classes=datamodule.num_classes,
            class_names=list(datamodule.class_names),
            optim=config["optim"],
            loss=config["loss"],
            log_images=config["logger"]["log_images"],
        )

    # --- what a subclass says --------------------------------------------------------------

    def build_task(self, loss: Mapping[str, Any]) -> None:
        """Build the task's own modules: its criterion from the ``loss`` group and any metric
        states (called by the constructor once ``self.net`` exists)."""
        raise NotImplementedError

    def evaluate_batch(self, batch: Mapping[str, Any], stage: str, batch_idx: int) -> None:
        """Evaluate one batch: append its rows to ``self._rows`` (and update any metric
        states)."""
        raise NotImplementedError

    def summarise(self, stage: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The summary metrics of a stage from every rank's rows."""
        raise NotImplementedError

    def start_evaluation(self, stage: str) -> None:
        """Reset per-stage state before an evaluation (rows are reset by the base)."""

    def rows_file(self, stage: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        """The CSV of the rows, relative to ``output_dir``, and its columns."""
        raise NotImplementedError

    def prepare_network(self, device: torch.device) -> str | None:
        """Compile ``self.net`` for ``device`` as ``model.compile`` says (before the first step);
        the notice to show when a requested compile falls back to eager."""
        _, options = split_run_options(self.hparams.model)
        return compile_network(self.net, options["compile"], device)

    # --- training --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.hparams.optim)

    # --- the evaluation lifecycle ------------------------------------------------------------

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluate_batch(batch, "val", batch_idx)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.evaluate_batch(batch, "test", batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._rows = []
        self.start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._rows = []
        self.start_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        # The sanity check only proves that validation runs; its numbers are discarded (the next
        # validation starts afresh).
        if not self.trainer.sanity_checking:
            self.finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.finish_evaluation("test")

    def finish_evaluation(self, stage: str) -> dict[str, float]:
        """Gather the rows of every rank, summarise, log, write the rows' CSV (rank 0)."""
        rows = gather_rows(self._rows, self.ROW_KEY)
        summary = self.summarise(stage, rows)
        for key, value in summary.items():
            # Identical on every rank (gathered or synchronised): the reduction changes nothing.
            self.log(f"{stage}/{key}", value, sync_dist=True)
        if self.output_dir is not None and self.global_rank == 0:
            name, columns = self.rows_file(stage, rows)
            write_rows_csv(rows, self.output_dir / name, columns)
        self.last_evaluation = {"stage": stage, "summary": summary, "cases": rows}
        return summary

    def log_figure(
        self, picture: np.ndarray, file_name: str, key: str, caption: str | None = None
    ) -> None:
        """Save an RGB picture as ``output_dir/predictions/<file_name>`` (rank 0) and log it to
        every logger that takes images as ``key``."""
        from mednext.plots import save_png

        if self.output_dir is not None and self.global_rank == 0:
            save_png(picture, self.output_dir / "predictions" / file_name)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                captions = {"caption": [caption]} if caption is not None else {}
                logger.log_image(key=key, images=[picture], **captions)

    # --- the preprocessing record ------------------------------------------------------------

    def _capture_preprocessing(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:
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
