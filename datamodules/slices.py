"""2D slice releases of 3D segmentation sets: TransUNet's Synapse and MT-UNet's ACDC.

Both releases store training slices as ``.npz`` files (one axial or short-axis slice each) and test
cases as whole volumes ``(D, H, W)``, and both are trained and evaluated the TransUNet way
(Chen et al. 2021, Beckschen/TransUNet): random slices at ``image_size``² with TransUNet's
``RandomGenerator`` augmentation; evaluation slice by slice per volume (DESIGN 7). One mechanism
reads both; ``synapse.SynapseSliceDataModule`` and ``acdc.ACDCSliceDataModule`` name their
layout, keys, lists and split, and rebuild their release from the raw 3D download
(``prepare_release``, ``mednext data prepare``).

1. Discovery: the release folder is ``data.root`` or up to ``SEARCH_DEPTH`` levels below it. Its
   own split lists are used when the download has them, else the split shipped with the suite
   (DESIGN 6.5/6.6); a download whose lists differ from the shipped split is reported.
2. Validation: every file is read once (readable, the release's keys, 2D slices / 3D volumes,
   image and label of one shape, finite image, integer labels in range); every problem goes into
   one ``DataError``. Success is recorded in ``<cache_dir>/validated-<key>.json``, keyed by the
   file list with sizes and modification times, so an unchanged release is not read again.
3. Loading: training slices augmented exactly as TransUNet's ``RandomGenerator`` (numpy/scipy, as
   the original: albumentations has no rotation by integer degrees with scipy's nearest-neighbour
   grid nor scipy's spline zoom); validation and test volumes at their stored in-plane size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h5py
import lightning as L
import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from datamodules.base import (
    DataError,
    common_config_problems,
    dataset_cache_dir,
    dataset_folder,
    evaluation_sampler,
    loader_options,
    loader_seed,
    write_folder_once,
    write_json,
)
from datamodules.volumes import problem_report

log = logging.getLogger(__name__)

#: How many levels below ``data.root`` the release folder may lie.
SEARCH_DEPTH = 3
#: Version of what a validation record means; a new value re-reads every file once.
VALIDATION_FORMAT = 1
PARTS = ("train", "val", "test")

#: TransUNet ``datasets/dataset_synapse.py`` ``RandomGenerator``: with probability 0.5 a rot90 by
#: k ∈ {0, 1, 2, 3} and a flip along a random axis, else with probability 0.5 a rotation by an
#: integer angle ``np.random.randint(-20, 20)`` (−20..19°), nearest neighbour for image and label
#: alike (``ndimage.rotate(order=0, reshape=False)``); then a zoom to the network size, cubic
#: spline for the image (``order=3``), nearest for the label. MT-UNet's ACDC code is the same.
P_ROT_FLIP = 0.5
P_ROTATE = 0.5
ROTATION_DEGREES = (-20, 20)
IMAGE_ZOOM_ORDER = 3

_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


# --- intensities and slices ------------------------------------------------------------------


def normalize_intensities(volume: np.ndarray, intensity: Mapping[str, Any]) -> np.ndarray:
    """``volume`` scaled to the release's range (float32), as ``intensity`` says.

    ``{"scheme": "window", "window": [low, high]}``: clip to the window, then map it linearly to
    [0, 1] (TransUNet's Synapse: [-125, 275] HU). ``{"scheme": "minmax"}``: this volume's own
    minimum and maximum to [0, 1] (a constant volume becomes 0).
    """
    volume = np.asarray(volume, dtype=np.float32)
    scheme = intensity.get("scheme")
    if scheme == "window":
        low, high = (float(v) for v in intensity["window"])
    elif scheme == "minmax":
        low, high = float(volume.min()), float(volume.max())
    else:
        raise DataError(f"unknown intensity scheme {scheme!r}; expected 'window' or 'minmax'")
    if high <= low:
        return np.zeros_like(volume)
    return ((np.clip(volume, low, high) - low) / (high - low)).astype(np.float32)


def volume_to_slices(volume: np.ndarray, intensity: Mapping[str, Any] | None = None) -> np.ndarray:
    """A raw 3D volume as nibabel reads it, ``(X, Y, Z)``, as the releases store it: slice index
    first, ``(D, H, W) = (Z, X, Y)``, each slice ``volume[:, :, k]`` as it is (no flip); with
    ``intensity`` normalised (``normalize_intensities``). Labels: pass no ``intensity``."""
    if volume.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {volume.shape}")
    if intensity is not None:
        volume = normalize_intensities(volume, intensity)
    return np.ascontiguousarray(np.transpose(volume, (2, 0, 1)))


def zoom_slice(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``label`` (H, W) zoomed to ``size``², as TransUNet (``scipy.ndimage.zoom``:
    cubic spline for the image, nearest for the label); unchanged when already that size."""
    height, width = image.shape
    if (height, width) == (size, size):
        return image, label
    factors = (size / height, size / width)
    image = ndimage.zoom(image, factors, order=IMAGE_ZOOM_ORDER)
    label = ndimage.zoom(label, factors, order=0)
    if image.shape != (size, size):
        raise RuntimeError(f"zoom gave {image.shape}, not {(size, size)}")
    return image, label


def transunet_augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """TransUNet's ``RandomGenerator`` before the zoom: rot90 and flip (probability 0.5), else a
    rotation by an integer angle in −20..19° (probability 0.5 of the rest), the same for image
    and label. The draws come from ``rng`` instead of the global numpy/random state."""
    if rng.random() < P_ROT_FLIP:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = np.flip(np.rot90(image, k), axis)
        label = np.flip(np.rot90(label, k), axis)
    elif rng.random() < P_ROTATE:
        angle = int(rng.integers(*ROTATION_DEGREES))
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        label = ndimage.rotate(label, angle, order=0, reshape=False)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


# --- reading and checking release files --------------------------------------------------------


def read_arrays(path: Path, keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(image, label)`` arrays of a release file: ``.npz`` (keys ``keys``) or HDF5
    (``.h5``: datasets ``keys``)."""
    image_key, label_key = keys
    if path.suffix == ".h5":
        with h5py.File(path, "r") as stored:
            return np.asarray(stored[image_key][:]), np.asarray(stored[label_key][:])
    with np.load(path) as stored:
        return np.asarray(stored[image_key]), np.asarray(stored[label_key])


def stored_keys(path: Path) -> list[str]:
    """The array names in an ``.npz`` or the datasets of an HDF5 file."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as stored:
            return sorted(stored.keys())
    if not zipfile.is_zipfile(path):
        # np.load would try it as .npy and then as a pickle, and say that instead.
        raise zipfile.BadZipFile("not an .npz (zip) archive")
    with np.load(path) as stored:
        return sorted(stored.files)


def file_problems(
    path: Path, name: str, keys: tuple[str, str], ndim: int, num_classes: int
) -> tuple[list[str], tuple[int, ...] | None]:
    """Problems with one release file (``name``: how messages call it) and, when it has none, its
    shape. Checks: readable, has the two ``keys``, image and label ``ndim``-D of one shape,
    finite image, integer label values in ``0..num_classes-1`` (any numeric dtype)."""
    if not path.is_file():
        return [f"{name}: missing"], None
    try:
        found = stored_keys(path)
        if not set(keys) <= set(found):
            expected = " and ".join(repr(k) for k in keys)
            return [f"{name}: has keys {found}, expected {expected}"], None
        image, label = read_arrays(path, keys)
    except _READ_ERRORS as error:
        return [f"{name}: cannot read: {type(error).__name__}: {error}"], None
    if image.ndim != ndim or label.ndim != ndim or image.shape != label.shape:
        return [
            f"{name}: image {image.shape} and label {label.shape}; expected two {ndim}D arrays "
            "of one shape"
        ], None
    problems = []
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        problems.append(f"{name}: image is not numeric or contains NaN or infinite values")
    if not np.issubdtype(label.dtype, np.number):
        problems.append(f"{name}: label has dtype {label.dtype}, not a number")
        return problems, None
    bad = (label < 0) | (label > num_classes - 1) | (label != np.round(label))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(f"{v:g}" for v in values[:10]) + (" ..." if len(values) > 10 else "")
        problems.append(f"{name}: label values {shown} outside the integers 0..{num_classes - 1}")
    return problems, (None if problems else tuple(image.shape))


def read_list(path: Path) -> list[str]:
    """The non-empty lines of a split list, stripped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def find_release_folders(root: Path, is_release: Callable[[Path], bool]) -> list[Path]:
    """The folders at ``root`` or up to ``SEARCH_DEPTH`` levels below it for which
    ``is_release`` holds, at the shallowest depth that has any."""
    if not root.is_dir():
        return []
    for depth in range(SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth)
        candidates = [root] if depth == 0 else sorted(p for p in root.glob(pattern) if p.is_dir())
        found = [c for c in candidates if not c.name.startswith(".") and is_release(c)]
        if found:
            return found
    return []


def find_lists_folder(base: Path, root: Path, name: str) -> Path | None:
    """The split lists folder ``name`` of a release: beside the release's folders
    (``<base>/lists/<name>``, ``<base>/<name>``), beside the release folder, or anywhere up to
    four levels below ``root``; ``None`` when the download has none."""
    candidates = [base / "lists" / name, base / name, base.parent / "lists" / name]
    candidates.append(base.parent / name)
    for depth in range(SEARCH_DEPTH + 2):
        candidates += sorted(root.glob("/".join(["*"] * depth + [name])))
    return next((c for c in candidates if c.is_dir()), None)


# --- the release index -------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceCase:
    """One case of a release: its slice files in slice order (``stacked``, training and
    validation cases) or its one volume file (test cases), paths relative to the release folder.
    """

    case_id: str
    files: tuple[str, ...]
    stacked: bool


@dataclass
class Release:
    """What discovery found in a release folder.

    Attributes:
        base: the release folder (holding ``train_npz/`` or ``train/``).
        cases: every case of the release's split, by id.
        parts: the release's own ``train``/``val``/``test`` case ids (``val`` empty for Synapse).
        lists: the split lists folder read, or ``None`` when the shipped split was used.
        differences: how the download's lists differ from the shipped split (empty: they agree).
        problems: missing files, unparseable names, test cases in the training lists.
    """

    base: Path
    cases: dict[str, SliceCase] = field(default_factory=dict)
    parts: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PARTS})
    lists: Path | None = None
    differences: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add_slices(self, part: str, slices: Mapping[str, Mapping[int, str]]) -> None:
        """``slices``: case id -> {slice index: file}; each case joins ``part``. A case whose
        indices are not 0..n-1 is a problem (its volume could not be stacked)."""
        for case_id, by_index in sorted(slices.items()):
            gaps = sorted(set(range(max(by_index) + 1)) - set(by_index))
            if gaps:
                shown = ", ".join(str(k) for k in gaps[:10]) + (" ..." if len(gaps) > 10 else "")
                self.problems.append(f"{case_id}: slices {shown} missing")
            files = tuple(by_index[k] for k in sorted(by_index))
            self.cases[case_id] = SliceCase(case_id, files, stacked=True)
            self.parts[part].append(case_id)

    def add_volume(self, part: str, case_id: str, file: str) -> None:
        self.cases[case_id] = SliceCase(case_id, (file,), stacked=False)
        self.parts[part].append(case_id)


def set_differences(what: str, found: set[str], shipped: set[str]) -> list[str]:
    """Lines saying how ``found`` differs from ``shipped`` (nothing when they are equal)."""
    lines = []
    if found - shipped:
        lines.append(f"{what} has {', '.join(sorted(found - shipped))} (not in the shipped split)")
    if shipped - found:
        lines.append(f"{what} lacks {', '.join(sorted(shipped - found))} (in the shipped split)")
    return lines


# --- datasets ----------------------------------------------------------------------------------


class SliceDataset(Dataset):
    """Training slices: ``image`` float32 ``(1, S, S)``, ``label`` int64 ``(1, S, S)``;
    augmented as TransUNet when ``augment``, always zoomed to ``size``²."""

    def __init__(
        self, base: Path, files: Sequence[str], keys: tuple[str, str], size: int, augment: bool
    ) -> None:
        self.base = Path(base)
        self.files = list(files)
        self.keys = keys
        self.size = size
        self.augment = augment
        self.set_random_state(0)

    def set_random_state(self, seed: int) -> None:
        """Reseed the augmentation (MONAI's ``worker_init_fn`` calls this per worker)."""
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = read_arrays(self.base / self.files[index], self.keys)
        image = image.astype(np.float32, copy=False)
        label = np.rint(label).astype(np.int64)
        if self.augment:
            image, label = transunet_augment(image, label, self.rng)
        image, label = zoom_slice(image, label, self.size)
        return dict(
            image=torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            label=torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None],
        )


class VolumeDataset(Dataset):
    """Whole cases at their stored size: ``image`` float32 ``(D, H, W)``, ``label`` int64
    ``(D, H, W)``, ``case_id`` str (a loader with batch size 1 gives ``(1, D, H, W)``)."""

    def __init__(self, base: Path, cases: Sequence[SliceCase], keys: tuple[str, str]) -> None:
        self.base = Path(base)
        self.cases = list(cases)
        self.keys = keys

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        if case.stacked:
            pairs = [read_arrays(self.base / f, self.keys) for f in case.files]
            image = np.stack([p[0] for p in pairs])
            label = np.stack([p[1] for p in pairs])
        else:
            image, label = read_arrays(self.base / case.files[0], self.keys)
        return dict(
            image=torch.from_numpy(image.astype(np.float32)),
            label=torch.from_numpy(np.rint(label).astype(np.int64)),
            case_id=case.case_id,
        )


# --- the DataModule ----------------------------------------------------------------------------


@dataclass
class SliceConfig:
    """Keys of the ``data:`` group shared by the 2D releases.

    Attributes:
        name: registry name of the dataset.
        root: the release folder as downloaded or rebuilt by ``mednext data prepare``, or a
            folder holding it up to three levels down.
        source: ``real`` reads ``root``; ``synthetic`` writes a small fake raw 3D copy, rebuilds
            the release from it with ``prepare_release`` (once, in the cache) and reads that.
        batch_size: training slices per batch (validation and test: one whole case).
        num_workers: DataLoader worker processes.
        image_size: side of the square network input (TransUNet: 224).
        fold: ``None`` for the release's split; ``k`` for fold ``k`` of a seeded
            ``num_folds``-fold cross-validation of the non-test cases (patients for ACDC).
        num_folds: folds of the cross-validation.
        split_seed: seed of the seeded parts of the split (not the training seed).
        augment: TransUNet's training augmentation.
        cache_dir: validation records and synthetic copies (default
            ``${MEDNEXT_CACHE:-~/.cache/mednext}/<name>``).
        synthetic_shape: voxels per raw synthetic case (``source=synthetic``), (X, Y, Z).
        synthetic_seed: seed of the synthetic copy.
    """

    name: str = ""
    root: str = ""
    source: str = "real"
    batch_size: int = 24
    num_workers: int = 4
    image_size: int = 224
    fold: int | None = None
    num_folds: int = 5
    split_seed: int = 0
    augment: bool = True
    cache_dir: str | None = None
    synthetic_shape: list[int] = field(default_factory=lambda: [64, 64, 10])
    synthetic_seed: int = 0


class SliceDataModule(L.LightningDataModule):
    """A 2D release: slices for training, whole volumes for validation and test.

    Subclasses set the dataset constants and implement ``find_release`` (layout, lists, shipped
    split), ``make_split`` (validation and folds) and ``prepare_release`` (the rebuild from the raw
    3D download). Attributes available right after construction: ``task`` ("segmentation"),
    ``evaluation`` ("transunet": slice-wise per volume, DESIGN 7), ``spatial_dims`` (2),
    ``in_channels`` (1), ``num_classes``, ``class_names`` (index 0 ``background``),
    ``image_size``, ``patch_size`` ``(S, S)``, ``spacing`` ``(1.0, 1.0)`` (metrics in pixels),
    ``has_validation``, ``preprocessing``. After ``setup``: ``split`` (case ids per part).

    Batches: training ``image`` float32 ``(B, 1, S, S)``, ``label`` int64 ``(B, 1, S, S)``;
    validation/test (batch size 1) ``image`` float32 ``(1, D, H, W)`` and ``label`` int64
    ``(1, D, H, W)`` at the stored in-plane size, ``case_id`` ``[str]``.
    """

    Config: ClassVar[type[SliceConfig]] = SliceConfig
    task: ClassVar[str] = "segmentation"
    evaluation: ClassVar[str] = "transunet"
    spatial_dims: ClassVar[int] = 2
    in_channels: ClassVar[int] = 1
    #: Human-readable dataset name for messages.
    title: ClassVar[str]
    CLASS_NAMES: ClassVar[tuple[str, ...]]
    #: The array names of image and label in the release's files.
    KEYS: ClassVar[tuple[str, str]]
    #: How the release scales intensities (``normalize_intensities``).
    INTENSITY: ClassVar[Mapping[str, Any]]
    DOWNLOAD: ClassVar[str]
    LAYOUT: ClassVar[str]
    #: Example experiment for the dry-run hint of the missing-dataset message.
    EXAMPLE_EXPERIMENT: ClassVar[str]

    def __init__(self, config: SliceConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.seed = seed
        problems = self.config_problems()
        if problems:
            raise DataError(problem_report(f"data config of {self.config.name!r}", problems))
        self.class_names = list(self.CLASS_NAMES)
        self.num_classes = len(self.class_names)
        self.image_size = int(self.config.image_size)
        self.patch_size = (self.image_size, self.image_size)
        self.spacing = (1.0, 1.0)
        self.has_validation = self.validation_configured()
        self.split: dict[str, list[str]] = {}
        self._release: Release | None = None

    # -- dataset specific --

    def config_problems(self) -> list[str]:
        """Every invalid value of the config (subclasses add theirs)."""
        config, problems = self.config, []
        problems += common_config_problems(config)
        if config.image_size < 1:
            problems.append(
                f"image_size must be a positive number of pixels, not {config.image_size}"
            )
        if len(config.synthetic_shape) != 3 or any(n < 8 for n in config.synthetic_shape):
            problems.append(
                f"synthetic_shape must be 3 sizes of at least 8, not {config.synthetic_shape}"
            )
        return problems

    def validation_configured(self) -> bool:
        """Whether the config gives a validation set (known before any file is read)."""
        return True

    def find_release(self, root: Path) -> Release:
        """The release under ``root``: its cases, split lists and problems. Raises ``DataError``
        (``missing``) when there is none."""
        raise NotImplementedError

    def make_split(self, release: Release) -> dict[str, list[str]]:
        """``{"train", "val", "test"}`` case ids from the release's parts and the config."""
        raise NotImplementedError

    @classmethod
    def prepare_release(cls, raw_root: Path, out_dir: Path) -> dict[str, Any]:
        """Rebuild the release from the raw 3D download under ``raw_root`` into ``out_dir``
        (which must not exist or be empty); returns a summary of what was written."""
        raise NotImplementedError

    # -- messages --

    def missing(self, root: Path) -> DataError:
        """The missing-dataset error: where it looked, the layout, the download, the dry run and
        the rebuild from the raw data."""
        where = f"{root}" if not root.is_dir() else f"{root} and up to {SEARCH_DEPTH} levels below"
        return DataError(
            f"{self.title} not found at {where}"
            f"{' (the folder does not exist)' if not root.exists() else ''}.\n"
            f"Expected layout (<root> may also hold it up to {SEARCH_DEPTH} levels down):\n"
            f"{self.LAYOUT}\n"
            f"Download: {self.DOWNLOAD}; unzip and set data.root (or $MEDNEXT_DATA).\n"
            f"Or rebuild it from the raw 3D download: `mednext data prepare {self.config.name} "
            f"RAW_ROOT {root}`.\n"
            "Dry run without it: data.source=synthetic "
            f"(e.g. `mednext train {self.EXAMPLE_EXPERIMENT} data.source=synthetic`)."
        )

    # -- locations --

    @property
    def cache_dir(self) -> Path:
        return dataset_cache_dir(self.config)

    @property
    def root(self) -> Path:
        """The release read: ``config.root``, or the synthetic copy in the cache."""
        shape = "x".join(str(n) for n in self.config.synthetic_shape)
        return dataset_folder(self.config, f"seed{self.config.synthetic_seed}-{shape}")

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What inference on a raw volume needs (JSON-serialisable): ``image_size``, the
        ``intensity`` scaling of ``normalize_intensities``, ``slice_axis`` (2: slices are
        ``volume[:, :, k]`` of the nibabel array, ``volume_to_slices``), ``class_names`` and the
        ``evaluation`` protocol. Each slice is zoomed to ``image_size``² (cubic spline) and the
        prediction back (nearest), as the task does."""
        return dict(
            image_size=self.image_size,
            intensity=json.loads(json.dumps(self.INTENSITY)),
            slice_axis=2,
            spatial_dims=self.spatial_dims,
            class_names=list(self.class_names),
            evaluation=self.evaluation,
        )

    # -- Lightning hooks --

    def prepare_data(self) -> None:
        """Write the synthetic copy (``source=synthetic``, once), then find and validate the
        release (every file read once; an unchanged release is not read again)."""
        if self.config.source == "synthetic":
            self._write_synthetic()
        self._checked_release()

    def setup(self, stage: str | None = None) -> None:
        """Find and validate the release (cheap after ``prepare_data``) and make the split, once;
        later stages reuse it."""
        if self.split:
            return
        release = self._checked_release()
        split = self.make_split(release)
        if release.differences:
            log.warning(
                "%s: the split lists in %s differ from the split shipped with the suite "
                "(DESIGN 6): %s. Using the download's lists.",
                self.title,
                release.lists,
                "; ".join(release.differences),
            )
        self._release, self.split = release, split

    def write_split(self, path: Path) -> None:
        """The split as JSON, with what reproduces it and every case's files."""
        if self._release is None:
            raise RuntimeError(f"{self.title}: call setup() before write_split()")
        release = self._release
        cases = {c: release.cases[c] for ids in self.split.values() for c in ids}
        write_json(
            Path(path),
            dict(
                dataset=self.config.name,
                source=self.config.source,
                root=str(self.root),
                release=str(release.base),
                lists=str(release.lists) if release.lists else "shipped (DESIGN 6)",
                list_differences=release.differences,
                fold=self.config.fold,
                num_folds=self.config.num_folds,
                split_seed=self.config.split_seed,
                seed=self.seed,
                **self.split_details(),
                class_names=list(self.class_names),
                counts={
                    part: dict(
                        cases=len(ids),
                        slices=sum(len(cases[c].files) for c in ids if cases[c].stacked),
                    )
                    for part, ids in self.split.items()
                },
                split=self.split,
                files={c: list(case.files) for c, case in cases.items()},
            ),
        )

    def split_details(self) -> dict[str, Any]:
        """Dataset-specific facts recorded in ``split.json`` besides the split."""
        return {}

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented (``augment``) training slices; the last incomplete batch is
        dropped when there is more than one batch."""
        assert self._release is not None, "call setup() first"
        files = [f for c in self.split["train"] for f in self._release.cases[c].files]
        dataset = SliceDataset(
            self._release.base, files, self.KEYS, self.image_size, self.config.augment
        )
        seed = loader_seed(self.seed, self._rank())
        dataset.set_random_state(seed)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=True,
            drop_last=len(files) > self.config.batch_size,
            **loader_options(seed, self.config.num_workers),
        )

    def val_dataloader(self) -> DataLoader:
        """Whole validation cases. Without a validation set (``has_validation`` false) the loader
        is empty: run the Trainer with ``limit_val_batches=0`` (Lightning warns about an empty
        loader otherwise)."""
        return self._case_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Whole test cases."""
        return self._case_loader("test")

    # -- internals --

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_rank if trainer is not None else 0

    def _case_loader(self, part: str) -> DataLoader:
        assert self._release is not None, "call setup() first"
        cases = [self._release.cases[c] for c in self.split[part]]
        dataset = VolumeDataset(self._release.base, cases, self.KEYS)
        sampler = evaluation_sampler(dataset, getattr(self, "trainer", None))
        options = loader_options(loader_seed(self.seed, self._rank()), self.config.num_workers)
        if not cases:
            options.update(num_workers=0, persistent_workers=False, worker_init_fn=None)
        return DataLoader(dataset, batch_size=1, shuffle=False, sampler=sampler, **options)

    def _checked_release(self) -> Release:
        """``find_release`` of the root, every file read unless an identical file list was
        validated before; all problems in one ``DataError``."""
        root = self.root
        release = self.find_release(root)
        problems = list(release.problems)
        checks = self._checks(release)
        record = self.cache_dir / f"validated-{validation_key(release.base, checks)}.json"
        if not problems and record.is_file():
            return release
        shapes: dict[str, list[tuple[int, ...] | None]] = {}
        with progress_bar(transient=True) as progress:
            task = progress.add_task(f"{self.title}: checking files", total=len(checks))
            for case_id, file, ndim in checks:
                file_issues, shape = file_problems(
                    release.base / file, file, self.KEYS, ndim, self.num_classes
                )
                problems += file_issues
                shapes.setdefault(case_id, []).append(shape)
                progress.advance(task)
        for case_id, case_shapes in shapes.items():
            known = {s for s in case_shapes if s is not None}
            if release.cases[case_id].stacked and len(known) > 1:
                shown = ", ".join(str(s) for s in sorted(known))
                problems.append(f"{case_id}: its slices have different shapes ({shown})")
        if problems:
            raise DataError(problem_report(f"{self.title} at {release.base}", problems))
        write_json(
            record,
            dict(
                format=VALIDATION_FORMAT,
                dataset=self.config.name,
                release=str(release.base.resolve()),
                files=len(checks),
            ),
        )
        return release

    def _checks(self, release: Release) -> list[tuple[str, str, int]]:
        """``(case id, file, ndim)`` of every file of the release's split."""
        return [
            (case.case_id, file, 2 if case.stacked else 3)
            for case in release.cases.values()
            for file in case.files
        ]

    def _write_synthetic(self) -> None:
        """The synthetic release, written once: into a temporary folder renamed into place."""
        from datamodules.synthetic import write_dataset  # synthetic imports the dataset modules

        write_folder_once(
            self.root,
            lambda folder: write_dataset(
                self.config.name,
                folder,
                seed=self.config.synthetic_seed,
                shape=tuple(self.config.synthetic_shape),
            ),
        )


def validation_key(base: Path, checks: Sequence[tuple[str, str, int]]) -> str:
    """A short hash of the release's files: absolute folder, and per file path, size, mtime."""
    records = []
    for _, file, _ in checks:
        path = base / file
        stat = path.stat() if path.is_file() else None
        records.append([file, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    text = json.dumps(dict(format=VALIDATION_FORMAT, base=str(base.resolve()), files=records))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- rebuilding a release from the raw 3D download --------------------------------------------


@contextmanager
def atomic_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write a release into; on success it is renamed to
    ``out_dir`` (which must not exist or be an empty folder), on any error (Ctrl-C included) it
    is removed: ``out_dir`` never holds half a release."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir} exists and is not an empty folder; remove it or choose another")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        temporary.replace(out_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``arrays`` as an uncompressed ``.npz`` (as the releases store them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def save_h5(path: Path, **arrays: np.ndarray) -> None:
    """``arrays`` as datasets of an HDF5 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as stored:
        for key, array in arrays.items():
            stored.create_dataset(key, data=array)


def write_list(path: Path, entries: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{entry}\n" for entry in entries))


def prepare_dataset(name: str, raw_root: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``mednext data prepare NAME RAW_ROOT OUT_DIR``: the 2D release of dataset ``name`` rebuilt
    from its raw 3D download; returns the summary of ``prepare_release``."""
    from datamodules import DATAMODULES  # the registry imports this module

    preparable = sorted(n for n, c in DATAMODULES.items() if issubclass(c, SliceDataModule))
    cls = DATAMODULES.get(name)
    if cls is None or not issubclass(cls, SliceDataModule):
        raise DataError(
            f"no 2D release to prepare for {name!r}; available: {', '.join(preparable)}"
        )
    return cls.prepare_release(Path(raw_root).expanduser(), Path(out_dir).expanduser())


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """A prepare summary as ``key: value`` lines."""
    return [f"{key}: {value}" for key, value in summary.items()]


def progress_bar(transient: bool = False) -> Progress:
    """A Rich progress bar (``transient``: removed when done)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
    )
