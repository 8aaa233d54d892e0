"""Per-case evaluation protocols.

- ``volume_case_metrics``: the 3D protocol (docs/evaluation.md): DSC and HD95 in mm per foreground
  class of one case, computed with MONAI, with the empty-structure cases decided explicitly rather
  than left to NaN handling downstream (MONAI's HD95 of an empty mask is NaN, and its
  ``aggregate`` silently drops such cases).
- ``transunet_case_metrics``: the 2D Synapse/ACDC protocol of TransUNet and MT-UNet, whose
  published numbers depend on its exact semantics: medpy's DSC and HD95 (voxel units, the 95th
  percentile of BOTH directed surface-distance sets pooled, which MONAI's symmetric HD95 — the
  larger of the two directed percentiles — is not) and TransUNet's rules for empty structures.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The largest distance possible inside a volume: its diagonal in mm."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def volume_case_metrics(
    prediction: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float],
    hd95: bool = True,
) -> tuple[list[float], list[float]]:
    """DSC and HD95 (mm) of each foreground class ``1..num_classes-1`` of one case.

    ``prediction`` and ``label`` are integer label maps of equal shape ``spatial`` (no batch or
    channel axis); ``spacing`` is the voxel size in mm per axis. Per class:

    - both empty: (NaN, NaN) — nothing to segment, excluded from the NaN-aware means;
    - exactly one empty: (0, diagonal of the volume in mm) — a miss or a false alarm, counted
      with the worst possible distance instead of disappearing from the mean;
    - otherwise MONAI's Dice and 95th-percentile symmetric Hausdorff distance.
    """
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} != label {tuple(label.shape)}")
    foreground = list(range(1, num_classes))
    pred_onehot = F.one_hot(prediction.long(), num_classes).movedim(-1, 0)[foreground]
    label_onehot = F.one_hot(label.long(), num_classes).movedim(-1, 0)[foreground]
    pred_present = pred_onehot.flatten(1).any(dim=1).tolist()
    label_present = label_onehot.flatten(1).any(dim=1).tolist()
    both = [i for i, (p, g) in enumerate(zip(pred_present, label_present, strict=True)) if p and g]
    worst = volume_diagonal_mm(prediction.shape, spacing)
    dice = [0.0 if p or g else math.nan for p, g in zip(pred_present, label_present, strict=True)]
    distance = [
        worst if p or g else math.nan for p, g in zip(pred_present, label_present, strict=True)
    ]
    if both:
        y_pred, y = pred_onehot[both][None].float(), label_onehot[both][None].float()
        for index, value in zip(
            both, compute_dice(y_pred, y, include_background=True)[0].tolist(), strict=True
        ):
            dice[index] = value
        if hd95:
            with warnings.catch_warnings():
                # MONAI 1.5-1.6 passes its own deprecated argument internally (FutureWarning
                # "always_return_as_numpy"); nothing a caller can change.
                warnings.filterwarnings(
                    "ignore", message=".*always_return_as_numpy", category=FutureWarning
                )
                values = compute_hausdorff_distance(
                    y_pred, y, include_background=True, percentile=95, spacing=list(spacing)
                )[0].tolist()
            for index, value in zip(both, values, strict=True):
                distance[index] = value
    if not hd95:
        distance = [math.nan] * len(foreground)
    return dice, distance


def _surface_distances(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """medpy's ``__surface_distances`` at unit spacing: the distance from every border voxel of
    ``result`` to the nearest border voxel of ``reference``. A border voxel is one removed by a
    binary erosion with the face-connected structuring element (voxels outside the array count
    as background)."""
    footprint = ndimage.generate_binary_structure(result.ndim, 1)
    result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ ndimage.binary_erosion(
        reference, structure=footprint, iterations=1
    )
    return ndimage.distance_transform_edt(~reference_border)[result_border]


def transunet_case_metrics(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, num_classes: int
) -> list[tuple[float, float]]:
    """``(dice, hd95)`` of each foreground class ``1..num_classes-1`` of one case, by the rules
    of TransUNet's ``calculate_metric_percase`` (Chen et al. 2021, ``utils.py``), which MT-UNet
    and CMUNeXt-style 2D Synapse/ACDC results use:

    - prediction and reference both non-empty: medpy's ``dc`` and ``hd95`` (voxel units);
    - prediction non-empty, reference empty: ``(1, 0)``;
    - prediction empty (reference empty or not): ``(0, 0)``.

    ``pred`` and ``gt`` are integer label volumes of equal shape (any number of axes).
    """
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and reference {gt.shape} differ in shape")
    metrics = []
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        if p.any() and g.any():
            dice = 2.0 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g))
            distances = np.hstack((_surface_distances(p, g), _surface_distances(g, p)))
            metrics.append((float(dice), float(np.percentile(distances, 95))))
        elif p.any():
            metrics.append((1.0, 0.0))
        else:
            metrics.append((0.0, 0.0))
    return metrics
