"""Writing files so that no reader ever sees half of one.

Every file the suite writes goes through this module. The content is written to a temporary
sibling in the same folder, ``.<12 hex digits>.tmp-<name>``: hidden, unique per writer (several
processes may write one file at once), ending in the destination's own suffixes (nibabel and
matplotlib choose the format by them), and on the same filesystem, so that the final rename is
atomic. It is flushed to disk with ``fsync``, renamed over the destination with ``os.replace``,
and the folder entry is synced too. Any error, Ctrl-C included, removes the temporary file and
leaves the previous version of the destination untouched. Folders that are written as a whole (a
synthetic dataset, a rebuilt 2D release) are filled under a temporary name and renamed into place
the same way.

Only the standard library is imported: the leaderboard and the run-folder helpers use this without
loading torch.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _temporary_sibling(path: Path) -> Path:
    """A name beside ``path`` that no other process uses: hidden, unique, and ending in
    ``path``'s own suffixes (nibabel and matplotlib choose the format by them)."""
    return path.with_name(f".{uuid.uuid4().hex[:12]}.tmp-{path.name}")


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems (and Windows) refuse fsync on a folder; the rename still happened
    finally:
        os.close(descriptor)


def _sync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``nib.save``,
    ``savefig``); when the block ends without error the file is synced and renamed onto ``path``,
    otherwise it is removed. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        yield temporary
        _sync_file(temporary)
        os.replace(temporary, path)
        _sync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", newline: str | None = None
) -> Iterator[IO[Any]]:
    """An open stream (``mode`` ``"w"`` text, UTF-8, or ``"wb"``) whose content replaces ``path``
    in one rename when the block ends without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    text = {"encoding": "utf-8", "newline": newline} if mode == "w" else {}
    with atomic_path(path) as temporary, open(temporary, mode, **text) as stream:
        yield stream


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` at ``path``, atomically."""
    with atomic_write(path, "wb") as stream:
        stream.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically."""
    with atomic_write(path) as stream:
        stream.write(text)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """``payload`` as indented JSON (keys in their order, a final newline) at ``path``,
    atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; when the block ends without error it is renamed
    to ``path``, otherwise removed, so ``path`` never holds half of what was written. ``path``
    must not exist or be an empty folder (``FileExistsError`` otherwise)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
        # Onto an empty folder or none; a folder filled meanwhile makes the rename fail.
        os.replace(temporary, path)
        _sync_folder(path.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_folder_once(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Create the folder ``path`` unless it exists: ``write`` fills a temporary sibling, which is
    then renamed into place, so an interrupted write never leaves a half-written folder that a
    later run would take for complete. When another process (a sweep point) renames its identical
    copy into place first, that copy is kept."""
    path = Path(path)
    if path.is_dir():
        return
    try:
        with atomic_folder(path) as temporary:
            write(temporary)
    except OSError:
        if not path.is_dir():
            raise
