"""A two-channel nnU-Net v2 dataset end to end at toy size: `mednext train nnunet_mednext_s` on
the synthetic copy through the real command line, then `mednext predict` on `_0000/_0001`
inputs; and how predict groups its inputs for one and for several channels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datamodules.errors import DataError
from mednext.cli import main
from mednext.config import compose
from mednext.predict import volume_inputs
from mednext.tasks.segmentation import SegmentationTask


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory: pytest.TempPathFactory, toy_runs) -> tuple[Path, Path]:
    """The run directory of a toy run on the synthetic two-channel copy, and that copy."""
    base = tmp_path_factory.mktemp("nnunet")
    # spacing null: the copy's median voxel size, as an unknown dataset gets it.
    toy = toy_runs.overrides("volumes", base / "runs", base / "cache", "data.spacing=null")
    assert main(["train", "nnunet_mednext_s", *toy]) == 0
    raw = next((base / "cache" / "synthetic").iterdir())
    return toy_runs.only_run(base / "runs", "nnunet_mednext_s"), raw


def test_a_two_channel_dataset_trains_and_tests(nnunet_run: tuple[Path, Path]) -> None:
    run, raw = nnunet_run
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["dataset"] == "nnunet/synthetic"
    for stage in ("val", "test"):
        assert {"dice/gland", "dice/lesion", "hd95/gland"} <= set(results["metrics"][stage])
    split = json.loads((run / "split.json").read_text())
    assert split["splits_file"].endswith(f"splits/{raw.name}/splits_final.json")
    assert split["split"]["test"] == split["split"]["val"] and len(split["split"]["val"]) == 2
    assert split["channel_names"] == ["T2", "ADC"]
    task = SegmentationTask.load_from_checkpoint(
        run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert task.hparams.in_channels == 2 and task.hparams.class_names[1:] == ["gland", "lesion"]
    assert task.preprocessing["normalization"] == [{"scheme": "zscore"}] * 2
    zooms = [nib.load(p).header.get_zooms() for p in sorted((raw / "imagesTr").glob("*_0000.*"))]
    assert task.preprocessing["spacing"] == pytest.approx(list(np.median(zooms, axis=0)))


def test_predict_writes_one_label_map_per_case_on_its_grid(
    nnunet_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, raw = nnunet_run
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(run / "checkpoints" / "best.ckpt"),
            str(raw / "imagesTs"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_0011.nii.gz", "case_0012.nii.gz"]
    for name in ("case_0011", "case_0012"):
        source = nib.load(raw / "imagesTs" / f"{name}_0000.nii.gz")
        written = nib.load(out / f"{name}.nii.gz")
        labels = np.asanyarray(written.dataobj)
        assert labels.shape == source.shape and labels.dtype == np.uint8 and labels.max() < 3
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_predict_names_a_missing_channel_and_a_channel_off_the_grid(
    nnunet_run: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    run, raw = nnunet_run
    checkpoint = str(run / "checkpoints" / "best.ckpt")
    inputs = Path(shutil.copytree(raw / "imagesTs", tmp_path / "inputs"))
    (inputs / "case_0012_0001.nii.gz").unlink()
    assert main(["predict", checkpoint, str(inputs), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "case_0012: missing" in message and "case_0012_0001.nii.gz (channel 1)" in message
    assert not (tmp_path / "out").exists()
    shifted = nib.load(inputs / "case_0011_0001.nii.gz")
    affine = shifted.affine.copy()
    affine[0, 3] += 3
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), affine), inputs / "case_0012_0001.nii.gz")
    shutil.copy(inputs / "case_0011_0000.nii.gz", inputs / "case_0012_0000.nii.gz")
    assert main(["predict", checkpoint, str(inputs), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "case_0012_0001.nii.gz is not on the grid of the first channel" in message


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / name for name in names]


def test_predict_inputs_of_one_channel_keep_their_names_and_accept_0000(tmp_path: Path) -> None:
    touch(tmp_path, "patient7.nii.gz", "la_003_0000.nii.gz", "case_0001.nii", "notes.txt")
    cases = volume_inputs([tmp_path], channels=1)
    assert [(c.files[0].name, c.output) for c in cases] == [
        ("case_0001.nii", "case_0001.nii.gz"),
        ("la_003_0000.nii.gz", "la_003.nii.gz"),
        ("patient7.nii.gz", "patient7.nii.gz"),
    ]
    touch(tmp_path, "la_003.nii.gz")
    with pytest.raises(DataError, match=r"2 inputs would be written to la_003\.nii\.gz"):
        volume_inputs([tmp_path], channels=1)


def test_predict_inputs_of_several_channels_are_grouped_by_case(tmp_path: Path) -> None:
    a = touch(tmp_path / "a", "x_0001.nii.gz", "x_0000.nii.gz", "y_0000.nii.gz", "y_0001.nii.gz")
    b = touch(tmp_path / "b", "z_0000.nii", "z_0001.nii")
    cases = volume_inputs([tmp_path / "a", *b], channels=2)
    assert [(c.output, [f.name for f in c.files]) for c in cases] == [
        ("x.nii.gz", ["x_0000.nii.gz", "x_0001.nii.gz"]),
        ("y.nii.gz", ["y_0000.nii.gz", "y_0001.nii.gz"]),
        ("z.nii.gz", ["z_0000.nii", "z_0001.nii"]),
    ]
    assert cases[0].files == (a[1], a[0])
    touch(tmp_path / "a", "plain.nii.gz", "y_0002.nii.gz")
    (tmp_path / "a" / "x_0001.nii.gz").unlink()
    with pytest.raises(DataError) as error:
        volume_inputs([tmp_path / "a"], channels=2)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert "plain.nii.gz is not named <case>_<XXXX>.nii.gz" in message
    assert "y_0002.nii.gz: channel 2, but there are 2" in message
    assert f"x: missing {tmp_path / 'a' / 'x_0001.nii.gz'} (channel 1)" in message


@pytest.mark.parametrize("variant", ["s", "b", "m", "l"])
def test_the_nnunet_experiments_need_only_the_dataset_folder(variant: str, tmp_path: Path) -> None:
    config = compose(f"nnunet_mednext_{variant}", [f"data.root={tmp_path}/Dataset004_Hippocampus"])
    assert config.model.name == "mednext" and config.model.variant == variant.upper()
    assert config.data.name == "nnunet" and config.data.spacing is None
    assert list(config.data.patch_size) == [128, 128, 128] and config.data.fold == 0


@pytest.mark.parametrize(
    ("experiment", "name", "variant", "patch"),
    [
        ("nnunet_unet", "unet", "3d_fullres", 128),
        ("nnunet_resenc_m", "resenc", "M", 128),
        ("nnunet_resenc_l", "resenc", "L", 192),
    ],
)
def test_the_nnunet_baselines_are_planned_for_the_data_keys(
    experiment: str, name: str, variant: str, patch: int, tmp_path: Path
) -> None:
    root = f"data.root={tmp_path}/Dataset004_Hippocampus"
    config = compose(experiment, [root, "data.spacing=[0.6,0.6,3.6]"])
    assert (config.model.name, config.model.variant) == (name, variant)
    assert config.data.name == "nnunet" and list(config.data.patch_size) == [patch] * 3
    assert list(config.model.patch_size) == [patch] * 3
    assert list(config.model.spacing) == [0.6, 0.6, 3.6] and config.optim.name == "sgd"


def test_a_missing_data_root_is_one_clear_error(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            "nnunet_mednext_s",
            f"output.root={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "logger.wandb.mode=disabled",
        ]
    )
    assert code == 2
    message = capsys.readouterr().err
    assert "root is required: the nnU-Net v2 raw dataset folder" in message
    assert "Traceback" not in message
