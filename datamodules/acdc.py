"""ACDC cardiac cine MRI (Bernard et al., IEEE TMI 2018) in 3D.

The raw dataset as downloaded: ``training/patientXXX/`` (patients 001–100) with
``patientXXX_frameYY.nii.gz`` short-axis volumes, their ``_gt`` labels at end-diastole (ED) and
end-systole (ES), ``Info.cfg`` naming those frames, and the whole cine series ``_4d.nii.gz``
(ignored); the newer release puts the same under ``database/training/`` and the 50 challenge test
patients (101–150, with labels) under ``database/testing/``. One case per (patient, frame):
``patient001_ED``, ``patient001_ES``. Labels 1 right ventricle, 2 myocardium, 3 left ventricle.

The split is the 70/10/20 patient split over patients 001–100 used by TransUNet-style ACDC work
(MT-UNet's release); ``fold=k`` cross-validates the 80 non-test patients by patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.base import DataError, dataset_root, kfold
from datamodules.volumes import CaseFiles, VolumeConfig, VolumeDataModule

CLASS_NAMES = ("background", "right_ventricle", "myocardium", "left_ventricle")
#: Patients with labels in every release (``training/``); 101–150 are the challenge test set.
TRAINING_PATIENTS = tuple(range(1, 101))
TESTING_PATIENTS = tuple(range(101, 151))
#: The 70/10/20 split by patient (DESIGN 6.6; MT-UNet's ACDC lists).
TEST_PATIENTS = (2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95)
VAL_PATIENTS = (19, 21, 29, 33, 41, 50, 61, 71, 76, 80)
#: The cardiac phases labelled in ACDC, as named in ``Info.cfg``.
PHASES = ("ED", "ES")
INFO = "Info.cfg"

DOWNLOAD = (
    "https://www.creatis.insa-lyon.fr/Challenge/acdc/ (the archive: https://humanheart-project."
    "creatis.insa-lyon.fr/database/api/v1/folder/637218e573e9f0047faa00fc/download)"
)
LAYOUT = """\
  <root>/training/patient001/Info.cfg             (ED: 1, ES: 12, ...)
  <root>/training/patient001/patient001_frame01.nii.gz and patient001_frame01_gt.nii.gz
  <root>/training/patient001/patient001_frame12.nii.gz and patient001_frame12_gt.nii.gz
  ... patient001 to patient100
(or the newer release: <root>/database/training/patient001/..., database/testing/patient101/...)"""


def patient_name(number: int) -> str:
    return f"patient{number:03d}"


def case_id(patient: int, phase: str) -> str:
    """``patient001_ED``."""
    return f"{patient_name(patient)}_{phase}"


def frame_name(patient: int, frame: int, label: bool = False) -> str:
    """``patient001_frame01.nii.gz`` (``_gt`` before the extension for the label)."""
    return f"{patient_name(patient)}_frame{frame:02d}{'_gt' if label else ''}.nii.gz"


def info_text(ed: int, es: int, group: str, frames: int, height: float, weight: float) -> str:
    """An ``Info.cfg`` as ACDC writes it."""
    return (
        f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: {height:.1f}\nNbFrame: {frames}\n"
        f"Weight: {weight:.1f}\n"
    )


def read_info(path: Path) -> dict[str, str]:
    """The ``key: value`` lines of an ``Info.cfg``."""
    entries = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            entries[key.strip()] = value.strip()
    return entries


def find_patient_folders(root: Path) -> dict[int, Path]:
    """``patientXXX`` folders at the shallowest depth (1 to 4 levels below ``root``) that has any:
    ``training/``, ``database/training/`` and their ``testing/`` siblings."""
    patterns = ["patient[0-9][0-9][0-9]"]
    patterns += [f"{'*/' * depth}patient[0-9][0-9][0-9]" for depth in (1, 2, 3)]
    for pattern in patterns:
        folders: dict[int, Path] = {}
        for folder in sorted(p for p in root.glob(pattern) if p.is_dir()):
            number = int(folder.name[len("patient") :])
            if number in folders:
                raise DataError(
                    f"ACDC: {folder.name} is both in {folders[number].parent} and in "
                    f"{folder.parent}; point data.root at one copy"
                )
            folders[number] = folder
        if folders:
            return folders
    looked = ", ".join(str(root / p) for p in patterns)
    raise DataError(
        f"ACDC raw data not found: no patientXXX folders at {looked}.\n"
        f"Expected layout:\n{LAYOUT}\n"
        f"Download: {DOWNLOAD}, unzip, and set data.root (or $MEDNEXT_DATA).\n"
        "Dry run without it: data.source=synthetic "
        "(e.g. `mednext train acdc_mednext_s data.source=synthetic`)."
    )


class ACDCVolumeDataModule(VolumeDataModule):
    """ACDC cardiac MRI, 3D, ED and ES frames of patients 001–100, 4 classes.

    Split by patient: DESIGN 6.6's 70/10/20 lists, or with ``fold=k`` fold ``k`` of a seeded
    ``num_folds``-fold cross-validation of the 80 non-test patients (test stays the 20).
    Per-case z-score normalisation (MR); the volumes keep their voxel axes (no reorientation), so
    ``spacing`` and ``patch_size`` are (in-plane, in-plane, slice). Defaults: nnU-Net's ACDC
    3d_fullres target spacing (1.5625 mm in-plane, 5 mm between slices); a 160×160×16 patch.
    """

    @dataclass
    class Config(VolumeConfig):
        """The ``data:`` keys for ``name: acdc`` (see ``VolumeConfig``)."""

        name: str = "acdc"
        root: str = field(default_factory=lambda: dataset_root("ACDC"))
        patch_size: list[int] = field(default_factory=lambda: [160, 160, 16])
        spacing: list[float] = field(default_factory=lambda: [1.5625, 1.5625, 5.0])
        synthetic_shape: list[int] = field(default_factory=lambda: [40, 40, 8])

    title = "ACDC"
    modality = "MR"
    CLASS_NAMES = CLASS_NAMES
    # Short-axis stacks are oblique to the body axes: the closest RAS axis of the slice direction
    # can differ between patients, which would resample one patient's 5–10 mm slice axis to the
    # in-plane spacing. Keeping the voxel axes keeps (in-plane, in-plane, slice) for every case,
    # as nnU-Net's default reader (SimpleITK, no reorientation) does for ACDC.
    reorient = False

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        folders = find_patient_folders(root)
        cases, problems = [], []
        for patient in TRAINING_PATIENTS:
            name = patient_name(patient)
            folder = folders.get(patient)
            if folder is None:
                problems.append(f"{name}: no {name}/ folder beside the others")
                continue
            try:
                info = read_info(folder / INFO)
                frames = {phase: int(info[phase]) for phase in PHASES}
            except (OSError, KeyError, ValueError) as error:
                problems.append(f"{name}: cannot read ED/ES from {folder / INFO}: {error!r}")
                continue
            for phase, frame in frames.items():
                image, label = (folder / frame_name(patient, frame, gt) for gt in (False, True))
                missing = [str(p) for p in (image, label) if not p.is_file()]
                if missing:
                    problems.append(f"{case_id(patient, phase)}: missing {' and '.join(missing)}")
                else:
                    cases.append(CaseFiles(case_id(patient, phase), image, label))
        return cases, problems

    def is_test_case(self, case_id: str) -> bool:
        return _patient(case_id) in TEST_PATIENTS

    def make_split(self, case_ids: Sequence[str]) -> dict[str, list[str]]:
        patients = sorted({_patient(c) for c in case_ids} - set(TEST_PATIENTS))
        if self.config.fold is None:
            val = set(VAL_PATIENTS)
        else:
            names = [patient_name(p) for p in patients]
            _, val_names = kfold(
                names, self.config.num_folds, self.config.fold, self.config.split_seed
            )
            val = {int(n[len("patient") :]) for n in val_names}
        parts = {"train": set(patients) - val, "val": val, "test": set(TEST_PATIENTS)}
        return {
            part: sorted(c for c in case_ids if _patient(c) in members)
            for part, members in parts.items()
        }


def _patient(case_id: str) -> int:
    """``patient001_ED`` → 1."""
    return int(case_id[len("patient") : len("patient") + 3])
