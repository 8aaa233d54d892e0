"""The embedded default dataset `brain_demo`: real anatomy, synthetic variation (docs/datasets.md).

Every subject is the MNI ICBM152 2009a nonlinear symmetric T1 template, as shipped inside the
nilearn wheel (so nothing is downloaded), after a seeded random smooth deformation and random MR
intensity changes. Labels come from the template's own grey- and white-matter probability maps,
warped with the same transform as the image. No subject is a real person: the anatomy is one
population average, and its variation is only what the random deformations make of it.

Layout written by `write_brain_demo` (nnU-Net-like, with an explicit split file):

    root/imagesTr/brain_000.nii.gz   T1, float32, (X, Y, Z) on the 2 mm grid, RAS+ axes
    root/labelsTr/brain_000.nii.gz   uint8: 0 background, 1 CSF, 2 grey matter, 3 white matter
    root/split.json                  {"train": [...], "val": [...], "test": [...]}
    root/dataset.json                labels, licence, generator parameters; written last

Generation is separate from any DataModule: `load_template` and `make_subject` return arrays.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from datamodules.base import kfold
from datamodules.errors import DataError
from datamodules.volume_cache import CaseFiles
from datamodules.volumes import VolumeConfig, VolumeDataModule
from mednext.files import atomic_path, write_json
from mednext.progress import progress_bar

CLASS_NAMES: tuple[str, ...] = ("background", "csf", "gray_matter", "white_matter")
SPACING_MM: float = 2.0

# Bump whenever the images or labels written for the same parameters change, so that copies
# written by an earlier version are regenerated rather than trusted.
GENERATOR_VERSION = 1

MNI_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute "
    "this software and its documentation for any purpose and without fee is hereby granted, "
    "provided that the above copyright notice appear in all copies. The authors and McGill "
    "University make no representations about the suitability of this software for any purpose. "
    'It is provided "as is" without express or implied warranty. The authors are not responsible '
    "for any data loss, equipment damage, property loss, or injury to subjects or patients "
    "resulting from the use or misuse of this software package."
)
REFERENCES = (
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
    "age-appropriate brain templates from birth to adulthood. NeuroImage 47(S1):S102, 2009. "
    "doi:10.1016/S1053-8119(09)70884-5",
    "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL, Brain Development "
    "Cooperative Group. Unbiased average age-appropriate atlases for pediatric studies. "
    "NeuroImage 54(1):313-327, 2011. doi:10.1016/j.neuroimage.2010.07.033",
)

# MedNeXt downsamples four times by 2, so every side of a whole-volume input divides by 16.
_DIVISOR = 16
# Least background kept around the template brain; rounding up to _DIVISOR adds more.
_MARGIN_MM = 2.0


@dataclass(frozen=True)
class Variation:
    """Ranges of the random changes that turn the template into a subject (all uniform).

    Spatial (applied to image and tissue maps alike): a rotation about each axis, a scaling of
    each axis, and a smooth displacement field (white noise smoothed by a Gaussian, rescaled to a
    drawn RMS amplitude). Intensity (image only): gamma, a smooth multiplicative bias field (the
    exponential of a degree-2 polynomial in coordinates scaled to [-1, 1]), Rician noise and an
    overall gain.
    """

    rotation_deg: float = 6.0  # ± about each axis
    scaling: float = 0.07  # ± relative, each axis
    displacement_rms_mm: tuple[float, float] = (1.5, 3.0)
    displacement_smoothing_mm: float = 12.0  # Gaussian sigma: the field's correlation length
    log_gamma: float = 0.3  # ±, image ** exp(log_gamma)
    # ± for each polynomial coefficient; more would let the cortex outshine white matter.
    bias_log_coefficient: float = 0.1
    noise_std: tuple[float, float] = (0.01, 0.04)  # template maximum = 1
    gain: tuple[float, float] = (0.8, 1.25)


VARIATION = Variation()


@dataclass(frozen=True)
class _Template:
    """The whole template resampled to 2 mm, and the window that `load_template` crops.

    Arrays are read-only: they are shared by every call through the cache.
    """

    t1: np.ndarray  # (X, Y, Z) float32, brain only (skull-stripped), maximum 1
    tissue: np.ndarray  # (3, X, Y, Z) float32 CSF, GM, WM fractions; 1 - sum is outside the brain
    affine: np.ndarray  # (4, 4) voxel-to-MNI-mm of the whole 2 mm grid
    window: tuple[slice, slice, slice]  # the cropped grid, every side a multiple of _DIVISOR


def _block_mean(volume: np.ndarray) -> np.ndarray:
    """Average 2×2×2 blocks: (X, Y, Z) at 1 mm -> (X//2, Y//2, Z//2) at 2 mm.

    Averaging, unlike nilearn's `resolution=2` point resampling, is what a 2 mm acquisition
    records (partial volumes, no aliasing) and keeps tissue fractions summing to one.
    """
    x, y, z = (size // 2 for size in volume.shape)
    return volume[: 2 * x, : 2 * y, : 2 * z].reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5))


def _label_from_tissue(tissue: np.ndarray) -> np.ndarray:
    """Argmax label of (outside brain, CSF, GM, WM) fractions.

    Args:
        tissue: (3, X, Y, Z) CSF, GM and WM fractions; 1 - their sum is the outside fraction.

    Returns:
        (X, Y, Z) uint8 in 0..3; a tie with the outside fraction goes to background.
    """
    label = (tissue.argmax(axis=0) + 1).astype(np.uint8)
    label[1.0 - tissue.sum(axis=0) >= tissue.max(axis=0)] = 0
    return label


@functools.cache
def _template() -> _Template:
    """Load the nilearn copy of the template once, resample it to 2 mm, find the crop window."""
    # Imported here: nilearn pulls in pandas and scikit-learn (seconds), which only this needs.
    # The load_mni152_* functions read files inside the wheel; no fetch_* (download) is used.
    from nilearn import datasets

    t1_image = datasets.load_mni152_template(resolution=1)
    # nilearn's brain mask: the skull-stripped template above 0.2 of its maximum.
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    grey = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    white = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    # Inside the brain, what is neither grey nor white matter is CSF (ventricles, sulci).
    csf = brain * np.clip(1.0 - grey - white, 0.0, 1.0)
    tissue = np.stack([_block_mean(csf), _block_mean(brain * grey), _block_mean(brain * white)])
    t1 = _block_mean(t1_image.get_fdata(dtype=np.float32))
    # A 2 mm voxel i covers 1 mm voxels 2i and 2i + 1: its centre is 1 mm voxel 2i + 0.5.
    two_mm_to_one_mm = np.diag([2.0, 2.0, 2.0, 1.0])
    two_mm_to_one_mm[:3, 3] = 0.5
    affine = t1_image.affine @ two_mm_to_one_mm

    inside = np.argwhere(_label_from_tissue(tissue) > 0)
    first, last = inside.min(axis=0), inside.max(axis=0)
    margin = round(_MARGIN_MM / SPACING_MM)
    size = -(-(last - first + 1 + 2 * margin) // _DIVISOR) * _DIVISOR
    # Centre the window on the brain, but keep it inside the volume: the template ends just
    # below the brainstem, so there is nothing to pad with there.
    start = np.clip((first + last + 1 - size) // 2, 0, np.array(t1.shape) - size)
    window = tuple(slice(int(a), int(a + n)) for a, n in zip(start, size, strict=True))

    for array in (t1, tissue, affine):
        array.flags.writeable = False
    return _Template(t1=t1, tissue=tissue, affine=affine, window=window)


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template on the cropped 2 mm grid that every subject shares.

    The template is read and resampled once per process (cached); each call returns copies.

    Returns:
        image: (X, Y, Z) float32 T1, skull-stripped, maximum 1.
        label: (X, Y, Z) uint8, 0 background, 1 CSF, 2 grey matter, 3 white matter.
        affine: (4, 4) float64 voxel-to-MNI-mm, 2 mm spacing, RAS+ axes.
    """
    template = _template()
    window = template.window
    affine = template.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([axis.start for axis in window])
    label = _label_from_tissue(template.tissue[(slice(None), *window)])
    return template.t1[window].copy(), label, affine


def _sampling_coordinates(
    rng: np.random.Generator, window: tuple[slice, slice, slice], variation: Variation
) -> np.ndarray:
    """Random smooth map from the voxels of the cropped grid to voxels of the whole template.

    Rotation and scaling act about the centre of the window (near the brain centre); the smooth
    displacement is added on top. Coordinates may leave the window, to pull in the anatomy
    beyond it, and the template, where everything samples as zero (background).

    Returns:
        (3, X, Y, Z) float32 template voxel coordinates of every voxel of the cropped grid.
    """
    shape = tuple(axis.stop - axis.start for axis in window)
    angles = rng.uniform(-variation.rotation_deg, variation.rotation_deg, size=3)
    scales = 1.0 + rng.uniform(-variation.scaling, variation.scaling, size=3)
    matrix = (Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * scales).astype(
        np.float32
    )

    sigma = variation.displacement_smoothing_mm / SPACING_MM
    displacement = ndimage.gaussian_filter(
        rng.standard_normal((3, *shape), dtype=np.float32), sigma=(0, sigma, sigma, sigma)
    )
    rms = rng.uniform(*variation.displacement_rms_mm) / SPACING_MM
    displacement *= rms / np.sqrt(np.mean(np.sum(displacement**2, axis=0)))

    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    grid = np.indices(shape, dtype=np.float32) - centre[:, None, None, None]
    offset = centre + np.array([axis.start for axis in window], dtype=np.float32)
    return np.einsum("ij,j...->i...", matrix, grid) + offset[:, None, None, None] + displacement


def _mr_intensity(rng: np.random.Generator, t1: np.ndarray, variation: Variation) -> np.ndarray:
    """Apply gamma, bias field, Rician noise and gain to a (X, Y, Z) T1 image in [0, 1].

    Gamma changes the contrast between tissues; the gain, which per-image normalisation undoes,
    keeps raw intensities off one fixed scale. Rician noise is the magnitude of a complex signal
    with Gaussian noise in both channels, as in magnitude MR images (background included).
    """
    image = t1 ** math.exp(rng.uniform(-variation.log_gamma, variation.log_gamma))

    degree = np.indices((3, 3, 3)).sum(axis=0)
    coefficients = rng.uniform(
        -variation.bias_log_coefficient, variation.bias_log_coefficient, size=(3, 3, 3)
    )
    coefficients[(degree == 0) | (degree > 2)] = 0.0
    axes = [np.linspace(-1.0, 1.0, size) for size in image.shape]
    image *= np.exp(np.polynomial.polynomial.polygrid3d(*axes, coefficients)).astype(np.float32)

    std = rng.uniform(*variation.noise_std)
    real = image + std * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = std * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary) * np.float32(rng.uniform(*variation.gain))


def make_subject(index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic subject: the template under a random deformation and intensity change.

    The tissue fractions are warped linearly like the image and the label is their argmax, which
    keeps thin structures (cortex, sulcal CSF) smoother than warping the label itself.

    Args:
        index: subject number (>= 0); different indices give different subjects.
        seed: dataset seed (>= 0); the subject depends only on (seed, index).

    Returns:
        image: (X, Y, Z) float32 T1, on the grid and affine of `load_template`.
        label: (X, Y, Z) uint8 in 0..3, aligned with the image.
    """
    template = _template()
    rng = np.random.default_rng([seed, index])
    coordinates = _sampling_coordinates(rng, template.window, VARIATION)

    def warp(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, coordinates, output=np.float32, order=1, cval=0.0)

    label = _label_from_tissue(np.stack([warp(fraction) for fraction in template.tissue]))
    image = _mr_intensity(rng, warp(template.t1), VARIATION)
    return image, label


def _case_name(index: int) -> str:
    return f"brain_{index:03d}"


def _split(n_train: int, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Disjoint case lists over subject indices 0..n-1.

    Test takes the first indices and val the next, so both stay the same when n_train changes.
    """
    test = range(n_test)
    val = range(n_test, n_test + n_val)
    train = range(n_test + n_val, n_test + n_val + n_train)
    return {
        part: [_case_name(index) for index in indices]
        for part, indices in (("train", train), ("val", val), ("test", test))
    }


def _generator_parameters(n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, Any]:
    """Everything the files depend on, as JSON reads it back; equal parameters, equal files."""
    parameters = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        # Read from the installed metadata: importing nilearn takes seconds.
        "nilearn": importlib.metadata.version("nilearn"),
        "variation": asdict(VARIATION),
    }
    # The round trip turns tuples into lists, as they come back from dataset.json.
    return json.loads(json.dumps(parameters))


def _dataset_description(generator: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """The dataset.json content (nnU-Net v2 keys, plus provenance and generator parameters)."""
    return {
        "name": "brain_demo",
        "description": (
            "MNI ICBM152 2009a nonlinear symmetric T1 template (as shipped with nilearn) under "
            "seeded random smooth deformations and MR intensity changes. Real anatomy, synthetic "
            "variation: every subject is the same population-average brain, not a person."
        ),
        "reference": list(REFERENCES),
        "licence": MNI_NOTICE,
        "channel_names": {"0": "T1"},
        "labels": {name: value for value, name in enumerate(CLASS_NAMES)},
        "numTraining": generator["n_train"] + generator["n_val"] + generator["n_test"],
        "file_ending": ".nii.gz",
        "spacing_mm": [SPACING_MM] * 3,
        "shape": list(shape),
        "generator": generator,
    }


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code="mni")
    image.set_qform(affine, code="mni")
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as temporary:
        nib.save(image, temporary)


def _read_json(path: Path) -> Any:
    """The content of a JSON file, or None when it is missing or unreadable (then rewritten)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_brain_demo(
    root: str | Path, n_train: int = 24, n_val: int = 4, n_test: int = 8, seed: int = 0
) -> dict[str, list[str]]:
    """Write the brain_demo dataset under `root` (layout in the module docstring).

    Case brain_007 is subject 7; test takes the first indices, then val, then train.
    Idempotent: when `root/dataset.json` records the same parameters (and generator version)
    and every file is present, nothing is written. Otherwise dataset.json is removed first and
    written last, so a copy interrupted part-way is never taken for complete, and cases of an
    earlier copy that are not in the new split are removed. Call it from one process (Lightning's
    `prepare_data`), not from every rank at once.

    Args:
        root: dataset folder, created if missing.
        n_train, n_val, n_test: number of subjects in each part of the split.
        seed: dataset seed; subjects depend only on (seed, index).

    Returns:
        The split: {"train": [...], "val": [...], "test": [...]} case names.
    """
    if min(n_train, n_val, n_test, seed) < 0:
        raise ValueError(
            f"brain_demo: n_train, n_val, n_test and seed must be >= 0, got "
            f"{n_train}, {n_val}, {n_test} and {seed}"
        )
    root = Path(root)
    generator = _generator_parameters(n_train, n_val, n_test, seed)
    split = _split(n_train, n_val, n_test)
    cases = [_case_name(index) for index in range(n_train + n_val + n_test)]
    folders = [root / "imagesTr", root / "labelsTr"]
    files = [folder / f"{case}.nii.gz" for folder in folders for case in cases]

    # Checked without loading the template, so that a complete copy costs milliseconds.
    if (
        isinstance(description := _read_json(root / "dataset.json"), dict)
        and description.get("generator") == generator
        and _read_json(root / "split.json") == split
        and all(path.is_file() for path in files)
    ):
        return split

    (root / "dataset.json").unlink(missing_ok=True)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("brain_*.nii.gz"):
            if path not in files:
                path.unlink()
    template, _, affine = load_template()
    with progress_bar() as progress:
        subjects = progress.track(cases, description="Writing brain_demo subjects")
        for index, case in enumerate(subjects):
            image, label = make_subject(index, seed)
            _save_nifti(image, affine, root / "imagesTr" / f"{case}.nii.gz")
            _save_nifti(label, affine, root / "labelsTr" / f"{case}.nii.gz")
    write_json(root / "split.json", split)
    write_json(root / "dataset.json", _dataset_description(generator, template.shape))
    return split


# --- the DataModule -------------------------------------------------------------------------


class BrainDemoDataModule(VolumeDataModule):
    """The embedded default as a 3D DataModule: the generated subjects go through the same
    validation, cache and patch sampling as a downloaded dataset (MR: per-case z-score).

    ``prepare_data`` writes the subjects (once) into ``root`` — by default the cache folder, as
    nothing is downloaded — with the split ``n_train``/``n_val``/``n_test`` from ``subjects_seed``.
    ``source=synthetic`` reads the same generated copy: the demo is synthetic by construction.
    """

    @dataclass
    class Config(VolumeConfig):
        """The ``data:`` keys for ``name: brain_demo`` (see ``VolumeConfig``).

        Attributes:
            root: where the subjects are written; empty for ``<cache_dir>/subjects``.
            n_train, n_val, n_test: subjects per part (disjoint).
            subjects_seed: seed of the generated subjects (independent of the training seed).
        """

        name: str = "brain_demo"
        root: str = ""
        patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
        spacing: list[float] = field(default_factory=lambda: [SPACING_MM] * 3)
        n_train: int = 24
        n_val: int = 4
        n_test: int = 8
        subjects_seed: int = 0

    title = "brain_demo"
    channel_names = ("MR",)
    CLASS_NAMES = CLASS_NAMES
    DOWNLOAD = "nothing: the subjects are made from the MNI template inside the nilearn wheel"
    LAYOUT = "  <root>/imagesTr/brain_000.nii.gz ..., labelsTr/, split.json, dataset.json"
    EXAMPLE_EXPERIMENT = "brain_demo_mednext_s"

    @property
    def root(self) -> Path:
        if self.config.root:
            return Path(self.config.root).expanduser()
        counts = f"{self.config.n_train}-{self.config.n_val}-{self.config.n_test}"
        return self.cache_dir / "subjects" / f"seed{self.config.subjects_seed}-{counts}"

    def prepare_data(self) -> None:
        write_brain_demo(
            self.root,
            n_train=self.config.n_train,
            n_val=self.config.n_val,
            n_test=self.config.n_test,
            seed=self.config.subjects_seed,
        )
        super().prepare_data()

    def write_synthetic_copy(self) -> None:
        """Nothing to add: ``prepare_data`` has written the (synthetic) subjects already."""

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        """The generated subjects under ``root`` (``write_brain_demo``; the demo is synthetic by
        construction). Returns ``root``."""
        write_brain_demo(root, seed=seed, **options)
        return Path(root)

    def _written_split(self) -> dict[str, list[str]]:
        split = _read_json(self.root / "split.json")
        if not isinstance(split, dict) or set(split) != {"train", "val", "test"}:
            raise DataError(
                f"brain_demo: {self.root / 'split.json'} is missing or damaged; delete {self.root} "
                "and run again to regenerate the subjects"
            )
        return split

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        cases, problems = [], []
        for case in sorted(c for part in self._written_split().values() for c in part):
            image = root / "imagesTr" / f"{case}.nii.gz"
            label = root / "labelsTr" / f"{case}.nii.gz"
            missing = [str(p) for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{case}: missing {' and '.join(missing)}")
            else:
                cases.append(CaseFiles(case, (image,), label))
        return cases, problems

    def is_test_case(self, case_id: str) -> bool:
        return case_id in self._written_split()["test"]

    def make_split(self, case_ids: Sequence[str]) -> dict[str, list[str]]:
        written = self._written_split()
        if self.config.fold is None:
            return {part: sorted(ids) for part, ids in written.items()}
        train, val = kfold(
            written["train"] + written["val"],
            self.config.num_folds,
            self.config.fold,
            self.config.split_seed,
        )
        return dict(train=train, val=val, test=sorted(written["test"]))
