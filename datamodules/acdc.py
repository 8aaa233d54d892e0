"""ACDC cardiac cine MRI (Bernard et al., IEEE TMI 2018): the raw 3D volumes (``acdc``),
MT-UNet's 2D release (``acdc2d``) and their synthetic copies.

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

import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datamodules import synthetic
from datamodules.base import dataset_not_found, dataset_root, kfold
from datamodules.errors import DataError, problem_report
from datamodules.nnunet_layout import DATASET_JSON, converted_cases
from datamodules.preprocessing import volume_to_slices
from datamodules.releases import (
    Release,
    find_lists_folder,
    find_release_folders,
    read_list,
    release_folder,
    save_npz,
    set_differences,
    write_list,
)
from datamodules.slices import SliceConfig, SliceDataModule
from datamodules.volume_cache import CaseFiles, check_case
from datamodules.volumes import VolumeConfig, VolumeDataModule
from mednext.progress import progress_bar

CLASS_NAMES = ("background", "right_ventricle", "myocardium", "left_ventricle")
#: Patients with labels in every release (``training/``); 101–150 are the challenge test set.
TRAINING_PATIENTS = tuple(range(1, 101))
TESTING_PATIENTS = tuple(range(101, 151))
#: The 70/10/20 split by patient (docs/datasets.md; MT-UNet's ACDC lists).
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
(or the newer release: <root>/database/training/patient001/..., database/testing/patient101/...;
 or nnU-Net's Dataset027_ACDC: <root>/dataset.json, imagesTr/patient001_frame01_0000.nii.gz ...)"""


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
    raise dataset_not_found(
        f"ACDC raw data not found: no patientXXX folders at {looked}.",
        "Expected layout",
        LAYOUT,
        DOWNLOAD,
        ACDCVolumeDataModule.EXAMPLE_EXPERIMENT,
    )


class ACDCVolumeDataModule(VolumeDataModule):
    """ACDC cardiac MRI, 3D, ED and ES frames of patients 001–100, 4 classes.

    Split by patient: the 70/10/20 lists of docs/datasets.md, or with ``fold=k`` fold ``k`` of a
    seeded ``num_folds``-fold cross-validation of the 80 non-test patients (test stays the 20).
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
    channel_names = ("MR",)
    CLASS_NAMES = CLASS_NAMES
    DOWNLOAD = DOWNLOAD
    LAYOUT = LAYOUT
    EXAMPLE_EXPERIMENT = "acdc_mednext_s"
    # Short-axis stacks are oblique to the body axes: the closest RAS axis of the slice direction
    # can differ between patients, which would resample one patient's 5–10 mm slice axis to the
    # in-plane spacing. Keeping the voxel axes keeps (in-plane, in-plane, slice) for every case,
    # as nnU-Net's default reader (SimpleITK, no reorientation) does for ACDC.
    reorient = False

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        if (root / DATASET_JSON).is_file():
            return self.find_converted_cases(root)
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
                    cases.append(CaseFiles(case_id(patient, phase), (image,), label))
        return cases, problems

    def find_converted_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        """The frames of nnU-Net's ``Dataset027_ACDC`` conversion at ``root``: case ids are
        nnU-Net's, ``patient001_frame01`` (the conversion drops ``Info.cfg``, so the phase is not
        known), two labelled frames for each of the patients 001-100; the patient split applies
        as to the raw download."""
        converted, problems = converted_cases(root, self.title, 1, len(CLASS_NAMES))
        frames: dict[int, list[CaseFiles]] = {}
        for case in converted:
            if not _FRAME_CASE.fullmatch(case.case_id) or _patient(case.case_id) > 100:
                problems.append(
                    f"{case.case_id} ({case.label}) is not a frame patientXXX_frameYY of the "
                    "patients 001-100"
                )
            else:
                frames.setdefault(_patient(case.case_id), []).append(case)
        problems += [
            f"{patient_name(p)}: {len(frames.get(p, []))} labelled frame(s) in "
            f"{root / 'imagesTr'}, expected 2 (ED and ES)"
            for p in TRAINING_PATIENTS
            if len(frames.get(p, [])) != 2
        ]
        return [case for p in sorted(frames) for case in frames[p]], problems

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

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_acdc(root, seed=seed, **options)


#: A case of nnU-Net's ACDC conversion.
_FRAME_CASE = re.compile(r"patient\d{3}_frame\d{2}")


def _patient(case_id: str) -> int:
    """``patient001_ED`` (or ``patient001_frame01``) → 1."""
    return int(case_id[len("patient") : len("patient") + 3])


# --- the 2D release (MT-UNet) ------------------------------------------------------------------

RELEASE_DOWNLOAD = (
    "MT-UNet's preprocessed ACDC (github.com/Dootmaan/MT-UNet README: "
    "https://drive.google.com/file/d/13qYHNIWTIBzwyFgScORL2RFd002vrPF2/view; reported unavailable "
    "in MT-UNet issue #51, the authors link another copy in issue #46)"
)
RELEASE_LAYOUT = """\
  <root>/train/case_001_sliceED_0.npz ...   (slices of the 70 training patients: img, label)
  <root>/valid/case_019_sliceED_0.npz ...   (slices of the 10 validation patients)
  <root>/test/case_002_volume_ED.npz ...    (ED, ES of the 20 test patients: img, label [D, H, W])
  <root>/lists_ACDC/train.txt, valid.txt, test.txt   (optional: the split is shipped)"""
#: The release's folder and split list of each part (MT-UNet ``train_mtunet_ACDC.py`` and
#: ``dataset/dataset_ACDC.py``: ``<root>/<split>/<name>`` with the names of ``lists_ACDC``).
RELEASE_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
LIST_FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
LISTS = "lists_ACDC"
_SLICE_NAME = re.compile(r"case_(\d{3})_slice(ED|ES)_(\d+)\.npz")
_VOLUME_NAME = re.compile(r"case_(\d{3})_volume_(ED|ES)\.npz")
#: The shipped patient split (docs/datasets.md) by part.
SHIPPED_PATIENTS = {
    "train": set(TRAINING_PATIENTS) - set(TEST_PATIENTS) - set(VAL_PATIENTS),
    "val": set(VAL_PATIENTS),
    "test": set(TEST_PATIENTS),
}


def release_slice_file(part: str, patient: int, phase: str, index: int) -> str:
    """``train/case_001_sliceED_0.npz`` (``part`` ``train`` or ``val``)."""
    return f"{RELEASE_FOLDERS[part]}/case_{patient:03d}_slice{phase}_{index}.npz"


def release_volume_file(patient: int, phase: str) -> str:
    """``test/case_002_volume_ED.npz``."""
    return f"{RELEASE_FOLDERS['test']}/case_{patient:03d}_volume_{phase}.npz"


class ACDCSliceDataModule(SliceDataModule):
    """ACDC in MT-UNet's 2D release: 4 classes, ED and ES of patients 001–100, the
    70/10/20 patient split of docs/datasets.md.

    Validation: the release's ``valid/`` patients, each (patient, phase) a volume stacked from
    its slices; ``fold: k`` validates on fold ``k`` of a seeded ``num_folds``-fold
    cross-validation of the 80 training and validation patients (test stays the 20).
    """

    @dataclass
    class Config(SliceConfig):
        """The ``data:`` keys for ``name: acdc2d`` (see ``SliceConfig``)."""

        name: str = "acdc2d"
        root: str = field(default_factory=lambda: dataset_root("ACDC2D"))
        synthetic_shape: list[int] = field(default_factory=lambda: [64, 64, 8])

    title = "ACDC 2D (MT-UNet release)"
    CLASS_NAMES = CLASS_NAMES
    KEYS = ("img", "label")
    INTENSITY: ClassVar[dict[str, Any]] = {"scheme": "minmax"}
    DOWNLOAD = RELEASE_DOWNLOAD
    LAYOUT = RELEASE_LAYOUT
    EXAMPLE_EXPERIMENT = "acdc2d_mednext_lite_s"

    def find_release(self, root: Path) -> Release:
        patterns = ("train/case_*_slice*.npz", "valid/case_*_slice*.npz", "test/case_*_volume*.npz")
        folders = find_release_folders(
            root, lambda d: any(next(d.glob(p), None) is not None for p in patterns)
        )
        if not folders:
            raise self.missing(root)
        if len(folders) > 1:
            raise DataError(
                f"{self.title}: several releases under {root}: {', '.join(map(str, folders))}; "
                "point data.root at one of them"
            )
        release = Release(folders[0])
        lists = find_lists_folder(release.base, root, LISTS)
        listed = {
            part: lists / name
            for part, name in LIST_FILES.items()
            if lists is not None and (lists / name).is_file()
        }
        release.lists = lists if listed else None
        patients: dict[str, set[int]] = {}
        for part in ("train", "val"):
            folder = release.base / RELEASE_FOLDERS[part]
            if part in listed:
                names = [n if n.endswith(".npz") else f"{n}.npz" for n in read_list(listed[part])]
                where = str(listed[part])
            else:
                names = sorted(p.name for p in folder.glob("case_*_slice*.npz"))
                where = f"{folder}/"
            slices: dict[str, dict[int, str]] = {}
            for name in names:
                match = _SLICE_NAME.fullmatch(name)
                if match is None:
                    release.problems.append(f"{where}: {name!r} is not a case_XXX_sliceED_K name")
                    continue
                patient, phase, index = int(match.group(1)), match.group(2), int(match.group(3))
                if part in listed or patient in SHIPPED_PATIENTS[part] | SHIPPED_PATIENTS["test"]:
                    file = release_slice_file(part, patient, phase, index)
                    slices.setdefault(case_id(patient, phase), {})[index] = file
            patients[part] = {_patient(c) for c in slices}
            release.add_slices(part, slices)
            if part in listed:
                release.differences += set_differences(
                    LIST_FILES[part], _names(patients[part]), _names(SHIPPED_PATIENTS[part])
                )
            else:
                release.problems += [
                    f"{patient_name(p)}: no {RELEASE_FOLDERS[part]}/case_{p:03d}_slice*.npz slices"
                    for p in sorted(SHIPPED_PATIENTS[part] - patients[part])
                ]
        if "test" in listed:
            volumes = []
            for name in read_list(listed["test"]):
                match = _VOLUME_NAME.fullmatch(name if name.endswith(".npz") else f"{name}.npz")
                if match is None:
                    release.problems.append(
                        f"{listed['test']}: {name!r} is not a case_XXX_volume_ED.npz name"
                    )
                else:
                    volumes.append((int(match.group(1)), match.group(2)))
            patients["test"] = {p for p, _ in volumes}
            release.differences += set_differences(
                LIST_FILES["test"], _names(patients["test"]), _names(SHIPPED_PATIENTS["test"])
            )
        else:
            volumes = [(p, phase) for p in sorted(SHIPPED_PATIENTS["test"]) for phase in PHASES]
            patients["test"] = set(SHIPPED_PATIENTS["test"])
        for patient, phase in sorted(volumes):
            release.add_volume("test", case_id(patient, phase), release_volume_file(patient, phase))
        for part in ("train", "val"):
            leaked = sorted(patients[part] & patients["test"])
            if leaked:
                release.problems.append(
                    f"slices of the test patient(s) {', '.join(sorted(_names(leaked)))} are in the "
                    f"{RELEASE_FOLDERS[part]}/ data: the test volumes would be "
                    f"{'trained' if part == 'train' else 'validated'} on"
                )
        both = sorted(patients["train"] & patients["val"])
        if both:
            release.problems.append(
                f"patient(s) {', '.join(sorted(_names(both)))} are both in train/ and in valid/"
            )
        return release

    def make_split(self, release: Release) -> dict[str, list[str]]:
        train, val = sorted(release.parts["train"]), sorted(release.parts["val"])
        if self.config.fold is not None:
            trainval = train + val
            names = sorted({patient_name(_patient(c)) for c in trainval})
            _, fold = kfold(names, self.config.num_folds, self.config.fold, self.config.split_seed)
            val = sorted(c for c in trainval if patient_name(_patient(c)) in fold)
            train = sorted(set(trainval) - set(val))
        return dict(train=train, val=val, test=sorted(release.parts["test"]))

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_acdc2d(root, seed=seed, **options)

    @classmethod
    def prepare_release(cls, raw_root: Path, out_dir: Path) -> dict[str, Any]:
        """MT-UNet's release rebuilt from the raw ACDC download (the layouts ``acdc`` reads):
        the ED and ES frames of patients 001–100 (``Info.cfg``), each frame scaled by its own
        minimum and maximum to [0, 1] (float32; MT-UNet's own preprocessing is not public, see
        docs/datasets.md), labels as they are (uint8), every slice ``volume[:, :, k]`` of the
        training and validation patients as ``train|valid/case_XXX_slice{ED,ES}_K.npz``, the test
        patients' frames as ``test/case_XXX_volume_{ED,ES}.npz`` ``[D, H, W]``, and
        ``lists_ACDC/{train,valid,test}.txt``; keys ``img`` and ``label``."""
        started = time.perf_counter()
        cases, problems = ACDCVolumeDataModule().find_cases(raw_root)
        written: dict[str, list[str]] = {part: [] for part in RELEASE_FOLDERS}
        with release_folder(out_dir) as out, progress_bar() as progress:
            for case in progress.track(cases, description="ACDC 2D: rebuilding"):
                case_problems, arrays = check_case(case, len(CLASS_NAMES))
                problems += case_problems
                if arrays is not None:
                    patient, phase = _patient(case.case_id), case.case_id[-2:]
                    image = volume_to_slices(arrays[0][0], cls.INTENSITY)
                    label = volume_to_slices(np.rint(arrays[1]).astype(np.uint8))
                    part = next(p for p, members in SHIPPED_PATIENTS.items() if patient in members)
                    if part == "test":
                        file = release_volume_file(patient, phase)
                        save_npz(out / file, img=image, label=label)
                        written[part].append(Path(file).name)
                    else:
                        for index in range(len(image)):
                            file = release_slice_file(part, patient, phase, index)
                            save_npz(out / file, img=image[index], label=label[index])
                            written[part].append(Path(file).name)
            if problems:
                raise DataError(problem_report(f"ACDC raw data at {raw_root}", problems))
            for part, names in written.items():
                write_list(out / LISTS / LIST_FILES[part], sorted(names))
        counts = {part: len(members) for part, members in SHIPPED_PATIENTS.items()}
        return dict(
            dataset="acdc2d (MT-UNet release)",
            raw=str(raw_root),
            written=str(out_dir),
            train_slices=f"{len(written['train'])} in train/ ({counts['train']} patients)",
            valid_slices=f"{len(written['val'])} in valid/ ({counts['val']} patients)",
            test_volumes=f"{len(written['test'])} in test/ ({counts['test']} patients)",
            lists=f"{LISTS}/train.txt, valid.txt, test.txt",
            intensity="each frame scaled by its minimum and maximum to [0, 1]",
            seconds=round(time.perf_counter() - started, 1),
        )


def _names(patients: Iterable[int]) -> set[str]:
    """The ``patientXXX`` names of patient numbers."""
    return {patient_name(p) for p in patients}


# --- synthetic copies ---------------------------------------------------------------------------

#: Intensities (arbitrary MR units) outside the body, of the body, and per label.
_MR_AIR, _MR_BODY, _MR_NOISE = 20.0, 150.0, 15.0
_MR_LABELS = {1: 260.0, 2: 80.0, 3: 340.0}  # right ventricle, myocardium, left ventricle

SYNTHETIC_NOTE = (
    "Synthetic stand-in written by the suite's ACDC module: not the real dataset. The real "
    "ACDC asks every user to cite Bernard et al., IEEE TMI 37(11):2514-2525, 2018.\n"
)


def acdc_frame(
    rng: np.random.Generator, shape: Sequence[int], centre: np.ndarray, systole: float
) -> tuple[np.ndarray, np.ndarray]:
    """One fake short-axis frame: image float (MR units), label uint8 (0..3). ``systole`` 0 at
    end-diastole, 1 at end-systole (smaller cavities, thicker wall); the heart tapers towards
    the apex (last slices) and the first and last slices may miss it, as in ACDC."""
    grid = synthetic.grid(shape[:2])
    image = np.full(shape, _MR_AIR)
    label = np.zeros(shape, np.uint8)
    body = synthetic.ellipsoid(grid, (0.5, 0.5), (0.47, 0.42))
    lv_radius = 0.15 - 0.05 * systole
    wall = 0.06 + 0.025 * systole
    for k in range(shape[2]):
        taper = 1.0 - 0.6 * (k / max(shape[2] - 1, 1)) ** 2
        lv = synthetic.ellipsoid(grid, centre, (lv_radius * taper,) * 2)
        myo = synthetic.ellipsoid(grid, centre, ((lv_radius + wall) * taper,) * 2) & ~lv
        rv_centre = centre + np.array([-0.22, 0.02]) * taper
        rv_radii = np.array([0.10, 0.19]) * taper * (1.0 - 0.3 * systole)
        rv = synthetic.ellipsoid(grid, rv_centre, rv_radii) & ~lv & ~myo
        plane = np.where(body, _MR_BODY, _MR_AIR)
        plane_label = np.zeros(shape[:2], np.uint8)
        for value, mask in ((1, rv), (2, myo), (3, lv)):
            plane_label[mask], plane[mask] = value, _MR_LABELS[value]
        image[..., k], label[..., k] = plane, plane_label
    image += rng.normal(0, _MR_NOISE, shape)
    return np.clip(image, 0, None), label


def write_acdc(
    root: str | Path,
    seed: int = 0,
    shape: Sequence[int] = (40, 40, 8),
    layout: str = "database",
) -> Path:
    """A fake ACDC under ``root``: per patient ``Info.cfg``, ED and ES frames
    (``patientXXX_frameYY.nii.gz``, int16) with ``_gt`` labels (uint8) and a short ``_4d`` series.

    ``layout="database"``: the newer release, ``database/{training,testing}/patientXXX/`` with
    labels for the test patients 101–150 and ``MANDATORY_CITATION.md`` files;
    ``layout="training"``: the original ``training/`` and ``testing/`` (test patients without
    labels). Returns ``root``.
    """
    if layout not in ("database", "training"):
        raise ValueError(f"layout must be 'database' or 'training', not {layout!r}")
    root = Path(root)
    base = root / "database" if layout == "database" else root
    rng = np.random.default_rng(seed)
    if layout == "database":
        base.mkdir(parents=True, exist_ok=True)
        (base / "MANDATORY_CITATION.md").write_text(SYNTHETIC_NOTE)
    for part, patients in (
        ("training", TRAINING_PATIENTS),
        ("testing", TESTING_PATIENTS),
    ):
        for patient in patients:
            folder = base / part / patient_name(patient)
            labelled = part == "training" or layout == "database"
            _write_patient(rng, folder, patient, shape, labelled)
            if layout == "database":
                (folder / "MANDATORY_CITATION.md").write_text(SYNTHETIC_NOTE)
    return root


def _write_patient(
    rng: np.random.Generator, folder: Path, patient: int, shape: Sequence[int], labelled: bool
) -> None:
    es = int(rng.integers(5, 10))
    frames = es + int(rng.integers(2, 5))
    in_plane = float(rng.uniform(1.3, 1.8))
    affine = synthetic.lps_affine(
        (in_plane, in_plane, float(rng.choice([5.0, 10.0]))), shape, rng.uniform(-0.3, 0.3)
    )
    centre = np.array([0.56, 0.50]) + rng.normal(0, 0.02, 2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFO).write_text(
        info_text(
            ed=1,
            es=es,
            group=str(rng.choice(["NOR", "MINF", "DCM", "HCM", "RV"])),
            frames=frames,
            height=float(rng.uniform(150, 195)),
            weight=float(rng.uniform(50, 110)),
        )
    )
    series = []
    for frame, systole in ((1, 0.0), (es, 1.0)):
        image, label = acdc_frame(rng, shape, centre, systole)
        image = np.round(image).astype(np.int16)
        series.append(image)
        synthetic.save_nifti(image, affine, folder / frame_name(patient, frame))
        if labelled:
            synthetic.save_nifti(label, affine, folder / frame_name(patient, frame, label=True))
    # The cine series between the two labelled frames, linearly blended (never read).
    systole = np.interp(np.arange(frames), [0, es - 1, frames], [0.0, 1.0, 0.0])
    cine = series[0][..., None] * (1 - systole) + series[1][..., None] * systole
    synthetic.save_nifti(
        np.round(cine).astype(np.int16), affine, folder / f"{patient_name(patient)}_4d.nii.gz"
    )


def write_acdc2d(root: str | Path, seed: int = 0, shape: Sequence[int] = (64, 64, 8)) -> Path:
    """A fake MT-UNet ACDC release under ``root`` (``train/``, ``valid/``, ``test/``,
    ``lists_ACDC/``): patients 001–100 in the original raw ``training/`` layout in a temporary
    folder, rebuilt by ``ACDCSliceDataModule.prepare_release``. Returns ``root``."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="acdc-raw-") as raw:
        for patient in TRAINING_PATIENTS:
            folder = Path(raw) / "training" / patient_name(patient)
            _write_patient(rng, folder, patient, shape, labelled=True)
        ACDCSliceDataModule.prepare_release(Path(raw), Path(root))
    return Path(root)
