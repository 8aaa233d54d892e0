"""The one atomic-write helper: a reader sees the old file or the new one, never half of one, and
nothing is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mednext.files import atomic_folder, atomic_path, write_folder_once, write_json, write_text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_json(target, {"status": "running"})
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text('{"status": "compl')  # a crash in the middle of writing
        raise RuntimeError("disk gone")
    assert json.loads(target.read_text()) == {"status": "running"}
    assert leftovers(tmp_path) == []


def test_the_temporary_file_keeps_the_suffixes_and_lives_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "case.nii.gz"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.name.endswith(".tmp-case.nii.gz")
        assert temporary.name.startswith(".")
        temporary.write_bytes(b"data")
    assert target.read_bytes() == b"data" and leftovers(target.parent) == []


def test_write_text_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.md"
    write_text(target, "a much longer first version\n")
    write_text(target, "short\n")
    assert target.read_text() == "short\n"


def test_a_folder_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "release"
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as folder:
        (folder / "a.npz").write_bytes(b"1")
        raise KeyboardInterrupt
    assert not target.exists() and leftovers(tmp_path) == []
    with atomic_folder(target) as folder:
        (folder / "a.npz").write_bytes(b"1")
    assert [p.name for p in target.iterdir()] == ["a.npz"]
    with (
        pytest.raises(FileExistsError, match="exists and is not an empty folder"),
        atomic_folder(target),
    ):
        pass


def test_a_folder_written_once_keeps_the_copy_that_is_already_there(tmp_path: Path) -> None:
    target = tmp_path / "synthetic"
    write_folder_once(target, lambda folder: (folder / "first").write_text("1"))
    write_folder_once(target, lambda folder: (folder / "second").write_text("2"))
    assert [p.name for p in target.iterdir()] == ["first"]

    def another_process_finishes_first(folder: Path) -> None:
        (folder / "mine").write_text("x")
        other = tmp_path / "raced"
        other.mkdir()
        (other / "theirs").write_text("y")

    write_folder_once(tmp_path / "raced", another_process_finishes_first)
    assert [p.name for p in (tmp_path / "raced").iterdir()] == ["theirs"]
    assert leftovers(tmp_path) == []
