"""nnU-Net v2 raw datasets (``datamodules.nnunet``, ``datamodules.nnunet_layout``): the synthetic
copy is the exact layout, every layout problem is one ``DataError`` naming its file, the folds are
``splits_final.json``'s or nnU-Net's own seeded split, each channel is normalised by its name, and
the single-channel records written before multi-channel inputs still read."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from datamodules import build_datamodule
from datamodules.errors import DataError
from datamodules.nnunet import NnUNetDataModule, write_nnunet
from datamodules.preprocessing import channel_scheme, normalize, preprocess_image
from datamodules.volume_cache import MANIFEST
from mednext.cli import main

CASES = 6
SHAPE = (24, 24, 12)


def nnunet(root: Path, cache: Path, **options: Any) -> NnUNetDataModule:
    data = dict(
        name="nnunet",
        root=str(root),
        cache_dir=str(cache),
        patch_size=[16, 16, 16],
        batch_size=2,
        num_workers=0,
        iterations_per_epoch=1,
        preprocess_workers=1,
    )
    return build_datamodule({**data, **options})


def ready(dm: NnUNetDataModule) -> NnUNetDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic two-channel dataset (do not modify: ``copy_of`` it)."""
    return write_nnunet(tmp_path_factory.mktemp("raw") / "Dataset998_Toy", shape=SHAPE, cases=CASES)


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> NnUNetDataModule:
    return ready(nnunet(raw, tmp_path_factory.mktemp("cache")))


def copy_of(raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw, tmp_path / raw.name))


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


# --- the synthetic copy -------------------------------------------------------------------------


def test_the_synthetic_copy_is_the_nnunet_v2_layout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "Dataset997_Cli"
    assert main(["data", "synthetic", "nnunet", str(out)]) == 0
    assert f"data.root={out}" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"background": 0, "gland": 1, "lesion": 2}
    assert meta["file_ending"] == ".nii.gz"
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert meta["numTraining"] == len(labels) == 10
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert images == [f"{n[: -len('.nii.gz')]}_{c:04d}.nii.gz" for n in labels for c in (0, 1)]
    assert all(re.fullmatch(r"case_\d{4}\.nii\.gz", n) for n in labels)
    for name in labels:
        label = nib.load(out / "labelsTr" / name)
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}
        for channel in (0, 1):
            image = nib.load(out / "imagesTr" / name.replace(".nii.gz", f"_{channel:04d}.nii.gz"))
            assert image.shape == label.shape
            np.testing.assert_array_equal(image.affine, label.affine)
    tests = sorted(p.name for p in (out / "imagesTs").iterdir())
    assert tests == [f"case_{n:04d}_{c:04d}.nii.gz" for n in (11, 12) for c in (0, 1)]
    assert not (out / "labelsTs").exists() and not (out / "splits_final.json").exists()


def test_channels_classes_and_spacing_are_known_at_construction(raw: Path, tmp_path: Path) -> None:
    dm = nnunet(raw, tmp_path)
    assert (dm.in_channels, dm.channel_names, dm.schemes) == (2, ("T2", "ADC"), ("zscore",) * 2)
    assert dm.class_names == ["background", "gland", "lesion"] and dm.num_classes == 3
    zooms = [nib.load(p).header.get_zooms() for p in sorted((raw / "imagesTr").glob("*_0000.*"))]
    assert dm.spacing == pytest.approx(tuple(np.median(zooms, axis=0)))
    assert nnunet(raw, tmp_path, spacing=[1, 1, 3]).spacing == (1.0, 1.0, 3.0)
    assert not (tmp_path / "preprocessed").exists()  # nothing is read but the headers


def test_the_nnunet_normalisation_of_each_channel_name() -> None:
    # nnU-Net v2 map_channel_name_to_normalization: case-insensitive, z-score for any other name.
    expected = {"CT": "ct", "ct": "ct", "noNorm": "none", "NONORM": "none", "zscore": "zscore"}
    expected |= {"rescale_to_0_1": "minmax", "rgb_to_0_1": "rgb", "T2": "zscore", "MR": "zscore"}
    assert {name: channel_scheme(name) for name in expected} == expected
    image = np.array([[[0.0, 51.0], [102.0, 255.0]]])
    np.testing.assert_allclose(normalize(image, {"scheme": "rgb"}), image / 255)
    np.testing.assert_array_equal(normalize(image, {"scheme": "none"}), image)
    assert normalize(image.astype(np.int16), {"scheme": "none"}).dtype == np.float32


# --- layout problems ----------------------------------------------------------------------------


def _label_of_another_shape(root: Path) -> None:
    label = nib.load(root / "labelsTr" / "case_0002.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 5), np.uint8), label.affine), label.get_filename())


def _second_channel_shifted(root: Path) -> None:
    path = root / "imagesTr" / "case_0004_0001.nii.gz"
    image = nib.load(path)
    affine = image.affine.copy()
    affine[1, 3] += 4
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), path)


LAYOUT_PROBLEMS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "missing dataset.json": (
        lambda root: (root / "dataset.json").unlink(),
        ["has no dataset.json", "Dataset998_Toy", "data.source=synthetic"],
    ),
    "bad JSON": (
        lambda root: (root / "dataset.json").write_text('{"channel_names": {"0": "T2"'),
        ["Dataset998_Toy/dataset.json: not readable JSON"],
    ),
    "region labels": (
        lambda root: edit_json(
            root / "dataset.json",
            lambda d: d["labels"].update({"whole": [1, 2]}),
        ),
        ["dataset.json", "'whole': [1, 2]", "region-based training is not supported"],
    ),
    "non-consecutive labels": (
        lambda root: edit_json(root / "dataset.json", lambda d: d["labels"].update(lesion=3)),
        ["dataset.json", "consecutive integers 0..2", "[0, 1, 3]"],
    ),
    "ignore label": (
        lambda root: edit_json(root / "dataset.json", lambda d: d["labels"].update(ignore=3)),
        ["dataset.json", "ignore label (3)", "not supported"],
    ),
    "unsupported file_ending": (
        lambda root: edit_json(root / "dataset.json", lambda d: d.update(file_ending=".nrrd")),
        ["dataset.json", "file_ending '.nrrd' is not supported", ".nii.gz, .nii"],
    ),
    "numTraining mismatch": (
        lambda root: edit_json(root / "dataset.json", lambda d: d.update(numTraining=7)),
        ["dataset.json: numTraining is 7, but there are 6 training cases"],
    ),
    "missing key": (
        lambda root: edit_json(root / "dataset.json", lambda d: d.pop("channel_names")),
        ["dataset.json", "missing key 'channel_names'"],
    ),
    "nnU-Net v1 dataset.json": (
        lambda root: (root / "dataset.json").write_text(
            json.dumps({"modality": {"0": "T2"}, "labels": {"0": "background"}, "training": []})
        ),
        ["dataset.json is an nnU-Net v1 dataset.json", "nnUNetv2_convert_old_nnUNet_dataset"],
    ),
    "missing _0001 channel": (
        lambda root: (root / "imagesTr" / "case_0003_0001.nii.gz").unlink(),
        ["case_0003: missing", "imagesTr/case_0003_0001.nii.gz (channel 1, ADC)"],
    ),
    "channel beyond channel_names": (
        lambda root: shutil.copy(
            root / "imagesTr" / "case_0001_0001.nii.gz", root / "imagesTr" / "case_0001_0002.nii.gz"
        ),
        ["imagesTr/case_0001_0002.nii.gz: channel 2, but there are 2 (0000 to 0001)"],
    ),
    "file without a channel suffix": (
        lambda root: shutil.copy(
            root / "labelsTr" / "case_0001.nii.gz", root / "imagesTr" / "scan.nii.gz"
        ),
        ["imagesTr/scan.nii.gz is not named <case>_<XXXX>.nii.gz"],
    ),
    "other file ending": (
        lambda root: shutil.copy(
            root / "imagesTr" / "case_0001_0000.nii.gz", root / "imagesTr" / "case_0009_0000.nii"
        ),
        ["imagesTr/case_0009_0000.nii does not end in .nii.gz, the file_ending of"],
    ),
    "missing label": (
        lambda root: (root / "labelsTr" / "case_0005.nii.gz").unlink(),
        ["case_0005: missing", "labelsTr/case_0005.nii.gz"],
    ),
    "label without images": (
        lambda root: shutil.copy(
            root / "labelsTr" / "case_0001.nii.gz", root / "labelsTr" / "case_0042.nii.gz"
        ),
        ["labelsTr/case_0042.nii.gz has no images in", "case_0042_0000.nii.gz"],
    ),
    "label shape mismatch": (
        _label_of_another_shape,
        ["case_0002: image shape", "!= label shape (10, 10, 5)", "case_0002.nii.gz"],
    ),
    "channels on different grids": (
        _second_channel_shifted,
        ["case_0004: case_0004_0001.nii.gz is not on the grid of case_0004_0000.nii.gz"],
    ),
}


@pytest.mark.parametrize("problem", sorted(LAYOUT_PROBLEMS))
def test_every_layout_problem_is_one_error_naming_the_file(
    problem: str, raw: Path, tmp_path: Path
) -> None:
    change, fragments = LAYOUT_PROBLEMS[problem]
    root = copy_of(raw, tmp_path)
    change(root)
    with pytest.raises(DataError) as error:
        nnunet(root, tmp_path / "cache", spacing=[1, 1, 3]).prepare_data()
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert message.count("problem(s)") <= 1
    assert not (tmp_path / "cache" / "preprocessed").exists()


def test_layout_problems_surface_at_construction_when_the_spacing_is_read(
    raw: Path, tmp_path: Path
) -> None:
    """``spacing: null`` reads the headers of the training images at construction, so a layout
    problem stops it there, before any network is built."""
    root = copy_of(raw, tmp_path)
    (root / "imagesTr" / "case_0003_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case_0003: missing .*case_0003_0001\.nii\.gz"):
        nnunet(root, tmp_path / "cache")


def test_a_missing_root_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="root is required: the nnU-Net v2 raw dataset folder"):
        build_datamodule({"name": "nnunet", "cache_dir": str(tmp_path)})
    with pytest.raises(DataError, match=r"fold must be 0\.\.4"):
        build_datamodule({"name": "nnunet", "root": str(tmp_path), "fold": None})


def test_the_dataset_key_of_dataset_json_lists_the_files(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nnU-Net v2's optional ``dataset`` key: per case its images and label, relative to the
    folder (``$VARIABLES`` expanded), instead of the ``imagesTr``/``labelsTr`` names."""
    root = copy_of(raw, tmp_path)
    (root / "scans").mkdir()
    listed = {}
    for number in range(1, CASES + 1):
        case = f"case_{number:04d}"
        for channel in (0, 1):
            source = root / "imagesTr" / f"{case}_{channel:04d}.nii.gz"
            source.rename(root / "scans" / f"{('t2', 'adc')[channel]}-{number}.nii.gz")
        (root / "labelsTr" / f"{case}.nii.gz").rename(root / "scans" / f"mask-{number}.nii.gz")
        listed[f"patient{number}"] = {
            "images": [f"scans/t2-{number}.nii.gz", f"$SCANS/adc-{number}.nii.gz"],
            "label": f"scans/mask-{number}.nii.gz",
        }
    edit_json(root / "dataset.json", lambda d: d.update(dataset=listed))
    monkeypatch.setenv("SCANS", str(root / "scans"))
    cases, problems = nnunet(root, tmp_path / "cache", spacing=[2, 2, 4]).find_cases(root)
    assert problems == [] and [c.case_id for c in cases] == sorted(listed)
    assert cases[0].images == (root / "scans" / "t2-1.nii.gz", root / "scans" / "adc-1.nii.gz")


# --- folds --------------------------------------------------------------------------------------


def nnunet_v2_folds(case_ids: list[str], folds: int = 5, seed: int = 12345) -> list[list[str]]:
    """The validation cases of nnU-Net v2's split, re-stated from scikit-learn's ``KFold(folds,
    shuffle=True, random_state=seed)`` (what nnU-Net's ``generate_crossval_split`` calls): the
    sorted ids' indices shuffled by ``RandomState(seed)``, cut into consecutive folds whose
    sizes differ by one, the larger first."""
    ids = sorted(case_ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    sizes = [len(ids) // folds + (k < len(ids) % folds) for k in range(folds)]
    starts = np.cumsum([0, *sizes])
    return [sorted(ids[i] for i in order[starts[k] : starts[k + 1]]) for k in range(folds)]


def test_without_splits_final_the_seeded_nnunet_split_is_written_in_its_format(
    prepared: NnUNetDataModule, raw: Path
) -> None:
    path = prepared.generated_splits_path
    assert prepared.splits_path == path and path.name == "splits_final.json"
    assert path.parent.name == "Dataset998_Toy" and not (raw / "splits_final.json").exists()
    written = json.loads(path.read_text())
    ids = [f"case_{n:04d}" for n in range(1, CASES + 1)]
    assert [fold["val"] for fold in written] == nnunet_v2_folds(ids)
    for fold in written:
        assert set(fold) == {"train", "val"} and sorted(fold["train"] + fold["val"]) == ids
    assert prepared.fold_count == 5
    assert prepared.split == dict(
        train=written[0]["train"], val=written[0]["val"], test=written[0]["val"]
    )


def test_splits_final_json_beside_the_dataset_is_honoured(raw: Path, tmp_path: Path) -> None:
    root = copy_of(raw, tmp_path)
    folds = [
        {"train": ["case_0001", "case_0002", "case_0003"], "val": ["case_0004", "case_0005"]},
        {"train": ["case_0004", "case_0005", "case_0006"], "val": ["case_0001"]},
        {"train": ["case_0001", "case_0004"], "val": ["case_0006"]},
    ]
    (root / "splits_final.json").write_text(json.dumps(folds))
    dm = ready(nnunet(root, tmp_path / "cache", num_folds=3, fold=1, spacing=[2, 2, 4]))
    assert dm.splits_path == root / "splits_final.json" and dm.fold_count == 3
    assert dm.split == dict(train=folds[1]["train"], val=["case_0001"], test=["case_0001"])
    assert not dm.generated_splits_path.exists()
    dm.write_split(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["splits_file"] == str(root / "splits_final.json")
    assert saved["test_cases"] == "the fold's validation cases"
    assert saved["files"]["case_0001"]["images"][1].endswith("imagesTr/case_0001_0001.nii.gz")
    with pytest.raises(DataError, match=r"has 3 folds; set data.num_folds=3"):
        ready(nnunet(root, tmp_path / "cache", spacing=[2, 2, 4]))


def test_nnunet_preprocessed_and_an_explicit_splits_file_are_found(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preprocessed = tmp_path / "nnUNet_preprocessed" / "Dataset998_Toy"
    preprocessed.mkdir(parents=True)
    folds = [{"train": ["case_0002"], "val": ["case_0001"]}] * 5
    (preprocessed / "splits_final.json").write_text(json.dumps(folds))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed.parent))
    dm = nnunet(raw, tmp_path / "cache", spacing=[2, 2, 4])
    assert dm.splits_path == preprocessed / "splits_final.json"
    assert dm.folds()[3] == {"train": ["case_0002"], "val": ["case_0001"]}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"train": ["case_0001", "case_0077"], "val": ["case_0002"]}]))
    explicit = nnunet(raw, tmp_path / "cache", spacing=[2, 2, 4], splits_file=str(wrong))
    with pytest.raises(DataError, match=r"wrong\.json.*\n.*fold 0 names 1 case\(s\) not in the "):
        explicit.folds()


def test_labels_ts_makes_the_test_set(raw: Path, tmp_path: Path) -> None:
    root = copy_of(raw, tmp_path)
    (root / "labelsTs").mkdir()
    for number in (11, 12):
        shutil.copy(
            root / "labelsTr" / "case_0001.nii.gz", root / "labelsTs" / f"case_{number:04d}.nii.gz"
        )
        # imagesTs cases are other volumes: give them the label's grid.
        for channel in (0, 1):
            source = root / "imagesTr" / f"case_0001_{channel:04d}.nii.gz"
            shutil.copy(source, root / "imagesTs" / f"case_{number:04d}_{channel:04d}.nii.gz")
    dm = ready(nnunet(root, tmp_path / "cache", spacing=[2, 2, 4]))
    assert dm.split["test"] == ["case_0011", "case_0012"]
    assert set(dm.split["val"]).isdisjoint(dm.split["test"])
    assert sorted(dm.split["train"] + dm.split["val"]) == [f"case_{n:04d}" for n in range(1, 7)]
    assert dm.split_details()["test_cases"] == "imagesTs/labelsTs"
    assert [b["case_id"][0] for b in dm.test_dataloader()] == ["case_0011", "case_0012"]


# --- channels, normalisation, old records -----------------------------------------------------


def test_loaders_and_predict_see_both_channels_as_the_cache(prepared: NnUNetDataModule) -> None:
    batch = next(iter(prepared.train_dataloader()))
    assert batch["image"].shape == (2, 2, 16, 16, 16) and batch["label"].shape == (2, 1, 16, 16, 16)
    case = next(iter(prepared.val_dataloader()))
    name = case["case_id"][0]
    files = [prepared.root / "imagesTr" / f"{name}_{c:04d}.nii.gz" for c in (0, 1)]
    image, geometry = preprocess_image(files, **prepared.preprocessing)
    assert image.shape[0] == 2 and geometry.shape == nib.load(files[0]).shape
    np.testing.assert_array_equal(image, case["image"][0].numpy())
    assert prepared.preprocessing["normalization"] == [{"scheme": "zscore"}] * 2
    assert prepared.preprocessing["reorient"] is False


def test_a_ct_channel_is_normalised_with_its_own_training_foreground(tmp_path: Path) -> None:
    root = write_nnunet(tmp_path / "Dataset996_CtMr", shape=SHAPE, channels=("CT", "T2"), cases=5)
    dm = ready(nnunet(root, tmp_path / "cache", spacing=[2, 2, 4]))
    ct, t2 = dm.normalization
    assert t2 == {"scheme": "zscore"}
    foreground = []
    for label_path in sorted((root / "labelsTr").iterdir()):
        label = np.asanyarray(nib.load(label_path).dataobj)
        image = nib.load(root / "imagesTr" / label_path.name.replace(".nii.gz", "_0000.nii.gz"))
        foreground.append(image.get_fdata()[label > 0])
    values = np.concatenate(foreground)  # fewer than 10,000 voxels a case: all are sampled
    assert ct["scheme"] == "ct"
    assert ct["clip"] == pytest.approx(list(np.percentile(values, [0.5, 99.5])), rel=1e-5)
    assert ct["mean"] == pytest.approx(values.mean(), rel=1e-4)
    assert ct["std"] == pytest.approx(values.std(), rel=1e-4)


def test_the_single_channel_records_of_older_checkpoints_and_caches_still_read(
    tmp_path: Path,
) -> None:
    root = write_nnunet(tmp_path / "Dataset995_Ct", shape=SHAPE, channels=("CT",), cases=5)
    dm = nnunet(root, tmp_path / "cache", spacing=[2, 2, 4])
    dm.prepare_data()
    folder = dm.cache_path
    manifest = json.loads((folder / MANIFEST).read_text())
    # The manifest as the suite wrote it before multi-channel inputs: one image, one record.
    (record,) = manifest["normalization"]
    manifest["normalization"] = record
    for entry in manifest["inputs"]:
        (entry["image"],) = entry.pop("images")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".npy"}
    again = ready(nnunet(root, tmp_path / "cache", spacing=[2, 2, 4]))
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".npy"} == stamps
    assert again.normalization == [record]
    assert again.split_record()["files"]["case_0001"]["images"][0].endswith("case_0001_0000.nii.gz")
    # A checkpoint's record of then: ``normalization`` one mapping, not a list.
    path = root / "imagesTr" / "case_0001_0000.nii.gz"
    old, _ = preprocess_image(path, spacing=[2, 2, 4], normalization=record, reorient=False)
    new, _ = preprocess_image([path], **again.preprocessing)
    np.testing.assert_array_equal(old, new)
