"""Fixtures shared by the end-to-end tests: toy-sized runs of the real ``mednext train`` path.

``toy_runs.overrides(kind, root, cache, *extra)`` is the command-line overrides that make an
experiment of one data mechanism run in seconds on a CPU (synthetic data in the dataset's real
layout, tiny networks, one or two epochs, no W&B), writing its runs below ``root`` and its data
caches below ``cache``; ``toy_runs.only_run`` finds the one run of an experiment there.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

#: What every toy run sets: synthetic data read in the main process, a quiet Trainer, no W&B.
_COMMON = (
    "data.source=synthetic",
    "data.num_workers=0",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "logger.wandb.mode=disabled",
)
#: Per data mechanism, what makes its experiments toy-sized.
_BY_KIND = {
    # 3D volumes: 32×32×16 patches at a coarse spacing, MedNeXt of width 4, no mirroring.
    "volumes": (
        "data.patch_size=[32,32,16]",
        "data.spacing=[2,2,4]",
        "data.iterations_per_epoch=2",
        "model.width=4",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "eval.mirror_tta=false",
    ),
    # Class folders: 64² images, the MedNeXt-Lite classifier at width 8 with one block a stage.
    "image_folders": (
        "data.image_size=64",
        "data.batch_size=8",
        "model.width=8",
        "model.depths=[1,1,1,1]",
        "trainer.max_epochs=2",
        "optim.warmup_epochs=1",
    ),
    # 2D releases: 64² slices, one epoch.
    "slices": (
        "data.image_size=64",
        "data.batch_size=8",
        "trainer.max_epochs=1",
    ),
}


class ToyRuns:
    """Helpers for toy-sized runs (see the module docstring)."""

    @staticmethod
    def overrides(kind: str, root: Path, cache: Path, *extra: str) -> list[str]:
        """The overrides of a toy run of data mechanism ``kind`` (``volumes``, ``image_folders``
        or ``slices``), then ``extra`` (later overrides win)."""
        return [
            *_COMMON,
            *_BY_KIND[kind],
            f"output.root={root}",
            f"data.cache_dir={cache}",
            *extra,
        ]

    @staticmethod
    def only_run(root: Path, experiment: str) -> Path:
        """The one run directory of ``experiment`` below ``root``."""
        runs = sorted((root / experiment).iterdir())
        assert len(runs) == 1, runs
        return runs[0]

    @staticmethod
    def segmentation_task(model: dict[str, Any], evaluation: dict[str, Any] | None = None) -> Any:
        """A 3D ``SegmentationTask`` of three classes on 32³ patches, built as the suite builds
        it (``model`` is the ``model:`` group, ``evaluation`` the ``eval:`` group)."""
        from mednext.tasks.segmentation import SegmentationTask

        return SegmentationTask(
            model=model,
            in_channels=1,
            num_classes=3,
            patch_size=[32, 32, 32],
            spacing=[1.0, 1.0, 1.0],
            class_names=["background", "a", "b"],
            optim={},
            loss={},
            evaluation=evaluation or {},
            log_images=False,
        )

    @staticmethod
    def read_csv(path: Path) -> list[dict[str, str]]:
        """The rows of a CSV file the suite wrote."""
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def toy_runs() -> ToyRuns:
    return ToyRuns()
