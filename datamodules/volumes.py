"""3D volumes: validation, preprocessing into a cache, and the DataModule of the 3D sets.

The pipeline follows nnU-Net v2 (Isensee et al., Nature Methods 2021; MIC-DKFZ/nnUNet):

1. Validate every raw case (readable, 3D, image and label on the same grid, label values in
   range) and report every problem in one ``DataError``.
2. Preprocess once into a cache (``datamodules.preprocessing``): reorient to the closest RAS
   axes (nibabel; a dataset of oblique stacks may keep its voxel axes instead), normalise (CT:
   clip to the 0.5/99.5 percentiles of the training cases' foreground intensities, then z-score
   with their foreground mean and std; MR: per-case z-score), resample to the target spacing
   (image cubic spline, label nearest; scipy), store ``.npy`` (image float32 (C, X, Y, Z), label
   uint8 (X, Y, Z)) for memory-mapped patch reads, plus per class a sample of foreground voxel
   positions for oversampling (nnU-Net's ``class_locations``).
3. Train on random patches, validate and test on whole cases (``datamodules.patches``).

A manifest beside the cached cases records the preprocessing parameters and every input file
(path, size, modification time); the cache is reused while both are unchanged and rebuilt
otherwise. The manifest is written last and removed first, every file is written to a temporary
name and renamed into place: an interrupted build is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from torch.utils.data import DataLoader

from datamodules.base import DataConfig, SuiteDataModule, label_value_problem, size_problems
from datamodules.errors import DataError, problem_report
from datamodules.patches import CachedCase, CaseDataset, PatchDataset
from datamodules.preprocessing import (
    CT_PERCENTILES,
    IMAGE_ORDER,
    ZSCORE_NORMALIZATION,
    VolumeGeometry,
    ct_normalization,
    orient_labels,
    preprocess_image,
)
from mednext.files import atomic_write, write_json
from mednext.progress import progress_bar

log = logging.getLogger(__name__)

#: Version of the cache layout and of the preprocessing code's meaning; a new value rebuilds.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"

#: nnU-Net v2 fingerprint (``collect_foreground_intensities``): voxels sampled per case.
FOREGROUND_SAMPLES_PER_CASE = 10_000
#: nnU-Net v2 ``DefaultPreprocessor._sample_foreground_locations``: positions kept per class, at
#: least this many (or all) and at least this share of the class's voxels.
CLASS_LOCATION_SAMPLES = 10_000
CLASS_LOCATION_COVERAGE = 0.01
#: Image and label affines may differ by this much (mm, direction cosines) and count as equal.
AFFINE_TOLERANCE = 1e-3

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseFiles:
    """One raw case: its id and the image and label files."""

    case_id: str
    image: Path
    label: Path


def check_case(
    case: CaseFiles, num_classes: int
) -> tuple[list[str], tuple[np.ndarray, np.ndarray] | None]:
    """Problems with one raw case, and when there are none its ``(image, label)`` arrays on the
    file's own grid (image float32), for the foreground statistics.

    Checks: both files readable, 3D, finite image, the same shape and (within
    ``AFFINE_TOLERANCE``) affine, integer label values in ``0..num_classes-1``.
    """
    problems: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    affines: dict[str, np.ndarray] = {}
    for role, path in (("image", case.image), ("label", case.label)):
        try:
            img = nib.load(str(path))
            data = (
                img.get_fdata(dtype=np.float32) if role == "image" else np.asanyarray(img.dataobj)
            )
        except _READ_ERRORS as error:
            problems.append(f"{case.case_id}: cannot read {path}: {error}")
            continue
        if data.ndim != 3:
            problems.append(f"{case.case_id}: {path} is {data.ndim}D {data.shape}; expected 3D")
            continue
        arrays[role], affines[role] = data, img.affine
    if len(arrays) < 2:
        return problems, None
    image, label = arrays["image"], arrays["label"]
    if image.shape != label.shape:
        problems.append(
            f"{case.case_id}: image shape {image.shape} != label shape {label.shape} "
            f"({case.image.name}, {case.label.name})"
        )
    elif not np.allclose(affines["image"], affines["label"], rtol=0, atol=AFFINE_TOLERANCE):
        difference = np.abs(affines["image"] - affines["label"]).max()
        problems.append(
            f"{case.case_id}: image and label affines differ (largest difference {difference:.4g}; "
            f"{case.image.name}, {case.label.name})"
        )
    if not np.isfinite(image).all():
        problems.append(f"{case.case_id}: {case.image} contains NaN or infinite values")
    label_problem = label_value_problem(label, num_classes)
    if label_problem:
        problems.append(f"{case.case_id}: {case.label} has {label_problem}")
    return problems, (None if problems else (image, label))


def foreground_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to ``FOREGROUND_SAMPLES_PER_CASE`` intensities of the voxels with ``label > 0``."""
    values = image[label > 0]
    if len(values) > FOREGROUND_SAMPLES_PER_CASE:
        values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return values


# --- preprocessing cache ----------------------------------------------------------------------


def file_record(path: Path) -> dict[str, Any]:
    """What identifies an input file's content for the cache: absolute path, size, mtime (ns)."""
    stat = path.stat()
    return dict(path=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def input_records(cases: Sequence[CaseFiles]) -> list[dict[str, Any]]:
    return [
        dict(case_id=c.case_id, image=file_record(c.image), label=file_record(c.label))
        for c in cases
    ]


def class_locations(
    label: np.ndarray, num_classes: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per present foreground class (key ``str(c)``), a sample of its voxel positions, int32
    ``(N, 3)``: ``min(count, max(CLASS_LOCATION_SAMPLES, ceil(CLASS_LOCATION_COVERAGE*count)))``
    positions drawn without replacement, as nnU-Net stores for foreground oversampling."""
    flat = np.flatnonzero(label)
    values = label.ravel()[flat]
    locations: dict[str, np.ndarray] = {}
    for c in range(1, num_classes):
        positions = flat[values == c]
        if len(positions) == 0:
            continue
        keep = min(
            len(positions),
            max(CLASS_LOCATION_SAMPLES, math.ceil(CLASS_LOCATION_COVERAGE * len(positions))),
        )
        if keep < len(positions):
            positions = np.sort(rng.choice(positions, keep, replace=False))
        locations[str(c)] = np.stack(np.unravel_index(positions, label.shape), 1).astype(np.int32)
    return locations


def preprocess_case(
    case: CaseFiles,
    spacing: Sequence[float],
    normalization: Mapping[str, Any],
    reorient: bool,
    num_classes: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], VolumeGeometry]:
    """One raw case on the model grid: image float32 (1, X, Y, Z), label uint8 (X, Y, Z), the
    class locations of the label and the geometry of the raw image."""
    image, geometry = preprocess_image(case.image, spacing, normalization, reorient)
    label = orient_labels(np.asanyarray(nib.load(str(case.label)).dataobj), geometry)
    return image, label, class_locations(label, num_classes, rng), geometry


def cache_key(parameters: Mapping[str, Any]) -> str:
    """A short stable hash of the preprocessing parameters (the cache folder's name ends in it)."""
    text = json.dumps(parameters, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a cache folder; ``None`` when missing or unreadable (no usable cache)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cache_is_current(
    folder: Path, parameters: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether ``folder`` holds a complete cache of exactly these parameters and input files."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    if manifest.get("parameters") != parameters or manifest.get("inputs") != list(inputs):
        return False
    return all(
        (folder / name).is_file()
        for entry in manifest["cases"].values()
        for name in (entry["image"], entry["label"], entry["locations"])
    )


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as ``.npy`` at ``path`` (readable with ``np.load(mmap_mode="r")``), atomically."""
    with atomic_write(path, "wb") as stream:
        np.save(stream, array)


# --- the DataModule ---------------------------------------------------------------------------


@dataclass
class VolumeConfig(DataConfig):
    """Keys of the ``data:`` group shared by the 3D datasets (each dataset sets its defaults;
    the common keys are ``DataConfig``'s).

    Attributes:
        batch_size: training patches per batch (validation and test: one whole case).
        patch_size: training patch and sliding-window size, each a multiple of 16.
        spacing: target voxel size in mm. Both in the working axis order: RAS (x, y, z), or the
            voxel axes for a dataset that does not reorient (ACDC).
        iterations_per_epoch: training batches per epoch (nnU-Net: 250).
        foreground_oversample: probability that a training patch is centred on foreground
            (nnU-Net: 0.33).
        augment: nnU-Net-style augmentation of training patches.
        synthetic_shape: voxels per synthetic case (``source=synthetic``).
    """

    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    iterations_per_epoch: int = 250
    foreground_oversample: float = 0.33
    synthetic_shape: list[int] = field(default_factory=lambda: [48, 48, 24])


class VolumeDataModule(SuiteDataModule):
    """A 3D segmentation dataset: raw NIfTI as downloaded → cache → patches and whole cases.

    Subclasses set the dataset constants and implement ``find_cases`` (the raw layout),
    ``make_split`` (the official split and the folds) and ``write_synthetic``. Attributes
    available right after construction: ``in_channels``, ``num_classes``, ``class_names`` (index 0
    ``background``), ``spacing``, ``patch_size``, ``modality``. After ``setup``: ``split``
    (``train``/``val``/``test`` case ids) and ``normalization``.
    """

    Config: ClassVar[type[VolumeConfig]] = VolumeConfig
    task = "segmentation"
    evaluation = "volume"
    spatial_dims = 3
    INPUT_SIZE_KEY = "patch_size"
    #: ``CT`` (dataset-wide CT normalisation) or ``MR`` (per-case z-score).
    modality: ClassVar[str]
    #: Reorient to the closest RAS axes before resampling; off keeps the voxel axes (for stacks
    #: whose slice axis must stay the third axis whatever their obliquity).
    reorient: ClassVar[bool] = True

    def __init__(self, config: VolumeConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.spacing = tuple(float(s) for s in self.config.spacing)
        self.patch_size = tuple(int(p) for p in self.config.patch_size)
        self.input_size = self.patch_size
        self._manifest: dict[str, Any] | None = None
        self._cases: dict[str, CachedCase] = {}

    def config_problems(self) -> list[str]:
        config, problems = self.config, super().config_problems()
        if len(config.patch_size) != 3 or any(p <= 0 or p % 16 for p in config.patch_size):
            problems.append(
                f"patch_size must be 3 positive multiples of 16 (MedNeXt halves it four times), "
                f"not {list(config.patch_size)}"
            )
        if len(config.spacing) != 3 or any(s <= 0 for s in config.spacing):
            problems.append(f"spacing must be 3 positive sizes in mm, not {list(config.spacing)}")
        if config.iterations_per_epoch < 1:
            problems.append(
                f"iterations_per_epoch must be at least 1, not {config.iterations_per_epoch}"
            )
        if not 0 <= config.foreground_oversample <= 1:
            problems.append(
                f"foreground_oversample must be in [0, 1], not {config.foreground_oversample}"
            )
        return problems + size_problems(synthetic_shape=config.synthetic_shape)

    # -- dataset specific --

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        """The raw cases under ``root`` and the problems finding them (a missing image or
        label, an unreadable Info.cfg). Raises ``DataError`` when the dataset is not there."""
        raise NotImplementedError

    def make_split(self, case_ids: Sequence[str]) -> dict[str, list[str]]:
        """``{"train", "val", "test"}`` case ids from the config (``fold``, ``split_seed``)."""
        raise NotImplementedError

    def is_test_case(self, case_id: str) -> bool:
        """Whether ``case_id`` is a test case of every split (the CT normalisation statistics
        come from all other cases, so the cache does not depend on the fold)."""
        raise NotImplementedError

    # -- declared --

    def synthetic_options(self) -> dict[str, Any]:
        return dict(shape=tuple(self.config.synthetic_shape))

    @property
    def normalization(self) -> dict[str, Any]:
        """The intensity normalisation of the cache (JSON-serialisable), for ``preprocess_image``
        at prediction time: CT ``{"scheme": "ct", "clip", "mean", "std"}`` from the non-test
        training cases, MR ``{"scheme": "zscore"}``."""
        if self._manifest is None:
            raise RuntimeError(f"{self.title}: call prepare_data() and setup() first")
        return dict(self._manifest["normalization"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The keyword arguments of ``preprocess_image`` that reproduce the cache (``spacing``,
        ``normalization``, ``reorient``; JSON-serialisable):
        ``preprocess_image(image, **dm.preprocessing)``."""
        return dict(
            spacing=list(self.spacing), normalization=self.normalization, reorient=self.reorient
        )

    # -- the cache --

    def preprocessing_parameters(self) -> dict[str, Any]:
        """Everything the cached cases depend on besides the input files."""
        return dict(
            format=CACHE_FORMAT,
            dataset=self.config.name,
            root=str(self.root.resolve()),
            spacing=list(self.spacing),
            reorient=self.reorient,
            modality=self.modality,
            image_order=IMAGE_ORDER,
            ct_percentiles=list(CT_PERCENTILES) if self.modality == "CT" else None,
        )

    @property
    def cache_path(self) -> Path:
        """The folder of the preprocessed cases: one per parameter set, so experiments at
        different spacings keep their own caches."""
        parameters = self.preprocessing_parameters()
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        return self.cache_dir / "preprocessed" / f"{spacing}mm-{cache_key(parameters)}"

    # -- Lightning hooks --

    def prepare_dataset(self) -> None:
        """Validate the raw dataset and preprocess it into ``cache_path`` unless an identical
        cache is already there."""
        cases, problems = self.find_cases(self.root)
        parameters = self.preprocessing_parameters()
        folder = self.cache_path
        if not problems and cache_is_current(folder, parameters, input_records(cases)):
            log.info("%s: using the preprocessed cache %s", self.title, folder)
            return
        self._build_cache(folder, parameters, cases, problems)

    def setup(self, stage: str | None = None) -> None:
        """Read the cache's manifest and make the split and the cases of each part (once; later
        stages reuse it)."""
        if self._manifest is not None:
            return
        folder = self.cache_path
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("parameters") != self.preprocessing_parameters():
            raise DataError(
                f"{self.title}: no preprocessed cache at {folder}; call prepare_data() first "
                "(the Trainer does)"
            )
        self._manifest = manifest
        self.split = self.make_split(sorted(manifest["cases"]))
        locations = set(self.split["train"])
        self._cases = {
            case_id: self._cached_case(folder, case_id, with_locations=case_id in locations)
            for case_ids in self.split.values()
            for case_id in case_ids
        }

    def split_record(self) -> dict[str, Any]:
        """The spacing, the cache, the split and every case's raw files."""
        files = {
            entry["case_id"]: dict(image=entry["image"]["path"], label=entry["label"]["path"])
            for entry in self._manifest["inputs"]
        }
        return dict(
            spacing=list(self.spacing),
            cache=str(self.cache_path),
            split=self.split,
            files={c: files[c] for ids in self.split.values() for c in ids},
        )

    def train_dataloader(self) -> DataLoader:
        """Random augmented patches: ``image`` (B, C, *patch_size) float32, ``label``
        (B, 1, *patch_size) int64; ``iterations_per_epoch`` batches per epoch."""
        dataset = PatchDataset(
            [self._cases[c] for c in self.split["train"]],
            self.patch_size,
            length=self.config.iterations_per_epoch * self.config.batch_size,
            foreground_oversample=self.config.foreground_oversample,
            augment=self.config.augment,
        )
        return self.training_loader(dataset, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Whole validation cases, batch size 1: ``image`` (1, C, X, Y, Z), ``label``
        (1, 1, X, Y, Z), ``case_id`` [str]."""
        return self._case_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Whole test cases, as ``val_dataloader``."""
        return self._case_loader("test")

    # -- internals --

    def _case_loader(self, part: str) -> DataLoader:
        return self.evaluation_loader(CaseDataset([self._cases[c] for c in self.split[part]]), 1)

    def _cached_case(self, folder: Path, case_id: str, with_locations: bool) -> CachedCase:
        entry = self._manifest["cases"][case_id]
        locations: dict[int, np.ndarray] = {}
        if with_locations:
            with np.load(folder / entry["locations"]) as stored:
                locations = {int(c): stored[c] for c in stored.files}
        return CachedCase(
            case_id=case_id,
            image=folder / entry["image"],
            label=folder / entry["label"],
            shape=tuple(entry["shape"]),
            locations=locations,
        )

    def _build_cache(
        self,
        folder: Path,
        parameters: dict[str, Any],
        cases: Sequence[CaseFiles],
        problems: list[str],
    ) -> None:
        started = time.perf_counter()
        statistics = {c.case_id for c in cases if not self.is_test_case(c.case_id)}
        rng = np.random.default_rng(0)
        foreground: list[np.ndarray] = []
        with progress_bar() as progress:
            for case in progress.track(cases, description=f"{self.title}: checking"):
                case_problems, arrays = check_case(case, self.num_classes)
                problems.extend(case_problems)
                if arrays is not None and self.modality == "CT" and case.case_id in statistics:
                    foreground.append(foreground_sample(*arrays, rng))
            if problems:
                raise DataError(problem_report(f"{self.title} at {self.root}", problems))
            normalization = (
                ct_normalization(np.concatenate(foreground))
                if self.modality == "CT"
                else dict(ZSCORE_NORMALIZATION)
            )
            # The manifest goes first so that nothing in a half-rebuilt folder is ever trusted.
            (folder / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            entries: dict[str, Any] = {}
            for case in progress.track(cases, description=f"{self.title}: preprocessing"):
                image, label, locations, geometry = preprocess_case(
                    case, self.spacing, normalization, self.reorient, self.num_classes, rng
                )
                names = {part: f"{case.case_id}_{part}" for part in ("image", "label", "locations")}
                save_npy(folder / f"{names['image']}.npy", image)
                save_npy(folder / f"{names['label']}.npy", label)
                with atomic_write(folder / f"{names['locations']}.npz", "wb") as stream:
                    np.savez(stream, **locations)
                entries[case.case_id] = dict(
                    image=f"{names['image']}.npy",
                    label=f"{names['label']}.npy",
                    locations=f"{names['locations']}.npz",
                    shape=list(label.shape),
                    classes=sorted(int(c) for c in locations),
                    source_shape=list(geometry.shape),
                    source_spacing=list(geometry.oriented_spacing),
                )
        seconds = time.perf_counter() - started
        write_json(
            folder / MANIFEST,
            dict(
                parameters=parameters,
                inputs=input_records(cases),
                normalization=normalization,
                cases=entries,
                seconds=round(seconds, 2),
            ),
        )
        log.info(
            "%s: preprocessed %d cases into %s in %.1f s", self.title, len(cases), folder, seconds
        )
