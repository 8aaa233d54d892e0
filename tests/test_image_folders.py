"""The classification DataModules (SARS-COV2-CT-Scan, MSLD v1/v2.0, Large COVID-19 CT) on
synthetic copies of their downloads.

Every test goes through the real path: class folders as downloaded (with junk and odd image
modes) → discovery → validation → split → loaders. The synthetic sets are written once per
module; tests that damage or move files work on their own copy.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from datamodules import DATAMODULES, build_datamodule, write_dataset
from datamodules.covidct import CovidCTDataModule, write_covidct
from datamodules.errors import DataError
from datamodules.image_folders import ImageFolderDataModule, ImageItem, split_items
from datamodules.msld import MSLDDataModule, write_msld
from datamodules.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    list_images,
    prepare_image,
    read_image,
)
from datamodules.sarscov2 import SarsCov2DataModule, write_sarscov2

IMAGE_SIZE = 32
CONTRACT_KEYS = {
    "name", "root", "source", "batch_size", "num_workers", "image_size", "fold", "num_folds",
    "split_seed", "val_fraction", "test_fraction", "augment", "cache_dir", "synthetic_seed",
    "synthetic_per_class",
}  # fmt: skip


def datamodule(name: str, root: Path, cache: Path, seed: int = 0, **options: Any) -> Any:
    data = dict(
        name=name,
        root=str(root),
        cache_dir=str(cache),
        batch_size=4,
        num_workers=0,
        image_size=IMAGE_SIZE,
    )
    return build_datamodule({**data, **options}, seed=seed)


def ready(dm: Any) -> Any:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def paths(items: list[dict[str, Any]]) -> set[str]:
    return {item["path"] for item in items}


def labels(items: list[dict[str, Any]]) -> Counter:
    return Counter(item["label"] for item in items)


def copy_of(raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw, tmp_path / "raw"))


@pytest.fixture(scope="module")
def sars_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sarscov2(tmp_path_factory.mktemp("sars"), per_class=30)


@pytest.fixture(scope="module")
def msld_v1_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msld(tmp_path_factory.mktemp("msld-v1"), version="v1")


@pytest.fixture(scope="module")
def msld_originals_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msld(tmp_path_factory.mktemp("msld-v1-originals"), version="v1", folds=False)


@pytest.fixture(scope="module")
def msld_v2_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msld(tmp_path_factory.mktemp("msld-v2"), version="v2")


@pytest.fixture(scope="module")
def covidct_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_covidct(tmp_path_factory.mktemp("covidct"), per_class=24)


@pytest.fixture(scope="module")
def sars_ready(sars_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> SarsCov2DataModule:
    return ready(datamodule("sarscov2", sars_raw, tmp_path_factory.mktemp("sars-cache")))


# --- registry and configuration ---------------------------------------------------------------


def test_registry_builds_each_dataset_with_its_constants(tmp_path: Path) -> None:
    sars = build_datamodule({"name": "sarscov2"}, seed=3)
    assert isinstance(sars, SarsCov2DataModule) and isinstance(sars, ImageFolderDataModule)
    assert sars.seed == 3 and sars.task == "classification"
    assert (sars.in_channels, sars.num_classes, sars.image_size) == (3, 2, 224)
    assert sars.class_names == ["non-COVID", "COVID"]
    msld = build_datamodule({"name": "msld", "root": str(tmp_path / "not-there")})
    assert isinstance(msld, MSLDDataModule) and msld.version == "v1"
    assert msld.class_names == ["Others", "Monkeypox"]
    v2 = build_datamodule({"name": "msld", "version": "v2"})
    assert v2.class_names == ["Chickenpox", "Cowpox", "HFMD", "Healthy", "Measles", "Mpox"]
    covid = build_datamodule({"name": "covidct"})
    assert isinstance(covid, CovidCTDataModule)
    assert covid.class_names == ["NonCOVID", "COVID", "CAP"] and covid.num_classes == 3
    binary = build_datamodule({"name": "covidct", "classes": "binary"})
    assert binary.class_names == ["NonCOVID", "COVID"] and binary.num_classes == 2
    preprocessing = json.loads(json.dumps(covid.preprocessing))
    assert preprocessing == {
        "image_size": 224,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "class_names": ["NonCOVID", "COVID", "CAP"],
    }
    assert {DATAMODULES[n] for n in ("sarscov2", "msld", "covidct")} == {
        SarsCov2DataModule,
        MSLDDataModule,
        CovidCTDataModule,
    }


def test_config_has_the_contract_keys_and_rejects_bad_values() -> None:
    for cls in (SarsCov2DataModule, MSLDDataModule, CovidCTDataModule):
        assert set(cls.Config.__dataclass_fields__) >= CONTRACT_KEYS
        assert cls.Config().fold is None and cls.Config().source == "real"
    assert MSLDDataModule.Config().version == "auto"
    assert (CovidCTDataModule.Config().classes, CovidCTDataModule.Config().patient_split) == (
        "three",
        True,
    )
    with pytest.raises(DataError) as error:
        build_datamodule(dict(name="sarscov2", source="x", fold=5, test_fraction=0.0, image_size=0))
    message = str(error.value)
    assert "4 problem(s)" in message
    for key in ("source", "fold must be None or 0..4", "test_fraction", "image_size"):
        assert key in message
    with pytest.raises(DataError, match="version must be auto, v1 or v2, not 'v3'"):
        build_datamodule(dict(name="msld", version="v3"))
    with pytest.raises(DataError, match="classes must be three or binary"):
        build_datamodule(dict(name="covidct", classes="two"))


def test_default_roots_follow_mednext_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDNEXT_DATA", "/datasets")
    assert SarsCov2DataModule.Config().root == "/datasets/SARS-COV2-CT-Scan"
    assert MSLDDataModule.Config().root == "/datasets/Monkeypox-Skin-Lesion"
    assert CovidCTDataModule.Config().root == "/datasets/Large-COVID19-CT-Slices"


# --- synthetic copies and what is read -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "folder", "images"),
    [
        ("sarscov2", {}, "seed0-12", 24),
        ("msld", {}, "seed0-12-v1", 44),  # Fold1: 2×(2 test + 1+1 val + 9+9 train)
        ("msld", {"version": "v2"}, "seed0-12-v2", 72),  # fold1 of six classes
        ("covidct", {}, "seed0-12", 36),
    ],
)
def test_source_synthetic_writes_the_layout_once_and_reads_it(
    tmp_path: Path, name: str, options: dict[str, Any], folder: str, images: int
) -> None:
    dm = ready(datamodule(name, tmp_path / "nowhere", tmp_path, source="synthetic", **options))
    assert dm.root == tmp_path / "synthetic" / folder
    assert sum(len(part) for part in dm.split.values()) == images
    assert not [p for p in (tmp_path / "synthetic").iterdir() if p.name.startswith(".")]
    written = {p: p.stat().st_mtime_ns for p in dm.root.rglob("*") if p.is_file()}
    again = ready(datamodule(name, tmp_path / "nowhere", tmp_path, source="synthetic", **options))
    assert {p: p.stat().st_mtime_ns for p in dm.root.rglob("*") if p.is_file()} == written
    assert again.split == dm.split


def test_junk_and_non_images_are_ignored(sars_raw: Path, sars_ready: SarsCov2DataModule) -> None:
    folder = sars_raw / "COVID"
    assert {"Thumbs.db", "._Non-Covid (1).png"} <= {
        p.name for p in (sars_raw / "non-COVID").iterdir()
    }
    assert {".DS_Store", "desktop.ini"} <= {p.name for p in folder.iterdir()}
    assert (sars_raw / ".DS_Store").is_file() and (sars_raw / "__MACOSX" / "COVID").is_dir()
    assert len(list_images(folder)) == 30
    assert "Covid (5).PNG" in {p.name for p in list_images(folder)}
    read = set().union(*(paths(part) for part in sars_ready.split.values()))
    assert len(read) == 60
    assert all(p.startswith(("COVID/", "non-COVID/")) for p in read)
    assert not [p for p in read if "._" in p or "__MACOSX" in p]


def test_unreadable_images_are_listed_together_in_one_error(sars_raw: Path, tmp_path: Path) -> None:
    raw = copy_of(sars_raw, tmp_path)
    (raw / "COVID" / "Covid (7).png").write_bytes(b"not an image at all" * 10)
    truncated = raw / "non-COVID" / "Non-Covid (9).png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    dm = datamodule("sarscov2", raw, tmp_path / "cache")
    with pytest.raises(DataError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert message.startswith(f"SARS-COV2-CT-Scan at {raw}: 2 problem(s)")
    assert "COVID/Covid (7).png: UnidentifiedImageError: cannot identify image file" in message
    assert "non-COVID/Non-Covid (9).png: OSError" in message and "truncated" in message
    assert not list((tmp_path / "cache").glob("validated-*.json"))
    with pytest.raises(DataError, match="2 problem"):
        dm.setup("fit")


def test_validation_is_recorded_and_repeated_only_for_changed_files(
    sars_raw: Path, tmp_path: Path
) -> None:
    raw = copy_of(sars_raw, tmp_path)
    cache = tmp_path / "cache"
    ready(datamodule("sarscov2", raw, cache))
    records = list(cache.glob("validated-*.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["images"] == 60
    # Same size, same mtime: the record stands and the image is not read again.
    image = raw / "COVID" / "Covid (3).png"
    stat = image.stat()
    image.write_bytes(b"\0" * stat.st_size)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    ready(datamodule("sarscov2", raw, cache))
    # A new modification time makes it a different image list: read again, and caught.
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=r"COVID/Covid \(3\)\.png: UnidentifiedImageError"):
        datamodule("sarscov2", raw, cache).prepare_data()


# --- missing and misplaced datasets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layout", "url"),
    [
        ("sarscov2", "<root>/COVID/Covid (1).png", "plameneduardo/sarscov2-ctscan-dataset"),
        ("msld", "Fold1/Fold1/Fold1/{Train,Val,Test}", "nafin59/monkeypox-skin-lesion-dataset"),
        ("covidct", "curated_data/curated_data/1NonCOVID", "maedemaftouni/large-covid19-ct"),
    ],
)
def test_missing_dataset_says_where_it_looked_the_layout_and_how_to_dry_run(
    tmp_path: Path, name: str, layout: str, url: str
) -> None:
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataError) as error:
            datamodule(name, root, tmp_path / "cache").prepare_data()
        message = str(error.value)
        assert "not found" in message and str(root) in message
        assert layout in message and f"kaggle.com/datasets/{url}" in message
        assert "data.source=synthetic" in message
    assert "levels below it" in message and "does not exist" not in message


@pytest.mark.parametrize("levels", [0, 1, 3])
def test_root_may_hold_the_class_folders_up_to_three_levels_down(
    sars_raw: Path, tmp_path: Path, levels: int
) -> None:
    nested = tmp_path.joinpath("data", *(["SARS"] * levels))
    shutil.copytree(sars_raw, nested)
    dm = ready(datamodule("sarscov2", tmp_path / "data", tmp_path / "cache"))
    prefix = "/".join(["SARS"] * levels + ["COVID"])
    assert all(p.startswith(prefix) or "non-COVID" in p for p in paths(dm.split["test"]))
    assert len(dm._items) == 60


def test_deeper_or_duplicated_class_folders_are_errors(sars_raw: Path, tmp_path: Path) -> None:
    shutil.copytree(sars_raw, tmp_path / "deep" / "a" / "b" / "c" / "d")
    with pytest.raises(DataError, match="not found"):
        datamodule("sarscov2", tmp_path / "deep", tmp_path / "cache").prepare_data()
    shutil.copytree(sars_raw, tmp_path / "two" / "first")
    shutil.copytree(sars_raw, tmp_path / "two" / "second")
    with pytest.raises(DataError, match="several copies of the class folders") as error:
        datamodule("sarscov2", tmp_path / "two", tmp_path / "cache").prepare_data()
    assert "first" in str(error.value) and "second" in str(error.value)


# --- splits -----------------------------------------------------------------------------------


def test_split_is_seeded_stratified_disjoint_and_complete(
    sars_raw: Path, sars_ready: SarsCov2DataModule, tmp_path: Path
) -> None:
    split = sars_ready.split
    assert [len(split[p]) for p in ("train", "val", "test")] == [48, 6, 6]
    assert labels(split["test"]) == {0: 3, 1: 3} and labels(split["val"]) == {0: 3, 1: 3}
    parts = [paths(split[p]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 60
    assert all(item["path"].startswith("COVID/") == (item["label"] == 1) for item in split["test"])
    again = ready(datamodule("sarscov2", sars_raw, tmp_path, seed=7))
    assert again.split == split  # the training seed does not move images
    other = ready(datamodule("sarscov2", sars_raw, tmp_path, split_seed=1))
    assert paths(other.split["test"]) != paths(split["test"])
    assert labels(other.split["test"]) == {0: 3, 1: 3}


def test_split_does_not_depend_on_the_listing_order() -> None:
    items = [ImageItem(f"c{label}/{i:02d}.png", label) for label in (0, 1) for i in range(20)]
    reference = split_items(items, 0.1, 0.1, None, 5, seed=3)
    shuffled = list(np.random.default_rng(0).permutation(np.array(items, dtype=object)))
    assert split_items(shuffled, 0.1, 0.1, None, 5, seed=3) == reference
    assert [len(reference[p]) for p in ("train", "val", "test")] == [32, 4, 4]


def test_folds_are_disjoint_cover_the_non_test_images_and_keep_the_test_part(
    sars_raw: Path, tmp_path: Path
) -> None:
    splits = [ready(datamodule("sarscov2", sars_raw, tmp_path, fold=k)).split for k in range(5)]
    test = paths(splits[0]["test"])
    vals = [paths(s["val"]) for s in splits]
    rest = set().union(*(paths(s["train"]) | paths(s["val"]) for s in splits))
    assert all(paths(s["test"]) == test for s in splits) and not rest & test
    assert set().union(*vals) == rest and sum(len(v) for v in vals) == len(rest) == 54
    for s in splits:
        assert not paths(s["train"]) & paths(s["val"])
        assert paths(s["train"]) | paths(s["val"]) == rest
        assert abs(labels(s["val"])[0] - labels(s["val"])[1]) <= 1


def patient_of(item: dict[str, Any]) -> str:
    folder, name = item["path"].split("/")[-2:]
    return f"{folder}/{name.split('_')[0]}"


def test_covidct_splits_by_patient_and_maps_the_classes(covidct_raw: Path, tmp_path: Path) -> None:
    dm = ready(datamodule("covidct", covidct_raw, tmp_path))
    assert dm.split_details() == {"classes": "three", "patient_split": True}
    patients = {p: {patient_of(i) for i in dm.split[p]} for p in ("train", "val", "test")}
    assert all(patients.values())
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(part) for part in dm.split.values()) == 72
    label_of = {"1NonCOVID": 0, "2COVID": 1, "3CAP": 2}
    for item in dm.split["train"]:
        assert item["label"] == label_of[item["path"].split("/")[-2]]
    for k in range(5):
        fold = ready(datamodule("covidct", covidct_raw, tmp_path, fold=k)).split
        assert {patient_of(i) for i in fold["test"]} == patients["test"]
        assert not {patient_of(i) for i in fold["train"]} & {patient_of(i) for i in fold["val"]}
    binary = ready(datamodule("covidct", covidct_raw, tmp_path, classes="binary"))
    for item in binary.split["train"] + binary.split["test"]:
        assert item["label"] == (1 if "/2COVID/" in item["path"] else 0)
    assert labels(binary.split["train"]).keys() == {0, 1}


def test_covidct_without_complete_metadata_splits_by_image_and_says_so(
    covidct_raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = copy_of(covidct_raw, tmp_path)
    with open(raw / "meta_data_cap.csv", encoding="latin-1") as stream:
        rows = list(csv.reader(stream))
    with open(raw / "meta_data_cap.csv", "w", newline="", encoding="latin-1") as stream:
        csv.writer(stream).writerows(rows[:-1])  # the last CAP slice loses its patient
    with caplog.at_level(logging.WARNING, logger="datamodules.image_folders"):
        dm = ready(datamodule("covidct", raw, tmp_path / "cache"))
    assert "1 of 72 images have no patient in the metadata" in caplog.text
    assert "splitting by image" in caplog.text
    dm.write_split(tmp_path / "split.json")
    assert json.loads((tmp_path / "split.json").read_text())["split_rule"] == "stratified by image"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.image_folders"):
        ready(datamodule("covidct", covidct_raw, tmp_path / "cache", patient_split=False))
    assert not caplog.text


def test_msld_v1_uses_its_fold1_whose_test_holds_only_originals(
    msld_v1_raw: Path, tmp_path: Path
) -> None:
    dm = ready(datamodule("msld", msld_v1_raw, tmp_path))
    assert dm.version == "v1" and dm.class_names == ["Others", "Monkeypox"]
    base = "Fold1/Fold1/Fold1/"
    for part, folder in (("train", "Train"), ("val", "Val"), ("test", "Test")):
        assert all(p.startswith(f"{base}{folder}/") for p in paths(dm.split[part]))
    assert [len(dm.split[p]) for p in ("train", "val", "test")] == [36, 4, 4]
    assert not [p for p in paths(dm.split["test"]) if "_aug" in p]
    assert [p for p in paths(dm.split["train"]) if "_aug" in p]
    for item in dm.split["test"]:
        assert item["label"] == (1 if "/Monkeypox/" in item["path"] else 0)
    with pytest.raises(DataError, match=r"fold1 \(data.fold=0\)"):
        ready(datamodule("msld", msld_v1_raw, tmp_path, fold=1))


def test_msld_v1_originals_only_get_a_stratified_split_and_folds(
    msld_originals_raw: Path, tmp_path: Path
) -> None:
    dm = ready(datamodule("msld", msld_originals_raw, tmp_path))
    everything = set().union(*(paths(part) for part in dm.split.values()))
    assert len(everything) == 24
    assert all(p.startswith("Original Images/Original Images/") for p in everything)
    assert {p.split("/")[2] for p in everything} == {"Monkey Pox", "Others"}
    assert labels(dm.split["test"]) == {0: 2, 1: 1} or labels(dm.split["test"]) == {0: 1, 1: 2}
    folds = [ready(datamodule("msld", msld_originals_raw, tmp_path, fold=k)) for k in (0, 1)]
    assert folds[0].split["test"] == folds[1].split["test"] == dm.split["test"]
    assert not paths(folds[0].split["val"]) & paths(folds[1].split["val"])


def test_msld_v2_is_detected_and_its_release_folds_are_used(
    msld_v2_raw: Path, tmp_path: Path
) -> None:
    dm = ready(datamodule("msld", msld_v2_raw, tmp_path))
    assert dm.version == "v2" and dm.num_classes == 6
    base = "Original Images/Original Images/FOLDS/fold1/"
    for part, folder in (("train", "Train"), ("val", "Valid"), ("test", "Test")):
        assert all(p.startswith(f"{base}{folder}/") for p in paths(dm.split[part]))
    assert labels(dm.split["test"]) == {label: 3 for label in range(6)}
    for item in dm.split["val"]:
        assert dm.class_names[item["label"]] == item["path"].split("/")[-2]
    third = ready(datamodule("msld", msld_v2_raw, tmp_path, fold=2))
    assert all("/FOLDS/fold3/" in p for p in paths(third.split["test"]))
    assert not {p.rsplit("/", 1)[1] for p in paths(third.split["test"])} & {
        p.rsplit("/", 1)[1] for p in paths(dm.split["test"])
    }
    with pytest.raises(DataError, match=r"set data\.version=v2"):
        ready(datamodule("msld", msld_v2_raw, tmp_path, version="v1"))


def test_msld_with_both_versions_asks_which(
    msld_v1_raw: Path, msld_v2_raw: Path, tmp_path: Path
) -> None:
    shutil.copytree(msld_v1_raw / "Original Images", tmp_path / "both" / "v1" / "Original Images")
    shutil.copytree(msld_v2_raw / "Original Images", tmp_path / "both" / "v2" / "Original Images")
    with pytest.raises(DataError, match=r"both the v1 and the v2\.0 layout; set data\.version"):
        datamodule("msld", tmp_path / "both", tmp_path / "cache")
    dm = ready(datamodule("msld", tmp_path / "both", tmp_path / "cache", version="v1"))
    assert all(p.startswith("v1/") for p in paths(dm.split["train"]))


# --- loaders ----------------------------------------------------------------------------------


def test_loaders_give_the_batch_contract(sars_ready: SarsCov2DataModule) -> None:
    batches = list(sars_ready.train_dataloader())
    assert len(batches) == 48 // 4
    for batch in batches:
        assert batch["image"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
        assert batch["label"].shape == (4,) and len(batch["path"]) == 4
    assert {p for b in batches for p in b["path"]} == paths(sars_ready.split["train"])
    for loader, part in (
        (sars_ready.val_dataloader(), "val"),
        (sars_ready.test_dataloader(), "test"),
    ):
        batches = list(loader)
        assert [p for b in batches for p in b["path"]] == [
            i["path"] for i in sars_ready.split[part]
        ]
        assert torch.cat([b["label"] for b in batches]).tolist() == [
            i["label"] for i in sars_ready.split[part]
        ]
        assert [b["image"].shape[0] for b in batches] == [4, 2]


def test_training_batches_are_seeded(sars_raw: Path, tmp_path: Path) -> None:
    def first_batch(seed: int) -> dict[str, Any]:
        dm = ready(datamodule("sarscov2", sars_raw, tmp_path, seed=seed))
        return next(iter(dm.train_dataloader()))

    one, same, other = first_batch(0), first_batch(0), first_batch(1)
    assert one["path"] == same["path"] and torch.equal(one["image"], same["image"])
    assert one["path"] != other["path"]


def test_a_small_training_set_keeps_its_only_batch(sars_raw: Path, tmp_path: Path) -> None:
    dm = ready(datamodule("sarscov2", sars_raw, tmp_path, batch_size=64, augment=False))
    (batch,) = list(dm.train_dataloader())
    assert batch["image"].shape[0] == 48


def test_prepare_image_reproduces_the_test_loader(sars_ready: SarsCov2DataModule) -> None:
    batch = next(iter(sars_ready.test_dataloader()))
    for index in range(2):
        path = sars_ready.root / batch["path"][index]
        assert torch.equal(prepare_image(path, sars_ready.preprocessing), batch["image"][index])
    preprocessing = json.loads(json.dumps(sars_ready.preprocessing))
    image = eval_transform(**preprocessing)(image=read_image(path))["image"]
    assert torch.equal(image, batch["image"][1])


def test_distributed_evaluation_sees_every_image_once(sars_raw: Path, tmp_path: Path) -> None:
    dm = ready(datamodule("sarscov2", sars_raw, tmp_path, val_fraction=0.15))
    seen = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen += [p for batch in dm.val_dataloader() for p in batch["path"]]
    assert len(dm.split["val"]) % 2 == 1  # an odd count: padding would repeat one image
    assert sorted(seen) == sorted(paths(dm.split["val"]))


def test_write_split_records_what_reproduces_it(
    sars_ready: SarsCov2DataModule, tmp_path: Path
) -> None:
    sars_ready.write_split(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["split"] == sars_ready.split
    assert saved["dataset"] == "sarscov2" and saved["source"] == "real"
    assert saved["root"] == str(sars_ready.root)
    assert (saved["fold"], saved["num_folds"], saved["split_seed"], saved["seed"]) == (
        None,
        5,
        0,
        0,
    )
    assert saved["class_names"] == ["non-COVID", "COVID"]
    assert saved["counts"] == {
        "train": {"non-COVID": 24, "COVID": 24},
        "val": {"non-COVID": 3, "COVID": 3},
        "test": {"non-COVID": 3, "COVID": 3},
    }
    assert saved["split_rule"] == "stratified by image"


# --- synthetic data ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sarscov2", "msld"])
def test_synthetic_classes_are_learnable(name: str, tmp_path: Path) -> None:
    """A nearest-centroid classifier on the evaluation images separates the classes."""
    options = {"version": "v2"} if name == "msld" else {"synthetic_per_class": 20}
    dm = ready(datamodule(name, tmp_path, tmp_path, source="synthetic", **options))

    def features(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(dm._eval_loader(part))
        images = torch.cat([b["image"] for b in batches]).flatten(1)
        return images, torch.cat([b["label"] for b in batches])

    train, train_labels = features("train")
    test, test_labels = features("test")
    centroids = torch.stack([train[train_labels == c].mean(0) for c in range(dm.num_classes)])
    predicted = torch.cdist(test, centroids).argmin(1)
    assert (predicted == test_labels).float().mean() >= 0.8


def test_the_data_synthetic_command_writes_each_layout(tmp_path: Path) -> None:
    from mednext.cli import main

    assert main(["data", "synthetic", "sarscov2", str(tmp_path / "sars")]) == 0
    assert len(list_images(tmp_path / "sars" / "COVID")) == 12
    msld = write_dataset("msld", tmp_path / "msld", seed=1, per_class=10, version="v2")
    assert len(list((msld / "Original Images" / "Original Images" / "FOLDS").iterdir())) == 5
    covid = write_dataset("covidct", tmp_path / "covid", per_class=10)
    assert {p.name for p in covid.glob("*.csv")} == {
        "meta_data_normal.csv",
        "meta_data_covid.csv",
        "meta_data_cap.csv",
    }
    with open(covid / "meta_data_cap.csv", encoding="latin-1") as stream:
        header = next(csv.reader(stream))
    assert header[:2] == ["Patient ID", "File name"]


def test_synthetic_copies_are_seeded(tmp_path: Path) -> None:
    first = write_sarscov2(tmp_path / "a", seed=4)
    second = write_sarscov2(tmp_path / "b", seed=4)
    third = write_sarscov2(tmp_path / "c", seed=5)
    name = Path("COVID") / "Covid (9).png"
    assert np.array_equal(read_image(first / name), read_image(second / name))
    assert not np.array_equal(read_image(first / name), read_image(third / name))
