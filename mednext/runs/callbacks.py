"""The Lightning callbacks and logger that keep a run folder true while it trains: its status and
progress in ``results.json``, its split, its checkpoints and its ``metrics.csv``."""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mednext.runs.layout import LAST, SPLIT, RunRecorder
from mednext.tasks import minimised


class RunStatusCallback(Callback):
    """Records progress in ``results.json``; on Ctrl-C or a crash saves ``last.ckpt`` and marks
    the run ``interrupted`` or ``failed``."""

    def __init__(self, recorder: RunRecorder, checkpoint_dir: Path) -> None:
        self.recorder = recorder
        self.checkpoint_dir = checkpoint_dir
        self._train_start: float | None = None
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = time.monotonic()
        self._samples = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        image = batch["image"] if isinstance(batch, Mapping) else batch[0]
        self._samples += len(image) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.monotonic() - (self._train_start or time.monotonic())
        throughput = round(self._samples / elapsed, 3) if elapsed > 0 else None
        self.recorder.update(epochs=trainer.current_epoch + 1, throughput=throughput)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluation = pl_module.last_evaluation
        if not trainer.sanity_checking and evaluation and evaluation["stage"] == "val":
            self.recorder.set_metrics("val", evaluation["summary"])

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt)
        if trainer.state.fn == "fit" and trainer.global_step > 0:
            # Lightning writes through an fsspec transaction (temporary file, then a move), so a
            # second Ctrl-C during this save cannot leave a truncated last.ckpt behind.
            trainer.save_checkpoint(self.checkpoint_dir / LAST)
        self.recorder.update(
            status="interrupted" if interrupted else "failed",
            error=None if interrupted else f"{type(exception).__name__}: {exception}",
        )


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` (and warns about the non-empty
    run directory); a resumed run must append to it instead, under the header it already has."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in the run directory, kept across resumed sessions."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=run_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class SplitWriter(Callback):
    """Writes the DataModule's split into the run directory once it exists (after setup)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and trainer.datamodule is not None:
            trainer.datamodule.write_split(self.run_dir / SPLIT)


def checkpointing(monitor: str | None, checkpoint_dir: Path) -> ModelCheckpoint:
    """``last.ckpt`` always; with a ``monitor`` (a validation metric without ``val/``) also
    ``best.ckpt`` by it, HD95 minimised and everything else maximised."""
    options: dict[str, Any] = dict(
        dirpath=checkpoint_dir,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    if monitor is None:
        return ModelCheckpoint(**options, save_top_k=0)
    return ModelCheckpoint(
        **options,
        filename="best",
        monitor=f"val/{monitor}",
        mode="min" if minimised(monitor) else "max",
    )
