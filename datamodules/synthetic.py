"""Small fake copies of the raw datasets, in their exact on-disk layouts, for tests and dry runs.

Each writer produces the folder names, file names, dtypes and header quirks of the real
download (LPS-like flipped axes, anisotropic voxels, a slightly oblique short-axis stack for ACDC,
ACDC's ``Info.cfg`` and ``_4d`` series) with tiny volumes holding learnable structures: every
class is a blob of its own intensity at a roughly fixed place, jittered per case, with noise.
Everything is drawn from one seeded generator, so a seed gives the same files.

``write_dataset(name, root)`` is what ``mednext data synthetic DATASET OUT_DIR`` and
``data.source=synthetic`` call; it returns the folder to use as ``data.root``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from datamodules import acdc, synapse

#: Synapse organs as (centre, radii) in fractions of the volume (x, y, z) and a CT value (HU):
#: roughly anatomical, distinct intensities ≥ 30 HU apart (noise 12 HU), painted largest first
#: so that small organs stay visible. Index = BTCV label.
_ORGANS: dict[int, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    6: ((0.30, 0.45, 0.62), (0.18, 0.20, 0.24), 70),  # liver
    7: ((0.66, 0.38, 0.65), (0.10, 0.09, 0.15), -30),  # stomach
    1: ((0.78, 0.62, 0.60), (0.09, 0.10, 0.18), 100),  # spleen
    2: ((0.27, 0.70, 0.36), (0.07, 0.08, 0.18), 190),  # right kidney
    3: ((0.73, 0.70, 0.38), (0.07, 0.08, 0.18), 160),  # left kidney
    8: ((0.53, 0.66, 0.50), (0.045, 0.045, 0.45), 250),  # aorta
    9: ((0.44, 0.62, 0.45), (0.045, 0.045, 0.38), 130),  # inferior vena cava
    11: ((0.58, 0.52, 0.42), (0.13, 0.045, 0.08), 310),  # pancreas
    4: ((0.36, 0.33, 0.42), (0.05, 0.05, 0.10), 10),  # gallbladder
    10: ((0.47, 0.49, 0.56), (0.06, 0.035, 0.07), 220),  # portal and splenic vein
    5: ((0.52, 0.64, 0.86), (0.04, 0.04, 0.12), 40),  # esophagus
    12: ((0.34, 0.69, 0.60), (0.045, 0.035, 0.08), 340),  # right adrenal gland
    13: ((0.65, 0.69, 0.60), (0.045, 0.035, 0.08), 370),  # left adrenal gland
}
_BODY_HU, _AIR_HU, _CT_NOISE = -80.0, -1000.0, 12.0

#: ACDC intensities (arbitrary MR units) outside the body, of the body, and per label.
_MR_AIR, _MR_BODY, _MR_NOISE = 20.0, 150.0, 15.0
_MR_LABELS = {1: 260.0, 2: 80.0, 3: 340.0}  # right ventricle, myocardium, left ventricle

SYNTHETIC_NOTE = (
    "Synthetic stand-in written by datamodules/synthetic.py: not the real dataset. The real "
    "ACDC asks every user to cite Bernard et al., IEEE TMI 37(11):2514-2525, 2018.\n"
)


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    """Voxel-centre coordinates as fractions of each axis, broadcastable to ``shape``."""
    return np.meshgrid(*((np.arange(n) + 0.5) / n for n in shape), indexing="ij", sparse=True)


def _ellipsoid(
    grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]
) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1


def _lps_affine(spacing: Sequence[float], shape: Sequence[int], angle: float = 0.0) -> np.ndarray:
    """A scanner-like affine: x and y axes flipped (DICOM's LPS stored as is), rotated by
    ``angle`` about z (an oblique stack), centred near the origin."""
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2)
    return affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    # Scanner exports carry both forms; nibabel then reads the affine from the sform.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def synapse_case(
    rng: np.random.Generator, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fake BTCV volume: image int16 (HU), label uint8 (0..13), affine. The number of slices
    varies by ±2 around ``shape[2]`` and the voxel size as in BTCV (0.7–0.9 mm in-plane,
    2.5 or 3 mm slices)."""
    shape = (shape[0], shape[1], max(8, shape[2] + int(rng.integers(-2, 3))))
    grid = _grid(shape)
    body = _ellipsoid(grid[:2], (0.5, 0.5), (0.46, 0.40))
    label = np.zeros(shape, np.uint8)
    image = np.where(body, _BODY_HU, _AIR_HU) * np.ones(shape)
    for organ, (centre, radii, hu) in _ORGANS.items():
        centre = np.asarray(centre) + rng.normal(0, 0.015, 3)
        radii = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        mask = _ellipsoid(grid, centre, radii) & body
        label[mask], image[mask] = organ, hu
    image += rng.normal(0, _CT_NOISE, shape)
    in_plane = float(rng.uniform(0.7, 0.9))
    affine = _lps_affine((in_plane, in_plane, float(rng.choice([2.5, 3.0]))), shape)
    return np.round(image).astype(np.int16), label, affine


def write_synapse(root: str | Path, seed: int = 0, shape: Sequence[int] = (48, 48, 24)) -> Path:
    """A fake BTCV ``RawData`` under ``root``: ``RawData/Training/img/img00XX.nii.gz`` and
    ``label/label00XX.nii.gz`` for the 30 training cases, ``RawData/Testing/img`` for the 20
    unlabelled ones. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    raw = root / "RawData"
    for number in synapse.TRAINING_CASES:
        image, label, affine = synapse_case(rng, shape)
        _save(image, affine, raw / "Training" / "img" / synapse.image_name(number))
        _save(label, affine, raw / "Training" / "label" / synapse.label_name(number))
    for number in synapse.CHALLENGE_TEST_CASES:
        image, _, affine = synapse_case(rng, shape)
        _save(image, affine, raw / "Testing" / "img" / synapse.image_name(number))
    return root


def acdc_frame(
    rng: np.random.Generator, shape: Sequence[int], centre: np.ndarray, systole: float
) -> tuple[np.ndarray, np.ndarray]:
    """One fake short-axis frame: image float (MR units), label uint8 (0..3). ``systole`` 0 at
    end-diastole, 1 at end-systole (smaller cavities, thicker wall); the heart tapers towards
    the apex (last slices) and the first and last slices may miss it, as in ACDC."""
    grid = _grid(shape[:2])
    image = np.full(shape, _MR_AIR)
    label = np.zeros(shape, np.uint8)
    body = _ellipsoid(grid, (0.5, 0.5), (0.47, 0.42))
    lv_radius = 0.15 - 0.05 * systole
    wall = 0.06 + 0.025 * systole
    for k in range(shape[2]):
        taper = 1.0 - 0.6 * (k / max(shape[2] - 1, 1)) ** 2
        lv = _ellipsoid(grid, centre, (lv_radius * taper,) * 2)
        myo = _ellipsoid(grid, centre, ((lv_radius + wall) * taper,) * 2) & ~lv
        rv_centre = centre + np.array([-0.22, 0.02]) * taper
        rv_radii = np.array([0.10, 0.19]) * taper * (1.0 - 0.3 * systole)
        rv = _ellipsoid(grid, rv_centre, rv_radii) & ~lv & ~myo
        plane = np.where(body, _MR_BODY, _MR_AIR)
        plane_label = np.zeros(shape[:2], np.uint8)
        for value, mask in ((1, rv), (2, myo), (3, lv)):
            plane_label[mask], plane[mask] = value, _MR_LABELS[value]
        image[..., k], label[..., k] = plane, plane_label
    image += rng.normal(0, _MR_NOISE, shape)
    return np.clip(image, 0, None), label


def write_acdc(
    root: str | Path,
    seed: int = 0,
    shape: Sequence[int] = (40, 40, 8),
    layout: str = "database",
) -> Path:
    """A fake ACDC under ``root``: per patient ``Info.cfg``, ED and ES frames
    (``patientXXX_frameYY.nii.gz``, int16) with ``_gt`` labels (uint8) and a short ``_4d`` series.

    ``layout="database"``: the newer release, ``database/{training,testing}/patientXXX/`` with
    labels for the test patients 101–150 and ``MANDATORY_CITATION.md`` files;
    ``layout="training"``: the original ``training/`` and ``testing/`` (test patients without
    labels). Returns ``root``.
    """
    if layout not in ("database", "training"):
        raise ValueError(f"layout must be 'database' or 'training', not {layout!r}")
    root = Path(root)
    base = root / "database" if layout == "database" else root
    rng = np.random.default_rng(seed)
    if layout == "database":
        base.mkdir(parents=True, exist_ok=True)
        (base / "MANDATORY_CITATION.md").write_text(SYNTHETIC_NOTE)
    for part, patients in (
        ("training", acdc.TRAINING_PATIENTS),
        ("testing", acdc.TESTING_PATIENTS),
    ):
        for patient in patients:
            folder = base / part / acdc.patient_name(patient)
            labelled = part == "training" or layout == "database"
            _write_acdc_patient(rng, folder, patient, shape, labelled)
            if layout == "database":
                (folder / "MANDATORY_CITATION.md").write_text(SYNTHETIC_NOTE)
    return root


def _write_acdc_patient(
    rng: np.random.Generator, folder: Path, patient: int, shape: Sequence[int], labelled: bool
) -> None:
    es = int(rng.integers(5, 10))
    frames = es + int(rng.integers(2, 5))
    in_plane = float(rng.uniform(1.3, 1.8))
    affine = _lps_affine(
        (in_plane, in_plane, float(rng.choice([5.0, 10.0]))), shape, rng.uniform(-0.3, 0.3)
    )
    centre = np.array([0.56, 0.50]) + rng.normal(0, 0.02, 2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / acdc.INFO).write_text(
        acdc.info_text(
            ed=1,
            es=es,
            group=str(rng.choice(["NOR", "MINF", "DCM", "HCM", "RV"])),
            frames=frames,
            height=float(rng.uniform(150, 195)),
            weight=float(rng.uniform(50, 110)),
        )
    )
    series = []
    for frame, systole in ((1, 0.0), (es, 1.0)):
        image, label = acdc_frame(rng, shape, centre, systole)
        image = np.round(image).astype(np.int16)
        series.append(image)
        _save(image, affine, folder / acdc.frame_name(patient, frame))
        if labelled:
            _save(label, affine, folder / acdc.frame_name(patient, frame, label=True))
    # The cine series between the two labelled frames, linearly blended (never read).
    systole = np.interp(np.arange(frames), [0, es - 1, frames], [0.0, 1.0, 0.0])
    cine = series[0][..., None] * (1 - systole) + series[1][..., None] * systole
    _save(
        np.round(cine).astype(np.int16), affine, folder / f"{acdc.patient_name(patient)}_4d.nii.gz"
    )


WRITERS: dict[str, Callable[..., Path]] = {"synapse": write_synapse, "acdc": write_acdc}


def write_dataset(
    name: str, root: str | Path, seed: int = 0, shape: Sequence[int] | None = None
) -> Path:
    """A synthetic copy of dataset ``name`` under ``root`` (``shape`` = voxels per case, the
    writer's default when ``None``); returns the folder to use as ``data.root``."""
    if name not in WRITERS:
        raise KeyError(f"no synthetic writer for {name!r}; available: {', '.join(sorted(WRITERS))}")
    options = {} if shape is None else dict(shape=tuple(shape))
    return WRITERS[name](root, seed=seed, **options)
