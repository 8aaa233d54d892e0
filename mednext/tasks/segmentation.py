"""Segmentation as a LightningModule: one module for 2D and 3D networks.

What is trained is the registry network (``mednext.models``); how: MONAI Dice + CE with
deep-supervision weights and nearest-downsampled targets, AdamW or SGD with a poly schedule
(mixed precision and gradient clipping come from the Trainer), and sliding-window validation and
test over whole cases (MONAI, Gaussian blending, optional mirror TTA) with per-class, per-case DSC
and HD95 in mm (MONAI metrics).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from torch import nn

from datamodules.preprocessing import IMAGE_ZOOM_ORDER, zoom_to
from mednext.tasks.base import EvaluationTask
from mednext.tasks.evaluation import transunet_case_metrics, volume_case_metrics

# MedNeXt's deep-supervision weights (docs/models.md, official training recipe): 1/2**i for
# the five outputs, normalised.
_DS_LEVELS = 5


def default_ds_weights(levels: int = _DS_LEVELS) -> list[float]:
    raw = [0.5**i for i in range(levels)]
    return [w / sum(raw) for w in raw]


class DeepSupervisionLoss(nn.Module):
    """``Σ_i w_i · loss(output_i, target resized to output_i by nearest neighbour)``.

    ``outputs`` is one logits tensor or the list ``[full, 1/2, ...]``; ``target`` holds integer
    labels ``(B, 1, *spatial)``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(
        self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        if len(outputs) > len(self.weights):
            raise ValueError(
                f"{len(outputs)} deep-supervision outputs but {len(self.weights)} weights"
            )
        total = outputs[0].new_zeros(())
        for weight, output in zip(self.weights, outputs, strict=False):
            if output.shape[2:] != target.shape[2:]:
                resized = F.interpolate(target.float(), size=output.shape[2:], mode="nearest")
                total = total + weight * self.loss(output, resized.long())
            else:
                total = total + weight * self.loss(output, target)
        return total


def mirror_flips(spatial_dims: int, mirror: bool) -> list[tuple[int, ...]]:
    """The identity, then with ``mirror`` every combination of flipped spatial axes."""
    axes = list(range(2, 2 + spatial_dims))
    combinations = [c for r in range(1, spatial_dims + 1) for c in itertools.combinations(axes, r)]
    return [(), *(combinations if mirror else [])]


def _flipped(x: torch.Tensor, flip: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(x, flip) if flip else x


def mirrored_probabilities(
    predictor: nn.Module,
    x: torch.Tensor,
    mirror: bool,
    spatial_dims: int,
    flips_per_forward: int = 1,
) -> torch.Tensor:
    """Softmax probabilities of ``predictor(x)``, averaged over every combination of spatial
    flips when ``mirror`` (nnU-Net's test-time mirroring: 8 passes in 3D, 4 in 2D).
    ``flips_per_forward`` flipped copies of ``x`` go through ``predictor`` as one batch: the same
    numbers in fewer, larger forward passes."""
    flips = mirror_flips(spatial_dims, mirror)
    total = None
    for first in range(0, len(flips), max(1, flips_per_forward)):
        chunk = flips[first : first + max(1, flips_per_forward)]
        batch = torch.cat([_flipped(x, flip) for flip in chunk]) if len(chunk) > 1 else x
        logits = predictor(batch if len(chunk) > 1 else _flipped(x, chunk[0]))
        probabilities = torch.softmax(logits.float(), dim=1)
        for part, flip in zip(probabilities.split(len(x)), chunk, strict=True):
            part = _flipped(part, flip)
            total = part if total is None else total + part
    return total / len(flips)


def flips_per_forward(setting: int | None, spatial_dims: int, device: torch.device) -> int:
    """``eval.mirror_batch``, or by default every flip of a window in one forward pass on CUDA
    and one flip at a time on the CPU, where one batch of 8 windows takes longer than 8 single
    ones (docs/benchmarks.md)."""
    if setting is not None:
        return int(setting)
    return len(mirror_flips(spatial_dims, True)) if device.type == "cuda" else 1


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class SegmentationTask(EvaluationTask):
    """Train and evaluate a registry segmentation network.

    Args (besides ``EvaluationTask``'s; ``class_names`` background first):
        patch_size: training patch and sliding-window size.
        spacing: voxel size in mm of the model grid (HD95 in mm).
        evaluation: the ``eval`` configuration group.
        protocol: ``volume`` (sliding window over whole cases, DSC and HD95 in mm;
            docs/evaluation.md) or ``transunet`` (2D networks on ``(D, H, W)`` volumes slice by
            slice: each slice zoomed to ``patch_size`` with order 3, the prediction back with
            order 0; TransUNet's per-case DSC and HD95 in voxels, ``transunet_case_metrics``).

    With ``log_images`` the overlay of the first case of each evaluation is saved and logged.
    """

    task_kind = "segmentation"
    LOSSES = ("dice_ce",)
    ROW_KEY = "case_id"

    def __init__(
        self,
        model: Mapping[str, Any],
        in_channels: int,
        num_classes: int,
        patch_size: Sequence[int],
        spacing: Sequence[float],
        class_names: Sequence[str],
        optim: Mapping[str, Any],
        loss: Mapping[str, Any],
        evaluation: Mapping[str, Any],
        log_images: bool = True,
        protocol: str = "volume",
    ) -> None:
        super().__init__(model, in_channels, num_classes, class_names, optim, loss, log_images)
        self.spatial_dims = len(patch_size)
        # Mirrored copies per forward pass at evaluation, chosen at the first prediction.
        self._flips_per_forward: int | None = None

    def build_task(self, loss: Mapping[str, Any]) -> None:
        """MONAI's Dice + CE on every deep-supervision output, weighted."""
        weights = loss.get("ds_weights") or default_ds_weights()
        self.criterion = DeepSupervisionLoss(
            DiceCELoss(
                include_background=loss.get("include_background", False),
                to_onehot_y=True,
                softmax=True,
                batch=loss.get("batch_dice", True),
                lambda_dice=loss.get("dice_weight", 1.0),
                lambda_ce=loss.get("ce_weight", 1.0),
            ),
            weights,
        )

    @classmethod
    def from_experiment(cls, config: Mapping[str, Any], datamodule: Any) -> SegmentationTask:
        return cls(
            **cls.experiment_arguments(config, datamodule),
            patch_size=list(datamodule.input_size),
            spacing=list(datamodule.spacing),
            evaluation=config["eval"],
            protocol=datamodule.evaluation,
        )

    # --- training --------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self.net(batch["image"])
        loss = self.criterion(outputs, batch["label"])
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["image"]),
        )
        return loss

    # --- evaluation ------------------------------------------------------------------------

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, K, *spatial)`` of whole cases by sliding-window inference:
        MONAI's windows with Gaussian blending, each window's mirrored copies batched
        (``eval.mirror_batch``), under fp16 autocast on CUDA (``eval.autocast``)."""
        evaluation = self.hparams.evaluation
        mirror = evaluation.get("mirror_tta", False)
        if self._flips_per_forward is None:
            setting = evaluation.get("mirror_batch")
            self._flips_per_forward = flips_per_forward(setting, self.spatial_dims, image.device)

        def predictor(x: torch.Tensor) -> torch.Tensor:
            while True:
                try:
                    return mirrored_probabilities(
                        self.net, x, mirror, self.spatial_dims, self._flips_per_forward
                    )
                except torch.OutOfMemoryError:
                    # Where memory does not allow every flip at once: half as many, for the
                    # rest of this task's predictions too.
                    if self._flips_per_forward <= 1:
                        raise
                    self._flips_per_forward //= 2
                    if x.device.type == "cuda":
                        torch.cuda.empty_cache()

        autocast = image.device.type == "cuda" and evaluation.get("autocast", True)
        with torch.autocast("cuda", torch.float16, enabled=autocast):
            probabilities = sliding_window_inference(
                image,
                roi_size=tuple(self.hparams.patch_size),
                sw_batch_size=evaluation["sw_batch_size"],
                predictor=predictor,
                overlap=evaluation["sw_overlap"],
                mode="gaussian",
            )
        return probabilities.float()

    @torch.no_grad()
    def predict_slices(self, volume: torch.Tensor) -> torch.Tensor:
        """TransUNet's ``test_single_volume``: integer labels ``(D, H, W)`` of a ``(D, H, W)``
        volume, each slice zoomed to ``patch_size`` (cubic spline, scipy ``zoom`` order 3),
        segmented, and its labels zoomed back to ``(H, W)`` (order 0). Slices go through the
        network ``eval.sw_batch_size`` at a time."""
        image = volume.float().cpu().numpy()
        size = tuple(self.hparams.patch_size)
        labels = np.zeros(image.shape, dtype=np.int64)
        chunk = max(1, int(self.hparams.evaluation["sw_batch_size"]))
        for start in range(0, len(image), chunk):
            slices = [zoom_to(s, size, IMAGE_ZOOM_ORDER) for s in image[start : start + chunk]]
            x = torch.from_numpy(np.stack(slices)[:, None]).to(self.device)
            predicted = self.net(x).argmax(dim=1).cpu().numpy()
            for offset, labels_2d in enumerate(predicted):
                labels[start + offset] = zoom_to(labels_2d, image.shape[1:], order=0)
        return torch.from_numpy(labels)

    def evaluate_batch(self, batch: Mapping[str, Any], stage: str, batch_idx: int) -> None:
        """One whole case (batch size 1): per foreground class its DSC and HD95, as a row."""
        if self.hparams.protocol == "transunet":
            # (1, D, H, W) volumes; the overlay wants the slice axis last.
            label = batch["label"][0]
            prediction = self.predict_slices(batch["image"][0])
            pairs = transunet_case_metrics(prediction, label, self.hparams.num_classes)
            dice, hd95 = [d for d, _ in pairs], [h for _, h in pairs]
            image, label, prediction = (
                v.movedim(0, -1) for v in (batch["image"][0], label, prediction)
            )
        else:
            image, label = batch["image"][0, 0], batch["label"][0, 0]
            prediction = self.predict_probabilities(batch["image"]).argmax(dim=1)[0]
            dice, hd95 = volume_case_metrics(
                prediction,
                label,
                self.hparams.num_classes,
                self.hparams.spacing,
                hd95=self.hparams.evaluation["hd95"],
            )
        case_ids = batch.get("case_id") or [f"case{batch_idx}"]
        row: dict[str, Any] = {"case_id": case_ids[0]}
        for name, d, h in zip(self.class_names[1:], dice, hd95, strict=True):
            row[f"dice/{name}"] = d
            row[f"hd95/{name}"] = h
        self._rows.append(row)
        if batch_idx == 0 and self.hparams.log_images:
            self._log_overlay(image, label, prediction, stage, case_ids[0])

    def summarise(self, stage: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Mean over cases per class (NaN-aware), then over classes: ``dice_mean``,
        ``hd95_mean``, ``dice/<class>``, ``hd95/<class>``."""
        summary: dict[str, float] = {}
        for metric in ("dice", "hd95"):
            per_class = [
                _nanmean([row[f"{metric}/{name}"] for row in rows]) for name in self.class_names[1:]
            ]
            for name, value in zip(self.class_names[1:], per_class, strict=True):
                summary[f"{metric}/{name}"] = value
            summary[f"{metric}_mean"] = _nanmean(per_class)
        return summary

    def rows_file(self, stage: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        return f"{stage}_cases.csv", list(rows[0]) if rows else [self.ROW_KEY]

    def _log_overlay(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        prediction: torch.Tensor,
        stage: str,
        case_id: str,
    ) -> None:
        """Save and log the overlay of one case. ``image`` (its first channel), ``label`` and
        ``prediction`` hold the case's spatial axes only, any slice axis last."""
        from mednext.plots import overlay_figure

        picture = overlay_figure(
            image.float().cpu().numpy(),
            label.cpu().numpy(),
            prediction.cpu().numpy(),
            self.hparams.num_classes,
            title=f"{stage} {case_id} (epoch {self.current_epoch})",
        )
        self.log_figure(picture, f"{stage}_{case_id}_overlay.png", f"{stage}/overlay", case_id)
