"""Synapse multi-organ CT (BTCV, MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault") in 3D.

The raw training set as downloaded from Synapse (syn3193805, ``Abdomen/RawData.zip``): 30 CT
volumes ``RawData/Training/img/img00XX.nii.gz`` with labels ``RawData/Training/label/
label00XX.nii.gz`` of 13 organs. The split is TransUNet's (Chen et al. 2021, its
``lists_Synapse``): 18 training and 12 test cases; a few of the 18 are held out for validation
(TransUNet had no validation set), or ``fold=k`` cross-validates the 18.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.base import DataError, dataset_root, kfold, seeded_sample
from datamodules.volumes import CaseFiles, VolumeConfig, VolumeDataModule

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
(<root> may also be the RawData folder itself, or hold Abdomen/RawData/...)"""


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
    raise DataError(
        f"Synapse (BTCV) raw data not found: no folder with img/ and label/ at {looked}.\n"
        f"Expected layout:\n{LAYOUT}\n"
        f"Download: {DOWNLOAD} (free registration), unzip, and set data.root (or $MEDNEXT_DATA).\n"
        "Dry run without it: data.source=synthetic "
        "(e.g. `mednext train synapse_mednext_s data.source=synthetic`)."
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
    modality = "CT"
    CLASS_NAMES = CLASS_NAMES

    def __init__(self, config: Config | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        if not 1 <= self.config.num_val_cases < len(TRAINING_CASES) - len(TRANSUNET_TEST_CASES):
            raise DataError(f"num_val_cases must be 1..17, not {self.config.num_val_cases}")

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        folder = find_training_folder(root)
        cases, problems = [], []
        for number in TRAINING_CASES:
            image = _existing(folder / "img", image_name(number))
            label = _existing(folder / "label", label_name(number))
            missing = [str(p) for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{case_id(number)}: missing {' and '.join(missing)}")
            else:
                cases.append(CaseFiles(case_id(number), image, label))
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


_TEST_IDS = {case_id(n) for n in TRANSUNET_TEST_CASES}


def _existing(folder: Path, name: str) -> Path:
    """``folder/name``, or the uncompressed ``.nii`` beside it when only that exists."""
    path = folder / name
    unzipped = path.with_suffix("")
    return unzipped if not path.is_file() and unzipped.is_file() else path
