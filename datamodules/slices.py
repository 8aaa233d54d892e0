"""2D slice releases of 3D segmentation sets: TransUNet's Synapse and MT-UNet's ACDC.

Both releases are trained and evaluated the TransUNet way (Chen et al. 2021, Beckschen/TransUNet):
random slices at ``image_size``² with TransUNet's ``RandomGenerator`` augmentation; evaluation
slice by slice per volume (docs/evaluation.md). One mechanism reads both;
``synapse.SynapseSliceDataModule`` and ``acdc.ACDCSliceDataModule`` name their layout, keys, lists
and split, and rebuild their release from the raw 3D download (``prepare_release``, ``mednext
data prepare``).

1. Discovery (``datamodules.releases``): the release folder is ``data.root`` or up to
   ``SEARCH_DEPTH`` levels below it. Its own split lists are used when the download has them,
   else the split shipped with the suite (docs/datasets.md); a download whose lists differ from
   the shipped split is reported.
2. Validation: every file is read once (readable, the release's keys, 2D slices / 3D volumes,
   image and label of one shape, finite image, integer labels in range); every problem goes into
   one ``DataError``. Success is recorded in the validated-once record, keyed by the file list
   with sizes and modification times, so an unchanged release is not read again.
3. Loading: training slices augmented exactly as TransUNet's ``RandomGenerator`` (numpy/scipy, as
   the original: albumentations has no rotation by integer degrees with scipy's nearest-neighbour
   grid nor scipy's spline zoom); validation and test volumes at their stored in-plane size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from datamodules.base import DataConfig, SuiteDataModule, dataset_not_found, size_problems
from datamodules.preprocessing import zoom_slice
from datamodules.releases import SEARCH_DEPTH, Release, SliceCase, file_problems, read_arrays
from mednext.progress import progress_bar

log = logging.getLogger(__name__)

#: TransUNet ``datasets/dataset_synapse.py`` ``RandomGenerator``: with probability 0.5 a rot90 by
#: k ∈ {0, 1, 2, 3} and a flip along a random axis, else with probability 0.5 a rotation by an
#: integer angle ``np.random.randint(-20, 20)`` (−20..19°), nearest neighbour for image and label
#: alike (``ndimage.rotate(order=0, reshape=False)``); then the zoom to the network size
#: (``zoom_slice``). MT-UNet's ACDC code is the same.
P_ROT_FLIP = 0.5
P_ROTATE = 0.5
ROTATION_DEGREES = (-20, 20)


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
class SliceConfig(DataConfig):
    """Keys of the ``data:`` group shared by the 2D releases (the common keys are
    ``DataConfig``'s).

    Attributes:
        root: the release folder as downloaded or rebuilt by ``mednext data prepare``, or a
            folder holding it up to three levels down.
        source: ``real`` reads ``root``; ``synthetic`` writes a small fake raw 3D copy, rebuilds
            the release from it with ``prepare_release`` (once, in the cache) and reads that.
        batch_size: training slices per batch (validation and test: one whole case).
        image_size: side of the square network input (TransUNet: 224).
        fold: ``None`` for the release's split; ``k`` for fold ``k`` of a seeded
            ``num_folds``-fold cross-validation of the non-test cases (patients for ACDC).
        augment: TransUNet's training augmentation.
        synthetic_shape: voxels per raw synthetic case (``source=synthetic``), (X, Y, Z).
    """

    batch_size: int = 24
    image_size: int = 224
    synthetic_shape: list[int] = field(default_factory=lambda: [64, 64, 10])


class SliceDataModule(SuiteDataModule):
    """A 2D release: slices for training, whole volumes for validation and test.

    Subclasses set the dataset constants and implement ``find_release`` (layout, lists, shipped
    split), ``make_split`` (validation and folds), ``prepare_release`` (the rebuild from the raw
    3D download) and ``write_synthetic``. Attributes available right after construction:
    ``task`` ("segmentation"), ``evaluation`` ("transunet": slice-wise per volume),
    ``spatial_dims`` (2), ``in_channels`` (1), ``num_classes``, ``class_names`` (index 0
    ``background``), ``image_size``, ``patch_size`` ``(S, S)``, ``spacing`` ``(1.0, 1.0)``
    (metrics in pixels), ``has_validation``, ``preprocessing``. After ``setup``: ``split`` (case
    ids per part).

    Batches: training ``image`` float32 ``(B, 1, S, S)``, ``label`` int64 ``(B, 1, S, S)``;
    validation/test (batch size 1) ``image`` float32 ``(1, D, H, W)`` and ``label`` int64
    ``(1, D, H, W)`` at the stored in-plane size, ``case_id`` ``[str]``.
    """

    Config: ClassVar[type[SliceConfig]] = SliceConfig
    task = "segmentation"
    evaluation = "transunet"
    spatial_dims = 2
    INPUT_SIZE_KEY = "image_size"
    #: The array names of image and label in the release's files.
    KEYS: ClassVar[tuple[str, str]]
    #: How the release scales intensities (``datamodules.preprocessing.normalize``).
    INTENSITY: ClassVar[Mapping[str, Any]]

    def __init__(self, config: SliceConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.image_size = int(self.config.image_size)
        self.patch_size = (self.image_size, self.image_size)
        self.input_size = self.patch_size
        self.spacing = (1.0, 1.0)
        self._release: Release | None = None

    # -- dataset specific --

    def config_problems(self) -> list[str]:
        config = self.config
        return [
            *super().config_problems(),
            *size_problems(config.image_size, config.synthetic_shape),
        ]

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

    # -- declared --

    def synthetic_options(self) -> dict[str, Any]:
        return dict(shape=tuple(self.config.synthetic_shape))

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What inference on a raw volume needs (JSON-serialisable): ``image_size``, the
        ``intensity`` scaling (``normalize``), ``slice_axis`` (2: slices are ``volume[:, :, k]`` of
        the nibabel array, ``volume_to_slices``), ``class_names`` and the ``evaluation``
        protocol. Each slice is zoomed to ``image_size``² (cubic spline) and the prediction back
        (nearest), as the task does."""
        return dict(
            image_size=self.image_size,
            intensity=json.loads(json.dumps(self.INTENSITY)),
            slice_axis=2,
            spatial_dims=self.spatial_dims,
            class_names=list(self.class_names),
            evaluation=self.evaluation,
        )

    # -- messages --

    def missing(self, root: Path) -> Exception:
        """The missing-dataset error: where it looked, the layout, the download, the dry run and
        the rebuild from the raw data."""
        where = f"{root}" if not root.is_dir() else f"{root} and up to {SEARCH_DEPTH} levels below"
        return dataset_not_found(
            f"{self.title} not found at {where}"
            f"{' (the folder does not exist)' if not root.exists() else ''}.",
            f"Expected layout (<root> may also hold it up to {SEARCH_DEPTH} levels down)",
            self.LAYOUT,
            self.DOWNLOAD,
            self.EXAMPLE_EXPERIMENT,
            alternatives=[
                "Or rebuild it from the raw 3D download: "
                f"`mednext data prepare {self.config.name} RAW_ROOT {root}`."
            ],
        )

    # -- Lightning hooks --

    def prepare_dataset(self) -> None:
        """Find and validate the release (every file read once; an unchanged release is not read
        again)."""
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
                "(docs/datasets.md): %s. Using the download's lists.",
                self.title,
                release.lists,
                "; ".join(release.differences),
            )
        self._release, self.split = release, split

    def split_record(self) -> dict[str, Any]:
        """The release read, its lists, the split with its counts and every case's files."""
        release = self._release
        cases = {c: release.cases[c] for ids in self.split.values() for c in ids}
        return dict(
            release=str(release.base),
            lists=str(release.lists) if release.lists else "shipped (docs/datasets.md)",
            list_differences=release.differences,
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
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented (``augment``) training slices; the last incomplete batch is
        dropped when there is more than one batch."""
        assert self._release is not None, "call setup() first"
        files = [f for c in self.split["train"] for f in self._release.cases[c].files]
        dataset = SliceDataset(
            self._release.base, files, self.KEYS, self.image_size, self.config.augment
        )
        return self.training_loader(
            dataset, shuffle=True, drop_last=len(files) > self.config.batch_size
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

    def _case_loader(self, part: str) -> DataLoader:
        assert self._release is not None, "call setup() first"
        cases = [self._release.cases[c] for c in self.split[part]]
        return self.evaluation_loader(VolumeDataset(self._release.base, cases, self.KEYS), 1)

    def _checked_release(self) -> Release:
        """``find_release`` of the root, every file read unless an identical file list was
        validated before; all problems in one ``DataError``."""
        release = self.find_release(self.root)
        checks = [
            (case.case_id, file, 2 if case.stacked else 3)
            for case in release.cases.values()
            for file in case.files
        ]

        def read() -> list[str]:
            problems: list[str] = []
            shapes: dict[str, set[tuple[int, ...]]] = {}
            with progress_bar(transient=True) as progress:
                for case_id, file, ndim in progress.track(
                    checks, description=f"{self.title}: checking files"
                ):
                    file_issues, shape = file_problems(
                        release.base / file, file, self.KEYS, ndim, self.num_classes
                    )
                    problems += file_issues
                    if shape is not None:
                        shapes.setdefault(case_id, set()).add(shape)
            for case_id, known in shapes.items():
                if release.cases[case_id].stacked and len(known) > 1:
                    shown = ", ".join(str(s) for s in sorted(known))
                    problems.append(f"{case_id}: its slices have different shapes ({shown})")
            return problems

        files = [file for _, file, _ in checks]
        self.validated_once(release.base, files, list(release.problems), read)
        return release
