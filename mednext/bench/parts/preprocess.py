"""The ``preprocess`` part of ``mednext bench``: building a 3D dataset's cache (check, resample to
the model grid, normalise, class locations, atomic ``.npy`` writes: ``prepare_data`` of the
DataModule) one case at a time and with a process pool, cases per minute.

The dataset is the synthetic Synapse layout (30 labelled CT cases, anisotropic voxels) at a
CT-like size, written once into a temporary folder and preprocessed twice into fresh caches with
``data.preprocess_workers`` 1 and ``N`` (default: one per CPU core this process may use).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from mednext.bench import harness
from mednext.bench.parts.base import BenchPart, BenchSettings, PartResult

_DATASET = "synapse"
_DEFAULTS: dict[str, dict[str, Any]] = {
    "full": dict(case_shape=(256, 256, 48), workers=None),
    "quick": dict(case_shape=(96, 96, 24), workers=None),
}
_COLUMNS = ("Cache build", "Workers", "Cases", "Seconds", "Cases/min", "Speed-up")


def build_seconds(root: Path, cache: Path, workers: int) -> tuple[float, int]:
    """Wall seconds of ``prepare_data`` of the Synapse DataModule on ``root`` into the empty
    ``cache`` with ``workers`` processes, and the number of cases it preprocessed."""
    from datamodules import datamodule_class
    from datamodules.volume_cache import read_manifest

    cls = datamodule_class(_DATASET)
    config = cls.Config(root=str(root), cache_dir=str(cache), preprocess_workers=workers)
    datamodule = cls(config)
    start = time.perf_counter()
    datamodule.prepare_data()
    seconds = time.perf_counter() - start
    manifest = read_manifest(datamodule.cache_path)
    return seconds, len(manifest["cases"])


class PreprocessParallel(BenchPart):
    """A dataset's cache built sequentially and in parallel. Its own options: ``case_shape``
    (the synthetic volumes' shape before resampling) and ``workers`` (the pool; None: one per
    usable core)."""

    name = "preprocess"
    section = "preprocess"
    title = "Dataset cache, sequential vs parallel"
    heading = "Preprocessing a dataset's cache: cases per minute"
    options = ("--case-shape", "--workers")
    shared = ()
    defaults: ClassVar[Mapping[tuple[str, str], Mapping[str, Any]]] = {
        (mode, device): values for mode, values in _DEFAULTS.items() for device in ("cpu", "cuda")
    }
    text_columns = 1
    notes = (
        "The cache build is `prepare_data` of the DataModule (`mednext data prepare`, and the "
        "first `mednext train` of a dataset): each case's checks first, then each case "
        "preprocessed; the same progress bar and atomic writes either way "
        "(`data.preprocess_workers`, default one process per usable CPU core).",
    )
    #: build_cache draws its own progress bars.
    own_progress = True

    def workers(self, settings: BenchSettings) -> int:
        from datamodules.volume_cache import preprocess_workers

        return preprocess_workers(settings.options["workers"], cases=10**6)

    def columns(self) -> tuple[str, ...]:
        return _COLUMNS

    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        return (1, 1, *settings.options["case_shape"])

    def command_options(self, settings: BenchSettings) -> list[str]:
        argv = ["--case-shape", ",".join(str(n) for n in settings.options["case_shape"])]
        return [*argv, "--workers", str(self.workers(settings))]

    def step_count(self, settings: BenchSettings) -> int:
        return 2

    def measure(self, settings: BenchSettings, label: harness.ProgressLabel) -> PartResult:
        from datamodules import datamodule_class

        runs = {"sequential": 1, "parallel": self.workers(settings)}
        builds: dict[str, tuple[float, int]] = {}
        with tempfile.TemporaryDirectory(prefix="mednext-bench-") as folder:
            root = datamodule_class(_DATASET).write_synthetic(
                Path(folder) / "raw", shape=tuple(settings.options["case_shape"])
            )
            for name, workers in runs.items():
                builds[name] = build_seconds(root, Path(folder) / f"cache-{name}", workers)
        sequential = builds["sequential"][0]
        rows, figures = [], {}
        for name, workers in runs.items():
            seconds, cases = builds[name]
            rate = cases * 60 / seconds
            rows.append(
                [
                    name,
                    str(workers),
                    str(cases),
                    f"{seconds:,.1f}",
                    f"{rate:,.1f}",
                    f"{sequential / seconds:.2f}",
                ]
            )
            figures[name] = {"workers": workers, "cases": cases, "seconds": seconds}
            figures[name]["cases_per_min"] = rate
        speedup = sequential / builds["parallel"][0]
        return PartResult(
            rows=rows,
            figures={
                "dataset": _DATASET,
                "case_shape": list(settings.options["case_shape"]),
                **figures,
                "speedup": speedup,
            },
        )

    def method(self, settings: BenchSettings) -> str:
        shape = "×".join(str(n) for n in settings.options["case_shape"])
        return (
            f"The synthetic {_DATASET} layout (its 30 labelled cases of about {shape} voxels, "
            "0.7–0.9 mm in-plane and 2.5–3 mm slices, resampled to the 1 mm grid of the Synapse "
            "experiments) preprocessed into an empty cache with one worker and then with "
            f"{self.workers(settings)}; wall time of the whole `prepare_data`, checks included."
        )


PREPROCESS_PARALLEL = PreprocessParallel()
