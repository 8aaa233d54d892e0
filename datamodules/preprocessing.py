"""What training and inference both do to an input before the network sees it.

The DataModules build their caches and loaders from these functions, and ``mednext predict``
repeats them from the preprocessing record in a checkpoint, without importing any DataModule:

- intensity normalisation, one table for every scheme (``NORMALIZATIONS``): nnU-Net's CT and
  z-score normalisations (3D sets), the window and min-max scalings of the 2D releases;
- 3D geometry: reorientation to RAS, resampling to a target spacing, and the way back to an
  input's own grid (``preprocess_image``, ``restore_labels``);
- the one zoom of the suite (``zoom_to``), for volumes and for TransUNet's slices;
- volumes as slice stacks (``volume_to_slices``), as the 2D releases store them;
- finding and reading images of the classification sets (every mode to uint8 RGB) and their
  evaluation transform (albumentations, imported when used).

Only numpy, scipy, nibabel and Pillow are imported at module level: no torch, no Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, ImageOps
from scipy import ndimage

from datamodules.errors import DataError

# --- intensity normalisation --------------------------------------------------------------------

#: nnU-Net's ``CTNormalization``: clip to these percentiles of the foreground intensities.
CT_PERCENTILES = (0.5, 99.5)
#: Neither nnU-Net's z-score nor its CT normalisation divides by less than this.
MIN_STD = 1e-8


def _ct(image: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    """nnU-Net's CT normalisation: clip to the dataset's foreground percentiles, then z-score
    with the dataset's foreground mean and standard deviation."""
    image = np.clip(image.astype(np.float32, copy=False), *parameters["clip"])
    return ((image - parameters["mean"]) / max(parameters["std"], MIN_STD)).astype(np.float32)


def _zscore(image: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    """nnU-Net's ``ZScoreNormalization`` without a mask: this image's own mean and standard
    deviation over all voxels."""
    image = image.astype(np.float32, copy=False)
    mean, std = float(image.mean()), float(image.std())
    return ((image - mean) / max(std, MIN_STD)).astype(np.float32)


def _to_unit_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros_like(image)
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


def _window(image: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    """Clip to a fixed window and map it linearly to [0, 1] (TransUNet's Synapse: [-125, 275]
    HU)."""
    low, high = (float(v) for v in parameters["window"])
    return _to_unit_range(np.asarray(image, dtype=np.float32), low, high)


def _minmax(image: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    """This image's own minimum and maximum to [0, 1] (a constant image becomes 0); nnU-Net's
    ``RescaleTo01Normalization``."""
    image = np.asarray(image, dtype=np.float32)
    return _to_unit_range(image, float(image.min()), float(image.max()))


def _none(image: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    """The intensities as they are, in float32 (nnU-Net's ``NoNormalization``)."""
    return np.asarray(image, dtype=np.float32)


def _rgb(image: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    """8-bit values divided by 255 (nnU-Net's ``RGBTo01Normalization``; the cache's checks
    reject values outside 0..255, as nnU-Net asserts)."""
    return (np.asarray(image, dtype=np.float32) / 255.0).astype(np.float32)


#: Every intensity normalisation of the suite, by the ``scheme`` of its record:
#: ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}``, ``{"scheme": "zscore"}``,
#: ``{"scheme": "window", "window": [low, high]}``, ``{"scheme": "minmax"}``,
#: ``{"scheme": "none"}``, ``{"scheme": "rgb"}``.
NORMALIZATIONS: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]] = {
    "ct": _ct,
    "zscore": _zscore,
    "window": _window,
    "minmax": _minmax,
    "none": _none,
    "rgb": _rgb,
}
#: nnU-Net v2 ``get_normalization_scheme``: a channel name of ``dataset.json``, compared
#: case-insensitively, chooses the channel's normalisation; every other name is z-scored.
CHANNEL_SCHEMES: dict[str, str] = {
    "ct": "ct",
    "nonorm": "none",
    "zscore": "zscore",
    "rescale_to_0_1": "minmax",
    "rgb_to_0_1": "rgb",
}


def channel_scheme(channel_name: str) -> str:
    """The normalisation scheme nnU-Net v2 gives a channel of this name (``CT`` → ``ct``,
    ``noNorm`` → ``none``, ``rescale_to_0_1`` → ``minmax``, ``rgb_to_0_1`` → ``rgb``, any
    other name, ``MR``, ``T2``, ``ADC`` among them, → ``zscore``)."""
    return CHANNEL_SCHEMES.get(channel_name.casefold(), "zscore")


def channel_normalizations(
    normalization: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    """The per-channel normalisation records of a preprocessing record: a list, one record per
    input channel in channel order. A single record is one channel: the form that checkpoints
    and caches written before multi-channel inputs hold."""
    if isinstance(normalization, Mapping):
        return [normalization]
    return list(normalization)


def normalize(image: np.ndarray, normalization: Mapping[str, Any]) -> np.ndarray:
    """``image`` normalised as its record says (``NORMALIZATIONS``), float32."""
    scheme = normalization.get("scheme")
    if scheme not in NORMALIZATIONS:
        raise DataError(
            f"unknown normalisation scheme {scheme!r}; expected one of "
            f"{', '.join(repr(s) for s in NORMALIZATIONS)}"
        )
    return NORMALIZATIONS[scheme](image, normalization)


def ct_normalization(foreground: np.ndarray) -> dict[str, Any]:
    """nnU-Net's CT normalisation record from foreground intensities (HU) of training cases."""
    low, high = np.percentile(foreground, CT_PERCENTILES)
    return dict(
        scheme="ct",
        clip=[float(low), float(high)],
        mean=float(np.mean(foreground)),
        std=float(np.std(foreground)),
    )


# --- zoom ---------------------------------------------------------------------------------------


def zoom_to(
    array: np.ndarray, shape: Sequence[int], order: int, voxel_boxes: bool = False
) -> np.ndarray:
    """``array`` resized to ``shape`` by scipy's spline ``zoom`` of ``order`` (0 = nearest),
    keeping its dtype; returned as it is when it already has that shape.

    ``voxel_boxes``: voxels are boxes, so the first and last boxes of both grids share their outer
    faces (the field of view is kept; nnU-Net-style resampling of volumes) and edges repeat the
    border voxel. Otherwise scipy's default: the first and last voxel centres are aligned
    (TransUNet's zoom of slices).
    """
    if tuple(array.shape) == tuple(shape):
        return array
    factors = np.divide(shape, array.shape)
    options = dict(mode="nearest", grid_mode=True) if voxel_boxes else {}
    resized = ndimage.zoom(array, factors, order=order, **options)
    if resized.shape != tuple(shape):
        raise RuntimeError(f"zoom gave {resized.shape}, not {tuple(shape)}")
    return resized


#: TransUNet ``RandomGenerator`` and ``test_single_volume``: slices are zoomed to the network size
#: with a cubic spline (``order=3``), labels (and predictions back) with nearest neighbour.
IMAGE_ZOOM_ORDER = 3


def zoom_slice(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``label`` (H, W) zoomed to ``size``², as TransUNet (cubic spline for the
    image, nearest for the label)."""
    return (
        zoom_to(image, (size, size), IMAGE_ZOOM_ORDER),
        zoom_to(label, (size, size), order=0),
    )


def volume_to_slices(volume: np.ndarray, intensity: Mapping[str, Any] | None = None) -> np.ndarray:
    """A raw 3D volume as nibabel reads it, ``(X, Y, Z)``, as the 2D releases store it: slice
    index first, ``(D, H, W) = (Z, X, Y)``, each slice ``volume[:, :, k]`` as it is (no flip); with
    ``intensity`` normalised (``normalize``). Labels: pass no ``intensity``."""
    if volume.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {volume.shape}")
    if intensity is not None:
        volume = normalize(volume, intensity)
    return np.ascontiguousarray(np.transpose(volume, (2, 0, 1)))


# --- 3D geometry: reorient, resample, restore ---------------------------------------------------

#: nnU-Net resamples images with a cubic spline (its ``order=3``), labels here with nearest.
IMAGE_ORDER = 3
#: The channels of a case and its label may differ by this much in their affines (mm, direction
#: cosines) and count as one voxel grid.
AFFINE_TOLERANCE = 1e-3
_RAS = axcodes2ornt("RAS")


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


VolumeSource = str | Path | nib.spatialimages.SpatialImage


def load_volume(path_or_img: VolumeSource) -> Any:
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
    """``volume`` (X, Y, Z) resampled to ``shape`` (``zoom_to`` with voxel boxes: the field of
    view is kept), keeping its dtype."""
    return zoom_to(volume, shape, order, voxel_boxes=True)


def preprocess_image(
    path_or_img: VolumeSource | Sequence[VolumeSource],
    spacing: Sequence[float],
    normalization: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    reorient: bool = True,
) -> tuple[np.ndarray, VolumeGeometry]:
    """An image (path or nibabel image; for several input channels a sequence of them, in
    channel order) as the network sees it, and how to go back.

    Reorients to the closest RAS axes (unless ``reorient`` is false: the voxel axes are kept),
    normalises each channel with its own record of ``normalization`` (one record per channel, or
    a single record for a one-channel image: ``channel_normalizations``), resamples to
    ``spacing`` (mm, on those axes) with a cubic spline: the same steps as the training cache
    (normalising before resampling is nnU-Net's order). Returns ``(image, geometry)`` with
    ``image`` float32 ``(C, X, Y, Z)`` on the model grid ``geometry.model_shape``; the geometry
    is the first channel's. The channels must be 3D images on one voxel grid (shape, and affine
    within ``AFFINE_TOLERANCE``): otherwise a ``DataError`` naming the file.
    """
    sources = list(path_or_img) if _is_sequence(path_or_img) else [path_or_img]
    records = channel_normalizations(normalization)
    if len(sources) != len(records):
        raise DataError(
            f"{len(sources)} image(s) given for {len(records)} input channel(s): "
            f"{', '.join(_source_name(s) for s in sources)}"
        )
    images = [load_volume(source) for source in sources]
    for source, img in zip(sources, images, strict=True):
        if len(img.shape) != 3:
            raise DataError(f"{_source_name(source)}: expected a 3D image, got shape {img.shape}")
    for source, img in zip(sources[1:], images[1:], strict=False):
        problem = grid_difference(images[0], img)
        if problem:
            raise DataError(
                f"{_source_name(source)} is not on the grid of the first channel "
                f"{_source_name(sources[0])}: {problem}"
            )
    geometry = volume_geometry(images[0], spacing, reorient)
    channels = [
        resample(
            normalize(
                apply_orientation(img.get_fdata(dtype=np.float32), geometry.orientation), record
            ),
            geometry.model_shape,
            IMAGE_ORDER,
        )
        for img, record in zip(images, records, strict=True)
    ]
    return np.stack(channels).astype(np.float32, copy=False), geometry


def grid_difference(reference: Any, other: Any) -> str | None:
    """How the voxel grid of ``other`` differs from that of ``reference`` (nibabel images or
    anything with ``shape`` and ``affine``): ``"shape (a) != (b)"`` or ``"affines differ (largest
    difference d)"`` beyond ``AFFINE_TOLERANCE``; ``None`` when they share one grid."""
    if tuple(other.shape) != tuple(reference.shape):
        return f"shape {tuple(other.shape)} != {tuple(reference.shape)}"
    difference = float(np.abs(np.asarray(other.affine) - np.asarray(reference.affine)).max())
    if difference > AFFINE_TOLERANCE:
        return f"affines differ (largest difference {difference:.4g})"
    return None


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _source_name(source: Any) -> str:
    """A path, or the file a nibabel image was read from (``<in memory>`` when none)."""
    if isinstance(source, nib.spatialimages.SpatialImage):
        return source.get_filename() or "<image in memory>"
    return str(source)


def orient_labels(label: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """A raw label volume (on the input's own grid) on the model grid: reoriented like the image,
    rounded to uint8, resampled by nearest neighbour."""
    label = np.rint(apply_orientation(label, geometry.orientation)).astype(np.uint8)
    return resample(label, geometry.model_shape, order=0)


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


# --- images of the classification sets ------------------------------------------------------------

#: File name extensions read as images, compared in lower case.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Files that operating systems and archivers leave in folders (compared in lower case).
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "__macosx"})
#: albumentations ``Normalize`` defaults: the ImageNet channel statistics (see docs/datasets.md).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def is_junk(name: str) -> bool:
    """Hidden files, AppleDouble ``._*`` files, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``,
    ``__MACOSX``."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (any case of extension), junk left out, sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not is_junk(p.name) and p.is_file()
    )


def subfolders(root: Path, depth: int) -> list[Path]:
    """``root`` and its folders down to ``depth`` levels below it, junk folders left out."""
    found = []
    for folder, children, _ in os.walk(root):
        found.append(Path(folder))
        level = len(Path(folder).relative_to(root).parts)
        children[:] = sorted(c for c in children if not is_junk(c)) if level < depth else []
    return found


def read_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``(H, W, 3)``, upright.

    The EXIF orientation is applied (phone photos are often stored sideways). Modes: L and 1
    are replicated to three channels; P goes through its palette; CMYK and YCbCr are converted
    by Pillow; alpha (LA, PA, RGBA, a palette's transparency) is dropped, keeping the stored
    colour of every pixel; 16-bit and 32-bit grayscale (I;16, I, F) is rescaled to 0..255 by the
    image's own minimum and maximum (a constant image becomes 0), because such files rarely use
    their full range (a 12-bit CT in 16 bits would keep 16 grey levels after ``/257``).
    """
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image, dtype=np.float64)
            low, high = float(values.min()), float(values.max())
            scale = 255.0 / (high - low) if high > low else 0.0
            gray = np.rint((values - low) * scale).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            # Through RGBA, so that Pillow resolves a palette's transparency without a warning.
            image = image.convert("RGBA")
        return np.array(image.convert("RGB"), dtype=np.uint8)


def read_checked_image(path: Path) -> np.ndarray:
    """``read_image(path)``, with any failure to decode (or an empty image) as a ``DataError``
    whose message is the reason."""
    try:
        image = read_image(path)
    except _IMAGE_READ_ERRORS as error:
        raise DataError(f"{type(error).__name__}: {error}") from error
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"empty image {image.shape[:2]}")
    return image


def albumentations() -> Any:
    """albumentations, imported without its PyPI update check (the suite runs offline; the check
    blocks up to 2 s and warns on every import)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], **_: Any) -> Any:
    """Evaluation preprocessing: resize to ``image_size``², normalise, to a float32 ``(3, S, S)``
    tensor. An albumentations ``Compose``: ``eval_transform(**preprocessing)(image=rgb)["image"]``
    (the other keys of a DataModule's ``preprocessing`` are ignored)."""
    A = albumentations()
    return A.Compose(
        [A.Resize(image_size, image_size), A.Normalize(mean=mean, std=std), A.ToTensorV2()]
    )


def prepare_image(path: str | Path, preprocessing: Mapping[str, Any]) -> Any:
    """The image at ``path`` exactly as the test loader gives it: a float32 ``(3, S, S)`` tensor.
    ``preprocessing`` is a DataModule's ``preprocessing`` (saved in checkpoints)."""
    return eval_transform(**preprocessing)(image=read_image(path))["image"]
