"""Pieces shared by every DataModule: the data error, seeded splits, atomic writes, loader seeding.

Nothing here knows a dataset. Splits are plain lists of case ids, made by ``seeded_order``: the
same seed gives the same split on any machine and with any library version, whatever order the
file system lists the cases in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from difflib import get_close_matches
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from monai.data.utils import worker_init_fn
from torch.utils.data import Dataset

#: Where caches go when a DataModule is given no ``cache_dir``; overridden by ``$MEDNEXT_CACHE``.
DEFAULT_CACHE_ROOT = Path("~/.cache/mednext")


class DataError(ValueError):
    """A dataset is missing, incomplete or malformed. The message is complete and meant for the
    user as it is (the command line prints it without a traceback)."""


def cache_root() -> Path:
    """``$MEDNEXT_CACHE`` or ``~/.cache/mednext``, with ``~`` expanded."""
    return Path(os.environ.get("MEDNEXT_CACHE") or DEFAULT_CACHE_ROOT).expanduser()


def dataset_root(folder: str) -> str:
    """``$MEDNEXT_DATA/<folder>`` (``data/<folder>`` without the variable): the default
    ``data.root``, the same as the experiment files' ``${oc.env:MEDNEXT_DATA,data}/<folder>``."""
    return os.path.join(os.environ.get("MEDNEXT_DATA") or "data", folder)


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


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` in one
    ``os.replace``, on any error (Ctrl-C included) it is removed. Readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, mode) as stream:
            yield stream
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON at ``path``, written atomically."""
    with atomic_file(path, "w") as stream:
        json.dump(payload, stream, indent=2)
        stream.write("\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as ``.npy`` at ``path`` (readable with ``np.load(mmap_mode="r")``), atomically."""
    with atomic_file(path) as stream:
        np.save(stream, array)


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


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``name``; ``""`` if none is close."""
    matches = get_close_matches(name, list(choices), n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def write_folder_once(target: Path, write: Callable[[Path], object]) -> None:
    """Create the folder ``target`` (a synthetic dataset copy) unless it exists: ``write`` fills a
    temporary sibling, which is then renamed into place, so an interrupted write never leaves a
    half-written copy that later runs would take for a complete one."""
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        try:
            temporary.replace(target)
        except OSError:
            # Another process (a sweep point) renamed its identical copy into place first.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def evaluation_sampler(dataset: Dataset, trainer: Any) -> UnrepeatedDistributedSampler | None:
    """Under DDP, a sampler that gives each validation/test item to exactly one rank (Lightning's
    own DistributedSampler repeats items to even out the ranks, and keeps a sampler it is given);
    ``None`` in a single process."""
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )


def common_config_problems(config: Any) -> list[str]:
    """The problems of the ``data:`` keys every DataModule has: ``source``, ``batch_size``,
    ``num_workers``, ``num_folds`` and ``fold``."""
    problems = []
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


def dataset_cache_dir(config: Any) -> Path:
    """A DataModule's cache folder: ``data.cache_dir``, else ``<cache_root()>/<data.name>``."""
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    return cache_root() / config.name


def dataset_folder(config: Any, synthetic_name: str) -> Path:
    """The dataset a DataModule reads: ``data.root``, or with ``source=synthetic`` its synthetic
    copy ``<cache>/synthetic/<synthetic_name>`` (named by what the copy depends on)."""
    if config.source == "synthetic":
        return dataset_cache_dir(config) / "synthetic" / synthetic_name
    return Path(config.root).expanduser()
