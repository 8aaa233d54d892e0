"""Synapse multi-organ CT (BTCV, MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault"): the
raw 3D volumes (``synapse``), TransUNet's 2D release (``synapse2d``) and their synthetic copies.

The raw training set as downloaded from Synapse (syn3193805, ``Abdomen/RawData.zip``): 30 CT
volumes ``RawData/Training/img/img00XX.nii.gz`` with labels ``RawData/Training/label/
label00XX.nii.gz`` of 13 organs. The split is TransUNet's (Chen et al. 2021, its
``lists_Synapse``): 18 training and 12 test cases; a few of the 18 are held out for validation
(TransUNet had no validation set), or ``fold=k`` cross-validates the 18.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datamodules import synthetic
from datamodules.base import dataset_not_found, dataset_root, kfold, seeded_sample
from datamodules.errors import DataError, problem_report
from datamodules.nnunet_layout import DATASET_JSON, converted_cases
from datamodules.preprocessing import volume_to_slices
from datamodules.releases import (
    Release,
    find_lists_folder,
    find_release_folders,
    read_list,
    release_folder,
    save_h5,
    save_npz,
    set_differences,
    write_list,
)
from datamodules.slices import SliceConfig, SliceDataModule
from datamodules.volume_cache import CaseFiles, check_case
from datamodules.volumes import VolumeConfig, VolumeDataModule
from mednext.progress import progress_bar

#: BTCV label ids 1..13 (the challenge's label table), index 0 background.
CLASS_NAMES = (
    "background",
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_splenic_vein",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
)
#: The 30 labelled training volumes of BTCV (``RawData/Training``).
TRAINING_CASES = (*range(1, 11), *range(21, 41))
#: The 20 unlabelled challenge test volumes (``RawData/Testing/img``); not used.
CHALLENGE_TEST_CASES = tuple(range(61, 81))
#: TransUNet's test cases (``lists/lists_Synapse/test_vol.txt``); the other 18 train.
TRANSUNET_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)

DOWNLOAD = "https://www.synapse.org/#!Synapse:syn3193805/wiki/217789 (Files: Abdomen/RawData.zip)"
LAYOUT = """\
  <root>/RawData/Training/img/img0001.nii.gz ... img0040.nii.gz    (30 CT volumes)
  <root>/RawData/Training/label/label0001.nii.gz ... label0040.nii.gz
(<root> may also be the RawData folder itself, or hold Abdomen/RawData/...; or an nnU-Net v2 copy:
 <root>/dataset.json, imagesTr/img0001_0000.nii.gz ..., labelsTr/img0001.nii.gz ...)"""


def case_id(number: int) -> str:
    """``case0001``: TransUNet's name for BTCV volume 1."""
    return f"case{number:04d}"


def image_name(number: int) -> str:
    return f"img{number:04d}.nii.gz"


def label_name(number: int) -> str:
    return f"label{number:04d}.nii.gz"


def find_training_folder(root: Path) -> Path:
    """The ``Training`` folder (holding ``img/`` and ``label/``) at ``root`` or up to three levels
    below it (``RawData/``, ``Abdomen/RawData/``, ...); the shallowest if several."""
    patterns = ["", "Training", "*/Training", "*/*/Training", "*/*/*/Training"]
    for pattern in patterns:
        candidates = [root] if not pattern else sorted(root.glob(pattern))
        found = [c for c in candidates if (c / "img").is_dir() and (c / "label").is_dir()]
        if len(found) > 1:
            raise DataError(
                f"Synapse: several raw training folders under {root}: "
                f"{', '.join(map(str, found))}; point data.root at one of them"
            )
        if found:
            return found[0]
    looked = ", ".join(str(root / p) if p else str(root) for p in patterns)
    raise dataset_not_found(
        f"Synapse (BTCV) raw data not found: no folder with img/ and label/ at {looked}.",
        "Expected layout",
        LAYOUT,
        f"{DOWNLOAD} (free registration)",
        SynapseVolumeDataModule.EXAMPLE_EXPERIMENT,
    )


class SynapseVolumeDataModule(VolumeDataModule):
    """Synapse/BTCV multi-organ CT, 3D, 14 classes; TransUNet's 18/12 split.

    Validation: ``num_val_cases`` of the 18 training cases drawn with ``split_seed`` (TransUNet
    trained on all 18 and had no validation set), or with ``fold=k`` fold ``k`` of a seeded
    ``num_folds``-fold cross-validation of the 18 (nnU-Net style). The 12 test cases never change.
    Defaults follow MedNeXt's BTCV training: 1 mm isotropic, 128³ patches.
    """

    @dataclass
    class Config(VolumeConfig):
        """The ``data:`` keys for ``name: synapse`` (see ``VolumeConfig``).

        Attributes:
            num_val_cases: validation cases drawn from the 18 training cases (``fold=None``).
        """

        name: str = "synapse"
        root: str = field(default_factory=lambda: dataset_root("Synapse"))
        patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
        spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
        synthetic_shape: list[int] = field(default_factory=lambda: [48, 48, 24])
        num_val_cases: int = 2

    title = "Synapse"
    channel_names = ("CT",)
    CLASS_NAMES = CLASS_NAMES
    DOWNLOAD = DOWNLOAD
    LAYOUT = LAYOUT
    EXAMPLE_EXPERIMENT = "synapse_mednext_s"

    def __init__(self, config: Config | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        if not 1 <= self.config.num_val_cases < len(TRAINING_CASES) - len(TRANSUNET_TEST_CASES):
            raise DataError(f"num_val_cases must be 1..17, not {self.config.num_val_cases}")

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        if (root / DATASET_JSON).is_file():
            return self.find_converted_cases(root)
        folder = find_training_folder(root)
        cases, problems = [], []
        for number in TRAINING_CASES:
            image = _existing(folder / "img", image_name(number))
            label = _existing(folder / "label", label_name(number))
            missing = [str(p) for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{case_id(number)}: missing {' and '.join(missing)}")
            else:
                cases.append(CaseFiles(case_id(number), (image,), label))
        return cases, problems

    def find_converted_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        """The 30 training cases of an nnU-Net v2 copy of BTCV at ``root``: each case id's last
        number is the BTCV volume (``img0001``, ``0001``, ``BTCV_01`` → ``case0001``), so the
        TransUNet split applies as to the raw download."""
        converted, problems = converted_cases(root, self.title, 1, len(CLASS_NAMES))
        by_number: dict[int, CaseFiles] = {}
        for case in converted:
            digits = re.findall(r"\d+", case.case_id)
            number = int(digits[-1]) if digits else None
            if number not in TRAINING_CASES:
                problems.append(
                    f"{case.case_id} ({case.label}) is not one of the 30 BTCV training volumes "
                    "(its last number: 1-10, 21-40)"
                )
            elif number in by_number:
                problems.append(
                    f"{case.case_id} and {by_number[number].case_id} are both BTCV volume {number}"
                )
            else:
                by_number[number] = case
        problems += [
            f"{case_id(n)}: no case numbered {n} in {root / 'imagesTr'}"
            for n in TRAINING_CASES
            if n not in by_number
        ]
        cases = [CaseFiles(case_id(n), c.images, c.label) for n, c in sorted(by_number.items())]
        return cases, problems

    def is_test_case(self, case_id: str) -> bool:
        return case_id in _TEST_IDS

    def make_split(self, case_ids: Sequence[str]) -> dict[str, list[str]]:
        test = sorted(_TEST_IDS)
        trainval = sorted(set(case_ids) - _TEST_IDS)
        if self.config.fold is None:
            val = seeded_sample(trainval, self.config.num_val_cases, self.config.split_seed)
            train = sorted(set(trainval) - set(val))
        else:
            train, val = kfold(
                trainval, self.config.num_folds, self.config.fold, self.config.split_seed
            )
        return dict(train=train, val=val, test=test)

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_synapse(root, seed=seed, **options)


_TEST_IDS = {case_id(n) for n in TRANSUNET_TEST_CASES}


def _existing(folder: Path, name: str) -> Path:
    """``folder/name``, or the uncompressed ``.nii`` beside it when only that exists."""
    path = folder / name
    unzipped = path.with_suffix("")
    return unzipped if not path.is_file() and unzipped.is_file() else path


# --- the 2D release (TransUNet) ----------------------------------------------------------------

#: TransUNet's 8 organs (its paper and ``test.py``), index 0 background; the 2D release's ids.
SLICE_CLASS_NAMES = (
    "background",
    "aorta",
    "gallbladder",
    "left_kidney",
    "right_kidney",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)
#: BTCV label -> the 2D release's label (docs/datasets.md; mmsegmentation's TransUNet converter has
#: the same table); every other organ becomes background.
TRANSUNET_LABELS = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
#: TransUNet ``datasets/README.md``: "clip the images within [-125, 275], normalize each 3D image
#: to [0, 1]" (HU).
HU_WINDOW = (-125.0, 275.0)

RELEASE_DOWNLOAD = (
    "TransUNet's preprocessed data (github.com/Beckschen/TransUNet, datasets/README.md: request "
    "it from the authors, for research use only; the copy linked by TransUNet-based projects "
    "such as Swin-Unet: https://drive.google.com/drive/folders/1ACJEoTp-uqfFJ73qS3eUObQh52nGuzCd)"
)
RELEASE_LAYOUT = """\
  <root>/train_npz/case0005_slice000.npz ...   (slices of the 18 training cases: image, label)
  <root>/test_vol_h5/case0001.npy.h5 ...       (the 12 test volumes: image, label [D, H, W])
  <root>/lists/lists_Synapse/train.txt, test_vol.txt   (optional: TransUNet's split is shipped)"""
TRAIN_FOLDER, TEST_FOLDER, LISTS = "train_npz", "test_vol_h5", "lists_Synapse"
_SLICE_NAME = re.compile(r"(case\d{4})_slice(\d+)")
_CASE_NAME = re.compile(r"case\d{4}")


def slice_file(case: str, index: int) -> str:
    """``train_npz/case0005_slice000.npz``: slice ``index`` of case ``case``."""
    return f"{TRAIN_FOLDER}/{case}_slice{index:03d}.npz"


def volume_file(case: str) -> str:
    """``test_vol_h5/case0001.npy.h5``."""
    return f"{TEST_FOLDER}/{case}.npy.h5"


class SynapseSliceDataModule(SliceDataModule):
    """Synapse in TransUNet's 2D release: 9 classes (8 organs), 224² slices, TransUNet's 18/12
    split.

    TransUNet trains on all 18 training cases with no validation set (``num_val_cases: 0``, the
    default; ``has_validation`` is then false). ``num_val_cases: k`` holds out ``k`` of the 18
    (drawn with ``split_seed``) as validation volumes stacked from their slices; ``fold: k``
    validates on fold ``k`` of a seeded ``num_folds``-fold cross-validation of the 18. The 12
    test volumes never change.
    """

    @dataclass
    class Config(SliceConfig):
        """The ``data:`` keys for ``name: synapse2d`` (see ``SliceConfig``).

        Attributes:
            num_val_cases: training cases held out as validation volumes (``fold=None``); 0 is
                TransUNet's protocol (no validation).
        """

        name: str = "synapse2d"
        root: str = field(default_factory=lambda: dataset_root("Synapse2D"))
        num_val_cases: int = 0

    title = "Synapse 2D (TransUNet release)"
    CLASS_NAMES = SLICE_CLASS_NAMES
    KEYS = ("image", "label")
    INTENSITY: ClassVar[dict[str, Any]] = {"scheme": "window", "window": list(HU_WINDOW)}
    DOWNLOAD = RELEASE_DOWNLOAD
    LAYOUT = RELEASE_LAYOUT
    EXAMPLE_EXPERIMENT = "synapse2d_cmunext"

    def config_problems(self) -> list[str]:
        problems = super().config_problems()
        if not 0 <= self.config.num_val_cases < len(_TRAIN_IDS):
            problems.append(
                f"num_val_cases must be 0..{len(_TRAIN_IDS) - 1}, not {self.config.num_val_cases}"
            )
        return problems

    def validation_configured(self) -> bool:
        return self.config.fold is not None or self.config.num_val_cases > 0

    def split_details(self) -> dict[str, Any]:
        return dict(num_val_cases=self.config.num_val_cases)

    def find_release(self, root: Path) -> Release:
        folders = find_release_folders(root, lambda d: (d / TRAIN_FOLDER).is_dir())
        if not folders:
            raise self.missing(root)
        if len(folders) > 1:
            raise DataError(
                f"{self.title}: several {TRAIN_FOLDER}/ folders under {root}: "
                f"{', '.join(map(str, folders))}; point data.root at one of them"
            )
        release = Release(folders[0])
        lists = find_lists_folder(release.base, root, LISTS)
        train_list = lists / "train.txt" if lists and (lists / "train.txt").is_file() else None
        test_list = lists / "test_vol.txt" if lists and (lists / "test_vol.txt").is_file() else None
        release.lists = lists if train_list or test_list else None

        if test_list:
            test = [n.removesuffix(".npy.h5") for n in read_list(test_list)]
            release.problems += [
                f"{test_list}: {n!r} is not a caseXXXX name"
                for n in test
                if not _CASE_NAME.fullmatch(n)
            ]
            test = sorted({n for n in test if _CASE_NAME.fullmatch(n)})
            release.differences += set_differences("test_vol.txt", set(test), _TEST_IDS)
        else:
            test = sorted(_TEST_IDS)
        for case in test:
            release.add_volume("test", case, volume_file(case))

        if train_list:
            names, where = read_list(train_list), str(train_list)
        else:
            names = sorted(p.stem for p in (release.base / TRAIN_FOLDER).glob("case*_slice*.npz"))
            where = f"{release.base / TRAIN_FOLDER}/"
        slices: dict[str, dict[int, str]] = {}
        for name in names:
            match = _SLICE_NAME.fullmatch(name.removesuffix(".npz"))
            if match is None:
                release.problems.append(f"{where}: {name!r} is not a caseXXXX_sliceYYY name")
                continue
            case, index = match.group(1), int(match.group(2))
            if train_list or case in _TRAIN_IDS or case in test:
                slices.setdefault(case, {})[index] = slice_file(case, index)
        leaked = sorted(set(slices) & set(test))
        if leaked:
            release.problems.append(
                f"slices of the test case(s) {', '.join(leaked)} are in the training data "
                f"({where}): the test volumes would be trained on"
            )
        if train_list:
            release.differences += set_differences("train.txt", set(slices), _TRAIN_IDS)
        else:
            release.problems += [
                f"{case}: no {TRAIN_FOLDER}/{case}_sliceYYY.npz slices"
                for case in sorted(_TRAIN_IDS - set(slices))
            ]
        release.add_slices("train", {c: s for c, s in slices.items() if c not in leaked})
        return release

    def make_split(self, release: Release) -> dict[str, list[str]]:
        trainval = sorted(release.parts["train"])
        if self.config.fold is not None:
            config = self.config
            _, val = kfold(trainval, config.num_folds, config.fold, config.split_seed)
        elif self.config.num_val_cases:
            val = seeded_sample(trainval, self.config.num_val_cases, self.config.split_seed)
        else:
            val = []
        train = sorted(set(trainval) - set(val))
        return dict(train=train, val=val, test=sorted(release.parts["test"]))

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_synapse2d(root, seed=seed, **options)

    @classmethod
    def prepare_release(cls, raw_root: Path, out_dir: Path) -> dict[str, Any]:
        """TransUNet's release rebuilt from the raw BTCV download (the layouts ``synapse``
        reads): HU clipped to [-125, 275] and scaled to [0, 1] (float32), BTCV labels mapped by
        ``TRANSUNET_LABELS`` (uint8), every axial slice ``volume[:, :, k]`` of the 18 training
        cases as ``train_npz/caseXXXX_sliceKKK.npz``, the 12 test cases as
        ``test_vol_h5/caseXXXX.npy.h5`` ``[D, H, W]``, and ``lists/lists_Synapse``."""
        started = time.perf_counter()
        cases, problems = SynapseVolumeDataModule().find_cases(raw_root)
        table = np.zeros(len(CLASS_NAMES), np.uint8)
        table[list(TRANSUNET_LABELS)] = list(TRANSUNET_LABELS.values())
        train_slices: list[str] = []
        test_cases: list[str] = []
        with release_folder(out_dir) as out, progress_bar() as progress:
            for case in progress.track(cases, description="Synapse 2D: rebuilding"):
                case_problems, arrays = check_case(case, len(CLASS_NAMES))
                problems += case_problems
                if arrays is not None:
                    image = volume_to_slices(arrays[0][0], cls.INTENSITY)
                    label = volume_to_slices(table[np.rint(arrays[1]).astype(np.intp)])
                    if case.case_id in _TEST_IDS:
                        save_h5(out / volume_file(case.case_id), image=image, label=label)
                        test_cases.append(case.case_id)
                    else:
                        for index in range(len(image)):
                            file = slice_file(case.case_id, index)
                            save_npz(out / file, image=image[index], label=label[index])
                            train_slices.append(Path(file).stem)
            if problems:
                raise DataError(problem_report(f"Synapse raw data at {raw_root}", problems))
            lists = out / "lists" / LISTS
            write_list(lists / "train.txt", sorted(train_slices))
            write_list(lists / "test_vol.txt", sorted(test_cases))
        return dict(
            dataset="synapse2d (TransUNet release)",
            raw=str(raw_root),
            written=str(out_dir),
            train_slices=f"{len(train_slices)} in {TRAIN_FOLDER}/ "
            f"({len(cases) - len(test_cases)} cases)",
            test_volumes=f"{len(test_cases)} in {TEST_FOLDER}/",
            lists=f"lists/{LISTS}/train.txt, test_vol.txt",
            intensity=f"HU clipped to [{HU_WINDOW[0]:g}, {HU_WINDOW[1]:g}], scaled to [0, 1]",
            labels=", ".join(f"BTCV {k}->{v}" for k, v in TRANSUNET_LABELS.items()) + ", others->0",
            seconds=round(time.perf_counter() - started, 1),
        )


_TRAIN_IDS = {case_id(n) for n in TRAINING_CASES} - _TEST_IDS


# --- synthetic copies ---------------------------------------------------------------------------

#: Organs as (centre, radii) in fractions of the volume (x, y, z) and a CT value (HU): roughly
#: anatomical, distinct intensities ≥ 30 HU apart (noise 12 HU), painted largest first so that
#: small organs stay visible. Index = BTCV label.
_ORGANS: dict[int, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    6: ((0.30, 0.45, 0.62), (0.18, 0.20, 0.24), 70),  # liver
    7: ((0.66, 0.38, 0.65), (0.10, 0.09, 0.15), -30),  # stomach
    1: ((0.78, 0.62, 0.60), (0.09, 0.10, 0.18), 100),  # spleen
    2: ((0.27, 0.70, 0.36), (0.07, 0.08, 0.18), 190),  # right kidney
    3: ((0.73, 0.70, 0.38), (0.07, 0.08, 0.18), 160),  # left kidney
    8: ((0.53, 0.66, 0.50), (0.045, 0.045, 0.45), 250),  # aorta
    9: ((0.44, 0.62, 0.45), (0.045, 0.045, 0.38), 130),  # inferior vena cava
    11: ((0.58, 0.52, 0.42), (0.13, 0.045, 0.08), 310),  # pancreas
    4: ((0.36, 0.33, 0.42), (0.05, 0.05, 0.10), 10),  # gallbladder
    10: ((0.47, 0.49, 0.56), (0.06, 0.035, 0.07), 220),  # portal and splenic vein
    5: ((0.52, 0.64, 0.86), (0.04, 0.04, 0.12), 40),  # esophagus
    12: ((0.34, 0.69, 0.60), (0.045, 0.035, 0.08), 340),  # right adrenal gland
    13: ((0.65, 0.69, 0.60), (0.045, 0.035, 0.08), 370),  # left adrenal gland
}
_BODY_HU, _AIR_HU, _CT_NOISE = -80.0, -1000.0, 12.0


def synapse_case(
    rng: np.random.Generator, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fake BTCV volume: image int16 (HU), label uint8 (0..13), affine. The number of slices
    varies by ±2 around ``shape[2]`` and the voxel size as in BTCV (0.7–0.9 mm in-plane,
    2.5 or 3 mm slices)."""
    shape = (shape[0], shape[1], max(8, shape[2] + int(rng.integers(-2, 3))))
    grid = synthetic.grid(shape)
    body = synthetic.ellipsoid(grid[:2], (0.5, 0.5), (0.46, 0.40))
    label = np.zeros(shape, np.uint8)
    image = np.where(body, _BODY_HU, _AIR_HU) * np.ones(shape)
    for organ, (centre, radii, hu) in _ORGANS.items():
        centre = np.asarray(centre) + rng.normal(0, 0.015, 3)
        radii = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        mask = synthetic.ellipsoid(grid, centre, radii) & body
        label[mask], image[mask] = organ, hu
    image += rng.normal(0, _CT_NOISE, shape)
    in_plane = float(rng.uniform(0.7, 0.9))
    affine = synthetic.lps_affine((in_plane, in_plane, float(rng.choice([2.5, 3.0]))), shape)
    return np.round(image).astype(np.int16), label, affine


def write_synapse(root: str | Path, seed: int = 0, shape: Sequence[int] = (48, 48, 24)) -> Path:
    """A fake BTCV ``RawData`` under ``root``: ``RawData/Training/img/img00XX.nii.gz`` and
    ``label/label00XX.nii.gz`` for the 30 training cases, ``RawData/Testing/img`` for the 20
    unlabelled ones. Every organ is a blob of its own intensity at a roughly fixed place,
    jittered per case, with noise; LPS-like flipped axes and anisotropic voxels as in BTCV.
    Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    raw = root / "RawData"
    for number in TRAINING_CASES:
        image, label, affine = synapse_case(rng, shape)
        synthetic.save_nifti(image, affine, raw / "Training" / "img" / image_name(number))
        synthetic.save_nifti(label, affine, raw / "Training" / "label" / label_name(number))
    for number in CHALLENGE_TEST_CASES:
        image, _, affine = synapse_case(rng, shape)
        synthetic.save_nifti(image, affine, raw / "Testing" / "img" / image_name(number))
    return root


def write_synapse2d(root: str | Path, seed: int = 0, shape: Sequence[int] = (64, 64, 10)) -> Path:
    """A fake TransUNet Synapse release under ``root`` (``train_npz/``, ``test_vol_h5/``,
    ``lists/lists_Synapse/``): ``write_synapse`` into a temporary folder, rebuilt by
    ``SynapseSliceDataModule.prepare_release`` (so every synthetic release exercises the
    rebuild). The case ids are the real ones (the split needs them); the volumes are ``shape``
    (± 2 slices). Returns ``root``."""
    with tempfile.TemporaryDirectory(prefix="synapse-raw-") as raw:
        write_synapse(raw, seed=seed, shape=shape)
        SynapseSliceDataModule.prepare_release(Path(raw), Path(root))
    return Path(root)
