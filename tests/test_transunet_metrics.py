"""TransUNet's per-case DSC/HD95 (docs/evaluation.md) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mednext.tasks.evaluation import transunet_case_metrics


def line(length: int, *segments: tuple[int, int, int]) -> np.ndarray:
    """A 1×1×length label volume with ``(start, stop, class)`` segments."""
    volume = np.zeros((1, 1, length), dtype=np.int64)
    for start, stop, c in segments:
        volume[0, 0, start:stop] = c
    return volume


def test_partial_overlap_pools_both_directed_distance_sets_as_medpy() -> None:
    # Reference voxels 0..9, prediction 0..4: every voxel of a 1-voxel-thick line is border.
    # prediction -> reference: five 0s; reference -> prediction: 0,0,0,0,0,1,2,3,4,5.
    # Pooled (15 values, ten 0s then 1..5): 95th percentile at rank 0.95*14 = 13.3 -> 4 + 0.3.
    # (MONAI's symmetric HD95 would be max(0, percentile of the second set) = 4.55.)
    [(dice, hd95)] = transunet_case_metrics(line(12, (0, 5, 1)), line(12, (0, 10, 1)), 2)
    assert dice == pytest.approx(2 * 5 / (5 + 10))
    assert hd95 == pytest.approx(4.3)


def test_shifted_square_in_2d() -> None:
    # 3×3 squares one column apart: 6 voxels overlap; the 8 border voxels of each are at 0 or 1
    # from the other's border (eight 0s and eight 1s pooled): HD95 = 1.
    gt = np.zeros((5, 5), dtype=int)
    gt[1:4, 1:4] = 1
    pred = np.zeros((5, 5), dtype=int)
    pred[1:4, 2:5] = 1
    [(dice, hd95)] = transunet_case_metrics(pred, gt, 2)
    assert dice == pytest.approx(2 * 6 / 18) and hd95 == pytest.approx(1.0)


def test_disjoint_structures_have_dice_zero_and_their_distance() -> None:
    [(dice, hd95)] = transunet_case_metrics(line(5, (3, 4, 1)), line(5, (0, 1, 1)), 2)
    assert (dice, hd95) == (0.0, 3.0)


def test_empty_structure_rules_of_transunet() -> None:
    gt = line(6, (0, 2, 1), (4, 6, 3))
    pred = line(6, (0, 2, 1), (2, 4, 2))
    # class 1: equal -> (1, 0); class 2: predicted, not in the reference -> (1, 0);
    # class 3: in the reference, not predicted -> (0, 0); class 4: in neither -> (0, 0).
    assert transunet_case_metrics(pred, gt, 5) == [(1.0, 0.0), (1.0, 0.0), (0.0, 0.0), (0.0, 0.0)]


def test_tensors_are_accepted_and_shapes_must_match() -> None:
    gt = torch.from_numpy(line(12, (0, 10, 1)))
    pred = torch.from_numpy(line(12, (0, 5, 1)))
    assert transunet_case_metrics(pred, gt, 2)[0][1] == pytest.approx(4.3)
    with pytest.raises(ValueError, match="differ in shape"):
        transunet_case_metrics(np.zeros((2, 3)), np.zeros((3, 2)), 2)
