"""3D segmentation end to end at toy size: `mednext train` on the synthetic Synapse and ACDC
layouts through the real code path (config → DataModule → Lightning → run directory), then
`mednext test`, `mednext predict`, resume after Ctrl-C, UpKern initialisation and the
missing-dataset message."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mednext.cli import main
from mednext.models.mednext import upkern
from mednext.runs.train import initialise_weights, network_state
from mednext.tasks.segmentation import SegmentationTask


@pytest.fixture(scope="module")
def synapse_run(tmp_path_factory: pytest.TempPathFactory, toy_runs) -> Path:
    base = tmp_path_factory.mktemp("synapse")
    toy = toy_runs.overrides("volumes", base / "runs", base / "cache")
    assert main(["train", "synapse_mednext_s", *toy]) == 0
    return toy_runs.only_run(base / "runs", "synapse_mednext_s")


def test_train_writes_the_run_directory_of_the_design(synapse_run: Path) -> None:
    for name in ("config.yaml", "split.json", "metrics.csv", "results.json", "test_cases.csv"):
        assert (synapse_run / name).is_file(), name
    assert (synapse_run / "checkpoints" / "last.ckpt").is_file()
    assert (synapse_run / "checkpoints" / "best.ckpt").is_file()
    assert list((synapse_run / "predictions").glob("test_*_overlay.png"))
    results = json.loads((synapse_run / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["experiment"] == "synapse_mednext_s" and results["run_id"] == synapse_run.name
    assert results["model"] == {"name": "mednext", "variant": "S"}
    assert results["dataset"] == "synapse" and results["epochs"] == 2
    assert results["params"] > 0 and results["flops"] > 0 and results["throughput"] > 0
    assert results["command"].startswith("mednext train synapse_mednext_s data.source=synthetic")
    for stage in ("val", "test"):
        metrics = results["metrics"][stage]
        assert 0 <= metrics["dice_mean"] <= 1
        assert {f"dice/{organ}" for organ in ("spleen", "liver", "left_adrenal_gland")} <= set(
            metrics
        )
        assert "hd95/aorta" in metrics and "hd95_mean" in metrics
    split = json.loads((synapse_run / "split.json").read_text())["split"]
    assert split["test"][:4] == ["case0001", "case0002", "case0003", "case0004"]
    assert len(split["test"]) == 12 and len(split["train"]) + len(split["val"]) == 18
    cases = (synapse_run / "test_cases.csv").read_text().splitlines()
    assert len(cases) == 13 and cases[0].startswith("case_id,dice/spleen,hd95/spleen")


def test_checkpoint_loads_with_weights_only_and_carries_the_preprocessing(
    synapse_run: Path,
) -> None:
    task = SegmentationTask.load_from_checkpoint(
        synapse_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert task.preprocessing["spacing"] == [2.0, 2.0, 4.0]
    assert [n["scheme"] for n in task.preprocessing["normalization"]] == ["ct"]
    assert task.hparams.num_classes == 14 and task.hparams.class_names[1] == "spleen"


def test_test_command_recomputes_the_test_metrics(synapse_run: Path, capsys) -> None:
    before = json.loads((synapse_run / "results.json").read_text())
    assert main(["test", str(synapse_run)]) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {synapse_run}" in printed and "test mean Dice" in printed
    after = json.loads((synapse_run / "results.json").read_text())
    assert after["status"] == "completed" and after["command"] == before["command"]
    assert after["metrics"]["test"]["dice_mean"] == pytest.approx(
        before["metrics"]["test"]["dice_mean"], abs=1e-6
    )


def test_predict_keeps_shape_affine_and_header_of_an_odd_lps_input(
    synapse_run: Path, tmp_path: Path
) -> None:
    # Anisotropic, LPS-oriented (x and y flipped), rotated slightly, size not a multiple of 16.
    affine = np.diag([-0.8, -0.8, 3.0, 1.0])
    affine[:3, 3] = [120.0, 95.0, -40.0]
    affine[0, 1] = 0.05
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 400, size=(37, 41, 13)).astype(np.int16)
    source = tmp_path / "inputs" / "patient7.nii.gz"
    source.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), source)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(synapse_run / "checkpoints" / "best.ckpt"),
                str(source.parent),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = nib.load(out / "patient7.nii.gz")
    labels = np.asanyarray(written.dataobj)
    assert labels.shape == (37, 41, 13)
    np.testing.assert_allclose(written.affine, nib.load(source).affine, atol=1e-5)
    assert labels.dtype == np.uint8 and labels.max() < 14
    assert written.header.get_zooms() == pytest.approx(nib.load(source).header.get_zooms())


def test_predict_fast_skips_mirroring(synapse_run: Path, tmp_path: Path, capsys) -> None:
    """``--fast``: one forward pass per window whatever the run's ``eval.mirror_tta``; the toy
    run does not mirror, so its default prediction is the same; ``--mirror-tta`` and ``--fast``
    contradict each other."""
    checkpoint = str(synapse_run / "checkpoints" / "best.ckpt")
    source = tmp_path / "case.nii.gz"
    volume = np.random.default_rng(1).integers(-500, 300, size=(30, 28, 12)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])), source)
    labels = {}
    for name, flags in (("default", []), ("fast", ["--fast"])):
        out = tmp_path / name
        assert main(["predict", checkpoint, str(source), "--out", str(out), *flags]) == 0
        labels[name] = np.asanyarray(nib.load(out / "case.nii.gz").dataobj)
    np.testing.assert_array_equal(labels["fast"], labels["default"])
    with pytest.raises(SystemExit):
        main(["predict", checkpoint, str(source), "--out", str(tmp_path), "--fast", "--mirror-tta"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_predict_reports_a_missing_input(synapse_run: Path, tmp_path: Path, capsys) -> None:
    ckpt = str(synapse_run / "checkpoints" / "best.ckpt")
    assert main(["predict", ckpt, str(tmp_path / "nothing.nii.gz"), "--out", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err


def test_upkern_initialisation_from_a_kernel3_run(synapse_run: Path, tmp_path: Path) -> None:
    task = SegmentationTask(
        model={
            "name": "mednext",
            "variant": "S",
            "width": 4,
            "kernel_size": 5,
            "deep_supervision": True,
        },
        in_channels=1,
        num_classes=14,
        class_names=["background", *(f"c{i}" for i in range(13))],
        patch_size=[32, 32, 16],
        spacing=[2, 2, 4],
        optim={},
        loss={},
        evaluation={},
    )
    message = initialise_weights(
        task, {"checkpoint": None, "upkern_from": str(synapse_run)}, tmp_path
    )
    assert message.startswith("UpKern from") and "best.ckpt" in message
    small = network_state(synapse_run / "checkpoints" / "best.ckpt")
    expected = upkern(
        small, SegmentationTask(**{**task.hparams, "model": {**task.hparams.model}}).net
    )
    for (name, value), reference in zip(
        task.net.state_dict().items(), expected.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, reference, msg=name)
    assert task.net.encoder[0][0].conv1.weight.shape[-1] == 5


def test_acdc_train_and_test_on_the_synthetic_layout(tmp_path: Path, toy_runs) -> None:
    assert (
        main(
            [
                "train",
                "acdc_mednext_s",
                *toy_runs.overrides(
                    "volumes",
                    tmp_path / "runs",
                    tmp_path / "cache",
                    "data.patch_size=[32,32,16]",
                    "trainer.max_epochs=1",
                ),
            ]
        )
        == 0
    )
    run = toy_runs.only_run(tmp_path / "runs", "acdc_mednext_s")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["dataset"] == "acdc"
    assert {"dice/right_ventricle", "dice/myocardium", "dice/left_ventricle"} <= set(
        results["metrics"]["test"]
    )
    split = json.loads((run / "split.json").read_text())["split"]
    assert "patient002_ED" in split["test"] and "patient019_ES" in split["val"]


def test_ctrl_c_leaves_a_resumable_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_runs
) -> None:
    arguments = toy_runs.overrides(
        "volumes", tmp_path / "runs", tmp_path / "cache", "trainer.max_epochs=3"
    )
    original = SegmentationTask.training_step

    def interrupted_in_epoch_two(self, batch, batch_idx):  # the user's Ctrl-C, mid-epoch
        if self.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationTask, "training_step", interrupted_in_epoch_two)
    assert main(["train", "synapse_mednext_s", *arguments]) == 130
    run = toy_runs.only_run(tmp_path / "runs", "synapse_mednext_s")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and results["epochs"] == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(SegmentationTask, "training_step", original)
    assert main(["train", "synapse_mednext_s", *arguments, "resume=true"]) == 0
    assert toy_runs.only_run(tmp_path / "runs", "synapse_mednext_s") == run
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 3
    assert not math.isnan(results["metrics"]["test"]["dice_mean"])
    assert (run / "config.resume.yaml").is_file()
    # metrics.csv keeps the interrupted session's rows and gains the resumed ones.
    with (run / "metrics.csv").open() as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle) if row.get("train/loss_epoch")}
    assert epochs == {"0", "1", "2"}


def test_resume_without_a_previous_run_says_so(tmp_path: Path, capsys, toy_runs) -> None:
    assert (
        main(
            [
                "train",
                "synapse_mednext_s",
                *toy_runs.overrides(
                    "volumes", tmp_path / "runs", tmp_path / "cache", "resume=true"
                ),
            ]
        )
        == 2
    )
    assert "no run of synapse_mednext_s" in capsys.readouterr().err


def test_missing_dataset_says_where_it_looked_and_how_to_dry_run(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "Synapse"
    code = main(
        [
            "train",
            "synapse_mednext_s",
            f"data.root={missing}",
            f"output.root={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "logger.wandb.mode=disabled",
        ]
    )
    assert code == 2
    message = capsys.readouterr().err
    assert str(missing) in message
    assert "RawData/Training/img/img0001.nii.gz" in message
    assert "data.source=synthetic" in message
    assert "Traceback" not in message
    results = json.loads(next((tmp_path / "runs").rglob("results.json")).read_text())
    assert results["status"] == "failed"


def test_wandb_offline_run_is_kept_inside_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_runs
) -> None:
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    arguments = toy_runs.overrides(
        "volumes", tmp_path / "runs", tmp_path / "cache", "trainer.max_epochs=1"
    )
    assert main(["train", "synapse_mednext_s", *arguments, "logger.wandb.mode=offline"]) == 0
    run = toy_runs.only_run(tmp_path / "runs", "synapse_mednext_s")
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline
    assert not (tmp_path / "wandb").exists()
    # The leaderboard's columns went into the W&B run's summary (offline, the run's record log
    # holds them until `wandb sync`).
    results = json.loads((run / "results.json").read_text())
    record = next(offline[0].glob("run-*.wandb")).read_bytes()
    for key in (b"gflops", b"test/dice_mean", b"wall_time_s", b"variant"):
        assert key in record, key
    assert str(results["params"]).encode() in record


def test_augmentation_after_the_transfer_trains_the_same_way(tmp_path: Path, toy_runs) -> None:
    """``data.augment_on=gpu``: regions and draws leave the loader, the augmentation runs on the
    training device (here the CPU) in the DataModule's ``on_after_batch_transfer``."""
    arguments = toy_runs.overrides(
        "volumes",
        tmp_path / "runs",
        tmp_path / "cache",
        "data.augment_on=gpu",
        "trainer.max_epochs=1",
    )
    assert main(["train", "synapse_mednext_s", *arguments]) == 0
    run = toy_runs.only_run(tmp_path / "runs", "synapse_mednext_s")
    assert json.loads((run / "results.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("fault", ["nan", "4d", "truncated", "png"])
def test_predict_refuses_a_broken_input_naming_it(
    synapse_run: Path, tmp_path: Path, capsys, fault: str
) -> None:
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    path = tmp_path / ("scan.png" if fault == "png" else "scan.nii.gz")
    volume = np.zeros((24, 24, 12), np.float32)
    if fault == "nan":
        volume[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(volume, affine), path)
    elif fault == "4d":
        nib.save(nib.Nifti1Image(np.zeros((24, 24, 12, 2), np.float32), affine), path)
    elif fault == "truncated":
        nib.save(nib.Nifti1Image(volume, affine), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    ckpt = str(synapse_run / "checkpoints" / "best.ckpt")
    code = main(["predict", ckpt, str(path), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    expected = {
        "nan": "1 voxel(s) are NaN or infinite",
        "4d": "a 4D image of shape (24, 24, 12, 2)",
        "truncated": "not a readable NIfTI file",
        "png": "not a readable NIfTI file",
    }[fault]
    assert code == 2 and expected in error and "Traceback" not in error, error
    assert str(path) in error
    assert not list(tmp_path.glob("out/*.nii.gz"))
