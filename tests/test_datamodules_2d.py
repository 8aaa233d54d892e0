"""The 2D releases (TransUNet's Synapse, MT-UNet's ACDC) and their rebuild from raw 3D data.

Every test goes through the real path: synthetic raw NIfTI → ``prepare_release`` → the release's
files (npz, h5, lists) → discovery → validation → split → loaders. The synthetic releases are
written once per module; tests that damage or edit files work on their own copy.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules import DATAMODULES, build_datamodule
from datamodules.acdc import TEST_PATIENTS, VAL_PATIENTS, ACDCSliceDataModule, write_acdc
from datamodules.errors import DataError
from datamodules.slices import SliceDataset, transunet_augment
from datamodules.synapse import (
    TRAINING_CASES,
    TRANSUNET_TEST_CASES,
    SynapseSliceDataModule,
    write_synapse,
    write_synapse2d,
)
from mednext.cli import main

IMAGE_SIZE = 24  # the synthetic slices are 32² in-plane: training zooms, evaluation does not
SYNAPSE_TEST = [f"case{n:04d}" for n in TRANSUNET_TEST_CASES]
SYNAPSE_TRAIN = sorted({f"case{n:04d}" for n in TRAINING_CASES} - set(SYNAPSE_TEST))
CONTRACT_KEYS = {
    "name", "root", "source", "batch_size", "num_workers", "image_size", "fold", "num_folds",
    "split_seed", "augment", "cache_dir", "synthetic_seed", "synthetic_shape",
}  # fmt: skip


def datamodule(name: str, root: Path, cache: Path, **options: Any) -> Any:
    data = dict(
        name=name,
        root=str(root),
        cache_dir=str(cache),
        batch_size=4,
        num_workers=0,
        image_size=IMAGE_SIZE,
    )
    return build_datamodule({**data, **options}, seed=0)


def ready(dm: Any) -> Any:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def copy_of(release: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(release, tmp_path / "release"))


def problem_lines(error: pytest.ExceptionInfo[DataError]) -> list[str]:
    return [line for line in str(error.value).splitlines() if line.startswith("  - ")]


@pytest.fixture(scope="module")
def synapse_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TransUNet's layout written by the synthetic writer (do not modify: copy it)."""
    return write_synapse2d(tmp_path_factory.mktemp("synapse2d") / "Synapse", shape=(32, 32, 8))


@pytest.fixture(scope="module")
def acdc_ready(tmp_path_factory: pytest.TempPathFactory) -> ACDCSliceDataModule:
    """ACDC 2D through ``source=synthetic`` (the writer rebuilds MT-UNet's layout), set up."""
    cache = tmp_path_factory.mktemp("acdc2d-cache")
    return ready(
        datamodule(
            "acdc2d", cache / "unused", cache, source="synthetic", synthetic_shape=[32, 32, 8]
        )
    )


# --- registry, configuration, attributes -------------------------------------------------------


def test_attributes_right_after_construction() -> None:
    assert DATAMODULES["synapse2d"] is SynapseSliceDataModule
    assert DATAMODULES["acdc2d"] is ACDCSliceDataModule
    synapse = build_datamodule({"name": "synapse2d"})
    assert (synapse.task, synapse.evaluation, synapse.spatial_dims) == (
        "segmentation",
        "transunet",
        2,
    )
    assert (synapse.in_channels, synapse.num_classes, synapse.image_size) == (1, 9, 224)
    assert synapse.class_names == [
        "background", "aorta", "gallbladder", "left_kidney", "right_kidney", "liver",
        "pancreas", "spleen", "stomach",
    ]  # fmt: skip
    assert synapse.patch_size == (224, 224) and synapse.spacing == (1.0, 1.0)
    assert synapse.has_validation is False  # TransUNet's protocol: no validation set
    assert build_datamodule({"name": "synapse2d", "num_val_cases": 2}).has_validation
    assert build_datamodule({"name": "synapse2d", "fold": 0}).has_validation
    heart = build_datamodule({"name": "acdc2d", "image_size": 160})
    assert heart.class_names == ["background", "right_ventricle", "myocardium", "left_ventricle"]
    assert (heart.num_classes, heart.patch_size, heart.has_validation) == (4, (160, 160), True)
    assert json.loads(json.dumps(synapse.preprocessing)) == synapse.preprocessing
    assert synapse.preprocessing["intensity"] == {"scheme": "window", "window": [-125.0, 275.0]}
    assert heart.preprocessing["intensity"] == {"scheme": "minmax"}
    assert heart.preprocessing["image_size"] == 160
    for cls in (SynapseSliceDataModule, ACDCSliceDataModule):
        assert set(cls.Config.__dataclass_fields__) >= CONTRACT_KEYS
        assert (cls.Config().batch_size, cls.Config().image_size, cls.Config().fold) == (
            24,
            224,
            None,
        )
    assert SynapseSliceDataModule.Config().num_val_cases == 0


def test_bad_config_values_are_listed_together() -> None:
    with pytest.raises(DataError) as error:
        build_datamodule(dict(name="synapse2d", source="x", image_size=0, num_val_cases=18))
    message = str(error.value)
    assert "3 problem(s)" in message
    assert (
        "source" in message and "image_size" in message and "num_val_cases must be 0..17" in message
    )


# --- Synapse: layout, lists, split ------------------------------------------------------------


def test_synapse_release_layout_dtypes_and_lists(synapse_release: Path) -> None:
    lists = synapse_release / "lists" / "lists_Synapse"
    train = (lists / "train.txt").read_text().split()
    assert sorted({name[:8] for name in train}) == SYNAPSE_TRAIN
    assert (lists / "test_vol.txt").read_text().split() == sorted(SYNAPSE_TEST)
    assert sorted(p.stem for p in (synapse_release / "train_npz").iterdir()) == sorted(train)
    with np.load(synapse_release / "train_npz" / f"{train[0]}.npz") as stored:
        assert sorted(stored.files) == ["image", "label"]
        assert stored["image"].dtype == np.float32 and stored["image"].shape == (32, 32)
        assert stored["label"].dtype == np.uint8
    with h5py.File(synapse_release / "test_vol_h5" / "case0001.npy.h5") as stored:
        assert sorted(stored) == ["image", "label"]
        image, label = stored["image"][:], stored["label"][:]
    assert image.ndim == 3 and image.shape[1:] == (32, 32) and label.shape == image.shape
    assert image.min() >= 0.0 and image.max() <= 1.0 and set(np.unique(label)) <= set(range(9))


def test_synapse_split_is_transunets_from_the_download_or_shipped_lists(
    synapse_release: Path, tmp_path: Path
) -> None:
    with_lists = ready(datamodule("synapse2d", synapse_release, tmp_path / "a"))
    assert with_lists.split == dict(train=SYNAPSE_TRAIN, val=[], test=SYNAPSE_TEST)
    assert with_lists._release.lists == synapse_release / "lists" / "lists_Synapse"
    root = copy_of(synapse_release, tmp_path)
    shutil.rmtree(root / "lists")
    shipped = ready(datamodule("synapse2d", root.parent, tmp_path / "b"))  # one level above
    assert shipped.split == with_lists.split and shipped._release.lists is None


def test_synapse_validation_cases_and_folds(synapse_release: Path, tmp_path: Path) -> None:
    held_out = ready(datamodule("synapse2d", synapse_release, tmp_path, num_val_cases=2))
    assert held_out.split["val"] == ["case0027", "case0037"]  # as the 3D module's seeded draw
    assert sorted(held_out.split["train"] + held_out.split["val"]) == SYNAPSE_TRAIN
    folds = [
        ready(datamodule("synapse2d", synapse_release, tmp_path, fold=k)).split for k in range(5)
    ]
    validated = [case for split in folds for case in split["val"]]
    assert sorted(validated) == SYNAPSE_TRAIN and all(s["test"] == SYNAPSE_TEST for s in folds)


def test_download_lists_that_differ_are_used_and_reported(
    synapse_release: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_of(synapse_release, tmp_path)
    lists = root / "lists" / "lists_Synapse"
    train = [n for n in (lists / "train.txt").read_text().split() if not n.startswith("case0005")]
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "test_vol.txt").write_text("\n".join(c for c in SYNAPSE_TEST if c != "case0035"))
    dm = datamodule("synapse2d", root, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="datamodules.slices"):
        ready(dm)
    assert "differ from the split shipped with the suite" in caplog.text
    assert "train.txt lacks case0005 (in the shipped split)" in caplog.text
    assert "test_vol.txt lacks case0035 (in the shipped split)" in caplog.text
    assert "case0005" not in dm.split["train"] and "case0035" not in dm.split["test"]
    dm.write_split(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["list_differences"] == [
        "test_vol.txt lacks case0035 (in the shipped split)",
        "train.txt lacks case0005 (in the shipped split)",
    ]


def test_test_slices_in_the_training_list_are_an_error(
    synapse_release: Path, tmp_path: Path
) -> None:
    root = copy_of(synapse_release, tmp_path)
    with open(root / "lists" / "lists_Synapse" / "train.txt", "a") as stream:
        stream.write("case0001_slice000\n")
    shutil.copy(
        root / "train_npz" / "case0005_slice000.npz", root / "train_npz" / "case0001_slice000.npz"
    )
    with pytest.raises(
        DataError, match=r"slices of the test case\(s\) case0001 are in the training"
    ):
        ready(datamodule("synapse2d", root, tmp_path / "cache"))


def test_every_problem_of_a_release_in_one_error(synapse_release: Path, tmp_path: Path) -> None:
    root = copy_of(synapse_release, tmp_path)
    slices = root / "train_npz"
    (slices / "case0005_slice000.npz").write_bytes(b"not an npz archive")
    np.savez(slices / "case0006_slice000.npz", img=np.zeros((32, 32)), label=np.zeros((32, 32)))
    np.savez(
        slices / "case0007_slice000.npz", image=np.zeros((32, 32)), label=np.full((32, 32), 12)
    )
    (root / "test_vol_h5" / "case0001.npy.h5").unlink()
    with h5py.File(root / "test_vol_h5" / "case0002.npy.h5", "w") as stored:
        stored.create_dataset("image", data=np.zeros((4, 32, 32), np.float32))
        stored.create_dataset("label", data=np.zeros((4, 16, 16), np.uint8))
    dm = datamodule("synapse2d", root, tmp_path / "cache")
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    lines = problem_lines(error)
    assert len(lines) == 5, lines
    assert any("train_npz/case0005_slice000.npz: cannot read: BadZipFile" in x for x in lines)
    assert any(
        "case0006_slice000.npz: has keys ['img', 'label'], expected 'image'" in x for x in lines
    )
    assert any(
        "case0007_slice000.npz: label values 12 outside the integers 0..8" in x for x in lines
    )
    assert any("test_vol_h5/case0001.npy.h5: missing" in x for x in lines)
    assert any("case0002.npy.h5: image (4, 32, 32) and label (4, 16, 16)" in x for x in lines)
    assert not list((tmp_path / "cache").glob("validated-*.json"))


def test_a_validated_release_is_checked_again_when_a_file_changes(
    synapse_release: Path, tmp_path: Path
) -> None:
    root = copy_of(synapse_release, tmp_path)
    ready(datamodule("synapse2d", root, tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("validated-*.json"))) == 1
    np.savez(root / "train_npz" / "case0009_slice001.npz", image=np.zeros((32, 32)))
    with pytest.raises(DataError, match=r"case0009_slice001\.npz: has keys"):
        ready(datamodule("synapse2d", root, tmp_path / "cache"))


def test_missing_releases_say_where_they_looked_and_what_to_do(tmp_path: Path) -> None:
    for name, layout in (
        ("synapse2d", "train_npz/case0005_slice000.npz"),
        ("acdc2d", "case_001_sliceED_0"),
    ):
        with pytest.raises(DataError) as error:
            datamodule(name, tmp_path / "nowhere", tmp_path / "cache").prepare_data()
        message = str(error.value)
        assert str(tmp_path / "nowhere") in message and "does not exist" in message
        assert layout in message and "drive.google.com" in message
        assert "data.source=synthetic" in message
        assert f"mednext data prepare {name} RAW_ROOT" in message


# --- loaders ----------------------------------------------------------------------------------


def test_synapse_batches(synapse_release: Path, tmp_path: Path) -> None:
    dm = ready(datamodule("synapse2d", synapse_release, tmp_path, num_val_cases=2))
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["image"].shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE)
        and batch["image"].dtype == torch.float32
    )
    assert (
        batch["label"].shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE)
        and batch["label"].dtype == torch.int64
    )
    assert int(batch["label"].max()) < 9
    val = list(dm.val_dataloader())
    assert [b["case_id"] for b in val] == [["case0027"], ["case0037"]]
    test = list(dm.test_dataloader())
    assert [b["case_id"][0] for b in test] == SYNAPSE_TEST
    for b in val + test:
        depth = b["image"].shape[1]
        assert b["image"].shape == (1, depth, 32, 32) and b["image"].dtype == torch.float32
        assert b["label"].shape == (1, depth, 32, 32) and b["label"].dtype == torch.int64
    with np.load(synapse_release / "train_npz" / "case0027_slice002.npz") as stored:
        assert np.array_equal(val[0]["image"][0, 2].numpy(), stored["image"])  # stacked in order
    assert len(dm.train_dataloader().dataset) == sum(
        len(dm._release.cases[c].files) for c in dm.split["train"]
    )


def test_without_validation_the_val_loader_is_empty(synapse_release: Path, tmp_path: Path) -> None:
    dm = ready(datamodule("synapse2d", synapse_release, tmp_path))
    assert not dm.has_validation and len(dm.val_dataloader()) == 0


def test_synapse_synthetic_source(tmp_path: Path) -> None:
    dm = ready(datamodule("synapse2d", tmp_path / "unused", tmp_path, source="synthetic"))
    assert dm.root == tmp_path / "synthetic" / "seed0-64x64x10"
    assert dm.split["test"] == SYNAPSE_TEST
    assert next(iter(dm.test_dataloader()))["image"].shape[2:] == (64, 64)


def test_evaluation_loaders_under_ddp_give_each_case_once(
    synapse_release: Path, tmp_path: Path
) -> None:
    dm = ready(datamodule("synapse2d", synapse_release, tmp_path, num_val_cases=3))
    seen = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen += [case for batch in dm.val_dataloader() for case in batch["case_id"]]
    assert sorted(seen) == dm.split["val"] and len(seen) == 3  # odd: padding would repeat one


def test_augmentation_moves_image_and_label_together() -> None:
    image = np.zeros((20, 28), np.float32)
    image[3:9, 4:20] = 1.0
    image[9:17, 4:9] = 1.0  # an asymmetric L: every rot90/flip gives another array
    label = (image > 0.5).astype(np.int64) * 3
    rng = np.random.default_rng(0)
    outcomes = {"unchanged": 0, "rot90/flip": 0, "rotated": 0}
    dihedral = [np.flip(np.rot90(image, k), a) for k in range(4) for a in range(2)]
    for _ in range(400):
        moved, moved_label = transunet_augment(image, label, rng)
        assert np.array_equal(moved_label, (moved > 0.5) * 3)
        if moved.shape == image.shape and np.array_equal(moved, image):
            outcomes["unchanged"] += 1
        elif any(moved.shape == d.shape and np.array_equal(moved, d) for d in dihedral):
            outcomes["rot90/flip"] += 1
        else:
            outcomes["rotated"] += 1
    # TransUNet: rot90+flip 1/2, rotation 1/4 (angle 0 in 1 of 40 of them), nothing 1/4.
    assert 160 < outcomes["rot90/flip"] < 240 and 70 < outcomes["rotated"] < 130, outcomes
    assert 70 < outcomes["unchanged"] < 130, outcomes


def test_training_slices_are_zoomed_and_stay_aligned(tmp_path: Path) -> None:
    image = np.zeros((20, 28), np.float32)
    image[3:9, 4:20] = 1.0
    image[9:17, 4:9] = 1.0
    np.savez(tmp_path / "slice.npz", image=image, label=(image > 0.5).astype(np.uint8))
    dataset = SliceDataset(tmp_path, ["slice.npz"] * 16, ("image", "label"), size=40, augment=True)
    dataset.set_random_state(3)
    items = [dataset[i] for i in range(16)]
    for item in items:
        assert item["image"].shape == (1, 40, 40) and item["label"].shape == (1, 40, 40)
        agreement = ((item["image"] > 0.5) == (item["label"] == 1)).float().mean()
        assert agreement > 0.97
    dataset.set_random_state(3)
    assert all(torch.equal(dataset[i]["image"], items[i]["image"]) for i in range(16))


# --- ACDC -------------------------------------------------------------------------------------


def test_acdc_split_is_the_patient_split_of_design(acdc_ready: ACDCSliceDataModule) -> None:
    dm = acdc_ready
    patients = {part: {int(c[7:10]) for c in ids} for part, ids in dm.split.items()}
    assert patients["test"] == set(TEST_PATIENTS) and patients["val"] == set(VAL_PATIENTS)
    assert len(patients["train"]) == 70 and not patients["train"] & (
        patients["val"] | patients["test"]
    )
    assert len(dm.split["train"]) == 140 and dm.split["val"][:2] == [
        "patient019_ED",
        "patient019_ES",
    ]
    base = dm._release.base
    assert sorted(p.name for p in base.iterdir()) == ["lists_ACDC", "test", "train", "valid"]
    assert "case_019_sliceED_0.npz" in (base / "lists_ACDC" / "valid.txt").read_text().split()
    with np.load(base / "test" / "case_002_volume_ED.npz") as stored:
        assert sorted(stored.files) == ["img", "label"] and stored["img"].ndim == 3


def test_acdc_batches_and_folds(acdc_ready: ACDCSliceDataModule, tmp_path: Path) -> None:
    batch = next(iter(acdc_ready.train_dataloader()))
    assert batch["image"].shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE) and int(batch["label"].max()) <= 3
    val = next(iter(acdc_ready.val_dataloader()))
    assert val["case_id"] == ["patient019_ED"] and val["image"].shape[2:] == (32, 32)
    assert val["image"].shape == val["label"].shape and val["image"].shape[1] >= 6
    fold = ready(datamodule("acdc2d", acdc_ready._release.base, tmp_path, fold=1)).split
    val_patients = {c[:10] for c in fold["val"]}
    assert len(val_patients) == 16 and len(fold["val"]) == 32  # both phases of 16 patients
    assert not val_patients & {c[:10] for c in fold["train"]}
    assert fold["test"] == acdc_ready.split["test"]


def test_acdc_lists_that_differ_and_test_slices_in_train(
    acdc_ready: ACDCSliceDataModule, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_of(acdc_ready._release.base, tmp_path)
    valid = root / "lists_ACDC" / "valid.txt"
    valid.write_text("".join(f"{n}\n" for n in valid.read_text().split() if "case_080" not in n))
    with caplog.at_level(logging.WARNING, logger="datamodules.slices"):
        dm = ready(datamodule("acdc2d", root, tmp_path / "a"))
    assert "valid.txt lacks patient080 (in the shipped split)" in caplog.text
    assert len(dm.split["val"]) == 18
    shutil.rmtree(root / "lists_ACDC")  # now the shipped split decides
    shutil.copy(
        root / "train" / "case_001_sliceED_0.npz", root / "train" / "case_002_sliceED_0.npz"
    )
    for path in (root / "valid").glob("case_080_*.npz"):
        path.unlink()
    with pytest.raises(DataError) as error:
        ready(datamodule("acdc2d", root, tmp_path / "b"))
    lines = problem_lines(error)
    assert any(
        "slices of the test patient(s) patient002 are in the train/ data" in x for x in lines
    )
    assert any("patient080: no valid/case_080_slice*.npz slices" in x for x in lines)


# --- rebuilding the releases from raw data -----------------------------------------------------


def test_prepare_synapse_applies_transunets_window_and_label_map(tmp_path: Path) -> None:
    raw = write_synapse(tmp_path / "raw", shape=(16, 16, 8))
    hu = np.full((4, 5, 3), -1000, np.int16)
    hu[0, :, 0] = [-400, -125, 75, 275, 1000]  # -> 0, 0, 0.5, 1, 1
    hu[1, :, 1] = [-25, 0, 25, 175, 225]  # -> 0.25, 0.3125, 0.375, 0.75, 0.875
    label = np.zeros((4, 5, 3), np.uint8)
    label[2, :, 2] = [8, 4, 3, 2, 6]  # aorta, gallbladder, left kidney, right kidney, liver
    label[3, :, 2] = [11, 1, 7, 5, 13]  # pancreas, spleen, stomach, esophagus, left adrenal
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for number in (5, 1):  # a training case and a test case
        training = raw / "RawData" / "Training"
        nib.save(nib.Nifti1Image(hu, affine), training / "img" / f"img{number:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), training / "label" / f"label{number:04d}.nii.gz")
    out = tmp_path / "Synapse2D"
    summary = SynapseSliceDataModule.prepare_release(raw, out)
    assert "3->3" in summary["labels"] and summary["test_volumes"].startswith("12 ")
    slices = [np.load(out / "train_npz" / f"case0005_slice{k:03d}.npz") for k in range(3)]
    assert not (out / "train_npz" / "case0005_slice003.npz").exists()
    assert slices[0]["image"].dtype == np.float32 and slices[0]["image"].shape == (4, 5)
    np.testing.assert_allclose(slices[0]["image"][0], [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(slices[1]["image"][1], [0.25, 0.3125, 0.375, 0.75, 0.875])
    assert slices[0]["image"][3, 0] == 0.0  # -1000 HU
    assert slices[2]["label"][2].tolist() == [1, 2, 3, 4, 5]
    assert slices[2]["label"][3].tolist() == [6, 7, 8, 0, 0]
    with h5py.File(out / "test_vol_h5" / "case0001.npy.h5") as stored:
        image, mapped = stored["image"][:], stored["label"][:]
    assert image.shape == (3, 4, 5) and mapped.shape == (3, 4, 5)  # [D, H, W] = (z, x, y)
    assert np.array_equal(image[0], slices[0]["image"]) and mapped[2, 2].tolist() == [1, 2, 3, 4, 5]
    train = (out / "lists" / "lists_Synapse" / "train.txt").read_text().split()
    assert [n for n in train if n.startswith("case0005")] == [
        f"case0005_slice{k:03d}" for k in range(3)
    ]
    assert not any(n.startswith("case0001") for n in train)
    assert (out / "lists" / "lists_Synapse" / "test_vol.txt").read_text().split() == sorted(
        SYNAPSE_TEST
    )


def test_prepare_acdc_scales_each_frame_and_names_slices_as_mt_unet(tmp_path: Path) -> None:
    raw = write_acdc(tmp_path / "raw", shape=(16, 16, 8), layout="training")
    frame = np.arange(60, dtype=np.int16).reshape(4, 5, 3) * 10 + 100  # 100..690
    gt = (np.arange(60).reshape(4, 5, 3) % 4).astype(np.uint8)
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    for patient in (1, 2):
        folder = raw / "training" / f"patient{patient:03d}"
        ed = int((folder / "Info.cfg").read_text().split("ED:")[1].split()[0])
        nib.save(
            nib.Nifti1Image(frame, affine), folder / f"patient{patient:03d}_frame{ed:02d}.nii.gz"
        )
        nib.save(
            nib.Nifti1Image(gt, affine), folder / f"patient{patient:03d}_frame{ed:02d}_gt.nii.gz"
        )
    out = tmp_path / "ACDC2D"
    assert main(["data", "prepare", "acdc2d", str(raw), str(out)]) == 0
    for k in range(3):
        with np.load(out / "train" / f"case_001_sliceED_{k}.npz") as stored:
            assert sorted(stored.files) == ["img", "label"] and stored["img"].dtype == np.float32
            np.testing.assert_allclose(stored["img"], (frame[:, :, k] - 100) / 590, atol=1e-6)
            assert np.array_equal(stored["label"], gt[:, :, k])
    assert not (out / "train" / "case_001_sliceED_3.npz").exists()
    with np.load(out / "test" / "case_002_volume_ED.npz") as stored:
        assert stored["img"].shape == (3, 4, 5)
        np.testing.assert_allclose(stored["img"][1], (frame[:, :, 1] - 100) / 590, atol=1e-6)
    lists = {
        n: (out / "lists_ACDC" / f"{n}.txt").read_text().split() for n in ("train", "valid", "test")
    }
    assert "case_001_sliceED_0.npz" in lists["train"] and not any(
        "case_019" in n for n in lists["train"]
    )
    assert {n[:8] for n in lists["valid"]} == {f"case_{p:03d}" for p in VAL_PATIENTS}
    assert len(lists["test"]) == 40 and "case_002_volume_ED.npz" in lists["test"]
    assert lists["train"] == sorted(lists["train"])


def test_prepare_through_the_cli_reports_and_writes_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = write_synapse(tmp_path / "raw", shape=(16, 16, 8))
    out = tmp_path / "Synapse2D"
    assert main(["data", "prepare", "synapse2d", str(raw), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train_slices:" in printed and "test_volumes: 12 in test_vol_h5/" in printed
    assert f"data.root={out}" in printed
    dm = ready(datamodule("synapse2d", out, tmp_path / "cache"))
    assert dm.split["test"] == SYNAPSE_TEST
    assert main(["data", "prepare", "synapse2d", str(raw), str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    (raw / "RawData" / "Training" / "label" / "label0010.nii.gz").unlink()
    (raw / "RawData" / "Training" / "img" / "img0021.nii.gz").write_bytes(b"not a NIfTI file")
    assert main(["data", "prepare", "synapse2d", str(raw), str(tmp_path / "again")]) == 2
    error = capsys.readouterr().err
    assert "2 problem(s)" in error and "label0010.nii.gz" in error and "img0021.nii.gz" in error
    assert "Traceback" not in error
    assert not (tmp_path / "again").exists() and not list(tmp_path.glob(".*.tmp-again"))
    assert main(["data", "prepare", "acdc", str(raw), str(tmp_path / "x")]) == 2
    assert "available: acdc2d, synapse2d" in capsys.readouterr().err


def test_data_synthetic_writes_the_2d_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "synthetic", "synapse2d", str(tmp_path / "Synapse2D")]) == 0
    assert "data.root=" in capsys.readouterr().out
    assert (tmp_path / "Synapse2D" / "test_vol_h5" / "case0038.npy.h5").is_file()
    assert (tmp_path / "Synapse2D" / "lists" / "lists_Synapse" / "train.txt").is_file()
