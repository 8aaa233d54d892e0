"""Image classification as a LightningModule.

What is trained is a registry classifier (``mednext.models``, e.g. ``mednext_lite``); how:
cross-entropy with label smoothing, AdamW with linear warm-up and cosine decay per step (the
``optim`` group), precision and clipping from the Trainer. Validation and test compute the metrics
of docs/evaluation.md with torchmetrics, whose states are synchronised across DDP ranks at
``compute``: accuracy, balanced accuracy (= macro recall), macro precision/recall/F1, macro
specificity and macro one-vs-rest AUROC, plus the confusion matrix and ROC curves, saved as PNG
into the run directory and logged to W&B, and one row per image (true class, predicted class,
probabilities) in ``predictions/<stage>_predictions.csv``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

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

from mednext.tasks.base import STAGES, EvaluationTask

log = logging.getLogger(__name__)

#: The classification keys of ``results.json`` (docs/architecture.md), in the order they are
#: reported.
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
    """The summary metrics of docs/evaluation.md, keyed as in ``results.json``. Multiclass
    throughout (a binary problem is two classes): macro averages weigh both classes equally, and
    the macro one-vs-rest AUROC of two classes is the binary AUROC."""
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


class ClassificationTask(EvaluationTask):
    """Train and evaluate a registry classifier (arguments: ``EvaluationTask``'s); with
    ``log_images`` the confusion matrix and ROC curves of each evaluation are saved and logged."""

    task_kind = "classification"
    LOSSES = ("ce",)
    ROW_KEY = "path"

    def build_task(self, loss: Mapping[str, Any]) -> None:
        """Cross-entropy with label smoothing, and torchmetrics states per stage."""
        num_classes = self.hparams.num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=loss.get("label_smoothing", 0.0))
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.metrics = nn.ModuleDict(
            {stage: classification_metrics(num_classes) for stage in STAGES}
        )
        self.confusion = nn.ModuleDict(
            {stage: MulticlassConfusionMatrix(num_classes) for stage in STAGES}
        )
        self.roc = nn.ModuleDict({stage: MulticlassROC(num_classes) for stage in STAGES})

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        loss = self.criterion(logits, batch["label"])
        self.train_accuracy(logits.detach(), batch["label"])
        size = len(batch["image"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True, batch_size=size)
        return loss

    # --- evaluation ------------------------------------------------------------------------

    def _stage_metrics(self, stage: str) -> tuple[Any, ...]:
        return self.metrics[stage], self.confusion[stage], self.roc[stage]

    def start_evaluation(self, stage: str) -> None:
        for metric in self._stage_metrics(stage):
            metric.reset()

    def evaluate_batch(self, batch: Mapping[str, Any], stage: str, batch_idx: int) -> None:
        """A batch of images: the metric states, and one row per image (true and predicted
        class, probabilities)."""
        probabilities = torch.softmax(self.net(batch["image"]).float(), dim=1)
        label = batch["label"]
        for metric in self._stage_metrics(stage):
            metric.update(probabilities, label)
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

    def summarise(self, stage: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The torchmetrics summary (synchronised across ranks at ``compute``), and the confusion
        matrix and ROC figures."""
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
        return {key: summary[key] for key in METRICS}

    def rows_file(self, stage: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        columns = ["path", "label", "prediction", *(f"p_{n}" for n in self.class_names)]
        return f"predictions/{stage}_predictions.csv", columns

    def _log_figures(self, stage: str) -> None:
        from mednext.plots import figure_to_array

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
        for name, picture in {"confusion_matrix": confusion, "roc": roc}.items():
            self.log_figure(picture, f"{stage}_{name}.png", f"{stage}/{name}")
