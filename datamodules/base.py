"""The DataModule contract of the suite and the pieces every dataset shares.

``SuiteDataModule`` is the one base class of every DataModule (docs/architecture.md, "The
DataModule contract"). It declares what the rest of the suite reads from a dataset (the kind of
task, the evaluation protocol, the input size, whether there is a validation set, the
preprocessing record) and holds the plumbing the three data mechanisms share: the config check,
the root and cache folders, the synthetic copy, the rank, the training and evaluation loaders,
``split.json`` and the validated-once record. The mechanisms (``volumes``, ``slices``,
``image_folders``) derive from it, the datasets from a mechanism; dependencies point that way
only.

Splits are plain lists of case ids, made by ``seeded_order``: the same seed gives the same split
on any machine and with any library version, whatever order the file system lists the cases in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from monai.data.utils import worker_init_fn
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DataError, problem_report
from mednext.files import write_folder_once, write_json

#: Where caches go when a DataModule is given no ``cache_dir``; overridden by ``$MEDNEXT_CACHE``.
DEFAULT_CACHE_ROOT = Path("~/.cache/mednext")
#: Version of what a validated-once record means; a new value re-reads every file once.
VALIDATION_FORMAT = 2
PARTS = ("train", "val", "test")


def cache_root() -> Path:
    """``$MEDNEXT_CACHE`` or ``~/.cache/mednext``, with ``~`` expanded."""
    return Path(os.environ.get("MEDNEXT_CACHE") or DEFAULT_CACHE_ROOT).expanduser()


def dataset_root(folder: str) -> str:
    """``$MEDNEXT_DATA/<folder>`` (``data/<folder>`` without the variable): the default
    ``data.root``, the same as the experiment files' ``${oc.env:MEDNEXT_DATA,data}/<folder>``."""
    return os.path.join(os.environ.get("MEDNEXT_DATA") or "data", folder)


# --- splits -----------------------------------------------------------------------------------


def seeded_order(ids: Sequence[str], seed: int) -> list[str]:
    """``ids`` in a pseudo-random order fixed by ``seed``: sorted by SHA-256 of ``"seed:id"``.

    Unlike a numpy shuffle, the order depends on nothing but the seed and the ids themselves (not
    on the library version, nor on the order the ids come in), so a documented split stays valid.
    """
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def seeded_sample(ids: Sequence[str], count: int, seed: int) -> list[str]:
    """The first ``count`` of ``seeded_order(ids, seed)``, sorted."""
    if not 0 <= count <= len(ids):
        raise DataError(f"cannot draw {count} cases out of {len(ids)}")
    return sorted(seeded_order(ids, seed)[:count])


def kfold(ids: Sequence[str], num_folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """``(train, val)`` of fold ``fold`` of a seeded ``num_folds``-fold cross-validation of ``ids``.

    ``seeded_order(ids, seed)`` is cut into ``num_folds`` consecutive parts whose sizes differ by
    at most one (the larger first, as ``numpy.array_split``); fold ``k`` validates on part ``k``
    and trains on the others, so the folds' validation sets are disjoint and cover ``ids``.
    """
    if num_folds < 2 or num_folds > len(ids):
        raise DataError(f"num_folds must be between 2 and {len(ids)} (the cases), not {num_folds}")
    if not 0 <= fold < num_folds:
        raise DataError(f"fold must be between 0 and {num_folds - 1}, not {fold}")
    order = seeded_order(ids, seed)
    size, extra = divmod(len(order), num_folds)
    start = fold * size + min(fold, extra)
    val = sorted(order[start : start + size + (fold < extra)])
    train = sorted(set(ids) - set(val))
    return train, val


# --- loading ----------------------------------------------------------------------------------


def loader_seed(seed: int, rank: int) -> int:
    """The seed of one process's data loading: distinct per (experiment seed, global rank), so DDP
    ranks draw different patches."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def loader_options(seed: int, num_workers: int) -> dict[str, Any]:
    """Keyword arguments of ``torch.utils.data.DataLoader`` for reproducible loading.

    The generator fixes the per-epoch base seed; MONAI's ``worker_init_fn`` then gives worker
    ``i`` the seed ``base + i`` through the dataset's ``set_random_state`` (numpy, Python and the
    MONAI transforms of a fork-started worker would otherwise all repeat the parent's state).
    """
    options: dict[str, Any] = dict(
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )
    if num_workers > 0:
        options.update(worker_init_fn=worker_init_fn, persistent_workers=True)
    return options


def evaluation_sampler(dataset: Dataset, trainer: Any) -> UnrepeatedDistributedSampler | None:
    """Under DDP, a sampler that gives each validation/test item to exactly one rank (Lightning's
    own DistributedSampler repeats items to even out the ranks, and keeps a sampler it is given);
    ``None`` in a single process."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )


# --- checks shared by the mechanisms ----------------------------------------------------------


def label_value_problem(label: np.ndarray, num_classes: int) -> str | None:
    """``"label values 4, 7 outside the integers 0..3"`` when a label array holds anything but
    the integers ``0..num_classes-1`` (at most ten values shown); ``None`` when it does not."""
    bad = (label < 0) | (label > num_classes - 1) | (label != np.round(label))
    if not bad.any():
        return None
    values = np.unique(label[bad])
    shown = ", ".join(f"{v:g}" for v in values[:10]) + (" ..." if len(values) > 10 else "")
    return f"label values {shown} outside the integers 0..{num_classes - 1}"


def size_problems(image_size: int | None = None, synthetic_shape: Sequence[int] = ()) -> list[str]:
    """The problems of the size keys a mechanism has: ``image_size`` (a positive number of
    pixels) and ``synthetic_shape`` (three sizes of at least 8 voxels)."""
    problems = []
    if image_size is not None and image_size < 1:
        problems.append(f"image_size must be a positive number of pixels, not {image_size}")
    if synthetic_shape and (len(synthetic_shape) != 3 or any(n < 8 for n in synthetic_shape)):
        problems.append(f"synthetic_shape must be 3 sizes of at least 8, not {synthetic_shape}")
    return problems


def dataset_not_found(
    problem: str,
    layout_heading: str,
    layout: str,
    download: str,
    example_experiment: str,
    alternatives: Sequence[str] = (),
) -> DataError:
    """The missing-dataset error: what was not found where, the layout expected, where to
    download it, other ways to get it, and how to dry-run without it."""
    return DataError(
        "\n".join(
            [
                problem,
                f"{layout_heading}:\n{layout}",
                f"Download: {download}, unzip, and set data.root (or $MEDNEXT_DATA).",
                *alternatives,
                "Dry run without it: data.source=synthetic "
                f"(e.g. `mednext train {example_experiment} data.source=synthetic`).",
            ]
        )
    )


def files_key(base: Path, files: Sequence[str]) -> str:
    """A short hash of a list of files below ``base``: the absolute folder, and per file its path,
    size and modification time (``None`` for a missing file)."""
    records = []
    for file in files:
        path = base / file
        stat = path.stat() if path.is_file() else None
        records.append([file, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    text = json.dumps(dict(format=VALIDATION_FORMAT, base=str(base.resolve()), files=records))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the contract -------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Keys of the ``data:`` group every dataset has (each mechanism and dataset adds its own and
    sets its defaults).

    Attributes:
        name: registry name of the dataset.
        root: the dataset folder as downloaded (``${MEDNEXT_DATA:-data}/<Dataset>``).
        source: ``real`` reads ``root``; ``synthetic`` writes a small fake copy of the layout into
            the cache once and reads that through the same code.
        batch_size: training items per batch.
        num_workers: DataLoader worker processes.
        fold: ``None`` for the dataset's own split, else the fold of a seeded ``num_folds``-fold
            cross-validation of the non-test cases.
        num_folds: folds of the cross-validation.
        split_seed: seed of the seeded parts of the split (independent of the training seed, so
            runs with different seeds share their cases).
        augment: random augmentation of training items.
        cache_dir: the dataset's cache folder (default
            ``${MEDNEXT_CACHE:-~/.cache/mednext}/<name>``).
        synthetic_seed: seed of the synthetic copy.
        plan: a plan file of ``mednext plan`` whose ``spacing``, ``patch_size`` and
            ``batch_size`` the experiment takes (the configuration reads it; command-line keys
            still win).
    """

    name: str = ""
    root: str = ""
    source: str = "real"
    batch_size: int = 2
    num_workers: int = 4
    fold: int | None = None
    num_folds: int = 5
    split_seed: int = 0
    augment: bool = True
    cache_dir: str | None = None
    synthetic_seed: int = 0
    plan: str | None = None


class SuiteDataModule(L.LightningDataModule):
    """The base of every DataModule of the suite.

    Declared for the rest of the suite (the runner, the tasks, ``mednext predict``, sweeps):

    - ``task``: the kind of task the batches are for (a key of ``mednext.tasks.TASKS``);
    - ``evaluation``: the evaluation protocol (``volume``, ``transunet``, ``classification``;
      docs/evaluation.md);
    - ``spatial_dims``, ``in_channels``, ``class_names``, ``num_classes``;
    - ``input_size``: the spatial size the network is trained on, and ``input_size_setting``,
      the ``data.`` key that sets it;
    - ``has_validation``: whether the configuration gives a validation set (known before any
      file is read);
    - ``preprocessing``: what inference needs to reproduce the input pipeline (JSON-serialisable;
      kept in every checkpoint);
    - ``fold_count``: the folds ``data.fold`` chooses from;
    - ``split`` after ``setup`` and ``write_split``.

    A mechanism sets ``task``, ``evaluation``, ``spatial_dims``, ``INPUT_SIZE_KEY`` and
    ``input_size`` and implements ``prepare_dataset`` (validate, cache), ``setup``, the loaders,
    ``preprocessing`` and ``split_record``; a dataset sets ``Config``, ``title``, ``CLASS_NAMES``,
    ``DOWNLOAD``, ``LAYOUT``, ``EXAMPLE_EXPERIMENT`` and implements the class method
    ``write_synthetic`` (its fake copy; ``synthetic_options`` say what the config changes in it).
    """

    Config: ClassVar[type[DataConfig]] = DataConfig
    task: ClassVar[str]
    evaluation: ClassVar[str]
    spatial_dims: ClassVar[int]
    in_channels: ClassVar[int] = 1
    #: Human-readable dataset name for messages.
    title: ClassVar[str]
    CLASS_NAMES: ClassVar[tuple[str, ...]]
    #: Where to download the dataset and the layout expected, and an example experiment for the
    #: dry-run hint: the missing-dataset message.
    DOWNLOAD: ClassVar[str]
    LAYOUT: ClassVar[str]
    EXAMPLE_EXPERIMENT: ClassVar[str]
    #: The spatial size the network is trained on (a patch, an image); set by the constructor.
    input_size: tuple[int, ...]
    #: The ``data.`` key that sets ``input_size``.
    INPUT_SIZE_KEY: ClassVar[str]

    def __init__(self, config: DataConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.seed = seed
        problems = self.config_problems()
        if problems:
            raise DataError(problem_report(f"data config of {self.config.name!r}", problems))
        self.class_names = list(self.CLASS_NAMES)
        self.has_validation = self.validation_configured()
        self.split: dict[str, Any] = {}

    # -- declared --

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fold_count(self) -> int:
        """How many folds ``data.fold`` chooses from (``0..fold_count-1``): ``data.num_folds``,
        unless the dataset has folds of its own (an nnU-Net ``splits_final.json``)."""
        return self.config.num_folds

    @property
    def input_size_setting(self) -> str:
        """``data.<key>=<value>``: the setting behind ``input_size``, for error messages."""
        return f"data.{self.INPUT_SIZE_KEY}={vars(self.config)[self.INPUT_SIZE_KEY]}"

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What inference needs to reproduce the input pipeline (JSON-serialisable)."""
        raise NotImplementedError

    def validation_configured(self) -> bool:
        """Whether the config gives a validation set (known before any file is read)."""
        return True

    # -- the configuration --

    def config_problems(self) -> list[str]:
        """Every invalid value of the config (subclasses add theirs)."""
        config, problems = self.config, []
        if config.source not in ("real", "synthetic"):
            problems.append(f"source must be 'real' or 'synthetic', not {config.source!r}")
        if config.batch_size < 1:
            problems.append(f"batch_size must be at least 1, not {config.batch_size}")
        if config.num_workers < 0:
            problems.append(f"num_workers must be at least 0, not {config.num_workers}")
        if config.num_folds < 2:
            problems.append(f"num_folds must be at least 2, not {config.num_folds}")
        elif config.fold is not None and not 0 <= config.fold < config.num_folds:
            problems.append(f"fold must be None or 0..{config.num_folds - 1}, not {config.fold}")
        return problems

    # -- folders --

    @property
    def cache_dir(self) -> Path:
        """``data.cache_dir``, else ``<cache_root()>/<data.name>``."""
        if self.config.cache_dir:
            return Path(self.config.cache_dir).expanduser()
        return cache_root() / self.config.name

    @property
    def root(self) -> Path:
        """The dataset read: ``data.root``, or with ``source=synthetic`` its synthetic copy
        ``<cache>/synthetic/<synthetic_name()>``."""
        if self.config.source == "synthetic":
            return self.cache_dir / "synthetic" / self.synthetic_name()
        return Path(self.config.root).expanduser()

    # -- the synthetic copy --

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        """A small fake copy of this dataset in its real layout under ``root`` (``mednext data
        synthetic``); returns the folder to use as ``data.root``."""
        raise NotImplementedError

    def synthetic_options(self) -> dict[str, Any]:
        """The keyword arguments of ``write_synthetic`` that the config sets."""
        return {}

    def synthetic_name(self) -> str:
        """The synthetic copy's folder name, made of what the copy depends on: ``seed0-48x48x24``
        (seed, then every option; sizes joined by ``x``)."""
        parts = [f"seed{self.config.synthetic_seed}"]
        for value in self.synthetic_options().values():
            is_size = isinstance(value, list | tuple)
            parts.append("x".join(str(n) for n in value) if is_size else str(value))
        return "-".join(parts)

    def write_synthetic_copy(self) -> None:
        """The synthetic copy at ``root``, written once (into a temporary folder renamed into
        place, so an interrupted write is never taken for a complete copy)."""
        write_folder_once(
            self.root,
            lambda folder: self.write_synthetic(
                folder, seed=self.config.synthetic_seed, **self.synthetic_options()
            ),
        )

    # -- Lightning hooks --

    def prepare_data(self) -> None:
        """Write the synthetic copy (``source=synthetic``, once), then ``prepare_dataset``."""
        if self.config.source == "synthetic":
            self.write_synthetic_copy()
        self.prepare_dataset()

    def prepare_dataset(self) -> None:
        """Validate the dataset at ``root`` (every problem in one ``DataError``) and build what
        it caches."""
        raise NotImplementedError

    # -- loaders --

    @property
    def rank(self) -> int:
        """The global rank of this process (0 without a Trainer)."""
        return self.trainer.global_rank if self.trainer is not None else 0

    def training_loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        """Batches of ``batch_size`` from a dataset with ``set_random_state``, seeded per
        (experiment seed, rank)."""
        seed = loader_seed(self.seed, self.rank)
        dataset.set_random_state(seed)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            **loader_options(seed, self.config.num_workers),
        )

    def evaluation_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """Every item once, in order; under DDP each item on exactly one rank."""
        options = loader_options(loader_seed(self.seed, self.rank), self.config.num_workers)
        if len(dataset) == 0:
            options.update(num_workers=0, persistent_workers=False, worker_init_fn=None)
        sampler = evaluation_sampler(dataset, self.trainer)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, **options)

    # -- records --

    def split_details(self) -> dict[str, Any]:
        """Dataset-specific facts recorded in ``split.json`` (an MSLD version, a class rule)."""
        return {}

    def split_record(self) -> dict[str, Any]:
        """What ``split.json`` records besides the common keys and ``split_details``: the split
        and what reproduces it (files, cache, counts)."""
        raise NotImplementedError

    def write_split(self, path: Path) -> None:
        """The split as JSON, with what reproduces it."""
        if not self.split:
            raise RuntimeError(f"{self.title}: call setup() before write_split()")
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
                **self.split_details(),
                **self.split_record(),
            ),
        )

    def validated_once(
        self,
        base: Path,
        files: Sequence[str],
        problems: list[str],
        read: Callable[[], list[str]],
        noun: str = "files",
    ) -> None:
        """Validate the ``files`` below ``base`` once: unless the discovery found ``problems`` or
        these very files (sizes and modification times) were validated before, ``read()`` reads
        every file and returns their problems; all problems go into one ``DataError``, and a
        success is recorded in ``<cache_dir>/validated-<key>.json`` (with the number of
        ``noun``)."""
        record = self.cache_dir / f"validated-{files_key(base, files)}.json"
        if not problems and record.is_file():
            return
        problems = [*problems, *read()]
        if problems:
            raise DataError(problem_report(f"{self.title} at {base}", problems))
        write_json(
            record,
            dict(
                format=VALIDATION_FORMAT,
                dataset=self.config.name,
                root=str(base.resolve()),
                **{noun: len(files)},
            ),
        )
