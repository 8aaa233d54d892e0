"""The 3D DataModules (Synapse, ACDC) on synthetic copies of their raw layouts.

Every test goes through the real path: raw NIfTI in the downloaded layout → validation →
preprocessed cache → loaders. The synthetic sets are written and preprocessed once per module;
tests that damage or change the raw data work on their own copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import datamodules.volume_cache as volume_cache
from datamodules import DATAMODULES, build_datamodule, datamodule_class
from datamodules.acdc import TEST_PATIENTS, VAL_PATIENTS, ACDCVolumeDataModule, write_acdc
from datamodules.base import kfold
from datamodules.errors import DataError
from datamodules.preprocessing import preprocess_image, resample, restore_labels
from datamodules.synapse import (
    TRAINING_CASES,
    TRANSUNET_TEST_CASES,
    SynapseVolumeDataModule,
    write_synapse,
)
from datamodules.volume_cache import MANIFEST

SYNAPSE_PATCH = [32, 32, 32]
ACDC_PATCH = [32, 32, 16]
TRANSUNET_TEST = [f"case{n:04d}" for n in TRANSUNET_TEST_CASES]
TRAINVAL_18 = sorted({f"case{n:04d}" for n in TRAINING_CASES} - set(TRANSUNET_TEST))


def synapse(cache: Path, seed: int = 0, **options: Any) -> SynapseVolumeDataModule:
    data = dict(
        name="synapse",
        cache_dir=str(cache),
        patch_size=SYNAPSE_PATCH,
        batch_size=2,
        num_workers=0,
        iterations_per_epoch=2,
    )
    return build_datamodule({**data, **options}, seed=seed)


def acdc(cache: Path, **options: Any) -> ACDCVolumeDataModule:
    data = dict(
        name="acdc",
        cache_dir=str(cache),
        patch_size=ACDC_PATCH,
        batch_size=2,
        num_workers=0,
        iterations_per_epoch=2,
    )
    return build_datamodule({**data, **options}, seed=0)


def ready(dm: Any) -> Any:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def modification_times(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def synapse_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the synthetic Synapse (``source=synthetic``), preprocessed."""
    cache = tmp_path_factory.mktemp("synapse-cache")
    synapse(cache, source="synthetic").prepare_data()
    return cache


@pytest.fixture(scope="module")
def synapse_raw(synapse_cache: Path) -> Path:
    """The synthetic raw Synapse that ``source=synthetic`` wrote (do not modify: copy it)."""
    return synapse(synapse_cache, source="synthetic").root


@pytest.fixture(scope="module")
def small_synapse_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller synthetic Synapse for the tests that build caches of their own (copy it)."""
    return write_synapse(tmp_path_factory.mktemp("synapse-small"), shape=(16, 16, 8))


@pytest.fixture(scope="module")
def acdc_training_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic ACDC in the original ``training/`` + ``testing/`` layout (copy to modify)."""
    return write_acdc(tmp_path_factory.mktemp("acdc-raw"), shape=(24, 24, 8), layout="training")


@pytest.fixture(scope="module", params=["database", "training"])
def acdc_ready(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """ACDC in both raw layouts, preprocessed and set up: the newer ``database/`` layout through
    ``source=synthetic``, the original ``training/`` one written here. Cases of 24×24×8 voxels are
    smaller than the patches in-plane, so patches are padded."""
    cache = tmp_path_factory.mktemp("acdc-cache")
    if request.param == "database":
        return ready(acdc(cache, source="synthetic", synthetic_shape=[24, 24, 8]))
    return ready(acdc(cache, root=str(request.getfixturevalue("acdc_training_raw"))))


def copy_of(raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw, tmp_path / "raw"))


# --- registry and configuration ---------------------------------------------------------------


def test_registry_builds_each_dataset_with_its_constants() -> None:
    assert set(DATAMODULES) >= {"synapse", "acdc"}
    dm = build_datamodule({"name": "synapse"}, seed=3)
    assert isinstance(dm, SynapseVolumeDataModule)
    assert dm.seed == 3
    assert (dm.in_channels, dm.num_classes, dm.channel_names) == (1, 14, ("CT",))
    assert dm.class_names[:3] == ["background", "spleen", "right_kidney"]
    assert dm.class_names[13] == "left_adrenal_gland"
    assert dm.spacing == (1.0, 1.0, 1.0) and dm.patch_size == (128, 128, 128)
    heart = build_datamodule({"name": "acdc"})
    assert heart.class_names == ["background", "right_ventricle", "myocardium", "left_ventricle"]
    assert (heart.num_classes, heart.channel_names) == (4, ("MR",))
    with pytest.raises(KeyError, match=r"'acdcc'; did you mean 'acdc'\?; known: acdc, "):
        datamodule_class("acdcc")


def test_config_has_the_contract_keys_and_rejects_bad_values() -> None:
    for cls in (SynapseVolumeDataModule, ACDCVolumeDataModule):
        keys = set(cls.Config.__dataclass_fields__)
        assert keys >= {"name", "root", "source", "batch_size", "num_workers", "patch_size"}
        assert keys >= {"spacing", "fold", "num_folds", "iterations_per_epoch", "cache_dir"}
        assert cls.Config().fold is None and cls.Config().source == "real"
    with pytest.raises(DataError) as error:
        build_datamodule(dict(name="acdc", patch_size=[40, 40, 16], spacing=[1, 0, 1], source="x"))
    message = str(error.value)
    assert "patch_size" in message and "spacing" in message and "source" in message


def test_default_root_follows_mednext_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDNEXT_DATA", "/datasets")
    assert SynapseVolumeDataModule.Config().root == "/datasets/Synapse"
    assert ACDCVolumeDataModule.Config().root == "/datasets/ACDC"


# --- splits -----------------------------------------------------------------------------------


def test_synapse_split_is_transunets_with_seeded_validation(synapse_cache: Path) -> None:
    dm = ready(synapse(synapse_cache, source="synthetic"))
    assert dm.split["test"] == TRANSUNET_TEST
    assert len(dm.split["val"]) == 2 and len(dm.split["train"]) == 16
    assert sorted(dm.split["train"] + dm.split["val"]) == TRAINVAL_18
    again = synapse(synapse_cache, source="synthetic").make_split(TRAINVAL_18 + TRANSUNET_TEST)
    assert again == dm.split
    other = synapse(synapse_cache, split_seed=1).make_split(TRAINVAL_18 + TRANSUNET_TEST)
    assert other["val"] != dm.split["val"] and other["test"] == TRANSUNET_TEST


def test_acdc_split_is_the_patient_split_of_design(acdc_ready: ACDCVolumeDataModule) -> None:
    split = acdc_ready.split

    def patients(ids: list[str]) -> set[int]:
        return {int(c[7:10]) for c in ids}

    assert patients(split["test"]) == set(TEST_PATIENTS)
    assert patients(split["val"]) == set(VAL_PATIENTS)
    assert patients(split["train"]) == set(range(1, 101)) - set(TEST_PATIENTS) - set(VAL_PATIENTS)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (140, 20, 40)
    assert {"patient001_ED", "patient001_ES"} <= set(split["train"])


@pytest.mark.parametrize("name", ["synapse", "acdc"])
def test_folds_are_disjoint_cover_the_non_test_cases_and_keep_patients_together(name: str) -> None:
    if name == "synapse":
        ids = TRAINVAL_18 + TRANSUNET_TEST
    else:
        ids = [f"patient{p:03d}_{phase}" for p in range(1, 101) for phase in ("ED", "ES")]
    splits = [build_datamodule(dict(name=name, fold=k)).make_split(ids) for k in range(5)]
    test = splits[0]["test"]
    vals = [set(s["val"]) for s in splits]
    assert all(s["test"] == test for s in splits)
    assert set().union(*vals) == set(ids) - set(test)
    assert sum(len(v) for v in vals) == len(set(ids) - set(test))
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        assert set(s["train"]) | set(s["val"]) == set(ids) - set(test)
        if name == "acdc":
            assert {c[:10] for c in s["train"]}.isdisjoint({c[:10] for c in s["val"]})
    assert splits == [build_datamodule(dict(name=name, fold=k)).make_split(ids) for k in range(5)]


def test_seeded_splits_are_the_documented_ones() -> None:
    """docs/datasets.md lists these; the order is SHA-256 based, independent of numpy."""
    ids = TRAINVAL_18 + TRANSUNET_TEST
    assert synapse(Path("unused")).make_split(ids)["val"] == ["case0027", "case0037"]
    fold = synapse(Path("unused"), fold=3).make_split(ids)
    assert fold["val"] == ["case0005", "case0006", "case0033"]
    heart = [f"patient{p:03d}_{phase}" for p in range(1, 101) for phase in ("ED", "ES")]
    val = acdc(Path("unused"), fold=0).make_split(heart)["val"]
    assert sorted({c[:10] for c in val})[:3] == ["patient001", "patient015", "patient027"]


def test_kfold_sizes_and_errors() -> None:
    ids = [str(i) for i in range(18)]
    sizes = sorted(len(kfold(ids, 5, k, seed=0)[1]) for k in range(5))
    assert sizes == [3, 3, 4, 4, 4]
    with pytest.raises(DataError, match="fold must be between 0 and 4"):
        kfold(ids, 5, 5, seed=0)


def test_write_split_records_what_reproduces_it(synapse_cache: Path, tmp_path: Path) -> None:
    dm = ready(synapse(synapse_cache, source="synthetic"))
    dm.write_split(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["split"] == dm.split
    assert (saved["fold"], saved["split_seed"], saved["source"]) == (None, 0, "synthetic")
    assert saved["files"]["case0001"]["images"][0].endswith("RawData/Training/img/img0001.nii.gz")
    assert len(saved["files"]) == 30


# --- loaders ----------------------------------------------------------------------------------


def check_loaders(dm: Any, patch: list[int]) -> None:
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    for batch in batches:
        assert batch["image"].shape == (2, 1, *patch) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (2, 1, *patch) and batch["label"].dtype == torch.int64
        assert type(batch["image"]) is torch.Tensor  # not a MONAI MetaTensor
        assert batch["label"].min() >= 0 and batch["label"].max() < dm.num_classes
    for loader, part in ((dm.val_dataloader(), "val"), (dm.test_dataloader(), "test")):
        batches = list(loader)
        assert [b["case_id"][0] for b in batches] == dm.split[part]
        batch = batches[0]
        assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
        assert batch["image"].shape[:2] == (1, 1) and batch["label"].shape[:2] == (1, 1)
        assert batch["image"].shape[2:] == batch["label"].shape[2:]


def test_synapse_loaders(synapse_cache: Path) -> None:
    dm = ready(synapse(synapse_cache, source="synthetic"))
    check_loaders(dm, SYNAPSE_PATCH)
    case = next(iter(dm.val_dataloader()))
    # 48×48×(22..26) voxels of 0.7–0.9 × 2.5–3 mm resampled to 1 mm
    assert 30 <= case["image"].shape[2] <= 45 and 50 <= case["image"].shape[4] <= 80


def test_acdc_loaders_and_per_case_zscore(acdc_ready: ACDCVolumeDataModule) -> None:
    check_loaders(acdc_ready, ACDC_PATCH)
    assert acdc_ready.normalization == [{"scheme": "zscore"}]
    image = next(iter(acdc_ready.test_dataloader()))["image"]
    assert abs(image.mean()) < 0.05 and abs(image.std() - 1) < 0.05


def test_ct_normalization_comes_from_the_training_foreground(synapse_cache: Path) -> None:
    dm = ready(synapse(synapse_cache, source="synthetic"))
    (norm,) = dm.normalization
    assert norm["scheme"] == "ct"
    low, high = norm["clip"]
    # synthetic organs lie between -30 and 370 HU with 12 HU noise; air and fat are excluded
    assert -90 < low < -20 and 350 < high < 420 and low < norm["mean"] < high
    json.dumps(dm.preprocessing)


def test_preprocess_image_reproduces_the_cached_case(synapse_cache: Path) -> None:
    """``mednext predict`` sees exactly what validation and test saw."""
    dm = ready(synapse(synapse_cache, source="synthetic"))
    raw = dm.root / "RawData" / "Training" / "img" / "img0001.nii.gz"
    image, geometry = preprocess_image(raw, **dm.preprocessing)
    cached = next(iter(dm.test_dataloader()))
    assert cached["case_id"] == ["case0001"]
    assert np.array_equal(image, cached["image"][0].numpy())
    assert geometry.shape == nib.load(raw).shape


def test_foreground_oversampling_gives_foreground(synapse_cache: Path) -> None:
    def foreground_shares(oversample: float) -> np.ndarray:
        dm = ready(
            synapse(
                synapse_cache,
                source="synthetic",
                patch_size=[16, 16, 16],
                foreground_oversample=oversample,
                augment=False,
                batch_size=8,
                iterations_per_epoch=4,
            )
        )
        labels = torch.cat([b["label"] for b in dm.train_dataloader()])
        return (labels > 0).flatten(1).float().mean(1).numpy()

    always, never = foreground_shares(1.0), foreground_shares(0.0)
    assert (always > 0).all()
    assert always.mean() > never.mean() + 0.1
    assert (never == 0).any()


def test_worker_seeding_reproduces_batches(synapse_cache: Path) -> None:
    def first_batch(seed: int) -> torch.Tensor:
        dm = ready(synapse(synapse_cache, seed, source="synthetic", num_workers=1))
        loader = dm.train_dataloader()
        assert loader.persistent_workers
        return next(iter(loader))["image"]

    first = first_batch(0)
    assert torch.equal(first, first_batch(0))
    assert not torch.equal(first, first_batch(1))


# --- cache ------------------------------------------------------------------------------------


def test_cache_is_reused_and_rebuilt_for_another_spacing(synapse_cache: Path) -> None:
    dm = synapse(synapse_cache, source="synthetic")
    folder = dm.cache_path
    before = modification_times(folder)
    dm.prepare_data()
    assert modification_times(folder) == before

    other = synapse(synapse_cache, source="synthetic", spacing=[2.0, 2.0, 2.0])
    assert other.cache_path != folder
    ready(other)
    manifest = json.loads((other.cache_path / MANIFEST).read_text())
    assert manifest["parameters"]["spacing"] == [2.0, 2.0, 2.0]
    assert next(iter(other.val_dataloader()))["image"].shape[2] < 25
    assert modification_times(folder) == before


def test_cache_is_rebuilt_when_an_input_changes(small_synapse_raw: Path, tmp_path: Path) -> None:
    raw = copy_of(small_synapse_raw, tmp_path)
    dm = synapse(tmp_path / "cache", root=str(raw))
    dm.prepare_data()
    manifest = dm.cache_path / MANIFEST
    built = manifest.stat().st_mtime_ns
    dm.prepare_data()
    assert manifest.stat().st_mtime_ns == built
    image = raw / "RawData" / "Training" / "img" / "img0021.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    dm.prepare_data()
    assert manifest.stat().st_mtime_ns != built


def test_an_interrupted_build_is_never_trusted(
    small_synapse_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = copy_of(small_synapse_raw, tmp_path)
    dm = synapse(tmp_path / "cache", root=str(raw))
    real = volume_cache.preprocess_case
    calls = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(volume_cache, "preprocess_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert not (dm.cache_path / MANIFEST).exists()
    assert not list(dm.cache_path.glob(".*.tmp-*"))
    with pytest.raises(DataError, match="call prepare_data"):
        dm.setup("fit")
    monkeypatch.setattr(volume_cache, "preprocess_case", real)
    ready(dm)
    assert len(json.loads((dm.cache_path / MANIFEST).read_text())["cases"]) == 30


# --- errors -----------------------------------------------------------------------------------


def test_missing_synapse_says_where_it_looked_the_layout_and_how_to_dry_run(tmp_path: Path) -> None:
    dm = synapse(tmp_path / "cache", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "RawData/Training/img/img0001.nii.gz" in message
    assert "synapse.org" in message and "data.source=synthetic" in message


def test_missing_acdc_says_where_it_looked_the_layout_and_how_to_dry_run(tmp_path: Path) -> None:
    dm = acdc(tmp_path / "cache", root=str(tmp_path))
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path) in message and "patient001_frame01_gt.nii.gz" in message
    assert "database/training" in message and "data.source=synthetic" in message


@pytest.mark.parametrize("root", ["", "Abdomen", "Abdomen/RawData", "Abdomen/RawData/Training"])
def test_synapse_root_may_point_at_any_level_of_the_archive(
    small_synapse_raw: Path, tmp_path: Path, root: str
) -> None:
    training = tmp_path / "Abdomen" / "RawData" / "Training"
    shutil.copytree(small_synapse_raw / "RawData" / "Training", training)
    dm = synapse(tmp_path / "cache", root=str(tmp_path / root))
    cases, problems = dm.find_cases(tmp_path / root)
    assert not problems and len(cases) == 30
    assert cases[0].images == (training / "img" / "img0001.nii.gz",)


def test_validation_lists_every_problem_in_one_error(
    small_synapse_raw: Path, tmp_path: Path
) -> None:
    raw = copy_of(small_synapse_raw, tmp_path)
    images, labels = raw / "RawData" / "Training" / "img", raw / "RawData" / "Training" / "label"
    (labels / "label0005.nii.gz").unlink()
    small = nib.load(images / "img0006.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((10, 10, 5), np.uint8), small.affine), labels / "label0006.nii.gz"
    )
    label = nib.load(labels / "label0007.nii.gz")
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 17
    nib.save(nib.Nifti1Image(data, label.affine), labels / "label0007.nii.gz")
    (images / "img0009.nii.gz").write_bytes((images / "img0009.nii.gz").read_bytes()[:300])
    shifted = nib.load(labels / "label0010.nii.gz")
    affine = shifted.affine.copy()
    affine[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), affine), labels / "label0010.nii.gz")

    with pytest.raises(DataError) as error:
        synapse(tmp_path / "cache", root=str(raw)).prepare_data()
    message = str(error.value)
    assert "5 problem(s)" in message
    assert "case0005: missing" in message and "label0005.nii.gz" in message
    assert "case0006: image shape" in message and "(10, 10, 5)" in message
    assert "case0007" in message and "17" in message and "0..13" in message
    assert "case0009: cannot read" in message and "img0009.nii.gz" in message
    assert "case0010: image and label affines differ" in message
    assert not (tmp_path / "cache" / "preprocessed").exists()


def test_acdc_validation_reports_missing_frames_and_info(
    acdc_training_raw: Path, tmp_path: Path
) -> None:
    root = copy_of(acdc_training_raw, tmp_path)
    (root / "training" / "patient003" / "Info.cfg").unlink()
    (root / "training" / "patient004" / "patient004_frame01_gt.nii.gz").unlink()
    shutil.rmtree(root / "training" / "patient100")
    cases, problems = acdc(tmp_path / "cache").find_cases(root)
    assert len(cases) == 2 * 97 + 1
    assert len(problems) == 3
    assert "patient003: cannot read ED/ES" in problems[0]
    assert "patient004_ED: missing" in problems[1] and "frame01_gt" in problems[1]
    assert "patient100" in problems[2]


# --- synthetic layouts ------------------------------------------------------------------------


def test_synthetic_synapse_has_the_btcv_layout_dtypes_and_orientation(synapse_raw: Path) -> None:
    training = synapse_raw / "RawData" / "Training"
    assert sorted(p.name for p in (training / "img").iterdir())[:2] == [
        "img0001.nii.gz",
        "img0002.nii.gz",
    ]
    assert len(list((training / "label").iterdir())) == 30
    assert len(list((synapse_raw / "RawData" / "Testing" / "img").iterdir())) == 20
    image, label = (
        nib.load(training / "img" / "img0001.nii.gz"),
        nib.load(training / "label" / "label0001.nii.gz"),
    )
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert set(np.unique(np.asarray(label.dataobj))) == set(range(14))


def test_synthetic_acdc_layouts(acdc_ready: ACDCVolumeDataModule) -> None:
    layout = "database" if acdc_ready.config.source == "synthetic" else "training"
    root = acdc_ready.root
    base = root / "database" if layout == "database" else root
    patient = base / "training" / "patient001"
    info = (patient / "Info.cfg").read_text()
    assert info.startswith("ED: 1\nES: ") and "NbFrame: " in info
    es = int(info.splitlines()[1].split(":")[1])
    names = {p.name for p in patient.iterdir()}
    assert {"patient001_frame01.nii.gz", f"patient001_frame{es:02d}_gt.nii.gz"} <= names
    assert "patient001_4d.nii.gz" in names
    assert nib.load(patient / "patient001_4d.nii.gz").ndim == 4
    assert nib.load(patient / "patient001_frame01.nii.gz").get_data_dtype() == np.int16
    test_patient = base / "testing" / "patient150"
    labelled = (test_patient / "patient150_frame01_gt.nii.gz").exists()
    assert labelled == (layout == "database")
    assert (base / "MANDATORY_CITATION.md").exists() == (layout == "database")


def test_synthetic_copies_are_seeded(tmp_path: Path) -> None:
    first = write_synapse(tmp_path / "a", seed=5, shape=(16, 16, 8))
    second = write_synapse(tmp_path / "b", seed=5, shape=(16, 16, 8))
    name = Path("RawData/Training/img/img0040.nii.gz")
    assert np.array_equal(nib.load(first / name).get_fdata(), nib.load(second / name).get_fdata())


# --- prediction geometry ----------------------------------------------------------------------


def lps_volume(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Any:
    """An LPS anisotropic image with a blob label, as a nibabel image pair."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [20.0, 30.0, -40.0]
    grid = np.indices(shape).astype(float)
    centre = np.array(shape)[:, None, None, None] * np.array([0.4, 0.55, 0.5])[:, None, None, None]
    blob = (((grid - centre) / (np.array(shape)[:, None, None, None] * 0.25)) ** 2).sum(0) <= 1
    image = nib.Nifti1Image((blob * 200 + 50).astype(np.int16), affine)
    return image, blob.astype(np.uint8)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (0.8, 0.8, 3.0)])
def test_restore_labels_returns_the_inputs_grid(spacing: tuple[float, float, float]) -> None:
    image, blob = lps_volume((37, 41, 13), (0.8, 0.8, 3.0))
    model_image, geometry = preprocess_image(image, spacing, {"scheme": "zscore"})
    assert model_image.dtype == np.float32 and model_image.shape == (1, *geometry.model_shape)
    # the prediction of a perfect model: the label taken through the same geometry
    oriented = nib.orientations.apply_orientation(blob, geometry.orientation)
    prediction = resample(oriented, geometry.model_shape, order=0)
    restored = restore_labels(prediction, geometry)
    assert restored.shape == (37, 41, 13) and restored.dtype == np.uint8
    assert np.array_equal(geometry.affine, image.affine)
    assert (restored == blob).mean() > 0.97
    saved = nib.Nifti1Image(restored, geometry.affine, geometry.header)
    assert nib.aff2axcodes(saved.affine) == ("L", "P", "S")


def test_preprocess_image_reorients_to_ras_and_back_exactly() -> None:
    image, blob = lps_volume((37, 41, 13), (0.8, 0.8, 3.0))
    permuted = nib.Nifti1Image(
        np.asarray(image.dataobj).transpose(2, 0, 1), image.affine[:, [2, 0, 1, 3]]
    )
    model_image, geometry = preprocess_image(permuted, (0.8, 0.8, 3.0), {"scheme": "zscore"})
    assert geometry.model_shape == geometry.oriented_shape == (37, 41, 13)
    expected = np.asarray(image.dataobj)[::-1, ::-1]  # LPS -> RAS flips x and y
    assert np.corrcoef(model_image[0].ravel(), expected.ravel())[0, 1] > 0.999
    restored = restore_labels((model_image[0] > 0).astype(np.uint8), geometry)
    assert np.array_equal(restored, blob.transpose(2, 0, 1))


def test_without_reorientation_the_voxel_axes_stay() -> None:
    """ACDC keeps its voxel axes: an oblique, permuted stack still has its slices on axis 2."""
    image, _ = lps_volume((37, 41, 13), (0.8, 0.8, 3.0))
    permuted = nib.Nifti1Image(
        np.asarray(image.dataobj).transpose(2, 0, 1), image.affine[:, [2, 0, 1, 3]]
    )
    model_image, geometry = preprocess_image(
        permuted, (3.0, 0.8, 0.8), {"scheme": "zscore"}, reorient=False
    )
    assert geometry.oriented_spacing == pytest.approx((3.0, 0.8, 0.8))
    assert model_image.shape == (1, 13, 37, 41)
    restored = restore_labels((model_image[0] > 0).astype(np.uint8), geometry)
    assert restored.shape == (13, 37, 41)


def test_acdc_cache_keeps_the_slice_axis_third(acdc_ready: ACDCVolumeDataModule) -> None:
    manifest = json.loads((acdc_ready.cache_path / MANIFEST).read_text())
    assert manifest["parameters"]["reorient"] is False
    assert acdc_ready.preprocessing["reorient"] is False
    for entry in manifest["cases"].values():
        assert entry["source_spacing"][2] in (5.0, 10.0)
        assert entry["source_spacing"][0] < 2
