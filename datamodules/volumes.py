"""3D volumes: validation, preprocessing into a cache, patch sampling and the shared DataModule.

The pipeline follows nnU-Net v2 (Isensee et al., Nature Methods 2021; MIC-DKFZ/nnUNet):

1. Validate every raw case (readable, 3D, image and label on the same grid, label values in
   range) and report every problem in one ``DataError``.
2. Preprocess once into a cache: reorient to the closest RAS axes (nibabel; a dataset of oblique
   stacks may keep its voxel axes instead), normalise (CT: clip to the 0.5/99.5 percentiles of
   the training cases' foreground intensities, then z-score with their foreground mean and std;
   MR: per-case z-score), resample to the target spacing (image cubic spline, label nearest;
   scipy), store ``.npy`` (image float32 (C, X, Y, Z), label uint8 (X, Y, Z)) for memory-mapped
   patch reads, plus per class a sample of foreground voxel positions for oversampling (nnU-Net's
   ``class_locations``). Normalising before resampling is nnU-Net's order.
3. Train on random patches, a share of them centred on foreground, augmented with MONAI's
   dictionary transforms at nnU-Net's probabilities; validate and test on whole cases.

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

import lightning as L
import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
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
    atomic_file,
    common_config_problems,
    dataset_cache_dir,
    dataset_folder,
    evaluation_sampler,
    loader_options,
    loader_seed,
    save_npy,
    write_folder_once,
    write_json,
)

log = logging.getLogger(__name__)

#: Version of the cache layout and of the preprocessing code's meaning; a new value rebuilds.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"

#: nnU-Net's ``CTNormalization``: clip to these percentiles of the foreground intensities.
CT_PERCENTILES = (0.5, 99.5)
#: nnU-Net v2 fingerprint (``collect_foreground_intensities``): voxels sampled per case.
FOREGROUND_SAMPLES_PER_CASE = 10_000
#: nnU-Net v2 ``DefaultPreprocessor._sample_foreground_locations``: positions kept per class, at
#: least this many (or all) and at least this share of the class's voxels.
CLASS_LOCATION_SAMPLES = 10_000
CLASS_LOCATION_COVERAGE = 0.01
#: nnU-Net resamples images with a cubic spline (its ``order=3``), labels here with nearest.
IMAGE_ORDER = 3
#: Image and label affines may differ by this much (mm, direction cosines) and count as equal.
AFFINE_TOLERANCE = 1e-3
#: Neither nnU-Net's z-score nor its CT normalisation divides by less than this.
MIN_STD = 1e-8

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)
_RAS = axcodes2ornt("RAS")


# --- geometry: reorient, resample, normalise, restore -------------------------------------------


@dataclass(frozen=True, eq=False)
class VolumeGeometry:
    """Everything needed to bring a model-grid prediction back onto an input's own voxel grid.

    Attributes:
        shape: the input's voxel grid ``(X, Y, Z)`` as stored on disk.
        affine: the input's 4×4 affine; save restored labels with it.
        header: the input's NIfTI header (``None`` for a non-NIfTI image); save with it too.
        orientation: nibabel ``ornt`` from the input axes to the working axes: RAS
            (``io_orientation``), or the identity when reorientation is off.
        oriented_shape: the grid on the working axes, before resampling.
        oriented_spacing: voxel size in mm on the working axes.
        model_shape: the grid after resampling (what the network sees), ``(X, Y, Z)``.
        spacing: the target spacing in mm of the model grid.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: Any
    orientation: np.ndarray
    oriented_shape: tuple[int, int, int]
    oriented_spacing: tuple[float, float, float]
    model_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def load_volume(path_or_img: str | Path | nib.spatialimages.SpatialImage) -> Any:
    """A nibabel image from a path (anything ``nib.load`` reads) or the image itself."""
    if isinstance(path_or_img, nib.spatialimages.SpatialImage):
        return path_or_img
    return nib.load(str(path_or_img))


def volume_geometry(img: Any, spacing: Sequence[float], reorient: bool = True) -> VolumeGeometry:
    """The geometry of ``img`` (a 3D nibabel image) on the way to the target ``spacing``, on the
    closest RAS axes (``reorient``) or on its own voxel axes."""
    shape = tuple(int(n) for n in img.shape[:3])
    orientation = io_orientation(img.affine) if reorient else _RAS
    axes = orientation[:, 0].astype(int)
    oriented_shape, oriented_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, size, zoom in zip(axes, shape, nib.affines.voxel_sizes(img.affine), strict=True):
        oriented_shape[axis], oriented_spacing[axis] = size, float(zoom)
    model_shape = tuple(
        max(1, round(n * s / t))
        for n, s, t in zip(oriented_shape, oriented_spacing, spacing, strict=True)
    )
    return VolumeGeometry(
        shape=shape,
        affine=np.array(img.affine),
        header=getattr(img, "header", None),
        orientation=orientation,
        oriented_shape=tuple(oriented_shape),
        oriented_spacing=tuple(oriented_spacing),
        model_shape=model_shape,
        spacing=tuple(float(s) for s in spacing),
    )


def resample(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``volume`` (X, Y, Z) resized to ``shape`` by spline interpolation of ``order`` (0 =
    nearest), keeping its dtype.

    ``grid_mode=True`` treats voxels as boxes, so the first and last voxel boxes of both grids
    share their outer faces (the field of view is kept); edges repeat the border voxel.
    """
    if tuple(volume.shape) == tuple(shape):
        return volume
    factors = np.divide(shape, volume.shape)
    resized = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    if resized.shape != tuple(shape):
        raise RuntimeError(f"resampling gave {resized.shape}, not {tuple(shape)}")
    return resized


def ct_normalization(foreground: np.ndarray) -> dict[str, Any]:
    """nnU-Net's CT normalisation parameters from foreground intensities (HU) of training cases."""
    low, high = np.percentile(foreground, CT_PERCENTILES)
    return dict(
        scheme="ct",
        clip=[float(low), float(high)],
        mean=float(np.mean(foreground)),
        std=float(np.std(foreground)),
    )


ZSCORE_NORMALIZATION: dict[str, Any] = dict(scheme="zscore")


def normalize(image: np.ndarray, normalization: Mapping[str, Any]) -> np.ndarray:
    """``image`` normalised as ``normalization`` says (float32).

    ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}``: clip, then ``(x - m) / s``
    with the dataset's foreground statistics. ``{"scheme": "zscore"}``: this image's own mean and
    standard deviation over all voxels (nnU-Net's ``ZScoreNormalization`` without a mask).
    """
    image = image.astype(np.float32, copy=False)
    scheme = normalization.get("scheme")
    if scheme == "ct":
        low, high = normalization["clip"]
        image = np.clip(image, low, high)
        mean, std = normalization["mean"], normalization["std"]
    elif scheme == "zscore":
        mean, std = float(image.mean()), float(image.std())
    else:
        raise DataError(f"unknown normalisation scheme {scheme!r}; expected 'ct' or 'zscore'")
    return ((image - mean) / max(std, MIN_STD)).astype(np.float32)


def preprocess_image(
    path_or_img: str | Path | nib.spatialimages.SpatialImage,
    spacing: Sequence[float],
    normalization: Mapping[str, Any],
    reorient: bool = True,
) -> tuple[np.ndarray, VolumeGeometry]:
    """An image (path or nibabel image) as the network sees it, and how to go back.

    Reorients to the closest RAS axes (unless ``reorient`` is false: the voxel axes are kept),
    normalises, resamples to ``spacing`` (mm, on those axes) with a cubic spline: the same steps
    as the training cache. Returns ``(image, geometry)`` with ``image`` float32 ``(1, X, Y, Z)``
    on the model grid ``geometry.model_shape``.
    """
    img = load_volume(path_or_img)
    if len(img.shape) != 3:
        raise DataError(f"{path_or_img}: expected a 3D image, got shape {tuple(img.shape)}")
    geometry = volume_geometry(img, spacing, reorient)
    image = apply_orientation(img.get_fdata(dtype=np.float32), geometry.orientation)
    image = resample(normalize(image, normalization), geometry.model_shape, IMAGE_ORDER)
    return image[None].astype(np.float32, copy=False), geometry


def restore_labels(labels: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Integer labels ``(X, Y, Z)`` on the model grid back onto the input's own voxel grid.

    Nearest-neighbour resampling to the oriented grid, then the inverse reorientation. The
    result has shape ``geometry.shape`` and the dtype of ``labels``; save it with
    ``geometry.affine`` and ``geometry.header``.
    """
    labels = np.asarray(labels)
    if labels.shape != geometry.model_shape:
        raise ValueError(
            f"labels have shape {labels.shape}, the model grid is {geometry.model_shape}"
        )
    oriented = resample(labels, geometry.oriented_shape, order=0)
    restored = apply_orientation(oriented, ornt_transform(_RAS, geometry.orientation))
    return np.ascontiguousarray(restored)


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
    bad = (label < 0) | (label > num_classes - 1) | (label != np.round(label))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(f"{v:g}" for v in values[:10]) + (" ..." if len(values) > 10 else "")
        problems.append(
            f"{case.case_id}: {case.label} has label values {shown} outside the integers "
            f"0..{num_classes - 1}"
        )
    return problems, (None if problems else (image, label))


def foreground_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to ``FOREGROUND_SAMPLES_PER_CASE`` intensities of the voxels with ``label > 0``."""
    values = image[label > 0]
    if len(values) > FOREGROUND_SAMPLES_PER_CASE:
        values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return values


def problem_report(title: str, problems: Sequence[str]) -> str:
    """One message listing every problem."""
    return "\n".join([f"{title}: {len(problems)} problem(s):", *(f"  - {p}" for p in problems)])


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
    label = np.asanyarray(nib.load(str(case.label)).dataobj)
    label = np.rint(apply_orientation(label, geometry.orientation)).astype(np.uint8)
    label = resample(label, geometry.model_shape, order=0)
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


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


# --- training and evaluation datasets ---------------------------------------------------------


#: nnU-Net v2 ``nnUNetTrainer`` augmentation: rotation ±30° about every axis in 3D, ±180°
#: in-plane when the patch is anisotropic (its "dummy 2D" augmentation, patch side ratio > 3);
#: scaling 0.7–1.4; each applied with probability 0.2.
ROTATION_3D = math.pi / 6
ROTATION_IN_PLANE = math.pi
ANISOTROPIC_PATCH = 3.0
SCALE = (0.7, 1.4)
P_ROTATION = P_SCALE = 0.2
#: nnU-Net samples a region larger than the patch so that rotated and scaled patches draw real
#: image rather than padding; it sizes that region for zooms down to 0.85 (``get_patch_size``).
REGION_SCALE = 0.85


def spatial_ranges(patch_size: Sequence[int]) -> tuple[list[float], list[Any]]:
    """MONAI ``rotate_range`` and ``scale_range`` for a patch: rotation about every axis and
    scaling of every axis, or for an anisotropic patch only in-plane (about and not along its
    thin axis, nnU-Net's "dummy 2D" augmentation)."""
    if max(patch_size) / min(patch_size) > ANISOTROPIC_PATCH:
        thin = int(np.argmin(patch_size))
        rotate = [ROTATION_IN_PLANE if axis == thin else 0.0 for axis in range(3)]
    else:
        thin, rotate = None, [ROTATION_3D] * 3
    scale = [0.0 if axis == thin else (SCALE[0] - 1, SCALE[1] - 1) for axis in range(3)]
    return rotate, scale


def augmentation_region(patch_size: Sequence[int]) -> tuple[int, ...]:
    """The region read around a patch before rotation/scaling crops it back to ``patch_size``.

    Per axis, the largest extent of the patch box under a rotation about any single other axis
    within the allowed angle (nnU-Net's ``get_patch_size`` also rotates about one axis at a
    time), divided by ``REGION_SCALE`` where the axis is scaled; rounded up so that region minus
    patch is even, which keeps the centre crop on whole voxels.
    """
    rotate, scale = spatial_ranges(patch_size)
    patch = np.asarray(patch_size, dtype=float)
    extent = patch.copy()
    for axis, angle in enumerate(rotate):
        for i, j in ((a, b) for a in range(3) for b in range(3) if len({a, b, axis}) == 3):
            # max over φ in [0, angle] of the rotated box's extent P_i·cos φ + P_j·sin φ
            if math.atan2(patch[j], patch[i]) <= angle:
                extent[i] = max(extent[i], math.hypot(patch[i], patch[j]))
            else:
                extent[i] = max(extent[i], patch[i] * math.cos(angle) + patch[j] * math.sin(angle))
    extent = np.where([s != 0 for s in scale], extent / REGION_SCALE, extent)
    region = np.ceil(extent - 1e-9).astype(int)
    region += (region - patch.astype(int)) % 2
    return tuple(int(r) for r in region)


def nnunet_augmentation(patch_size: Sequence[int]) -> mt.Compose:
    """nnU-Net v2's training augmentation as MONAI dictionary transforms.

    Input ``{"image": (C, *region), "label": (1, *region)}`` with ``region =
    augmentation_region(patch_size)``; output torch tensors ``image`` float32 ``(C, *patch_size)``
    and ``label`` int64 ``(1, *patch_size)``. Probabilities and ranges are nnU-Net's
    (``nnUNetTrainer.get_training_transforms``); where nnU-Net applies a transform per channel
    with probability 0.5 on top of the per-sample one, the product is used (one channel).
    Differences: MONAI draws a scale factor per axis (nnU-Net one for all axes) and applies
    rotation and scaling together (probability 1 − 0.8² of either, as nnU-Net's two independent
    0.2); the low-resolution simulation upsamples trilinearly (nnU-Net cubic).
    """
    rotate, scale = spatial_ranges(patch_size)
    keys = ("image", "label")
    return mt.Compose(
        [
            mt.RandAffined(
                keys,
                spatial_size=tuple(patch_size),
                prob=1 - (1 - P_ROTATION) * (1 - P_SCALE),
                rotate_range=rotate,
                scale_range=scale,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandGaussianNoised("image", prob=0.1, std=0.1**0.5),  # variance 0..0.1
            mt.RandGaussianSmoothd(
                "image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2 * 0.5
            ),
            mt.RandScaleIntensityd("image", factors=0.25, prob=0.15),  # brightness ×0.75–1.25
            mt.RandScaleIntensityFixedMeand(  # nnU-Net's ContrastAugmentationTransform
                "image", factors=0.25, preserve_range=True, prob=0.15
            ),
            mt.RandSimulateLowResolutiond("image", zoom_range=(0.5, 1.0), prob=0.25 * 0.5),
            mt.RandAdjustContrastd(
                "image", gamma=(0.7, 1.5), invert_image=True, retain_stats=True, prob=0.1
            ),
            mt.RandAdjustContrastd("image", gamma=(0.7, 1.5), retain_stats=True, prob=0.3),
            *(mt.RandFlipd(keys, spatial_axis=axis, prob=0.5) for axis in range(3)),
            mt.EnsureTyped(keys, dtype=(torch.float32, torch.int64), track_meta=False),
        ]
    )


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case: its ``.npy`` files, grid and (training cases) class locations."""

    case_id: str
    image: Path
    label: Path
    shape: tuple[int, int, int]
    locations: dict[int, np.ndarray] = field(default_factory=dict)


def read_region(path: Path, start: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The box ``[start, start + size)`` of the last three axes of a cached ``.npy``, read through
    a memory map; the parts outside the volume are zero."""
    volume = np.load(path, mmap_mode="r")
    spatial = np.asarray(volume.shape[-3:])
    end = start + np.asarray(size)
    low, high = np.maximum(start, 0), np.minimum(end, spatial)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    region = np.array(volume[(..., *box)])
    pad = [(0, 0)] * (volume.ndim - 3) + list(zip(low - start, end - high, strict=True))
    return np.pad(region, pad)


class PatchDataset(Dataset):
    """Random training patches, nnU-Net style: ``length`` draws of a random case (with
    replacement) and a patch in it; the index is ignored.

    With probability ``foreground_oversample`` the patch is centred on a random stored position
    of a random class present in the case, otherwise placed uniformly; a case smaller than the
    patch lies at a random place inside it, zero-padded. Items: ``image`` float32 ``(C,
    *patch_size)``, ``label`` int64 ``(1, *patch_size)``.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_size: Sequence[int],
        length: int,
        foreground_oversample: float,
        augment: bool,
    ) -> None:
        self.cases = list(cases)
        self.patch_size = np.asarray(patch_size)
        self.length = length
        self.foreground_oversample = foreground_oversample
        self.transform = nnunet_augmentation(patch_size) if augment else None
        region = augmentation_region(patch_size) if augment else tuple(patch_size)
        self.margin = (np.asarray(region) - self.patch_size) // 2
        self.region = np.asarray(region)
        self.set_random_state(0)

    def set_random_state(self, seed: int) -> None:
        """Reseed the patch choice and the augmentation (MONAI's ``worker_init_fn`` calls this
        with a per-worker seed)."""
        self.rng = np.random.default_rng(seed)
        if self.transform is not None:
            self.transform.set_random_state(seed=seed % 2**32)

    def __len__(self) -> int:
        return self.length

    def patch_start(self, case: CachedCase) -> np.ndarray:
        """The patch's first voxel in ``case`` (negative or beyond the end means padding)."""
        shape = np.asarray(case.shape)
        low = np.minimum(0, shape - self.patch_size)
        high = np.maximum(0, shape - self.patch_size)
        if case.locations and self.rng.random() < self.foreground_oversample:
            classes = sorted(case.locations)
            positions = case.locations[classes[self.rng.integers(len(classes))]]
            centre = positions[self.rng.integers(len(positions))]
            return np.clip(centre - self.patch_size // 2, low, high)
        return self.rng.integers(low, high + 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[self.rng.integers(len(self.cases))]
        start = self.patch_start(case) - self.margin
        image = read_region(case.image, start, self.region)
        label = read_region(case.label, start, self.region)[None]
        if self.transform is None:
            return dict(
                image=torch.from_numpy(image), label=torch.from_numpy(label.astype(np.int64))
            )
        return self.transform(dict(image=image, label=label))


class CaseDataset(Dataset):
    """Whole preprocessed cases: ``image`` float32 ``(C, X, Y, Z)``, ``label`` int64
    ``(1, X, Y, Z)``, ``case_id`` str."""

    def __init__(self, cases: Sequence[CachedCase]) -> None:
        self.cases = list(cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        image = np.load(case.image)
        label = np.load(case.label).astype(np.int64)[None]
        return dict(
            image=torch.from_numpy(image), label=torch.from_numpy(label), case_id=case.case_id
        )


# --- the DataModule ---------------------------------------------------------------------------


@dataclass
class VolumeConfig:
    """Keys of the ``data:`` group shared by the 3D datasets (each dataset sets its defaults).

    Attributes:
        name: registry name of the dataset.
        root: the dataset folder as downloaded (``${MEDNEXT_DATA:-data}/<Dataset>``).
        source: ``real`` reads ``root``; ``synthetic`` writes a small fake copy of the raw layout
            into the cache once and reads that through the same code.
        batch_size: training patches per batch (validation and test: one whole case).
        num_workers: DataLoader worker processes.
        patch_size: training patch and sliding-window size, each a multiple of 16.
        spacing: target voxel size in mm. Both in the working axis order: RAS (x, y, z), or the
            voxel axes for a dataset that does not reorient (ACDC).
        fold: ``None`` for the dataset's official split, else the fold of a seeded
            ``num_folds``-fold cross-validation of the non-test cases.
        num_folds: folds of the cross-validation.
        split_seed: seed of the seeded parts of the split (independent of the training seed, so
            runs with different seeds share their cases).
        iterations_per_epoch: training batches per epoch (nnU-Net: 250).
        foreground_oversample: probability that a training patch is centred on foreground
            (nnU-Net: 0.33).
        augment: nnU-Net-style augmentation of training patches.
        cache_dir: the dataset's cache folder (default
            ``${MEDNEXT_CACHE:-~/.cache/mednext}/<name>``).
        synthetic_shape: voxels per synthetic case (``source=synthetic``).
        synthetic_seed: seed of the synthetic copy.
    """

    name: str = ""
    root: str = ""
    source: str = "real"
    batch_size: int = 2
    num_workers: int = 4
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    fold: int | None = None
    num_folds: int = 5
    split_seed: int = 0
    iterations_per_epoch: int = 250
    foreground_oversample: float = 0.33
    augment: bool = True
    cache_dir: str | None = None
    synthetic_shape: list[int] = field(default_factory=lambda: [48, 48, 24])
    synthetic_seed: int = 0


class VolumeDataModule(L.LightningDataModule):
    """A 3D segmentation dataset: raw NIfTI as downloaded → cache → patches and whole cases.

    Subclasses set the dataset constants and implement ``find_cases`` (the raw layout) and
    ``make_split`` (the official split and the folds). Attributes available right after
    construction: ``in_channels``, ``num_classes``, ``class_names`` (index 0 ``background``),
    ``spacing``, ``patch_size``, ``modality``. After ``setup``: ``split`` (``train``/``val``/
    ``test`` case ids) and ``normalization``.
    """

    Config: ClassVar[type[VolumeConfig]] = VolumeConfig
    #: Human-readable dataset name for messages.
    title: ClassVar[str]
    #: ``CT`` (dataset-wide CT normalisation) or ``MR`` (per-case z-score).
    modality: ClassVar[str]
    in_channels: ClassVar[int] = 1
    CLASS_NAMES: ClassVar[tuple[str, ...]]
    #: Reorient to the closest RAS axes before resampling; off keeps the voxel axes (for stacks
    #: whose slice axis must stay the third axis whatever their obliquity).
    reorient: ClassVar[bool] = True

    def __init__(self, config: VolumeConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.seed = seed
        _check_config(self.config)
        self.class_names = list(self.CLASS_NAMES)
        self.num_classes = len(self.class_names)
        self.spacing = tuple(float(s) for s in self.config.spacing)
        self.patch_size = tuple(int(p) for p in self.config.patch_size)
        self.split: dict[str, list[str]] = {}
        self._manifest: dict[str, Any] | None = None
        self._cases: dict[str, CachedCase] = {}

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

    # -- locations --

    @property
    def cache_dir(self) -> Path:
        return dataset_cache_dir(self.config)

    @property
    def root(self) -> Path:
        """The raw dataset read: ``config.root``, or the synthetic copy in the cache."""
        shape = "x".join(str(n) for n in self.config.synthetic_shape)
        return dataset_folder(self.config, f"seed{self.config.synthetic_seed}-{shape}")

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

    def prepare_data(self) -> None:
        """Write the synthetic copy (``source=synthetic``, once), validate the raw dataset and
        preprocess it into ``cache_path`` unless an identical cache is already there."""
        if self.config.source == "synthetic":
            self._write_synthetic()
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

    def write_split(self, path: Path) -> None:
        """The split as JSON, with what reproduces it: fold, seeds, source, raw files, cache."""
        if self._manifest is None:
            raise RuntimeError(f"{self.title}: call setup() before write_split()")
        files = {
            entry["case_id"]: dict(image=entry["image"]["path"], label=entry["label"]["path"])
            for entry in self._manifest["inputs"]
        }
        write_json(
            Path(path),
            dict(
                dataset=self.config.name,
                source=self.config.source,
                root=str(self.root),
                fold=self.config.fold,
                num_folds=self.config.num_folds,
                split_seed=self.config.split_seed,
                seed=self.seed,
                spacing=list(self.spacing),
                cache=str(self.cache_path),
                split=self.split,
                files={c: files[c] for ids in self.split.values() for c in ids},
            ),
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
        seed = loader_seed(self.seed, self._rank())
        dataset.set_random_state(seed)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            drop_last=True,
            **loader_options(seed, self.config.num_workers),
        )

    def val_dataloader(self) -> DataLoader:
        """Whole validation cases, batch size 1: ``image`` (1, C, X, Y, Z), ``label``
        (1, 1, X, Y, Z), ``case_id`` [str]."""
        return self._case_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Whole test cases, as ``val_dataloader``."""
        return self._case_loader("test")

    # -- internals --

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_rank if trainer is not None else 0

    def _case_loader(self, part: str) -> DataLoader:
        dataset = CaseDataset([self._cases[c] for c in self.split[part]])
        options = loader_options(loader_seed(self.seed, self._rank()), self.config.num_workers)
        sampler = evaluation_sampler(dataset, getattr(self, "trainer", None))
        return DataLoader(dataset, batch_size=1, shuffle=False, sampler=sampler, **options)

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

    def _write_synthetic(self) -> None:
        """The synthetic raw copy, written once: into a temporary folder renamed into place."""
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
        with _progress() as progress:
            task = progress.add_task(f"{self.title}: checking", total=len(cases))
            for case in cases:
                case_problems, arrays = check_case(case, self.num_classes)
                problems.extend(case_problems)
                if arrays is not None and self.modality == "CT" and case.case_id in statistics:
                    foreground.append(foreground_sample(*arrays, rng))
                progress.advance(task)
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
            task = progress.add_task(f"{self.title}: preprocessing", total=len(cases))
            for case in cases:
                image, label, locations, geometry = preprocess_case(
                    case, self.spacing, normalization, self.reorient, self.num_classes, rng
                )
                names = {part: f"{case.case_id}_{part}" for part in ("image", "label", "locations")}
                save_npy(folder / f"{names['image']}.npy", image)
                save_npy(folder / f"{names['label']}.npy", label)
                with atomic_file(folder / f"{names['locations']}.npz") as stream:
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
                progress.advance(task)
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


def _check_config(config: VolumeConfig) -> None:
    """Every invalid value of ``config`` in one ``DataError``."""
    problems = common_config_problems(config)
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
    if len(config.synthetic_shape) != 3 or any(n < 8 for n in config.synthetic_shape):
        problems.append(
            f"synthetic_shape must be 3 sizes of at least 8, not {config.synthetic_shape}"
        )
    if problems:
        raise DataError(problem_report(f"data config of {config.name!r}", problems))
