"""The 2D releases on disk: finding them, reading and checking their files, indexing their cases,
and writing a release when ``mednext data prepare`` rebuilds one from the raw 3D download.

Both releases (TransUNet's Synapse, MT-UNet's ACDC) store training slices as ``.npz`` files (one
slice each) and test cases as whole volumes ``(D, H, W)`` (``.npz`` or HDF5 ``.h5``). The release
folder is ``data.root`` or up to ``SEARCH_DEPTH`` levels below it; its split lists are used when
the download has them.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from datamodules.base import PARTS, label_value_problem
from datamodules.errors import DataError
from mednext.files import atomic_folder, write_text

#: How many levels below ``data.root`` the release folder may lie.
SEARCH_DEPTH = 3

_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


# --- reading and checking release files --------------------------------------------------------


def read_arrays(path: Path, keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(image, label)`` arrays of a release file: ``.npz`` (keys ``keys``) or HDF5
    (``.h5``: datasets ``keys``)."""
    image_key, label_key = keys
    if path.suffix == ".h5":
        with h5py.File(path, "r") as stored:
            return np.asarray(stored[image_key][:]), np.asarray(stored[label_key][:])
    with np.load(path) as stored:
        return np.asarray(stored[image_key]), np.asarray(stored[label_key])


def stored_keys(path: Path) -> list[str]:
    """The array names in an ``.npz`` or the datasets of an HDF5 file."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as stored:
            return sorted(stored.keys())
    if not zipfile.is_zipfile(path):
        # np.load would try it as .npy and then as a pickle, and say that instead.
        raise zipfile.BadZipFile("not an .npz (zip) archive")
    with np.load(path) as stored:
        return sorted(stored.files)


def file_problems(
    path: Path, name: str, keys: tuple[str, str], ndim: int, num_classes: int
) -> tuple[list[str], tuple[int, ...] | None]:
    """Problems with one release file (``name``: how messages call it) and, when it has none, its
    shape. Checks: readable, has the two ``keys``, image and label ``ndim``-D of one shape,
    finite image, integer label values in ``0..num_classes-1`` (any numeric dtype)."""
    if not path.is_file():
        return [f"{name}: missing"], None
    try:
        found = stored_keys(path)
        if not set(keys) <= set(found):
            expected = " and ".join(repr(k) for k in keys)
            return [f"{name}: has keys {found}, expected {expected}"], None
        image, label = read_arrays(path, keys)
    except _READ_ERRORS as error:
        return [f"{name}: cannot read: {type(error).__name__}: {error}"], None
    if image.ndim != ndim or label.ndim != ndim or image.shape != label.shape:
        return [
            f"{name}: image {image.shape} and label {label.shape}; expected two {ndim}D arrays "
            "of one shape"
        ], None
    problems = []
    if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
        problems.append(f"{name}: image is not numeric or contains NaN or infinite values")
    if not np.issubdtype(label.dtype, np.number):
        problems.append(f"{name}: label has dtype {label.dtype}, not a number")
        return problems, None
    label_problem = label_value_problem(label, num_classes)
    if label_problem:
        problems.append(f"{name}: {label_problem}")
    return problems, (None if problems else tuple(image.shape))


def read_list(path: Path) -> list[str]:
    """The non-empty lines of a split list, stripped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def find_release_folders(root: Path, is_release: Callable[[Path], bool]) -> list[Path]:
    """The folders at ``root`` or up to ``SEARCH_DEPTH`` levels below it for which
    ``is_release`` holds, at the shallowest depth that has any."""
    if not root.is_dir():
        return []
    for depth in range(SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth)
        candidates = [root] if depth == 0 else sorted(p for p in root.glob(pattern) if p.is_dir())
        found = [c for c in candidates if not c.name.startswith(".") and is_release(c)]
        if found:
            return found
    return []


def find_lists_folder(base: Path, root: Path, name: str) -> Path | None:
    """The split lists folder ``name`` of a release: beside the release's folders
    (``<base>/lists/<name>``, ``<base>/<name>``), beside the release folder, or anywhere up to
    four levels below ``root``; ``None`` when the download has none."""
    candidates = [base / "lists" / name, base / name, base.parent / "lists" / name]
    candidates.append(base.parent / name)
    for depth in range(SEARCH_DEPTH + 2):
        candidates += sorted(root.glob("/".join(["*"] * depth + [name])))
    return next((c for c in candidates if c.is_dir()), None)


# --- the release index -------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceCase:
    """One case of a release: its slice files in slice order (``stacked``, training and
    validation cases) or its one volume file (test cases), paths relative to the release folder.
    """

    case_id: str
    files: tuple[str, ...]
    stacked: bool


@dataclass
class Release:
    """What discovery found in a release folder.

    Attributes:
        base: the release folder (holding ``train_npz/`` or ``train/``).
        cases: every case of the release's split, by id.
        parts: the release's own ``train``/``val``/``test`` case ids (``val`` empty for Synapse).
        lists: the split lists folder read, or ``None`` when the shipped split was used.
        differences: how the download's lists differ from the shipped split (empty: they agree).
        problems: missing files, unparseable names, test cases in the training lists.
    """

    base: Path
    cases: dict[str, SliceCase] = field(default_factory=dict)
    parts: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PARTS})
    lists: Path | None = None
    differences: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add_slices(self, part: str, slices: Mapping[str, Mapping[int, str]]) -> None:
        """``slices``: case id -> {slice index: file}; each case joins ``part``. A case whose
        indices are not 0..n-1 is a problem (its volume could not be stacked)."""
        for case_id, by_index in sorted(slices.items()):
            gaps = sorted(set(range(max(by_index) + 1)) - set(by_index))
            if gaps:
                shown = ", ".join(str(k) for k in gaps[:10]) + (" ..." if len(gaps) > 10 else "")
                self.problems.append(f"{case_id}: slices {shown} missing")
            files = tuple(by_index[k] for k in sorted(by_index))
            self.cases[case_id] = SliceCase(case_id, files, stacked=True)
            self.parts[part].append(case_id)

    def add_volume(self, part: str, case_id: str, file: str) -> None:
        self.cases[case_id] = SliceCase(case_id, (file,), stacked=False)
        self.parts[part].append(case_id)


def set_differences(what: str, found: set[str], shipped: set[str]) -> list[str]:
    """Lines saying how ``found`` differs from ``shipped`` (nothing when they are equal)."""
    lines = []
    if found - shipped:
        lines.append(f"{what} has {', '.join(sorted(found - shipped))} (not in the shipped split)")
    if shipped - found:
        lines.append(f"{what} lacks {', '.join(sorted(shipped - found))} (in the shipped split)")
    return lines


# --- writing a release (``mednext data prepare``) ---------------------------------------------


@contextmanager
def release_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write a release into, renamed to ``out_dir`` when
    the block succeeds and removed on any error (Ctrl-C included): ``out_dir`` never holds half a
    release. ``out_dir`` must not exist or be an empty folder."""
    try:
        with atomic_folder(out_dir) as temporary:
            yield temporary
    except FileExistsError as error:
        raise DataError(f"{error}; remove it or choose another") from error


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``arrays`` as an uncompressed ``.npz`` (as the releases store them), written straight
    into a ``release_folder``, which makes the whole release atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def save_h5(path: Path, **arrays: np.ndarray) -> None:
    """``arrays`` as datasets of an HDF5 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as stored:
        for key, array in arrays.items():
            stored.create_dataset(key, data=array)


def write_list(path: Path, entries: Sequence[str]) -> None:
    """A split list: one entry per line."""
    write_text(path, "".join(f"{entry}\n" for entry in entries))


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """A prepare summary as ``key: value`` lines."""
    return [f"{key}: {value}" for key, value in summary.items()]
