"""The Synapse and ACDC experiments on their nnU-Net v2 copies: a ``data.root`` holding a
``dataset.json`` is read through the nnU-Net layout, with the dataset's own classes, spacing and
split. The copies are made here as nnU-Net's conversion scripts make them (its BTCV conversion
and ``Dataset027_ACDC.py``), from the synthetic raw downloads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from datamodules import build_datamodule
from datamodules.acdc import TEST_PATIENTS, VAL_PATIENTS, write_acdc
from datamodules.errors import DataError
from datamodules.synapse import TRANSUNET_TEST_CASES, write_synapse


def dataset_json(folder: Path, channels: dict[str, str], labels: list[str], cases: int) -> None:
    content = {
        "channel_names": channels,
        "labels": {name: value for value, name in enumerate(labels)},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(content))


def btcv_as_nnunet(raw: Path, out: Path) -> Path:
    """nnU-Net v2's BTCV conversion: ``img0001.nii.gz`` → ``imagesTr/0001_0000.nii.gz``,
    ``label0001.nii.gz`` → ``labelsTr/0001.nii.gz``."""
    training = raw / "RawData" / "Training"
    for image in sorted((training / "img").iterdir()):
        number = re.search(r"\d+", image.name).group()
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        (out / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, out / "imagesTr" / f"{number}_0000.nii.gz")
        shutil.copy(
            training / "label" / f"label{number}.nii.gz", out / "labelsTr" / f"{number}.nii.gz"
        )
    labels = ["background", *(f"organ{i}" for i in range(1, 14))]
    dataset_json(out, {"0": "CT"}, labels, len(list((out / "labelsTr").iterdir())))
    return out


def acdc_as_nnunet(raw: Path, out: Path) -> Path:
    """nnU-Net v2's ``Dataset027_ACDC.py``: every labelled frame of ``training/`` as
    ``imagesTr/patientXXX_frameYY_0000.nii.gz`` with ``labelsTr/patientXXX_frameYY.nii.gz``,
    the frames of ``testing/`` in ``imagesTs/`` (the ``_4d`` series and ``Info.cfg`` dropped)."""
    for part, images in (("training", "imagesTr"), ("testing", "imagesTs")):
        (out / images).mkdir(parents=True, exist_ok=True)
        for patient in sorted((raw / part).iterdir()):
            for file in sorted(patient.glob("*.nii.gz")):
                stem = file.name[: -len(".nii.gz")]
                if "_gt" in stem:
                    (out / "labelsTr").mkdir(exist_ok=True)
                    shutil.copy(file, out / "labelsTr" / f"{stem.replace('_gt', '')}.nii.gz")
                elif "_4d" not in stem:
                    shutil.copy(file, out / images / f"{stem}_0000.nii.gz")
    labels = ["background", "RV", "MLV", "LVC"]
    dataset_json(out, {"0": "cineMRI"}, labels, len(list((out / "labelsTr").iterdir())))
    return out


@pytest.fixture(scope="module")
def btcv_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = write_synapse(tmp_path_factory.mktemp("btcv"), shape=(16, 16, 8))
    return btcv_as_nnunet(raw, tmp_path_factory.mktemp("nnunet") / "Dataset200_BTCV")


def test_synapse_reads_its_nnunet_copy_with_its_own_classes_and_split(
    btcv_copy: Path, tmp_path: Path
) -> None:
    data = dict(name="synapse", root=str(btcv_copy), cache_dir=str(tmp_path), num_workers=0)
    dm = build_datamodule({**data, "patch_size": [16, 16, 16], "spacing": [2, 2, 4]})
    dm.prepare_data()
    dm.setup("fit")
    assert dm.class_names[1] == "spleen" and dm.in_channels == 1
    assert dm.split["test"] == [f"case{n:04d}" for n in TRANSUNET_TEST_CASES]
    assert len(dm.split["train"]) + len(dm.split["val"]) == 18
    files = dm.split_record()["files"]["case0022"]
    assert files["images"] == [str(btcv_copy / "imagesTr" / "0022_0000.nii.gz")]
    assert files["label"] == str(btcv_copy / "labelsTr" / "0022.nii.gz")
    assert [n["scheme"] for n in dm.normalization] == ["ct"]


def test_a_copy_that_is_not_of_the_dataset_is_one_error_naming_it(
    btcv_copy: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(btcv_copy, tmp_path / "copy"))
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "PET"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as error:
        build_datamodule({"name": "synapse", "root": str(root)}).find_cases(root)
    assert str(root / "dataset.json") in str(error.value)
    assert "2 channel(s) in channel_names; Synapse has 1" in str(error.value)
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "CT"}}))
    for name in ("imagesTr/0005_0000.nii.gz", "labelsTr/0005.nii.gz"):
        (root / name).unlink()
    cases, problems = build_datamodule({"name": "synapse", "root": str(root)}).find_cases(root)
    assert len(cases) == 29
    assert any("numTraining is 30, but there are 29" in p for p in problems)
    assert any(p.startswith("case0005: no case numbered 5 in") for p in problems)


def test_acdc_reads_dataset027_with_its_patient_split(tmp_path: Path) -> None:
    raw = write_acdc(tmp_path / "raw", shape=(12, 12, 4), layout="training")
    root = acdc_as_nnunet(raw, tmp_path / "Dataset027_ACDC")
    dm = build_datamodule({"name": "acdc", "root": str(root), "cache_dir": str(tmp_path)})
    cases, problems = dm.find_cases(root)
    assert problems == [] and len(cases) == 200
    assert cases[0].case_id == "patient001_frame01"
    assert cases[0].images == (root / "imagesTr" / "patient001_frame01_0000.nii.gz",)
    split = dm.make_split([c.case_id for c in cases])
    patients = {part: {int(c[7:10]) for c in ids} for part, ids in split.items()}
    assert patients["test"] == set(TEST_PATIENTS) and patients["val"] == set(VAL_PATIENTS)
    assert len(split["train"]) == 2 * 70
    (root / "labelsTr" / "patient004_frame01.nii.gz").unlink()
    _, problems = dm.find_cases(root)
    assert any("patient004: 1 labelled frame(s)" in p for p in problems)
