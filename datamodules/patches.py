"""Training patches and whole cases of the preprocessed 3D volumes.

nnU-Net v2 style (Isensee et al., Nature Methods 2021; MIC-DKFZ/nnUNet): random patches of random
training cases, a share of them centred on foreground (``class_locations`` of the cache), read
from memory-mapped ``.npy`` files and augmented by nnU-Net's own distribution
(``datamodules.augmentation``); validation and test on whole cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.augmentation import Draw, augment_patch, augmentation_region, draw, sampled_box


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case: its ``.npy`` files, grid and (training cases) class locations."""

    case_id: str
    image: Path
    label: Path
    shape: tuple[int, int, int]
    locations: dict[int, np.ndarray] = field(default_factory=dict)


def read_box(volume: np.ndarray, start: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The box ``[start, start + size)`` of the last three axes of ``volume`` (a memory-mapped
    cached ``.npy``) as a new array; the parts outside the volume are zero."""
    spatial = np.asarray(volume.shape[-3:])
    end = start + np.asarray(size)
    low, high = np.maximum(start, 0), np.minimum(end, spatial)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    region = np.array(volume[(..., *box)])
    pad = [(0, 0)] * (volume.ndim - 3) + list(zip(low - start, end - high, strict=True))
    return np.pad(region, pad) if any(b or a for b, a in pad) else region


class PatchDataset(Dataset):
    """Random training patches, nnU-Net style: ``length`` draws of a random case (with
    replacement) and a patch in it; the index is ignored.

    With probability ``foreground_oversample`` the patch is centred on a random stored position
    of a random class present in the case, otherwise placed uniformly; a case smaller than the
    patch lies at a random place inside it, zero-padded. Around the patch lies its augmentation
    region (``augmentation_region``), which nnU-Net's loader reads whole; here only the part that
    the drawn transform samples is read (the patch itself when no spatial transform is drawn).

    Items: ``image`` float32 ``(C, *patch_size)``, ``label`` int64 ``(1, *patch_size)``. With
    ``augment_here`` false the augmentation is only drawn: items are the whole region (``image``
    float32 ``(C, *region)``, ``label`` uint8 ``(*region)``) and ``augmentation``, the draw as
    tensors, for ``augment_batch`` to apply after the batch has moved to its device.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_size: Sequence[int],
        length: int,
        foreground_oversample: float,
        augment: bool,
        augment_here: bool = True,
    ) -> None:
        self.cases = list(cases)
        self.patch_size = np.asarray(patch_size)
        self.length = length
        self.foreground_oversample = foreground_oversample
        self.augment = augment
        self.augment_here = augment_here
        self.region = np.asarray(augmentation_region(patch_size) if augment else patch_size)
        self.margin = (self.region - self.patch_size) // 2
        # Each worker opens a case's memory maps once (a patch then costs no header parse).
        self._volumes: dict[Path, np.ndarray] = {}
        self.set_random_state(0)

    def set_random_state(self, seed: int) -> None:
        """Reseed the patch choice and the augmentation (MONAI's ``worker_init_fn`` calls this
        with a per-worker seed)."""
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def volume(self, path: Path) -> np.ndarray:
        """The memory map of a cached ``.npy``, opened once per process."""
        if path not in self._volumes:
            self._volumes[path] = np.load(path, mmap_mode="r")
        return self._volumes[path]

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

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[self.rng.integers(len(self.cases))]
        region_start = self.patch_start(case) - self.margin
        image, label = self.volume(case.image), self.volume(case.label)
        if not self.augment:
            image = read_box(image, region_start, self.region)
            label = read_box(label, region_start, self.region)
            return dict(
                image=torch.from_numpy(image), label=torch.from_numpy(label.astype(np.int64))[None]
            )
        drawn = draw(self.rng, image.shape[0], self.patch_size)
        if not self.augment_here:
            return dict(
                image=torch.from_numpy(read_box(image, region_start, self.region)),
                label=torch.from_numpy(read_box(label, region_start, self.region)),
                augmentation=drawn.as_tensors(),
            )
        start, stop = sampled_box(drawn, self.patch_size, self.region)
        image = torch.from_numpy(read_box(image, region_start + start, stop - start))
        label = torch.from_numpy(read_box(label, region_start + start, stop - start))
        image, label = augment_patch(image, label, drawn, self.patch_size, self.region, start)
        return dict(image=image, label=label)


def augment_batch(batch: dict[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
    """Apply the drawn augmentation of a batch of regions from ``PatchDataset(augment_here=
    False)`` on the device the batch is on: ``image`` float32 ``(B, C, *patch_size)``, ``label``
    int64 ``(B, 1, *patch_size)``."""
    region = tuple(batch["image"].shape[2:])
    patches = [
        augment_patch(
            batch["image"][i],
            batch["label"][i],
            Draw.from_batch(batch["augmentation"], i),
            patch_size,
            region,
        )
        for i in range(len(batch["image"]))
    ]
    return dict(
        image=torch.stack([image for image, _ in patches]),
        label=torch.stack([label for _, label in patches]),
    )


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
