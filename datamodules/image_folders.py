"""Class-per-folder image classification: the mechanism behind SARS-COV2-CT-Scan, MSLD and the
Large COVID-19 CT slices (each dataset in its own module).

The classification datasets are folders of images, one folder per class, as downloaded from
Kaggle. One mechanism reads them all; each dataset is a subclass that names its class folders,
its class order and its split rule:

1. Discovery: the class folders are found at ``data.root`` or up to ``SEARCH_DEPTH`` levels below
   it (Kaggle archives nest ``X/X/``), by their names compared without case, spaces, underscores
   and hyphens (``folder_key``): "Monkey Pox" == "Monkeypox" == "monkey_pox". Junk (``.DS_Store``,
   ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files, ``__MACOSX/``, hidden files) and
   files that are not images (``.csv``, ``.txt``) are ignored.
2. Validation: every image is decoded once with ``read_image``; every unreadable one is listed in
   one ``DataError``. Success is recorded in the validated-once record, keyed by the image list
   with sizes and modification times, so an unchanged dataset is not read again.
3. Split: the release's own folds (MSLD), else a seeded stratified split (scikit-learn), by
   patient where the metadata says which patient each image shows (Large COVID-19 CT).
4. Loading: ``read_image`` gives uint8 RGB whatever the file's mode; albumentations resizes,
   augments (training) and normalises with the ImageNet statistics. ``eval_transform`` and
   ``prepare_image`` (``datamodules.preprocessing``) reproduce evaluation from ``preprocessing``
   alone (``mednext predict``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split
from torch.utils.data import DataLoader, Dataset

from datamodules.base import (
    PARTS,
    DataConfig,
    SuiteDataModule,
    dataset_not_found,
    size_problems,
)
from datamodules.errors import DataError
from datamodules.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    albumentations,
    eval_transform,
    is_junk,
    list_images,
    read_checked_image,
    read_image,
    subfolders,
)
from mednext.progress import progress_bar

#: How many levels below ``data.root`` the download itself may start (``X/X/`` of Kaggle, a
#: version folder, ...); each dataset adds how deep its class folders lie inside the download.
SEARCH_DEPTH = 3

#: Training augmentation. ``RandomResizedCrop`` keeps at least 70 % of the image (its 8 % default
#: is meant for ImageNet objects and would often crop a lesion away); rotation up to ±15°.
CROP_SCALE = (0.7, 1.0)
ROTATION_DEGREES = 15
P_ROTATION = 0.5
#: Colour jitter of skin photographs (camera and lighting differ); hue only slightly, since the
#: colour of a lesion is part of its diagnosis.
COLOR_JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)
P_COLOR_JITTER = 0.5

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


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], photographs: bool
) -> Any:
    """Training augmentation: rotation (±``ROTATION_DEGREES``), a random resized crop to
    ``image_size``² (``CROP_SCALE``), horizontal flip, colour jitter for ``photographs``, then
    the normalisation of ``eval_transform``. Rotation fills with black for scans (their
    background) and mirrors the edge for photographs (no black corners unseen in evaluation)."""
    A = albumentations()
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


# --- finding images ---------------------------------------------------------------------------


def folder_key(name: str) -> str:
    """``name`` in lower case without anything but letters and digits: how folder names and
    metadata columns are compared ("Monkey Pox", "monkey_pox", "Monkey-Pox" -> "monkeypox")."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


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
class ImageFolderConfig(DataConfig):
    """Keys of the ``data:`` group shared by the classification datasets (the common keys are
    ``DataConfig``'s).

    Attributes:
        root: the dataset folder as downloaded (``${MEDNEXT_DATA:-data}/<Dataset>``), or a folder
            holding it up to three levels down.
        batch_size: images per batch (training, validation and test).
        image_size: side of the square network input in pixels.
        fold: ``None`` for the default split; ``k`` (0-based) for fold ``k``: the release's own
            fold ``k+1`` where the download has folds (MSLD), else fold ``k`` of a seeded
            stratified ``num_folds``-fold cross-validation of the non-test images.
        val_fraction: share of all images held out for validation (``fold=None``).
        test_fraction: share of all images held out for testing.
        synthetic_per_class: images per class of the synthetic copy.
    """

    batch_size: int = 32
    image_size: int = 224
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    synthetic_per_class: int = 12


class ImageFolderDataModule(SuiteDataModule):
    """A classification dataset of class folders: discovery, validation, split, loaders.

    Subclasses set the dataset constants (``title``, ``CLASS_NAMES``, ``FOLDERS``,
    ``layout_depth``, ``photographs``, ``DOWNLOAD``, ``LAYOUT``), may extend ``find_items`` and
    implement ``write_synthetic``. Attributes available right after construction: ``config``,
    ``seed``, ``in_channels`` (3), ``num_classes``, ``class_names``, ``image_size``,
    ``preprocessing``. After ``setup``: ``split`` (``train``/``val``/``test`` lists of
    ``{"path", "label"}``, paths relative to ``root``). Batches: ``image`` float32
    ``(B, 3, S, S)``, ``label`` int64 ``(B,)``, ``path`` list of str.
    """

    Config: ClassVar[type[ImageFolderConfig]] = ImageFolderConfig
    task = "classification"
    evaluation = "classification"
    spatial_dims = 2
    INPUT_SIZE_KEY = "image_size"
    in_channels = 3
    #: The class folders of the download: folder class -> accepted names (``folder_key``).
    FOLDERS: ClassVar[Mapping[str, tuple[str, ...]]]
    #: How many levels below the download's top folder the class folders lie.
    layout_depth: ClassVar[int] = 0
    #: Camera photographs (colour jitter, mirrored borders) rather than scans.
    photographs: ClassVar[bool] = False

    def __init__(self, config: ImageFolderConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.image_size = int(self.config.image_size)
        self.input_size = (self.image_size, self.image_size)
        self._items: list[ImageItem] = []

    # -- dataset specific --

    def config_problems(self) -> list[str]:
        config = self.config
        problems = [*super().config_problems(), *size_problems(image_size=config.image_size)]
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

    # -- declared --

    def synthetic_options(self) -> dict[str, Any]:
        return dict(per_class=self.config.synthetic_per_class)

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
        return dataset_not_found(
            f"{self.title} not found: no class folders at {where}"
            f"{' (the folder does not exist)' if not root.exists() else ''}.",
            "Expected layout (as downloaded; <root> may also hold it up to "
            f"{SEARCH_DEPTH} levels down)",
            self.LAYOUT,
            self.DOWNLOAD,
            self.EXAMPLE_EXPERIMENT,
        )

    # -- Lightning hooks --

    def prepare_dataset(self) -> None:
        """Find and validate the dataset (every image read once; unchanged datasets are not read
        again)."""
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

    def split_record(self) -> dict[str, Any]:
        """How the split was made, the images per class of each part, and the split."""
        counts = {
            part: {
                name: sum(1 for item in items if item["label"] == label)
                for label, name in enumerate(self.class_names)
            }
            for part, items in self.split.items()
        }
        return dict(
            split_rule=split_rule(self._items),
            class_names=list(self.class_names),
            counts=counts,
            split=self.split,
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
        return self.training_loader(
            dataset, shuffle=True, drop_last=len(items) > self.config.batch_size
        )

    def val_dataloader(self) -> DataLoader:
        """Validation images in split order, evaluation preprocessing."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test images in split order, evaluation preprocessing."""
        return self._eval_loader("test")

    # -- internals --

    def _eval_loader(self, part: str) -> DataLoader:
        transform = eval_transform(**self.preprocessing)
        dataset = ImageFolderDataset(self.root, self.split[part], transform)
        return self.evaluation_loader(dataset, self.config.batch_size)

    def _checked_items(self) -> list[ImageItem]:
        """``find_items`` of the root, every image read unless an identical image list was
        validated before; all problems in one ``DataError``."""
        root = self.root
        items, problems = self.find_items(root)

        def read() -> list[str]:
            unreadable = []
            with progress_bar(transient=True) as progress:
                for item in progress.track(items, description=f"{self.title}: checking images"):
                    try:
                        read_checked_image(root / item.path)
                    except DataError as problem:
                        unreadable.append(f"{item.path}: {problem}")
            return unreadable

        self.validated_once(root, [item.path for item in items], problems, read, noun="images")
        return items


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


def split_rule(items: Sequence[ImageItem]) -> str:
    """How ``split_items`` splits these items, in words (recorded in ``split.json``)."""
    if items and all(item.part for item in items):
        return "release folders"
    if items and all(item.group is not None for item in items):
        return "stratified by patient"
    return "stratified by image"
