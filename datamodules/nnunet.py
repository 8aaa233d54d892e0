"""Any nnU-Net v2 raw dataset (``nnUNet_raw/DatasetXXX_Name/``) as a 3D DataModule (``nnunet``),
and its synthetic two-channel copy.

The folder is read as nnU-Net v2 reads it (``datamodules.nnunet_layout``): ``dataset.json`` says
the input channels, their normalisation and the labels; ``imagesTr`` holds one file per channel
(``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...), ``labelsTr`` the labels. The folds are
nnU-Net's ``splits_final.json`` when the dataset has one, else nnU-Net's own seeded 5-fold split,
written in the same format into the cache (never into the raw folder; nnU-Net also writes it
beside its preprocessed data). nnU-Net has no labelled test set: the test cases are
``imagesTs``/``labelsTs`` when ``labelsTs/`` exists, else the fold's validation cases
(docs/datasets.md, "nnU-Net v2 raw datasets").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import synthetic
from datamodules.errors import DataError, problem_report
from datamodules.nnunet_layout import (
    DATASET_JSON,
    LAYOUT,
    NNUNET_FOLDS,
    NNUNET_SPLIT_SEED,
    SPLITS_FILE,
    NnUNetDataset,
    crossval_splits,
    labelled_test_cases,
    median_spacing,
    read_dataset_json,
    read_splits,
    splits_file_candidates,
    training_cases,
)
from datamodules.preprocessing import channel_scheme
from datamodules.volume_cache import CaseFiles
from datamodules.volumes import VolumeConfig, VolumeDataModule
from mednext.files import write_json


class NnUNetDataModule(VolumeDataModule):
    """An nnU-Net v2 raw dataset folder: ``in_channels`` from ``channel_names`` and the classes
    from ``labels`` of its ``dataset.json`` (read at construction), each channel normalised as
    nnU-Net does for its name, fold ``data.fold`` of ``splits_final.json`` (or nnU-Net's seeded
    split). The voxel axes are kept (nnU-Net's default reader does not reorient), so ``spacing``
    and ``patch_size`` are in voxel-axis order; ``spacing: null`` is the median voxel size of the
    training images, nnU-Net's ``3d_fullres`` target.
    """

    @dataclass
    class Config(VolumeConfig):
        """The ``data:`` keys for ``name: nnunet`` (see ``VolumeConfig``).

        Attributes:
            root: the ``DatasetXXX_Name`` folder (required unless ``source: synthetic``).
            fold: the fold of ``splits_final.json``, ``0..num_folds-1``.
            num_folds: folds of the generated split, and of a ``splits_final.json`` read.
            split_seed: seed of the generated split (nnU-Net's 12345).
            spacing: target voxel size in mm, voxel-axis order; null: the training images'
                median.
            splits_file: a ``splits_final.json`` to use; null: beside ``dataset.json``, then
                ``$nnUNet_preprocessed/<DatasetXXX_Name>/``, else the generated one.
            synthetic_channels: channel names of the synthetic copy (``source: synthetic``).
            synthetic_cases: training cases of the synthetic copy.
        """

        name: str = "nnunet"
        root: str = ""
        fold: int | None = 0
        num_folds: int = NNUNET_FOLDS
        split_seed: int = NNUNET_SPLIT_SEED
        patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
        spacing: list[float] | None = None
        splits_file: str | None = None
        synthetic_shape: list[int] = field(default_factory=lambda: [32, 32, 24])
        synthetic_channels: list[str] = field(default_factory=lambda: ["T2", "ADC"])
        synthetic_cases: int = 10

    title = "nnU-Net"
    CLASS_NAMES = ()
    DOWNLOAD = "your nnU-Net v2 raw dataset folder (nnUNet_raw/DatasetXXX_Name)"
    LAYOUT = LAYOUT
    EXAMPLE_EXPERIMENT = "nnunet_mednext_s"
    # nnU-Net's default reader for NIfTI (SimpleITKIO) keeps the stored voxel order.
    reorient = False

    def __init__(self, config: Config | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.class_names = list(self.dataset.class_names)

    def config_problems(self) -> list[str]:
        config, problems = self.config, super().config_problems()
        if config.source == "real" and not config.root:
            problems.append(
                "root is required: the nnU-Net v2 raw dataset folder, e.g. "
                "data.root=/data/nnUNet_raw/Dataset004_Hippocampus (a dry run without one: "
                "data.source=synthetic)"
            )
        if config.fold is None:
            problems.append(
                f"fold must be 0..{config.num_folds - 1}: nnU-Net datasets are trained one fold "
                "at a time"
            )
        if not config.synthetic_channels:
            problems.append("synthetic_channels must name at least one channel")
        if config.synthetic_cases < config.num_folds:
            problems.append(
                f"synthetic_cases must be at least num_folds ({config.num_folds}), not "
                f"{config.synthetic_cases}"
            )
        return problems

    # -- the dataset folder --

    @functools.cached_property
    def dataset(self) -> NnUNetDataset:
        """The checked ``dataset.json`` (with ``source: synthetic`` the copy is written first:
        its ``dataset.json`` says the channels the network is built for)."""
        if self.config.source == "synthetic":
            self.write_synthetic_copy()
        return read_dataset_json(self.root)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return self.dataset.channel_names

    def target_spacing(self) -> tuple[float, float, float]:
        """``data.spacing``, else the median voxel size of the training images (their headers;
        any layout problem is raised here, before anything else is read)."""
        if self.config.spacing is not None:
            return super().target_spacing()
        cases, problems = training_cases(self.dataset)
        if problems:
            raise DataError(problem_report(f"{self.title} at {self.root}", problems))
        return median_spacing(cases)

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        training, problems = training_cases(self.dataset)
        test, test_problems = labelled_test_cases(self.dataset)
        both = sorted({c.case_id for c in training} & {c.case_id for c in test})
        problems += test_problems
        problems += [
            f"{case}: in both imagesTr and imagesTs (case ids are unique)" for case in both
        ]
        return training + test, problems

    @functools.cached_property
    def test_ids(self) -> frozenset[str]:
        """The labelled test cases (``imagesTs`` with ``labelsTs``); empty without ``labelsTs``."""
        return frozenset(c.case_id for c in labelled_test_cases(self.dataset)[0])

    def is_test_case(self, case_id: str) -> bool:
        return case_id in self.test_ids

    # -- folds --

    @property
    def generated_splits_path(self) -> Path:
        """Where nnU-Net's seeded split of a dataset without ``splits_final.json`` is written:
        ``<cache_dir>/splits/<DatasetXXX_Name>/splits_final.json`` (nnU-Net writes it beside
        its preprocessed data, ``nnUNet_preprocessed/DatasetXXX_Name/``)."""
        return self.cache_dir / "splits" / self.root.name / SPLITS_FILE

    @property
    def splits_path(self) -> Path:
        """The ``splits_final.json`` the folds come from: ``data.splits_file``, an existing
        file beside ``dataset.json`` or in ``$nnUNet_preprocessed/<DatasetXXX_Name>/``, else
        ``generated_splits_path``."""
        if self.config.splits_file:
            path = Path(self.config.splits_file).expanduser()
            if not path.is_file():
                raise DataError(f"data.splits_file: {path} does not exist")
            return path
        found = [p for p in splits_file_candidates(self.root) if p.is_file()]
        return found[0] if found else self.generated_splits_path

    def folds(self, case_ids: Sequence[str] | None = None) -> list[dict[str, list[str]]]:
        """Every fold as ``{"train": [...], "val": [...]}`` (``splits_final.json``'s format)
        over the training cases ``case_ids`` (default: those of ``imagesTr``): read from
        ``splits_path``, or nnU-Net's seeded split, written to ``generated_splits_path``
        whenever the file there is not that split of these cases."""
        if case_ids is None:
            case_ids = [c.case_id for c in training_cases(self.dataset)[0]]
        path = self.splits_path
        if path != self.generated_splits_path:
            folds = read_splits(path, case_ids)
            if len(folds) != self.config.num_folds:
                raise DataError(
                    f"{path} has {len(folds)} folds; set data.num_folds={len(folds)} "
                    f"(data.fold 0..{len(folds) - 1})"
                )
            return folds
        folds = crossval_splits(case_ids, self.config.num_folds, self.config.split_seed)
        if _read_json(path) != folds:
            write_json(path, folds)
        return folds

    @property
    def fold_count(self) -> int:
        """The number of folds (``data.fold`` is ``0..fold_count-1``)."""
        return len(self.folds())

    def make_split(self, case_ids: Sequence[str]) -> dict[str, list[str]]:
        """Fold ``data.fold``: its ``train`` and ``val`` cases; ``test`` the labelled
        ``imagesTs`` cases, or without ``labelsTs`` the fold's validation cases."""
        training = sorted(set(case_ids) - self.test_ids)
        folds = self.folds(training)
        fold = folds[self.config.fold]
        test = sorted(set(case_ids) & self.test_ids) or list(fold["val"])
        return dict(train=fold["train"], val=fold["val"], test=test)

    def split_details(self) -> dict[str, Any]:
        test = "imagesTs/labelsTs" if self.test_ids else "the fold's validation cases"
        return dict(
            splits_file=str(self.splits_path),
            channel_names=list(self.channel_names),
            test_cases=test,
        )

    # -- the synthetic copy --

    def synthetic_options(self) -> dict[str, Any]:
        return dict(
            shape=tuple(self.config.synthetic_shape),
            channels=tuple(self.config.synthetic_channels),
            cases=self.config.synthetic_cases,
        )

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_nnunet(root, seed=seed, **options)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- the synthetic copy ---------------------------------------------------------------------

SYNTHETIC_CLASSES = ("background", "gland", "lesion")
#: Intensities per channel (background, gland, lesion), cycled over the channels: the gland
#: stands out in the first channel only, the lesion in the second only, so a network needs both
#: channels to segment both classes. CT channels in HU, the others in MR units.
_MR_INTENSITIES = ((80.0, 220.0, 220.0), (140.0, 140.0, 50.0))
_CT_INTENSITIES = ((-60.0, 60.0, 60.0), (20.0, 20.0, 160.0))
_NOISE = 12.0


def synthetic_dataset_json(channels: Sequence[str], cases: int) -> dict[str, Any]:
    """The ``dataset.json`` of ``write_nnunet``."""
    return {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": {name: value for value, name in enumerate(SYNTHETIC_CLASSES)},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "MedNeXtSynthetic",
        "description": "Synthetic stand-in written by the suite's nnunet module: not real data.",
        "licence": "synthetic",
    }


def nnunet_case(
    rng: np.random.Generator, shape: Sequence[int], channels: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One fake case: one int16 image per channel, the uint8 label (0 background, 1 gland,
    2 lesion) and the affine shared by all of them. The slice count varies by ±2 around
    ``shape[2]``, the voxels are anisotropic (0.6–0.8 mm in-plane, 2.5–3.5 mm slices)."""
    shape = (shape[0], shape[1], max(8, shape[2] + int(rng.integers(-2, 3))))
    grid = synthetic.grid(shape)
    centre = 0.5 + rng.normal(0, 0.04, 3)
    gland = synthetic.ellipsoid(grid, centre, 0.28 * rng.uniform(0.85, 1.15, 3))
    lesion_centre = centre + rng.uniform(-0.08, 0.08, 3)
    lesion = synthetic.ellipsoid(grid, lesion_centre, 0.10 * rng.uniform(0.8, 1.2, 3)) & gland
    label = np.zeros(shape, np.uint8)
    label[gland], label[lesion] = 1, 2
    images = []
    for index, name in enumerate(channels):
        table = _CT_INTENSITIES if channel_scheme(name) == "ct" else _MR_INTENSITIES
        values = np.asarray(table[index % len(table)])
        image = values[label] + rng.normal(0, _NOISE, shape)
        images.append(np.round(image).astype(np.int16))
    in_plane = float(rng.uniform(0.6, 0.8))
    spacing = (in_plane, in_plane, float(rng.uniform(2.5, 3.5)))
    affine = synthetic.lps_affine(spacing, shape, float(rng.uniform(-0.1, 0.1)))
    return images, label, affine


def write_nnunet(
    root: str | Path,
    seed: int = 0,
    shape: Sequence[int] = (32, 32, 24),
    channels: Sequence[str] = ("T2", "ADC"),
    cases: int = 10,
    test_cases: int = 2,
) -> Path:
    """A fake nnU-Net v2 raw dataset under ``root``, in the exact layout: ``dataset.json``
    (``channel_names`` from ``channels``, labels background/gland/lesion, ``numTraining``,
    ``file_ending`` ``.nii.gz``), ``imagesTr/case_XXXX_0000.nii.gz`` (one file per channel),
    ``labelsTr/case_XXXX.nii.gz`` and ``test_cases`` unlabelled cases in ``imagesTs/``. Returns
    ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for number in range(1, cases + test_cases + 1):
        case = f"case_{number:04d}"
        images, label, affine = nnunet_case(rng, shape, channels)
        part = "Tr" if number <= cases else "Ts"
        for channel, image in enumerate(images):
            synthetic.save_nifti(
                image, affine, root / f"images{part}" / f"{case}_{channel:04d}.nii.gz"
            )
        if part == "Tr":
            synthetic.save_nifti(label, affine, root / "labelsTr" / f"{case}.nii.gz")
    write_json(root / DATASET_JSON, synthetic_dataset_json(channels, cases))
    return root
