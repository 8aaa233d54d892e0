"""The embedded brain_demo dataset: template, synthetic subjects, files on disk."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from datamodules import brain_demo
from datamodules.brain_demo import (
    CLASS_NAMES,
    SPACING_MM,
    load_template,
    make_subject,
    write_brain_demo,
)


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Fail any network access, and load the template afresh under that guard."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("brain_demo tried to reach the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        # Another test module may have loaded (and cached) the template without the guard.
        brain_demo._template.cache_clear()
        yield


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_template_grid_and_classes() -> None:
    image, label, affine = load_template()
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == (80, 96, 80)
    assert all(size % 16 == 0 for size in image.shape)
    np.testing.assert_allclose(np.abs(np.linalg.det(affine[:3, :3])), SPACING_MM**3)
    np.testing.assert_allclose(np.diag(affine)[:3], SPACING_MM)
    assert len(CLASS_NAMES) == 4
    assert set(np.unique(label)) == {0, 1, 2, 3}
    # The brain is whole inside the window (the template itself ends at the brainstem, z = 0).
    assert not label[[0, -1]].any() and not label[:, [0, -1]].any() and not label[:, :, -1].any()

    brain = label > 0
    csf, grey, white = ((label == value).sum() / brain.sum() for value in (1, 2, 3))
    assert 0.03 < csf < 0.15 and 0.5 < grey < 0.65 and 0.25 < white < 0.45
    # T1 contrast: white matter brighter than grey matter, grey brighter than CSF.
    means = [image[label == value].mean() for value in range(4)]
    assert means[3] > means[2] > means[1] > means[0]


def test_subjects_are_deterministic_and_distinct() -> None:
    image, label = make_subject(3, seed=0)
    again_image, again_label = make_subject(3, seed=0)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)

    template_image, template_label, _ = load_template()
    for other_image, other_label in (make_subject(4, seed=0), make_subject(3, seed=1)):
        assert not np.array_equal(label, other_label)
        assert not np.allclose(image, other_image)
    assert not np.array_equal(label, template_label)
    assert image.shape == template_image.shape and image.dtype == np.float32


@pytest.mark.parametrize("index", [0, 1, 2])
def test_subject_is_close_to_template_and_aligned(index: int) -> None:
    _, template_label, _ = load_template()
    image, label = make_subject(index, seed=0)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3}
    assert 0.85 < dice(label > 0, template_label > 0) < 0.98
    for value in (2, 3):
        assert 0.5 < dice(label == value, template_label == value) < 0.98
    # CSF is thin (sulci, ventricle rims): a shift of a few mm removes most of its overlap.
    assert 0.15 < dice(label == 1, template_label == 1) < 0.98
    # Image and label moved together: the T1 tissue contrast holds under the new label.
    means = [image[label == value].mean() for value in range(4)]
    assert means[3] > 1.1 * means[2] and means[2] > 1.2 * means[1] and means[1] > means[0]


def test_write_brain_demo(tmp_path: Path) -> None:
    root = tmp_path / "brain_demo"
    split = write_brain_demo(root, n_train=2, n_val=1, n_test=1, seed=5)

    assert {part: len(cases) for part, cases in split.items()} == {"train": 2, "val": 1, "test": 1}
    cases = [case for part in split.values() for case in part]
    assert len(set(cases)) == 4
    assert json.loads((root / "split.json").read_text()) == split
    description = json.loads((root / "dataset.json").read_text())
    assert description["labels"] == {name: value for value, name in enumerate(CLASS_NAMES)}
    assert "Louis Collins" in description["licence"]
    assert description["generator"]["seed"] == 5

    _, _, affine = load_template()
    image_path = root / "imagesTr" / f"{split['test'][0]}.nii.gz"
    label_path = root / "labelsTr" / f"{split['test'][0]}.nii.gz"
    image, label = nib.load(image_path), nib.load(label_path)
    for loaded in (image, label):
        np.testing.assert_allclose(loaded.affine, affine)
        assert loaded.header.get_zooms() == (SPACING_MM,) * 3
    assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
    # The test case is subject 0 of seed 5, exactly as written.
    expected_image, expected_label = make_subject(0, seed=5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), expected_label)
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected_image)

    files = sorted(path for path in root.rglob("*") if path.is_file())
    assert len(files) == 2 * 4 + 2  # no temporary file left behind
    mtimes = {path: path.stat().st_mtime_ns for path in files}
    assert write_brain_demo(root, n_train=2, n_val=1, n_test=1, seed=5) == split
    assert {path: path.stat().st_mtime_ns for path in files} == mtimes


def test_write_brain_demo_rewrites_incomplete_or_different_copies(tmp_path: Path) -> None:
    root = tmp_path / "brain_demo"
    write_brain_demo(root, n_train=1, n_val=1, n_test=1)
    label_path = root / "labelsTr" / "brain_002.nii.gz"

    # A copy whose dataset.json is missing (interrupted before the end) is not trusted.
    (root / "dataset.json").unlink()
    label_path.write_bytes(b"truncated")
    write_brain_demo(root, n_train=1, n_val=1, n_test=1)
    assert (root / "dataset.json").is_file()
    np.testing.assert_array_equal(np.asarray(nib.load(label_path).dataobj), make_subject(2)[1])

    # Fewer subjects: the cases that left the split leave the folders too.
    split = write_brain_demo(root, n_train=0, n_val=1, n_test=1)
    assert split == {"train": [], "val": ["brain_001"], "test": ["brain_000"]}
    assert sorted(path.name for path in (root / "imagesTr").iterdir()) == [
        "brain_000.nii.gz",
        "brain_001.nii.gz",
    ]

    with pytest.raises(ValueError, match="must be >= 0"):
        write_brain_demo(root, n_train=-1)
