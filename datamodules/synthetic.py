"""Small fake copies of the raw datasets, in their exact on-disk layouts, for tests and dry runs.

Each writer produces the folder names, file names, dtypes and header quirks of the real
download (LPS-like flipped axes, anisotropic voxels, a slightly oblique short-axis stack for ACDC,
ACDC's ``Info.cfg`` and ``_4d`` series) with tiny volumes holding learnable structures: every
class is a blob of its own intensity at a roughly fixed place, jittered per case, with noise.
The classification sets (class-per-folder images) get small images of varying size whose class
shows as a disc at a class-dependent height with a class-dependent brightness or colour, in the
downloads' file formats, plus the mess real folders carry (``.DS_Store``, ``Thumbs.db``,
AppleDouble files, ``__MACOSX/``, an upper-case extension, images in unusual modes).
The 2D releases (TransUNet's Synapse, MT-UNet's ACDC) are rebuilt from a synthetic raw copy by
their own ``prepare_release``, so that a synthetic release also exercises the rebuild.
Everything is drawn from one seeded generator, so a seed gives the same files.

``write_dataset(name, root)`` is what ``mednext data synthetic DATASET OUT_DIR`` and
``data.source=synthetic`` call; it returns the folder to use as ``data.root``.
"""

from __future__ import annotations

import colorsys
import csv
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

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


# --- class-per-folder images (the classification sets) ----------------------------------------

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
    disc = _ellipsoid(_grid((height, width)), centre, (radius, radius * height / width))
    if color:
        lesion = 255 * np.array(colorsys.hsv_to_rgb(0.8 * share, 0.75, 0.8))
        image = np.where(disc[..., None], lesion, np.array(_SKIN))
        image = image + rng.normal(0, _IMAGE_NOISE, (height, width, 3))
    else:
        bright = _SCAN_DISC[0] + share * (_SCAN_DISC[1] - _SCAN_DISC[0])
        image = np.where(disc, bright, _SCAN_BACKGROUND) + rng.normal(0, _IMAGE_NOISE, disc.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _save_scan(image: np.ndarray, path: Path, index: int) -> Path:
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


def _save_photo(image: np.ndarray, path: Path, index: int) -> Path:
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


def _write_junk(root: Path, class_folders: Sequence[Path]) -> None:
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


def write_sarscov2(root: str | Path, seed: int = 0, per_class: int = 12) -> Path:
    """A fake SARS-COV2-CT-Scan under ``root``: ``COVID/Covid (N).png`` and
    ``non-COVID/Non-Covid (N).png``, ``per_class`` each. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = [root / "non-COVID", root / "COVID"]
    for label, (folder, prefix) in enumerate(zip(folders, ("Non-Covid", "Covid"), strict=True)):
        for index in range(per_class):
            image = class_image(rng, label, 2, color=False)
            _save_scan(image, folder / f"{prefix} ({index + 1}).png", index)
    _write_junk(root, folders)
    return root


#: MSLD v1: (folder of the originals, folder in Fold1, file prefix) per class.
_MSLD_V1 = (("Monkey Pox", "Monkeypox", "M"), ("Others", "Others", "NM"))
#: MSLD v2.0: (folder, file prefix) per class.
_MSLD_V2 = (
    ("Chickenpox", "CHP"),
    ("Cowpox", "CWP"),
    ("HFMD", "HFMD"),
    ("Healthy", "HEALTHY"),
    ("Measles", "MSL"),
    ("Mpox", "MKP"),
)
_MSLD_V2_FOLDS = 5


def write_msld(
    root: str | Path, seed: int = 0, per_class: int = 12, version: str = "v1", folds: bool = True
) -> Path:
    """A fake Monkeypox Skin Lesion Dataset under ``root``, JPEG photographs.

    ``version="v1"``: ``Original Images/Original Images/{Monkey Pox,Others}/``, mirrored copies in
    ``Augmented Images/Augmented Images/``, and with ``folds`` the release's
    ``Fold1/Fold1/Fold1/{Train,Val,Test}/{Monkeypox,Others}/`` (test: originals only; train and
    val: originals with their augmented copies). ``version="v2"``: six classes in
    ``Original Images/Original Images/FOLDS/fold1..5/{Train,Valid,Test}/<class>/`` (fold ``f``
    tests the images ``i`` with ``i % 5 == f - 1``), and ``FOLDS_AUG/fold1_AUG`` copies.
    Returns ``root``.
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', not {version!r}")
    if version == "v2" and not folds:
        raise ValueError("MSLD v2.0 is released with its folds")
    root = Path(root)
    rng = np.random.default_rng(seed)
    originals = root / "Original Images" / "Original Images"
    augmented = root / "Augmented Images" / "Augmented Images"
    if version == "v1":
        class_folders = []
        for label, (folder, fold_folder, prefix) in enumerate(_MSLD_V1):
            test, val = max(2, per_class // 5), max(1, per_class // 10)
            for index in range(per_class):
                image = class_image(rng, label, len(_MSLD_V1), color=True)
                name = f"{prefix}{index + 1:02d}_01.jpg"
                _save_photo(image, originals / folder / name, index)
                copy = f"{prefix}{index + 1:02d}_01_aug.jpg"
                _save_photo(image[:, ::-1], augmented / f"{fold_folder}_augmented" / copy, -1)
                if not folds:
                    continue
                part = "Test" if index < test else "Val" if index < test + val else "Train"
                fold = root / "Fold1" / "Fold1" / "Fold1" / part / fold_folder
                _save_photo(image, fold / name, index)
                if part != "Test":
                    _save_photo(image[:, ::-1], fold / copy, -1)
            class_folders.append(originals / folder)
        _write_junk(root, class_folders)
        return root
    base = originals / "FOLDS"
    for label, (folder, prefix) in enumerate(_MSLD_V2):
        for index in range(per_class):
            image = class_image(rng, label, len(_MSLD_V2), color=True)
            name = f"{prefix}_{index + 1:02d}_01.jpg"
            for fold in range(1, _MSLD_V2_FOLDS + 1):
                offset = (index - fold + 1) % _MSLD_V2_FOLDS
                part = "Test" if offset == 0 else "Valid" if offset == 1 else "Train"
                _save_photo(image, base / f"fold{fold}" / part / folder / name, index)
                if fold == 1 and part == "Train":
                    copy = augmented / "FOLDS_AUG" / "fold1_AUG" / "Train" / folder
                    _save_photo(image[:, ::-1], copy / name.replace(".jpg", "_aug.jpg"), -1)
    _write_junk(base / "fold1", [base / "fold1" / "Train" / f for f, _ in _MSLD_V2])
    return root


#: Large COVID-19 CT: (class folder, word of its metadata CSV, diagnosis) per class.
_COVIDCT = (
    ("1NonCOVID", "normal", "Normal"),
    ("2COVID", "covid", "COVID-19"),
    ("3CAP", "cap", "CAP"),
)
_COVIDCT_COUNTRIES = ("China", "Iran", "Türkiye")  # not ASCII: the real CSVs are not all UTF-8


def write_covidct(root: str | Path, seed: int = 0, per_class: int = 12) -> Path:
    """A fake Large COVID-19 CT slice dataset under ``root``:
    ``curated_data/curated_data/{1NonCOVID,2COVID,3CAP}/P<patient>_<slice>.png`` (2–3 slices per
    patient, ``per_class`` per class; patient numbers restart in every class, as ids of different
    source sets can coincide) and ``meta_data_{normal,covid,cap}.csv`` (``Patient ID``,
    ``File name``, ``Diagnosis``, ``Country``; Latin-1). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    curated = root / "curated_data" / "curated_data"
    for label, (folder, word, diagnosis) in enumerate(_COVIDCT):
        rows, index, patient = [], 0, 0
        while index < per_class:
            patient += 1
            country = _COVIDCT_COUNTRIES[patient % len(_COVIDCT_COUNTRIES)]
            for slice_number in range(min(int(rng.integers(2, 4)), per_class - index)):
                name = f"P{patient:03d}_{slice_number + 1:03d}.png"
                _save_scan(
                    class_image(rng, label, len(_COVIDCT), color=False),
                    curated / folder / name,
                    index,
                )
                rows.append([f"P{patient:03d}", name, diagnosis, country])
                index += 1
        with open(root / f"meta_data_{word}.csv", "w", newline="", encoding="latin-1") as stream:
            writer = csv.writer(stream)
            writer.writerow(["Patient ID", "File name", "Diagnosis", "Country"])
            writer.writerows(rows)
    _write_junk(root, [curated / folder for folder, _, _ in _COVIDCT])
    return root


# --- 2D releases, rebuilt from a synthetic raw copy ---------------------------------------------


def write_synapse2d(root: str | Path, seed: int = 0, shape: Sequence[int] = (64, 64, 10)) -> Path:
    """A fake TransUNet Synapse release under ``root`` (``train_npz/``, ``test_vol_h5/``,
    ``lists/lists_Synapse/``): ``write_synapse`` into a temporary folder, rebuilt by
    ``SynapseSliceDataModule.prepare_release``. The case ids are the real ones (the split needs
    them); the volumes are ``shape`` (± 2 slices). Returns ``root``."""
    with tempfile.TemporaryDirectory(prefix="synapse-raw-") as raw:
        write_synapse(raw, seed=seed, shape=shape)
        synapse.SynapseSliceDataModule.prepare_release(Path(raw), Path(root))
    return Path(root)


def write_acdc2d(root: str | Path, seed: int = 0, shape: Sequence[int] = (64, 64, 8)) -> Path:
    """A fake MT-UNet ACDC release under ``root`` (``train/``, ``valid/``, ``test/``,
    ``lists_ACDC/``): patients 001–100 in the original raw ``training/`` layout in a temporary
    folder, rebuilt by ``ACDCSliceDataModule.prepare_release``. Returns ``root``."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="acdc-raw-") as raw:
        for patient in acdc.TRAINING_PATIENTS:
            folder = Path(raw) / "training" / acdc.patient_name(patient)
            _write_acdc_patient(rng, folder, patient, shape, labelled=True)
        acdc.ACDCSliceDataModule.prepare_release(Path(raw), Path(root))
    return Path(root)


WRITERS: dict[str, Callable[..., Path]] = {
    "synapse": write_synapse,
    "acdc": write_acdc,
    "synapse2d": write_synapse2d,
    "acdc2d": write_acdc2d,
    "sarscov2": write_sarscov2,
    "msld": write_msld,
    "covidct": write_covidct,
}


def write_dataset(
    name: str,
    root: str | Path,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    **options: object,
) -> Path:
    """A synthetic copy of dataset ``name`` under ``root`` (``shape`` = voxels per case of a 3D
    set, the writer's default when ``None``; ``options`` go to the writer, e.g. ``per_class``
    and ``version`` of the image sets); returns the folder to use as ``data.root``."""
    if name not in WRITERS:
        raise KeyError(f"no synthetic writer for {name!r}; available: {', '.join(sorted(WRITERS))}")
    if shape is not None:
        options["shape"] = tuple(shape)
    return WRITERS[name](root, seed=seed, **options)
