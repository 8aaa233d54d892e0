"""Image classification as a LightningModule.

What is trained is a registry classifier (``mednext.models``, e.g. ``mednext_lite``); how:
cross-entropy with label smoothing, AdamW with linear warm-up and cosine decay per step (the
``optim`` group), precision and clipping from the Trainer. Validation and test compute the metrics
of DESIGN 7 with torchmetrics, whose states are synchronised across DDP ranks at ``compute``:
accuracy, balanced accuracy (= macro recall), macro precision/recall/F1, macro specificity and
macro one-vs-rest AUROC, plus the confusion matrix and ROC curves, saved as PNG into the run
directory and logged to W&B, and one row per image (true class, predicted class, probabilities)
in ``predictions/<stage>_predictions.csv``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassROC,
    MulticlassSpecificity,
)

from mednext.tasks.common import (
    PreprocessingRecord,
    build_network,
    configure_optimizers,
    gather_rows,
    write_rows_csv,
)

log = logging.getLogger(__name__)

#: The classification keys of ``results.json`` (DESIGN 8), in the order they are reported.
METRICS = (
    "acc",
    "balanced_acc",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "specificity",
    "auroc",
)


def classification_metrics(num_classes: int) -> MetricCollection:
    """The summary metrics of DESIGN 7, keyed as in ``results.json``. Multiclass throughout (a
    binary problem is two classes): macro averages weigh both classes equally, and the macro
    one-vs-rest AUROC of two classes is the binary AUROC."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
            "precision_macro": MulticlassPrecision(num_classes, average="macro"),
            "recall_macro": MulticlassRecall(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "specificity": MulticlassSpecificity(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        }
    )


class ClassificationTask(PreprocessingRecord, L.LightningModule):
    """Train and evaluate a registry classifier.

    Args:
        model: registry arguments (``name``, ``variant``, options); ``in_channels`` and
            ``num_classes`` come from the dataset.
        in_channels, num_classes, class_names: from the DataModule.
        image_size: the square input size (complexity figures).
        optim, loss: the ``optim`` and ``loss`` configuration groups.
        log_images: save and log the confusion matrix and ROC curves of each evaluation.
    """

    task_kind = "classification"

    def __init__(
        self,
        model: Mapping[str, Any],
        in_channels: int,
        num_classes: int,
        class_names: Sequence[str],
        image_size: int,
        optim: Mapping[str, Any],
        loss: Mapping[str, Any],
        log_images: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_network(model, in_channels, num_classes)
        self.class_names = list(class_names)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=loss.get("label_smoothing", 0.0))
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.metrics = nn.ModuleDict(
            {stage: classification_metrics(num_classes) for stage in ("val", "test")}
        )
        self.confusion = nn.ModuleDict(
            {stage: MulticlassConfusionMatrix(num_classes) for stage in ("val", "test")}
        )
        self.roc = nn.ModuleDict({stage: MulticlassROC(num_classes) for stage in ("val", "test")})
        # Set by whoever runs the task (the CLI): where predictions and figures go.
        self.output_dir: Path | None = None
        self.preprocessing: dict[str, Any] = {}
        self._rows: list[dict[str, Any]] = []
        # The latest evaluation: {"stage", "summary", "cases"}; read by the run's callbacks.
        self.last_evaluation: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        loss = self.criterion(logits, batch["label"])
        self.train_accuracy(logits.detach(), batch["label"])
        size = len(batch["image"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.hparams.optim)

    # --- evaluation ------------------------------------------------------------------------

    def _evaluate_batch(self, batch: Mapping[str, Any], stage: str) -> None:
        probabilities = torch.softmax(self.net(batch["image"]).float(), dim=1)
        label = batch["label"]
        self.metrics[stage].update(probabilities, label)
        self.confusion[stage].update(probabilities, label)
        self.roc[stage].update(probabilities, label)
        predicted = probabilities.argmax(dim=1)
        paths = batch.get("path") or [f"{stage}-{len(self._rows) + i}" for i in range(len(label))]
        for path, truth, guess, row in zip(
            paths, label.tolist(), predicted.tolist(), probabilities.tolist(), strict=True
        ):
            self._rows.append(
                {
                    "path": path,
                    "label": self.class_names[truth],
                    "prediction": self.class_names[guess],
                    **{f"p_{name}": p for name, p in zip(self.class_names, row, strict=True)},
                }
            )

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate_batch(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate_batch(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def _finish_evaluation(self, stage: str) -> dict[str, float]:
        # compute() gathers every rank's states: the same numbers on every rank.
        counts = self.confusion[stage].compute().sum(dim=1)
        missing = [name for name, n in zip(self.class_names, counts.tolist(), strict=True) if not n]
        with warnings.catch_warnings():
            if missing:
                # torchmetrics warns for every class without samples and scores its AUROC 0.
                warnings.filterwarnings("ignore", message="No positive samples in targets")
                log.warning(
                    "%s: no %s images in this split: the recall and AUROC of that class are "
                    "undefined, and the macro averages are not comparable with other splits",
                    stage,
                    ", ".join(missing),
                )
            summary = {k: float(v) for k, v in self.metrics[stage].compute().items()}
            if self.hparams.log_images:
                self._log_figures(stage)
        for key in METRICS:
            # Identical on every rank (synchronised at compute): the reduction changes nothing.
            self.log(f"{stage}/{key}", summary[key], sync_dist=True)
        rows = gather_rows(self._rows, "path")
        if self.output_dir is not None and self.global_rank == 0:
            columns = ["path", "label", "prediction", *(f"p_{n}" for n in self.class_names)]
            write_rows_csv(
                rows, self.output_dir / "predictions" / f"{stage}_predictions.csv", columns
            )
        for metric in (self.metrics[stage], self.confusion[stage], self.roc[stage]):
            metric.reset()
        self.last_evaluation = {"stage": stage, "summary": summary, "cases": rows}
        return summary

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._rows = []
            for metric in (self.metrics["val"], self.confusion["val"], self.roc["val"]):
                metric.reset()
            return
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _log_figures(self, stage: str) -> None:
        from mednext.plots import figure_to_array, save_png

        with warnings.catch_warnings():
            # torchmetrics hands tensors to matplotlib; numpy 2 warns about their __array__.
            warnings.filterwarnings(
                "ignore", message="__array__ implementation", category=DeprecationWarning
            )
            figure, _ = self.confusion[stage].plot(labels=self.class_names)
            figure.axes[0].set_title(f"{stage} confusion matrix (epoch {self.current_epoch})")
            confusion = figure_to_array(figure)
            figure, axis = self.roc[stage].plot(score=True)
            handles, labels = axis.get_legend_handles_labels()
            # The legend says "<class index> AUC=..."; name the classes instead.
            axis.legend(
                handles,
                [
                    f"{self.class_names[int(lab.split()[0])]} {lab.split(maxsplit=1)[1]}"
                    for lab in labels
                ],
                loc="lower right",
            )
            axis.set_title(f"{stage} ROC, one vs rest (epoch {self.current_epoch})")
            roc = figure_to_array(figure)
        pictures = {"confusion_matrix": confusion, "roc": roc}
        if self.output_dir is not None and self.global_rank == 0:
            for name, picture in pictures.items():
                save_png(picture, self.output_dir / "predictions" / f"{stage}_{name}.png")
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                for name, picture in pictures.items():
                    logger.log_image(key=f"{stage}/{name}", images=[picture])
