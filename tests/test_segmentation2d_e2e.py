"""2D segmentation end to end at toy size: the TransUNet protocol on the synthetic Synapse and
ACDC 2D releases (train on slices, test slice-wise per volume), through `mednext train`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from datamodules.synapse import write_synapse
from mednext.cli import main
from mednext.tasks.segmentation import SegmentationTask

SYNAPSE_ORGANS = (
    "aorta",
    "gallbladder",
    "left_kidney",
    "right_kidney",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)


def test_synapse2d_cmunext_trains_on_slices_and_tests_volumes_by_transunet_rules(
    tmp_path: Path,
    toy_runs,
) -> None:
    root = tmp_path / "runs"
    assert (
        main(
            [
                "train",
                "synapse2d_cmunext_s",
                *toy_runs.overrides("slices", root, tmp_path / "cache"),
            ]
        )
        == 0
    )
    run = toy_runs.only_run(root, "synapse2d_cmunext_s")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["model"] == {"name": "cmunext", "variant": "S"}
    # TransUNet's protocol has no validation set: the last epoch is tested.
    assert results["metrics"]["val"] == {}
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "checkpoints" / "best.ckpt").exists()
    test = results["metrics"]["test"]
    assert {f"dice/{organ}" for organ in SYNAPSE_ORGANS} | {"dice_mean", "hd95_mean"} <= set(test)
    with (run / "test_cases.csv").open(newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert [row["case_id"] for row in cases] == [
        f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
    ]
    # Mean over cases per organ, then over organs (TransUNet's inference()).
    per_organ = [np.mean([float(row[f"dice/{o}"]) for row in cases]) for o in SYNAPSE_ORGANS]
    assert test["dice_mean"] == pytest.approx(np.mean(per_organ), abs=1e-6)
    assert all(value >= 0 for value in test.values())

    # predict: a raw CT volume in, a label map on its own grid out (the 2D network slice-wise).
    raw = write_synapse(tmp_path / "raw", shape=(64, 64, 6))
    scan = sorted(raw.rglob("img0001.nii.gz"))[0]
    out = tmp_path / "labels"
    assert (
        main(["predict", str(run / "checkpoints" / "last.ckpt"), str(scan), "--out", str(out)]) == 0
    )
    labels = nib.load(out / "img0001.nii.gz")
    assert labels.shape == nib.load(scan).shape
    np.testing.assert_allclose(labels.affine, nib.load(scan).affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= set(range(9))


@pytest.mark.parametrize(
    "experiment, extra",
    [
        ("acdc2d_mednext_lite_t", ("model.width=8", "model.depths=[1,1,1,1]")),
        ("synapse2d_mednext_s", ("model.width=4", "data.num_val_cases=2")),
    ],
)
def test_other_2d_networks_with_validation(
    experiment: str, extra: tuple[str, ...], tmp_path, toy_runs
):
    root = tmp_path / "runs"
    assert (
        main(["train", experiment, *toy_runs.overrides("slices", root, tmp_path / "cache", *extra)])
        == 0
    )
    run = toy_runs.only_run(root, experiment)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    assert "dice_mean" in results["metrics"]["val"] and "dice_mean" in results["metrics"]["test"]
    assert (run / "checkpoints" / "best.ckpt").is_file()


class Threshold(nn.Module):
    """Class 1 where the input exceeds 0.5: a fixed network with a known answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def slice_task(size: int) -> SegmentationTask:
    task = SegmentationTask(
        model={"name": "cmunext", "variant": "S"},
        in_channels=1,
        num_classes=2,
        class_names=["background", "object"],
        patch_size=[size, size],
        spacing=[1.0, 1.0],
        optim={},
        loss={},
        evaluation={"sw_batch_size": 3},
        protocol="transunet",
    )
    task.net = Threshold()
    return task


def test_slicewise_prediction_at_the_model_size_is_exact() -> None:
    volume = torch.rand(7, 32, 32)
    labels = slice_task(32).predict_slices(volume)
    assert labels.shape == (7, 32, 32)
    assert torch.equal(labels, (volume > 0.5).long())


def test_slicewise_prediction_zooms_to_the_model_size_and_back() -> None:
    # Blocks of 4×4 pixels: zooming 48 -> 32 and back keeps their inside, up to one pixel at
    # the block edges.
    blocks = (torch.rand(5, 12, 12) > 0.5).float()
    volume = blocks.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    labels = slice_task(32).predict_slices(volume)
    assert labels.shape == (5, 48, 48)
    agreement = (labels == volume.long()).float().mean().item()
    assert agreement > 0.9
