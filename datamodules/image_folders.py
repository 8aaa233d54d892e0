"""Class-per-folder image classification: SARS-COV2-CT-Scan, MSLD v1/v2.0, Large COVID-19 CT.

The three classification datasets are folders of images, one folder per class, as downloaded
from Kaggle. One mechanism reads them all; each dataset is a thin subclass that names its class
folders, its class order and its split rule:

1. Discovery: the class folders are found at ``data.root`` or up to ``SEARCH_DEPTH`` levels below
   it (Kaggle archives nest ``X/X/``), by their names compared without case, spaces, underscores
   and hyphens (``folder_key``): "Monkey Pox" == "Monkeypox" == "monkey_pox". Junk (``.DS_Store``,
   ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files, ``__MACOSX/``, hidden files) and
   files that are not images (``.csv``, ``.txt``) are ignored.
2. Validation: every image is decoded once with ``read_image``; every unreadable one is listed in
   one ``DataError``. Success is recorded in ``<cache_dir>/validated-<key>.json``, keyed by the
   image list with sizes and modification times, so an unchanged dataset is not read again.
3. Split: the release's own folds (MSLD), else a seeded stratified split (scikit-learn), by
   patient where the metadata says which patient each image shows (Large COVID-19 CT).
4. Loading: ``read_image`` gives uint8 RGB whatever the file's mode; albumentations resizes,
   augments (training) and normalises with the ImageNet statistics. ``eval_transform`` and
   ``prepare_image`` reproduce evaluation from ``preprocessing`` alone (``mednext predict``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, ClassVar

import cv2
import lightning as L
import numpy as np
import torch
from PIL import Image, ImageOps
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split
from torch.utils.data import DataLoader, Dataset

from datamodules.base import (
    DataError,
    common_config_problems,
    dataset_cache_dir,
    dataset_folder,
    dataset_root,
    evaluation_sampler,
    loader_options,
    loader_seed,
    write_folder_once,
    write_json,
)
from datamodules.volumes import problem_report

log = logging.getLogger(__name__)

#: File name extensions read as images, compared in lower case.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Files that operating systems and archivers leave in folders (compared in lower case).
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "__macosx"})
#: How many levels below ``data.root`` the download itself may start (``X/X/`` of Kaggle, a
#: version folder, ...); each dataset adds how deep its class folders lie inside the download.
SEARCH_DEPTH = 3
#: Version of what a validation record means; a new value re-reads every image once.
VALIDATION_FORMAT = 1

#: albumentations ``Normalize`` defaults: the ImageNet channel statistics (see docs/datasets.md).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Training augmentation. ``RandomResizedCrop`` keeps at least 70 % of the image (its 8 % default
#: is meant for ImageNet objects and would often crop a lesion away); rotation up to ±15°.
CROP_SCALE = (0.7, 1.0)
ROTATION_DEGREES = 15
P_ROTATION = 0.5
#: Colour jitter of skin photographs (camera and lighting differ); hue only slightly, since the
#: colour of a lesion is part of its diagnosis.
COLOR_JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)
P_COLOR_JITTER = 0.5

PARTS = ("train", "val", "test")
#: Folder names of a release's own train/val/test parts (``folder_key``) -> part.
PART_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# --- reading images ---------------------------------------------------------------------------


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
    except _READ_ERRORS as error:
        raise DataError(f"{type(error).__name__}: {error}") from error
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"empty image {image.shape[:2]}")
    return image


def image_problem(path: Path) -> str | None:
    """Why ``read_image(path)`` fails (the error's type and message), or ``None``."""
    try:
        read_checked_image(path)
    except DataError as error:
        return str(error)
    return None


# --- transforms -------------------------------------------------------------------------------


def _albumentations() -> ModuleType:
    """albumentations, imported without its PyPI update check (the suite runs offline; the check
    blocks up to 2 s and warns on every import)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], **_: Any) -> Any:
    """Evaluation preprocessing: resize to ``image_size``², normalise, to a float32 ``(3, S, S)``
    tensor. An albumentations ``Compose``: ``eval_transform(**preprocessing)(image=rgb)["image"]``
    (the other keys of a DataModule's ``preprocessing`` are ignored)."""
    A = _albumentations()
    return A.Compose(
        [A.Resize(image_size, image_size), A.Normalize(mean=mean, std=std), A.ToTensorV2()]
    )


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], photographs: bool
) -> Any:
    """Training augmentation: rotation (±``ROTATION_DEGREES``), a random resized crop to
    ``image_size``² (``CROP_SCALE``), horizontal flip, colour jitter for ``photographs``, then
    the normalisation of ``eval_transform``. Rotation fills with black for scans (their
    background) and mirrors the edge for photographs (no black corners unseen in evaluation)."""
    A = _albumentations()
    border = cv2.BORDER_REFLECT_101 if photographs else cv2.BORDER_CONSTANT
    transforms = [
        A.Rotate(limit=ROTATION_DEGREES, border_mode=border, p=P_ROTATION),
        A.RandomResizedCrop(size=(image_size, image_size), scale=CROP_SCALE),
        A.HorizontalFlip(p=0.5),
    ]
    if photographs:
        transforms.append(A.ColorJitter(**COLOR_JITTER, p=P_COLOR_JITTER))
    transforms += [A.Normalize(mean=mean, std=std), A.ToTensorV2()]
    return A.Compose(transforms)


def prepare_image(path: str | Path, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """The image at ``path`` exactly as the test loader gives it: float32 ``(3, S, S)``.
    ``preprocessing`` is a DataModule's ``preprocessing`` (saved in checkpoints)."""
    return eval_transform(**preprocessing)(image=read_image(path))["image"]


# --- finding images ---------------------------------------------------------------------------


def folder_key(name: str) -> str:
    """``name`` in lower case without anything but letters and digits: how folder names and
    metadata columns are compared ("Monkey Pox", "monkey_pox", "Monkey-Pox" -> "monkeypox")."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


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


def match_class_folders(folder: Path, spellings: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """The subfolders of ``folder`` holding each class of ``spellings`` (class -> accepted
    ``folder_key`` names); empty unless every class has one. Two subfolders of one class
    (``Monkeypox`` and ``monkey_pox``) are an error."""
    found: dict[str, list[Path]] = {}
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or is_junk(child.name):
            continue
        key = folder_key(child.name)
        for name, keys in spellings.items():
            if key in keys:
                found.setdefault(name, []).append(child)
    if set(found) != set(spellings):
        return {}
    doubled = {name: paths for name, paths in found.items() if len(paths) > 1}
    if doubled:
        shown = "; ".join(" and ".join(map(str, paths)) for paths in doubled.values())
        raise DataError(f"several folders for one class: {shown}; keep one of each")
    return {name: paths[0] for name, paths in found.items()}


@dataclass(frozen=True)
class ImageItem:
    """One image: its path relative to the dataset root (POSIX separators), its label, the
    patient it shows when known, and its part when the release fixes the split."""

    path: str
    label: int
    group: str | None = None
    part: str | None = None


# --- splits -----------------------------------------------------------------------------------


def split_items(
    items: Sequence[ImageItem],
    test_fraction: float,
    val_fraction: float,
    fold: int | None,
    num_folds: int,
    seed: int,
) -> dict[str, list[ImageItem]]:
    """``{"train", "val", "test"}`` items, sorted by path.

    Items that all carry a ``part`` keep it (a release's own split). Otherwise a seeded,
    stratified split: ``test_fraction`` of the items is the test part; then ``fold=None`` holds
    out ``val_fraction`` of the whole for validation, ``fold=k`` takes fold ``k`` of a
    ``num_folds``-fold stratified cross-validation of the rest (the test part stays the same).
    When every item has a ``group`` (patient), no group is in two parts: the test part is one of
    ``round(1 / test_fraction)`` stratified group folds, validation likewise within the rest.
    Items are sorted first, so the result depends only on the items and ``seed``.
    """
    items = sorted(items, key=lambda item: item.path)
    if items and all(item.part for item in items):
        return {part: [item for item in items if item.part == part] for part in PARTS}
    labels = np.array([item.label for item in items])
    grouped = bool(items) and all(item.group is not None for item in items)
    groups = np.array([item.group for item in items]) if grouped else None
    indices = np.arange(len(items))
    try:
        rest, test = _hold_out(indices, labels, groups, test_fraction, seed)
        if fold is None:
            train, val = _hold_out(rest, labels, groups, val_fraction / (1 - test_fraction), seed)
        else:
            splitter = (
                StratifiedGroupKFold(num_folds, shuffle=True, random_state=seed)
                if grouped
                else StratifiedKFold(num_folds, shuffle=True, random_state=seed)
            )
            folds = splitter.split(rest, labels[rest], None if groups is None else groups[rest])
            train_at, val_at = list(folds)[fold]
            train, val = rest[train_at], rest[val_at]
    except ValueError as error:
        raise DataError(f"cannot split {len(items)} images: {error}") from error
    return {
        part: [items[i] for i in sorted(chosen)]
        for part, chosen in (("train", train), ("val", val), ("test", test))
    }


def _hold_out(
    indices: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held out)``: about ``fraction`` of ``indices``, stratified by label, whole
    groups when ``groups`` is given."""
    if groups is None:
        kept, held = train_test_split(
            indices, test_size=fraction, stratify=labels[indices], random_state=seed
        )
        return np.asarray(kept), np.asarray(held)
    splitter = StratifiedGroupKFold(max(2, round(1 / fraction)), shuffle=True, random_state=seed)
    kept_at, held_at = next(splitter.split(indices, labels[indices], groups[indices]))
    return indices[kept_at], indices[held_at]


# --- the DataModule ---------------------------------------------------------------------------


@dataclass
class ImageFolderConfig:
    """Keys of the ``data:`` group shared by the classification datasets.

    Attributes:
        name: registry name of the dataset.
        root: the dataset folder as downloaded (``${MEDNEXT_DATA:-data}/<Dataset>``), or a folder
            holding it up to three levels down.
        source: ``real`` reads ``root``; ``synthetic`` writes a small fake copy of the layout
            into the cache once and reads that through the same code.
        batch_size: images per batch (training, validation and test).
        num_workers: DataLoader worker processes.
        image_size: side of the square network input in pixels.
        fold: ``None`` for the default split; ``k`` (0-based) for fold ``k``: the release's own
            fold ``k+1`` where the download has folds (MSLD), else fold ``k`` of a seeded
            stratified ``num_folds``-fold cross-validation of the non-test images.
        num_folds: folds of the cross-validation.
        split_seed: seed of the split (independent of the training seed, so runs with different
            seeds share their images).
        val_fraction: share of all images held out for validation (``fold=None``).
        test_fraction: share of all images held out for testing.
        augment: random augmentation of training images.
        cache_dir: the dataset's cache folder (validation records, synthetic copies; default
            ``${MEDNEXT_CACHE:-~/.cache/mednext}/<name>``).
        synthetic_seed: seed of the synthetic copy.
        synthetic_per_class: images per class of the synthetic copy.
    """

    name: str = ""
    root: str = ""
    source: str = "real"
    batch_size: int = 32
    num_workers: int = 4
    image_size: int = 224
    fold: int | None = None
    num_folds: int = 5
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    augment: bool = True
    cache_dir: str | None = None
    synthetic_seed: int = 0
    synthetic_per_class: int = 12


class ImageFolderDataModule(L.LightningDataModule):
    """A classification dataset of class folders: discovery, validation, split, loaders.

    Subclasses set the dataset constants (``title``, ``CLASS_NAMES``, ``FOLDERS``,
    ``layout_depth``, ``photographs``, ``DOWNLOAD``, ``LAYOUT``) and may extend ``find_items``.
    Attributes available right after construction: ``config``, ``seed``, ``in_channels`` (3),
    ``num_classes``, ``class_names``, ``image_size``, ``preprocessing``. After ``setup``:
    ``split`` (``train``/``val``/``test`` lists of ``{"path", "label"}``, paths relative to
    ``root``). Batches: ``image`` float32 ``(B, 3, S, S)``, ``label`` int64 ``(B,)``, ``path``
    list of str.
    """

    Config: ClassVar[type[ImageFolderConfig]] = ImageFolderConfig
    task: ClassVar[str] = "classification"
    #: Human-readable dataset name for messages.
    title: ClassVar[str]
    in_channels: ClassVar[int] = 3
    #: Class names in label order.
    CLASS_NAMES: ClassVar[tuple[str, ...]]
    #: The class folders of the download: folder class -> accepted names (``folder_key``).
    FOLDERS: ClassVar[Mapping[str, tuple[str, ...]]]
    #: How many levels below the download's top folder the class folders lie.
    layout_depth: ClassVar[int] = 0
    #: Camera photographs (colour jitter, mirrored borders) rather than scans.
    photographs: ClassVar[bool] = False
    DOWNLOAD: ClassVar[str]
    LAYOUT: ClassVar[str]
    #: Example experiment for the dry-run hint of the missing-dataset message.
    EXAMPLE_EXPERIMENT: ClassVar[str]

    def __init__(self, config: ImageFolderConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.seed = seed
        problems = self.config_problems()
        if problems:
            raise DataError(problem_report(f"data config of {self.config.name!r}", problems))
        self.class_names = list(self.CLASS_NAMES)
        self.image_size = int(self.config.image_size)
        self.split: dict[str, list[dict[str, Any]]] = {}
        self._items: list[ImageItem] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- dataset specific --

    def config_problems(self) -> list[str]:
        """Every invalid value of the config (subclasses add theirs)."""
        config, problems = self.config, []
        problems += common_config_problems(config)
        if config.image_size < 1:
            problems.append(
                f"image_size must be a positive number of pixels, not {config.image_size}"
            )
        if not (0 < config.test_fraction < 1 and 0 < config.val_fraction < 1):
            problems.append(
                f"test_fraction and val_fraction must be between 0 and 1, not "
                f"{config.test_fraction} and {config.val_fraction}"
            )
        elif config.test_fraction + config.val_fraction >= 1:
            problems.append("test_fraction + val_fraction must leave images for training")
        if config.synthetic_per_class < 10:
            problems.append(
                f"synthetic_per_class must be at least 10 (a stratified 80/10/10 split and 5 "
                f"folds need them), not {config.synthetic_per_class}"
            )
        return problems

    def label_of(self, folder_class: str) -> int:
        """The label of the images in the class folder ``folder_class`` (a key of ``FOLDERS``)."""
        return self.class_names.index(folder_class)

    def find_items(self, root: Path) -> tuple[list[ImageItem], list[str]]:
        """The images under ``root`` with their labels, and the problems finding them (an empty
        class folder). Raises ``DataError`` when the dataset is not there."""
        _, folders = self.find_class_root(root)
        return self.items_in(root, folders)

    def synthetic_options(self) -> dict[str, Any]:
        """Extra keyword arguments of this dataset's synthetic writer."""
        return {}

    def split_details(self) -> dict[str, Any]:
        """Dataset-specific facts recorded in ``split.json`` besides the split."""
        return {}

    # -- discovery helpers --

    def find_class_root(self, root: Path) -> tuple[Path, dict[str, Path]]:
        """The one folder at or below ``root`` holding every class folder of ``FOLDERS``, and
        those folders."""
        candidates = self.class_roots(root, self.FOLDERS)
        if not candidates:
            raise self.missing(root)
        if len(candidates) > 1:
            shown = ", ".join(str(folder) for folder, _ in candidates)
            raise DataError(
                f"{self.title}: several copies of the class folders under {root}: {shown}; "
                "point data.root at one of them"
            )
        return candidates[0]

    def class_roots(
        self, root: Path, spellings: Mapping[str, Sequence[str]]
    ) -> list[tuple[Path, dict[str, Path]]]:
        """Every folder down to ``SEARCH_DEPTH + layout_depth`` levels below ``root`` that holds
        all the class folders of ``spellings``, with those folders."""
        if not root.is_dir():
            return []
        found = []
        for folder in subfolders(root, SEARCH_DEPTH + self.layout_depth):
            folders = match_class_folders(folder, spellings)
            if folders:
                found.append((folder, folders))
        return found

    def items_in(
        self, root: Path, folders: Mapping[str, Path], part: str | None = None
    ) -> tuple[list[ImageItem], list[str]]:
        """The images of each class folder as items (paths relative to ``root``), and an
        empty folder as a problem."""
        items, problems = [], []
        for folder_class, folder in folders.items():
            images = list_images(folder)
            if not images:
                problems.append(f"no images in {folder}")
            label = self.label_of(folder_class)
            items += [ImageItem(relative(path, root), label, part=part) for path in images]
        return items, problems

    def missing(self, root: Path) -> DataError:
        """The missing-dataset error: where it looked, the layout, the download, the dry run."""
        depth = SEARCH_DEPTH + self.layout_depth
        where = f"{root}" if not root.is_dir() else f"{root} and up to {depth} levels below it"
        return DataError(
            f"{self.title} not found: no class folders at {where}"
            f"{' (the folder does not exist)' if not root.exists() else ''}.\n"
            f"Expected layout (as downloaded; <root> may also hold it up to {SEARCH_DEPTH} levels "
            f"down):\n{self.LAYOUT}\n"
            f"Download: {self.DOWNLOAD}, unzip, and set data.root (or $MEDNEXT_DATA).\n"
            "Dry run without it: data.source=synthetic "
            f"(e.g. `mednext train {self.EXAMPLE_EXPERIMENT} data.source=synthetic`)."
        )

    # -- locations --

    @property
    def cache_dir(self) -> Path:
        return dataset_cache_dir(self.config)

    @property
    def root(self) -> Path:
        """The dataset read: ``config.root``, or the synthetic copy in the cache."""
        name = f"seed{self.config.synthetic_seed}-{self.config.synthetic_per_class}"
        suffix = "".join(f"-{value}" for value in self.synthetic_options().values())
        return dataset_folder(self.config, f"{name}{suffix}")

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Everything inference needs (JSON-serialisable): ``image_size``, ``mean``, ``std``,
        ``class_names``; ``prepare_image(path, dm.preprocessing)`` gives what the test loader
        gives."""
        return dict(
            image_size=self.image_size,
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
            class_names=list(self.class_names),
        )

    # -- Lightning hooks --

    def prepare_data(self) -> None:
        """Write the synthetic copy (``source=synthetic``, once), then find and validate the
        dataset (every image read once; unchanged datasets are not read again)."""
        if self.config.source == "synthetic":
            self._write_synthetic()
        self._checked_items()

    def setup(self, stage: str | None = None) -> None:
        """Find and validate the images (the validation record makes this cheap after
        ``prepare_data``) and make the split, once; later stages reuse it."""
        if self.split:
            return
        self._items = self._checked_items()
        parts = split_items(
            self._items,
            test_fraction=self.config.test_fraction,
            val_fraction=self.config.val_fraction,
            fold=self.config.fold,
            num_folds=self.config.num_folds,
            seed=self.config.split_seed,
        )
        self.split = {
            part: [dict(path=item.path, label=item.label) for item in parts[part]] for part in PARTS
        }

    def write_split(self, path: Path) -> None:
        """The split as JSON, with what reproduces it and the images per class of each part."""
        if not self.split:
            raise RuntimeError(f"{self.title}: call setup() before write_split()")
        counts = {
            part: {
                name: sum(1 for item in items if item["label"] == label)
                for label, name in enumerate(self.class_names)
            }
            for part, items in self.split.items()
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
                split_rule=split_rule(self._items),
                **self.split_details(),
                class_names=list(self.class_names),
                counts=counts,
                split=self.split,
            ),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented (``augment``) training images; the last incomplete batch is
        dropped when there is more than one batch."""
        items = self.split["train"]
        if self.config.augment:
            transform = train_transform(
                self.image_size, IMAGENET_MEAN, IMAGENET_STD, photographs=self.photographs
            )
        else:
            transform = eval_transform(**self.preprocessing)
        dataset = ImageFolderDataset(self.root, items, transform)
        seed = loader_seed(self.seed, self._rank())
        dataset.set_random_state(seed)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=True,
            drop_last=len(items) > self.config.batch_size,
            **loader_options(seed, self.config.num_workers),
        )

    def val_dataloader(self) -> DataLoader:
        """Validation images in split order, evaluation preprocessing."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test images in split order, evaluation preprocessing."""
        return self._eval_loader("test")

    # -- internals --

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_rank if trainer is not None else 0

    def _eval_loader(self, part: str) -> DataLoader:
        dataset = ImageFolderDataset(
            self.root, self.split[part], eval_transform(**self.preprocessing)
        )
        sampler = evaluation_sampler(dataset, getattr(self, "trainer", None))
        options = loader_options(loader_seed(self.seed, self._rank()), self.config.num_workers)
        return DataLoader(
            dataset, batch_size=self.config.batch_size, shuffle=False, sampler=sampler, **options
        )

    def _checked_items(self) -> list[ImageItem]:
        """``find_items`` of the root, every image read unless an identical image list was
        validated before; all problems in one ``DataError``."""
        root = self.root
        items, problems = self.find_items(root)
        record = self.cache_dir / f"validated-{validation_key(root, items)}.json"
        if not problems and record.is_file():
            return items
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task(f"{self.title}: checking images", total=len(items))
            for item in items:
                problem = image_problem(root / item.path)
                if problem is not None:
                    problems.append(f"{item.path}: {problem}")
                progress.advance(task)
        if problems:
            raise DataError(problem_report(f"{self.title} at {root}", problems))
        write_json(
            record,
            dict(
                format=VALIDATION_FORMAT,
                dataset=self.config.name,
                root=str(root.resolve()),
                images=len(items),
            ),
        )
        return items

    def _write_synthetic(self) -> None:
        """The synthetic copy, written once: into a temporary folder renamed into place."""
        from datamodules.synthetic import write_dataset  # synthetic imports the dataset modules

        write_folder_once(
            self.root,
            lambda folder: write_dataset(
                self.config.name,
                folder,
                seed=self.config.synthetic_seed,
                per_class=self.config.synthetic_per_class,
                **self.synthetic_options(),
            ),
        )


class ImageFolderDataset(Dataset):
    """Images of one part: ``image`` (``transform`` of the uint8 RGB image), ``label`` int,
    ``path`` (relative to ``root``)."""

    def __init__(self, root: Path, items: Sequence[Mapping[str, Any]], transform: Any) -> None:
        self.root = Path(root)
        self.items = list(items)
        self.transform = transform

    def set_random_state(self, seed: int) -> None:
        """Reseed the augmentation (MONAI's ``worker_init_fn`` calls this per worker)."""
        self.transform.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = self.transform(image=read_image(self.root / item["path"]))["image"]
        return dict(image=image, label=item["label"], path=item["path"])


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with POSIX separators (how split files name images)."""
    return path.relative_to(root).as_posix()


def validation_key(root: Path, items: Sequence[ImageItem]) -> str:
    """A short hash of the image list: absolute root, and per image path, size and mtime."""
    records = []
    for item in items:
        stat = (root / item.path).stat()
        records.append([item.path, stat.st_size, stat.st_mtime_ns])
    text = json.dumps(dict(format=VALIDATION_FORMAT, root=str(root.resolve()), images=records))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_rule(items: Sequence[ImageItem]) -> str:
    """How ``split_items`` splits these items, in words (recorded in ``split.json``)."""
    if items and all(item.part for item in items):
        return "release folders"
    if items and all(item.group is not None for item in items):
        return "stratified by patient"
    return "stratified by image"


# --- SARS-COV2-CT-Scan ------------------------------------------------------------------------


#: The class folders of the download and their accepted names (``folder_key``).
SARSCOV2_FOLDERS = {"non-COVID": ("noncovid",), "COVID": ("covid",)}


class SarsCov2DataModule(ImageFolderDataModule):
    """SARS-COV2-CT-Scan (Soares et al. 2020): 1,252 COVID and 1,230 non-COVID CT slices from
    São Paulo, PNG of varying size, no patient ids: a stratified seeded 80/10/10 split by image
    (or ``fold=k``)."""

    @dataclass
    class Config(ImageFolderConfig):
        """The ``data:`` keys for ``name: sarscov2`` (see ``ImageFolderConfig``)."""

        name: str = "sarscov2"
        root: str = field(default_factory=lambda: dataset_root("SARS-COV2-CT-Scan"))

    title = "SARS-COV2-CT-Scan"
    #: Negative first, so that label 1 is the finding (binary metrics' positive class).
    CLASS_NAMES = ("non-COVID", "COVID")
    FOLDERS = SARSCOV2_FOLDERS
    DOWNLOAD = "https://www.kaggle.com/datasets/plameneduardo/sarscov2-ctscan-dataset"
    LAYOUT = """\
  <root>/COVID/Covid (1).png ... Covid (1252).png
  <root>/non-COVID/Non-Covid (1).png ... Non-Covid (1230).png"""
    EXAMPLE_EXPERIMENT = "sarscov2_mednext_lite_t"


# --- Monkeypox Skin Lesion Dataset ------------------------------------------------------------


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
        return dict(version=self.version)

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


# --- Large COVID-19 CT slice dataset ----------------------------------------------------------


#: The class folders of the download, in their numbered order.
COVIDCT_FOLDERS = {
    "NonCOVID": ("1noncovid", "noncovid"),
    "COVID": ("2covid", "covid"),
    "CAP": ("3cap", "cap"),
}
#: Metadata files by the class folder they describe: a ``folder_key`` of the file name that
#: contains the word (``meta_data_normal.csv``, ``meta_data_covid.csv``, ``meta_data_cap.csv``);
#: checked in this order, because "noncovid" contains "covid".
COVIDCT_METADATA_WORDS = (
    ("cap", "CAP"),
    ("normal", "NonCOVID"),
    ("noncovid", "NonCOVID"),
    ("covid", "COVID"),
)


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a CSV file in UTF-8 (with or without BOM), else Latin-1 (the
    metadata of the Large COVID-19 CT dataset is not all UTF-8)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def patients_by_file(path: Path) -> tuple[dict[str, str], str | None]:
    """``{file name or stem in lower case: patient id}`` from a metadata CSV, and why it could
    not be read. Columns are found by name: one containing "patient" (``Patient ID``) and one
    containing "file", else "name" (``File name``); a file listed for two patients is left out."""
    columns, rows = read_csv_rows(path)
    patient = next((c for c in columns if "patient" in folder_key(c)), None)
    file = next((c for c in columns if "file" in folder_key(c) and c != patient), None) or next(
        (c for c in columns if "name" in folder_key(c) and c != patient), None
    )
    if patient is None or file is None:
        return {}, f"{path.name} has no patient and file-name columns (columns: {columns})"
    mapping: dict[str, str] = {}
    conflicting: set[str] = set()
    for row in rows:
        name, who = (row.get(file) or "").strip(), (row.get(patient) or "").strip()
        if not name or not who:
            continue
        base = PurePosixPath(name.replace("\\", "/")).name.lower()
        for key in {base, PurePosixPath(base).stem}:
            if mapping.setdefault(key, who) != who:
                conflicting.add(key)
    return {k: v for k, v in mapping.items() if k not in conflicting}, None


class CovidCTDataModule(ImageFolderDataModule):
    """Large COVID-19 CT scan slice dataset (Maftouni et al. 2021): 7,593 COVID, 6,893 normal
    and 2,618 community-acquired pneumonia (CAP) slices, curated from seven public sets.

    ``classes: three`` (NonCOVID, COVID, CAP) or ``binary`` (NonCOVID, COVID; CAP counts as
    non-COVID). With ``patient_split`` the split keeps every patient in one part when the
    metadata CSVs name the patient of every image; otherwise, or without ``patient_split``, the
    split is by image (a logged notice says so, since slices of one patient are then in several
    parts). Patients are told apart per class folder, since the source sets reuse ids.
    """

    @dataclass
    class Config(ImageFolderConfig):
        """The ``data:`` keys for ``name: covidct`` (see ``ImageFolderConfig``).

        Attributes:
            classes: ``three`` (NonCOVID, COVID, CAP) or ``binary`` (CAP counts as NonCOVID).
            patient_split: keep each patient's slices in one part when the metadata allows.
        """

        name: str = "covidct"
        root: str = field(default_factory=lambda: dataset_root("Large-COVID19-CT-Slices"))
        classes: str = "three"
        patient_split: bool = True

    title = "Large COVID-19 CT slice dataset"
    #: The class folders' numbered order: 1NonCOVID, 2COVID, 3CAP.
    CLASS_NAMES = ("NonCOVID", "COVID", "CAP")
    FOLDERS = COVIDCT_FOLDERS
    #: ``curated_data/curated_data/<class>``: two levels inside the download.
    layout_depth = 2
    DOWNLOAD = "https://www.kaggle.com/datasets/maedemaftouni/large-covid19-ct-slice-dataset"
    LAYOUT = """\
  <root>/curated_data/curated_data/1NonCOVID/*.png   (6,893)
  <root>/curated_data/curated_data/2COVID/*.png      (7,593)
  <root>/curated_data/curated_data/3CAP/*.png        (2,618)
  <root>/meta_data_normal.csv, meta_data_covid.csv, meta_data_cap.csv   (Patient ID, File name)"""
    EXAMPLE_EXPERIMENT = "covidct_mednext_lite_s"

    def __init__(self, config: Config | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        if self.config.classes == "binary":
            self.class_names = ["NonCOVID", "COVID"]

    def config_problems(self) -> list[str]:
        problems = super().config_problems()
        if self.config.classes not in ("three", "binary"):
            problems.append(f"classes must be three or binary, not {self.config.classes!r}")
        return problems

    def label_of(self, folder_class: str) -> int:
        if self.config.classes == "binary" and folder_class == "CAP":
            return self.class_names.index("NonCOVID")
        return super().label_of(folder_class)

    def split_details(self) -> dict[str, Any]:
        return dict(classes=self.config.classes, patient_split=self.config.patient_split)

    def find_items(self, root: Path) -> tuple[list[ImageItem], list[str]]:
        class_root, folders = self.find_class_root(root)
        items, problems = self.items_in(root, folders)
        if not self.config.patient_split:
            return items, problems
        patients, notes = self.patients(root, class_root)
        folder_classes = {relative(folder, root): c for c, folder in folders.items()}
        grouped = []
        for item in items:
            path = PurePosixPath(item.path)
            folder_class = folder_classes[path.parent.as_posix()]
            known = patients.get(folder_class, {})
            patient = known.get(path.name.lower()) or known.get(path.stem.lower())
            grouped.append((item, folder_class, patient))
        missing = [item.path for item, _, patient in grouped if patient is None]
        if missing:
            log.warning(
                "%s: %d of %d images have no patient in the metadata%s (e.g. %s); splitting by "
                "image, so slices of one patient may be in several parts",
                self.title,
                len(missing),
                len(items),
                f" ({'; '.join(notes)})" if notes else "",
                ", ".join(missing[:3]),
            )
            return items, problems
        return [
            ImageItem(item.path, item.label, group=f"{folder_class}/{patient}")
            for item, folder_class, patient in grouped
        ], problems

    def patients(self, root: Path, class_root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
        """Per class folder, ``{file name or stem: patient id}`` from the metadata CSVs found in
        the class folders' parent or any folder above it up to ``root`` (the nearest wins), and
        notes on what could not be used."""
        found: dict[str, dict[str, str]] = {}
        notes: list[str] = []
        folder = class_root
        while True:
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() != ".csv" or is_junk(path.name) or not path.is_file():
                    continue
                key = folder_key(path.stem)
                folder_class = next((c for word, c in COVIDCT_METADATA_WORDS if word in key), None)
                if folder_class is None or folder_class in found:
                    continue
                mapping, problem = patients_by_file(path)
                if problem:
                    notes.append(problem)
                else:
                    found[folder_class] = mapping
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
        notes += [f"no metadata CSV for {c}" for c in self.FOLDERS if c not in found]
        return found, notes
