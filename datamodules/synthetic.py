"""Drawing and saving helpers for the synthetic copies of the datasets (tests and dry runs).

Each dataset module writes its own fake copy in its exact on-disk layout (``write_synthetic``:
folder names, file names, dtypes, header quirks) from these pieces: voxel grids and ellipsoids,
scanner-like affines and NIfTI files for the 3D sets; for the classification sets, small images
of varying size whose class shows as a disc at a class-dependent height with a class-dependent
brightness or colour, saved in the downloads' file formats and unusual modes, plus the mess real
folders carry (``.DS_Store``, ``Thumbs.db``, AppleDouble files, ``__MACOSX/``). Everything is
drawn from the caller's seeded generator, so a seed gives the same files.

Nothing here knows a dataset: this module imports none of them.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

# --- volumes ------------------------------------------------------------------------------------


def grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Voxel-centre coordinates as fractions of each axis, broadcastable to ``shape``."""
    return np.meshgrid(*((np.arange(n) + 0.5) / n for n in shape), indexing="ij", sparse=True)


def ellipsoid(
    grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]
) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1


def lps_affine(spacing: Sequence[float], shape: Sequence[int], angle: float = 0.0) -> np.ndarray:
    """A scanner-like affine: x and y axes flipped (DICOM's LPS stored as is), rotated by
    ``angle`` about z (an oblique stack), centred near the origin."""
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2)
    return affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    # Scanner exports carry both forms; nibabel then reads the affine from the sform.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


# --- class-per-folder images ------------------------------------------------------------------

#: Sides of the synthetic images in pixels, drawn per image (the real sets mix sizes).
_IMAGE_SIDES = (40, 96)
_IMAGE_NOISE = 16.0
_SCAN_BACKGROUND, _SCAN_DISC = 40.0, (120.0, 230.0)  # grey levels: background, disc range
_SKIN = (205.0, 160.0, 135.0)
#: Per-class index of the images written in an unusual form (the rest are plain).
_SCAN_VARIANTS = {0: "RGB", 1: "RGBA", 2: "P", 3: "I;16", 4: "upper-case extension"}
_PHOTO_VARIANTS = {0: "CMYK", 1: "L", 2: "RGBA PNG", 3: "upper-case extension", 4: "EXIF rotated"}


def class_image(rng: np.random.Generator, label: int, num_classes: int, color: bool) -> np.ndarray:
    """A fake image of class ``label``: a noisy background with a disc whose height in the image
    and brightness (``color``: hue, on skin tone) depend on the class, jittered. uint8, (H, W)
    or (H, W, 3), each side drawn from ``_IMAGE_SIDES``."""
    height, width = (int(n) for n in rng.integers(_IMAGE_SIDES[0], _IMAGE_SIDES[1] + 1, 2))
    share = label / max(num_classes - 1, 1)
    centre = ((label + 1) / (num_classes + 1) + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.08))
    radius = 0.15 * rng.uniform(0.85, 1.15)
    disc = ellipsoid(grid((height, width)), centre, (radius, radius * height / width))
    if color:
        lesion = 255 * np.array(colorsys.hsv_to_rgb(0.8 * share, 0.75, 0.8))
        image = np.where(disc[..., None], lesion, np.array(_SKIN))
        image = image + rng.normal(0, _IMAGE_NOISE, (height, width, 3))
    else:
        bright = _SCAN_DISC[0] + share * (_SCAN_DISC[1] - _SCAN_DISC[0])
        image = np.where(disc, bright, _SCAN_BACKGROUND) + rng.normal(0, _IMAGE_NOISE, disc.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def save_scan(image: np.ndarray, path: Path, index: int) -> Path:
    """A grayscale ``image`` as PNG at ``path``: 8-bit grayscale, or for the first indices of a
    class RGB, RGBA, palette with a transparent entry, 16 bits (12-bit values) or an upper-case
    ``.PNG``. Returns the path written."""
    variant = _SCAN_VARIANTS.get(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {}
    if variant == "RGB":
        picture = Image.fromarray(np.dstack([image] * 3))
    elif variant == "RGBA":
        picture = Image.fromarray(np.dstack([image] * 3 + [np.full_like(image, 255)]))
    elif variant == "P":
        picture = Image.fromarray(np.dstack([image] * 3)).quantize(colors=64)
        options["transparency"] = 0
    elif variant == "I;16":
        picture = Image.fromarray(image.astype(np.uint16) * 16)
    else:
        picture = Image.fromarray(image)
        if variant == "upper-case extension":
            path = path.with_suffix(".PNG")
    picture.save(path, **options)
    return path


def save_photo(image: np.ndarray, path: Path, index: int) -> Path:
    """An RGB ``image`` as JPEG at ``path``, or for the first indices of a class as CMYK JPEG,
    grayscale JPEG, RGBA PNG, with an upper-case ``.JPG`` or stored sideways with an EXIF
    orientation (6: rotate 90° clockwise to display). Returns the path written."""
    variant = _PHOTO_VARIANTS.get(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image)
    options = {}
    if variant == "CMYK":
        picture = picture.convert("CMYK")
    elif variant == "L":
        picture = picture.convert("L")
    elif variant == "RGBA PNG":
        picture, path = picture.convert("RGBA"), path.with_suffix(".png")
    elif variant == "upper-case extension":
        path = path.with_suffix(".JPG")
    elif variant == "EXIF rotated":
        picture = Image.fromarray(np.ascontiguousarray(np.rot90(image)))
        exif = Image.Exif()
        exif[0x0112] = 6
        options["exif"] = exif
    picture.save(path, quality=95, **options)
    return path


def write_junk(root: Path, class_folders: Sequence[Path]) -> None:
    """What operating systems leave behind: ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, an
    AppleDouble ``._`` twin of an image, and a ``__MACOSX/`` copy of the class folders."""
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (class_folders[0] / "Thumbs.db").write_bytes(bytes(64))
    (class_folders[-1] / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (class_folders[-1] / "desktop.ini").write_text("[.ShellClassInfo]\n")
    first = sorted(p.name for p in class_folders[0].iterdir() if p.suffix.lower() != ".db")[0]
    (class_folders[0] / f"._{first}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    for folder in class_folders:
        mac = root / "__MACOSX" / folder.relative_to(root)
        mac.mkdir(parents=True, exist_ok=True)
        (mac / f"._{first}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
