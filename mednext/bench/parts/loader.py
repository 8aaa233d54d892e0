"""The ``loader`` part of ``mednext bench``: the CPU cost of one augmented 3D training patch, our
``PatchDataset`` against nnU-Net v2's own pipeline, measured in the same process.

nnU-Net v2's pipeline is batchgeneratorsv2 (the ``bench`` extra) composed exactly as
``nnUNetTrainer.get_training_transforms`` composes it for a 3D patch (no cascade, no regions, no
ignore label, no deep-supervision downsampling, which needs the network), fed the way
``nnUNetDataLoader`` feeds it: the region around the patch read from the memory-mapped case,
image as float32 and segmentation as int16 tensors. Ours is ``PatchDataset`` with the same patch,
the same region size and the same distribution of augmentations (``datamodules.augmentation``).
Both read the same synthetic case from ``.npy`` memory maps (the format of our cache; nnU-Net's
default is blosc2, whose decompression would only add to its side), with uniformly placed patches.

The measure is CPU seconds per patch (``time.process_time``) with one torch thread, what a
DataLoader worker spends: the pipelines alternate patch by patch, each after its own warm-up.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mednext.bench import harness
from mednext.bench.parts.base import SEED, BenchPart, BenchSettings, PartResult

#: The classes of the synthetic case: background and 13 organs, as Synapse.
_CLASSES = 14
_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": dict(volume=(300, 260, 200), patch_size=128, warmup=2, steps=60),
    "quick": dict(volume=(160, 140, 100), patch_size=64, warmup=1, steps=10),
}
_COLUMNS = (
    "Pipeline",
    "Patch",
    "Patches",
    "Mean CPU s/patch",
    "Median",
    "p90",
    "Patches/s (one core)",
    "Mean ÷ nnU-Net v2",
)
_NNUNET = "nnU-Net v2 (batchgeneratorsv2)"
_NNUNET_NEAREST = "nnU-Net v2, segmentation resampled nearest (not its default)"
_OURS = "ours (PatchDataset)"
_INSTALL = "pip install -e '.[bench]' (after torch, as `make bench` does)"


def require_batchgenerators() -> None:
    """A ValueError saying how to install nnU-Net v2's pipeline when it is missing."""
    try:
        import batchgeneratorsv2  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"--part loader measures nnU-Net v2's own pipeline, batchgeneratorsv2: {_INSTALL}"
        ) from error


def nnunet_transforms(patch_size: Sequence[int], segmentation_mode: str = "bilinear") -> Any:
    """batchgeneratorsv2's ``ComposeTransforms`` as ``nnUNetTrainer.get_training_transforms``
    builds it for a 3D patch of ``patch_size`` (rotation ±30° about every axis, or ±180° about
    the thin axis of an anisotropic patch with scaling in-plane only, as its dummy 2D)."""
    from batchgeneratorsv2.transforms.intensity.brightness import (
        MultiplicativeBrightnessTransform,
    )
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import (
        SimulateLowResolutionTransform,
    )
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from datamodules.augmentation import thin_axis

    def gamma(invert: bool, probability: float) -> Any:
        transform = GammaTransform(
            gamma=BGContrast((0.7, 1.5)),
            p_invert_image=1 if invert else 0,
            synchronize_channels=False,
            p_per_channel=1,
            p_retain_stats=1,
        )
        return RandomTransform(transform, apply_probability=probability)

    thin = thin_axis(patch_size)
    rotation = (-math.pi, math.pi) if thin is not None else (-math.pi / 6, math.pi / 6)
    ignore = (thin,) if thin is not None else None
    return ComposeTransforms(
        [
            SpatialTransform(
                list(patch_size),
                patch_center_dist_from_border=0,
                random_crop=False,
                p_elastic_deform=0,
                p_rotation=0.2,
                rotation=rotation,
                p_scaling=0.2,
                scaling=(0.7, 1.4),
                p_synchronize_scaling_across_axes=1,
                bg_style_seg_sampling=False,
                mode_seg=segmentation_mode,
            ),
            RandomTransform(
                GaussianNoiseTransform(
                    noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True
                ),
                apply_probability=0.1,
            ),
            RandomTransform(
                GaussianBlurTransform(
                    blur_sigma=(0.5, 1.0),
                    synchronize_channels=False,
                    synchronize_axes=False,
                    p_per_channel=0.5,
                    benchmark=True,
                ),
                apply_probability=0.2,
            ),
            RandomTransform(
                MultiplicativeBrightnessTransform(
                    multiplier_range=BGContrast((0.75, 1.25)),
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=0.15,
            ),
            RandomTransform(
                ContrastTransform(
                    contrast_range=BGContrast((0.75, 1.25)),
                    preserve_range=True,
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=0.15,
            ),
            RandomTransform(
                SimulateLowResolutionTransform(
                    scale=(0.5, 1),
                    synchronize_channels=False,
                    synchronize_axes=True,
                    ignore_axes=ignore,
                    allowed_channels=None,
                    p_per_channel=0.5,
                ),
                apply_probability=0.25,
            ),
            gamma(invert=True, probability=0.1),
            gamma(invert=False, probability=0.3),
            MirrorTransform(allowed_axes=(0, 1, 2)),
        ]
    )


def write_case(folder: Path, shape: Sequence[int]) -> tuple[Path, Path]:
    """A CT-like case of ``shape`` as cached ``.npy`` files: 13 ellipsoid organs of their own
    intensity on noise, image float32 ``(1, *shape)``, label uint8."""
    rng = np.random.default_rng(SEED)
    grid = np.meshgrid(*(np.linspace(0, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    label = np.zeros(shape, np.uint8)
    for organ in range(1, _CLASSES):
        centre, radius = rng.uniform(0.2, 0.8, 3), rng.uniform(0.05, 0.15, 3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True))
        label[inside <= 1] = organ
    image = label.astype(np.float32) * 0.3 + rng.normal(0, 1, shape).astype(np.float32)
    paths = folder / "image.npy", folder / "label.npy"
    np.save(paths[0], image[None])
    np.save(paths[1], label)
    return paths


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread, as in a DataLoader worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nnunet_patch_source(
    image_path: Path, label_path: Path, patch_size: Sequence[int], mode: str
) -> Callable[[], object]:
    """One nnU-Net v2 patch per call: a uniformly placed region read as ``nnUNetDataLoader``
    reads it (memory map, zero padding outside), then the transforms."""
    from datamodules.augmentation import augmentation_region
    from datamodules.patches import read_box

    transforms = nnunet_transforms(patch_size, mode)
    image, label = np.load(image_path, mmap_mode="r"), np.load(label_path, mmap_mode="r")
    region = np.asarray(augmentation_region(patch_size))
    shape = np.asarray(label.shape)
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)

    def patch() -> object:
        # The patch (not the region) is placed uniformly in the case; the region is centred on it.
        start = rng.integers(0, np.maximum(shape - np.asarray(patch_size), 0) + 1)
        start = start - (region - np.asarray(patch_size)) // 2
        data = torch.from_numpy(read_box(image, start, region)).float()
        seg = torch.from_numpy(read_box(label, start, region)[None]).to(torch.int16)
        return transforms(image=data, segmentation=seg)

    return patch


def our_patch_source(
    image_path: Path, label_path: Path, patch_size: Sequence[int]
) -> Callable[[], object]:
    """One ``PatchDataset`` item per call, uniformly placed."""
    from datamodules.patches import CachedCase, PatchDataset

    shape = tuple(np.load(label_path, mmap_mode="r").shape)
    case = CachedCase("bench", image_path, label_path, shape)
    dataset = PatchDataset([case], patch_size, 1, foreground_oversample=0.0, augment=True)
    dataset.set_random_state(SEED)
    return lambda: dataset[0]


def cpu_seconds(source: Callable[[], object]) -> float:
    start = time.process_time()
    source()
    return time.process_time() - start


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Mean, median and 90th percentile of per-patch CPU seconds."""
    ordered = sorted(seconds)
    return {
        "mean_s": statistics.fmean(ordered),
        "median_s": statistics.median(ordered),
        "p90_s": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
    }


class LoaderVsNnunet(BenchPart):
    """Our training patches against nnU-Net v2's pipeline. Its own options: ``volume`` (the
    case's shape) and ``patch_size`` (cube side); ``warmup`` and ``steps`` are patches per
    pipeline."""

    name = "loader"
    section = "loader"
    title = "Training patches vs nnU-Net v2, CPU per patch"
    heading = "Training data pipeline vs nnU-Net v2: CPU time per patch"
    options = ("--volume", "--patch-size")
    shared = ("--warmup", "--steps")
    defaults: ClassVar[Mapping[tuple[str, str], Mapping[str, Any]]] = {
        (mode, device): values for mode, values in _DEFAULTS.items() for device in ("cpu", "cuda")
    }
    text_columns = 2
    notes = (
        "Same distribution: both draw nnU-Net v2's transforms with nnU-Net's probabilities "
        "(docs/datasets.md lists them and the one difference, the region rounded to an even "
        "margin, used here for both). Ours crops without resampling when no spatial transform "
        "is drawn (about two patches in three), resamples once when one is, and keeps float32 "
        "throughout. The nearest-segmentation row is for context: nnU-Net's default resamples "
        "labels through their one-hot maps, which is what the main row and ours do.",
    )

    def columns(self) -> tuple[str, ...]:
        return _COLUMNS

    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        return (1, 1, *settings.options["volume"])

    def command_options(self, settings: BenchSettings) -> list[str]:
        volume = ",".join(str(n) for n in settings.options["volume"])
        return ["--volume", volume, "--patch-size", str(settings.options["patch_size"])]

    def pipelines(self, settings: BenchSettings) -> tuple[str, ...]:
        """nnU-Net v2's pipeline, ours and (full runs) nnU-Net with nearest segmentation."""
        return (_NNUNET, _OURS) if settings.quick else (_NNUNET, _OURS, _NNUNET_NEAREST)

    def step_count(self, settings: BenchSettings) -> int:
        return (settings.warmup + settings.steps) * len(self.pipelines(settings))

    def check(self, settings: BenchSettings) -> None:
        require_batchgenerators()
        patch, volume = settings.options["patch_size"], settings.options["volume"]
        if patch > min(volume):
            raise ValueError(f"--patch-size {patch} is larger than the --volume {volume}")

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"batchgeneratorsv2": version("batchgeneratorsv2")}

    def measure(self, settings: BenchSettings, label: harness.ProgressLabel) -> PartResult:
        advance = label("training patches")
        patch = (settings.options["patch_size"],) * 3
        with tempfile.TemporaryDirectory(prefix="mednext-bench-") as folder, one_thread():
            image, seg = write_case(Path(folder), settings.options["volume"])
            sources = {
                _NNUNET: nnunet_patch_source(image, seg, patch, "bilinear"),
                _OURS: our_patch_source(image, seg, patch),
                _NNUNET_NEAREST: nnunet_patch_source(image, seg, patch, "nearest"),
            }
            sources = {name: sources[name] for name in self.pipelines(settings)}
            for source in sources.values():
                for _ in range(settings.warmup):
                    source()
                    advance()
            seconds: dict[str, list[float]] = {name: [] for name in sources}
            for _ in range(settings.steps):
                for name, source in sources.items():
                    seconds[name].append(cpu_seconds(source))
                    advance()
        stats = {name: summary(values) for name, values in seconds.items()}
        reference = stats[_NNUNET]["mean_s"]
        rows = [
            [
                name,
                f"{patch[0]}³",
                str(settings.steps),
                f"{s['mean_s']:.3f}",
                f"{s['median_s']:.3f}",
                f"{s['p90_s']:.3f}",
                f"{1 / s['mean_s']:.1f}",
                f"{s['mean_s'] / reference:.2f}",
            ]
            for name, s in stats.items()
        ]
        ratio = stats[_OURS]["mean_s"] / reference
        return PartResult(
            rows=rows,
            figures={
                "volume": list(settings.options["volume"]),
                "patch_size": list(patch),
                "patches": settings.steps,
                "ratio_vs_nnunet": ratio,
                "ours": stats[_OURS],
                "nnunet": stats[_NNUNET],
                **({"nnunet_nearest": stats[_NNUNET_NEAREST]} if _NNUNET_NEAREST in stats else {}),
            },
            notes=(
                f"Ours: {ratio:.2f}× nnU-Net v2's mean CPU time per patch "
                "(`ratio_vs_nnunet` in bench.json).",
            ),
        )

    def method(self, settings: BenchSettings) -> str:
        volume = "×".join(str(n) for n in settings.options["volume"])
        return (
            f"One case of {volume} voxels ({_CLASSES} labels) as memory-mapped `.npy`; patches "
            f"of {settings.options['patch_size']}³ placed uniformly, each with its full "
            "augmentation. CPU seconds per patch (`time.process_time`, torch on one thread, as "
            f"in a DataLoader worker) over {settings.steps} patches per pipeline after "
            f"{settings.warmup} warm-up patch(es), the pipelines alternating patch by patch."
        )


LOADER_VS_NNUNET = LoaderVsNnunet()
