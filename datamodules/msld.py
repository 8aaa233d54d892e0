"""Monkeypox Skin Lesion Dataset: v1 (Ali et al. 2022, Kaggle nafin59/monkeypox-skin-lesion-dataset)
and v2.0 (six classes, five release folds), read by the class-folder mechanism."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import synthetic
from datamodules.base import PARTS, dataset_root
from datamodules.errors import DataError, problem_report
from datamodules.image_folders import (
    PART_FOLDERS,
    ImageFolderConfig,
    ImageFolderDataModule,
    ImageItem,
    folder_key,
)


@dataclass(frozen=True)
class MSLDVersion:
    """One release of MSLD: class names in label order and their folder spellings."""

    class_names: tuple[str, ...]
    folders: Mapping[str, tuple[str, ...]]
    description: str


MSLD_VERSIONS: dict[str, MSLDVersion] = {
    # Negative first, so that label 1 is Monkeypox (binary metrics' positive class).
    "v1": MSLDVersion(
        class_names=("Others", "Monkeypox"),
        folders={"Others": ("others", "other"), "Monkeypox": ("monkeypox", "mpox")},
        description="v1 (Monkeypox / Others)",
    ),
    # Alphabetical: the order of the release's sorted folder names, as torchvision's ImageFolder
    # and Keras number them in the papers on v2.0.
    "v2": MSLDVersion(
        class_names=("Chickenpox", "Cowpox", "HFMD", "Healthy", "Measles", "Mpox"),
        folders={
            "Chickenpox": ("chickenpox",),
            "Cowpox": ("cowpox",),
            "HFMD": ("hfmd", "handfootandmouthdisease"),
            "Healthy": ("healthy", "normal"),
            "Measles": ("measles",),
            "Mpox": ("mpox", "monkeypox"),
        },
        description="v2.0 (six classes)",
    ),
}
#: The version ``version: auto`` takes when the layout cannot be inspected at construction
#: (the dataset is not there yet, or ``source=synthetic``): the one most papers use.
MSLD_DEFAULT_VERSION = "v1"


def fold_number(name: str) -> int | None:
    """``3`` for a folder named ``fold3``/``Fold3`` (not ``fold3_AUG``), else ``None``."""
    match = re.fullmatch(r"fold(\d+)", folder_key(name))
    return int(match.group(1)) if match else None


def is_augmented(name: str) -> bool:
    """Folders of the release's pre-augmented copies: ``Augmented Images``, ``FOLDS_AUG``,
    ``fold1_AUG``."""
    key = folder_key(name)
    return "augment" in key or key.endswith("aug")


class MSLDDataModule(ImageFolderDataModule):
    """Monkeypox Skin Lesion Dataset: v1 (Ali et al. 2022; 102 Monkeypox and 126 Others
    photographs) or v2.0 (six classes, five release folds).

    ``version: auto`` reads the layout at construction (``class_names`` depend on it): v2.0 when
    the class folders are the six of v2.0, v1 when they are Monkeypox and Others; when the root
    cannot be inspected (not there yet, or ``source=synthetic``) it is v1, and ``prepare_data``
    stops with a clear error if the root turns out to hold v2.0.

    Split: the release's own fold (v1 ``Fold1/Fold1/Fold1/{Train,Val,Test}``, whose test holds
    only original images; v2.0 ``FOLDS/fold1..5/{Train,Valid,Test}``): ``fold=None`` is fold 1,
    ``fold=k`` is fold ``k+1``. A download without folds (v1 originals only) gets a stratified
    seeded split of the original images. The pre-augmented copies (``Augmented Images``) are
    never read: this suite augments on the fly, and augmented copies of test images in training
    would leak.
    """

    @dataclass
    class Config(ImageFolderConfig):
        """The ``data:`` keys for ``name: msld`` (see ``ImageFolderConfig``).

        Attributes:
            version: ``auto`` (from the layout), ``v1`` or ``v2``.
        """

        name: str = "msld"
        root: str = field(default_factory=lambda: dataset_root("Monkeypox-Skin-Lesion"))
        version: str = "auto"

    title = "Monkeypox Skin Lesion Dataset"
    CLASS_NAMES = MSLD_VERSIONS[MSLD_DEFAULT_VERSION].class_names
    FOLDERS = MSLD_VERSIONS[MSLD_DEFAULT_VERSION].folders
    #: ``Fold1/Fold1/Fold1/Train/<class>``: four levels inside the download.
    layout_depth = 4
    photographs = True
    DOWNLOAD = (
        "https://www.kaggle.com/datasets/nafin59/monkeypox-skin-lesion-dataset (v1); "
        "MSLD v2.0: https://www.kaggle.com/datasets/joydippaul/mpox-skin-lesion-dataset-version-20-msld-v20"
    )
    LAYOUT = """\
  v1:   <root>/Original Images/Original Images/{Monkey Pox,Others}/*.jpg
        <root>/Fold1/Fold1/Fold1/{Train,Val,Test}/{Monkeypox,Others}/*.jpg   (optional)
        <root>/Augmented Images/...                                          (not read)
  v2.0: <root>/Original Images/Original Images/FOLDS/fold1..fold5/{Train,Valid,Test}/
            {Chickenpox,Cowpox,HFMD,Healthy,Measles,Mpox}/*.jpg"""
    EXAMPLE_EXPERIMENT = "msld_mednext_lite_s"

    def __init__(self, config: Config | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.version = self._construction_version()
        self.class_names = list(MSLD_VERSIONS[self.version].class_names)

    def config_problems(self) -> list[str]:
        problems = super().config_problems()
        if self.config.version not in ("auto", *MSLD_VERSIONS):
            problems.append(f"version must be auto, v1 or v2, not {self.config.version!r}")
        return problems

    def _construction_version(self) -> str:
        if self.config.version != "auto":
            return self.config.version
        if self.config.source == "synthetic":
            return MSLD_DEFAULT_VERSION
        found = self.detect_versions(Path(self.config.root).expanduser())
        if len(found) > 1:
            raise DataError(
                f"{self.title}: {self.config.root} holds both the v1 and the v2.0 layout; "
                "set data.version=v1 or data.version=v2 (or point data.root at one of them)"
            )
        return found[0] if found else MSLD_DEFAULT_VERSION

    def detect_versions(self, root: Path) -> list[str]:
        """The MSLD versions whose class folders lie under ``root``."""
        return [v for v, spec in MSLD_VERSIONS.items() if self.class_roots(root, spec.folders)]

    def synthetic_options(self) -> dict[str, Any]:
        return {**super().synthetic_options(), "version": self.version}

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_msld(root, seed=seed, **options)

    def split_details(self) -> dict[str, Any]:
        return dict(version=self.version)

    def find_items(self, root: Path) -> tuple[list[ImageItem], list[str]]:
        spec = MSLD_VERSIONS[self.version]
        candidates = [
            (folder, folders)
            for folder, folders in self.class_roots(root, spec.folders)
            if not any(is_augmented(part) for part in folder.relative_to(root).parts)
        ]
        if not candidates:
            other = [v for v in self.detect_versions(root) if v != self.version]
            if other:
                raise DataError(
                    f"{self.title}: {root} holds the {MSLD_VERSIONS[other[0]].description} "
                    f"layout, but this DataModule reads {spec.description} (data.version="
                    f"{self.config.version}); set data.version={other[0]}"
                )
            raise self.missing(root)
        folds: dict[int, dict[str, list[tuple[Path, dict[str, Path]]]]] = {}
        originals = []
        for folder, folders in candidates:
            part = PART_FOLDERS.get(folder_key(folder.name))
            number = fold_number(folder.parent.name) if part else None
            if number is None:
                originals.append((folder, folders))
            else:
                folds.setdefault(number, {}).setdefault(part, []).append((folder, folders))
        if folds:
            return self._fold_items(root, folds)
        if len(originals) > 1:
            shown = ", ".join(str(folder) for folder, _ in originals)
            raise DataError(
                f"{self.title}: several copies of the original images under {root}: {shown}; "
                "point data.root at one of them"
            )
        return self.items_in(root, originals[0][1])

    def _fold_items(
        self, root: Path, folds: Mapping[int, Mapping[str, Sequence[tuple[Path, dict[str, Path]]]]]
    ) -> tuple[list[ImageItem], list[str]]:
        number = 1 if self.config.fold is None else self.config.fold + 1
        if number not in folds:
            available = ", ".join(f"fold{n} (data.fold={n - 1})" for n in sorted(folds))
            raise DataError(
                f"{self.title}: data.fold={self.config.fold} asks for the release's fold{number}, "
                f"but {root} has {available}"
            )
        parts = folds[number]
        problems = [f"fold{number} has no {part} folder" for part in PARTS if part not in parts] + [
            f"fold{number} has several {part} folders: "
            + ", ".join(str(folder) for folder, _ in found)
            for part, found in parts.items()
            if len(found) > 1
        ]
        if problems:
            raise DataError(problem_report(f"{self.title} at {root}", problems))
        items: list[ImageItem] = []
        for part in PARTS:
            part_items, part_problems = self.items_in(root, parts[part][0][1], part=part)
            items += part_items
            problems += part_problems
        return items, problems


# --- synthetic copies ---------------------------------------------------------------------------

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
                image = synthetic.class_image(rng, label, len(_MSLD_V1), color=True)
                name = f"{prefix}{index + 1:02d}_01.jpg"
                synthetic.save_photo(image, originals / folder / name, index)
                copy = f"{prefix}{index + 1:02d}_01_aug.jpg"
                mirrored = augmented / f"{fold_folder}_augmented" / copy
                synthetic.save_photo(image[:, ::-1], mirrored, -1)
                if not folds:
                    continue
                part = "Test" if index < test else "Val" if index < test + val else "Train"
                fold = root / "Fold1" / "Fold1" / "Fold1" / part / fold_folder
                synthetic.save_photo(image, fold / name, index)
                if part != "Test":
                    synthetic.save_photo(image[:, ::-1], fold / copy, -1)
            class_folders.append(originals / folder)
        synthetic.write_junk(root, class_folders)
        return root
    base = originals / "FOLDS"
    for label, (folder, prefix) in enumerate(_MSLD_V2):
        for index in range(per_class):
            image = synthetic.class_image(rng, label, len(_MSLD_V2), color=True)
            name = f"{prefix}_{index + 1:02d}_01.jpg"
            for fold in range(1, _MSLD_V2_FOLDS + 1):
                offset = (index - fold + 1) % _MSLD_V2_FOLDS
                part = "Test" if offset == 0 else "Valid" if offset == 1 else "Train"
                synthetic.save_photo(image, base / f"fold{fold}" / part / folder / name, index)
                if fold == 1 and part == "Train":
                    copy = augmented / "FOLDS_AUG" / "fold1_AUG" / "Train" / folder
                    mirrored = copy / name.replace(".jpg", "_aug.jpg")
                    synthetic.save_photo(image[:, ::-1], mirrored, -1)
    synthetic.write_junk(base / "fold1", [base / "fold1" / "Train" / f for f, _ in _MSLD_V2])
    return root
