"""Training patches and whole cases of the preprocessed 3D volumes.

nnU-Net v2 style (Isensee et al., Nature Methods 2021; MIC-DKFZ/nnUNet): random patches of random
training cases, a share of them centred on foreground (``class_locations`` of the cache), read
from memory-mapped ``.npy`` files, and augmented with MONAI's dictionary transforms at nnU-Net's
probabilities (``nnunet_augmentation``); validation and test on whole cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from torch.utils.data import Dataset

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
