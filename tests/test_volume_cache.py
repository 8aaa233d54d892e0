"""The preprocessing cache of the 3D volumes built by a pool of processes: the same cache as one
process builds, and the worker count a machine gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datamodules import build_datamodule
from datamodules.synapse import write_synapse
from datamodules.volume_cache import MANIFEST, preprocess_workers


def prepared(root: Path, cache: Path, workers: int) -> Path:
    dm = build_datamodule(
        dict(
            name="synapse",
            root=str(root),
            cache_dir=str(cache),
            spacing=[2.0, 2.0, 4.0],
            patch_size=[16, 16, 16],
            preprocess_workers=workers,
        )
    )
    dm.prepare_data()
    return dm.cache_path


def test_a_pool_writes_the_same_cache_as_one_process(tmp_path: Path) -> None:
    raw = write_synapse(tmp_path / "raw", shape=(16, 16, 8))
    one = prepared(raw, tmp_path / "one", workers=1)
    pool = prepared(raw, tmp_path / "pool", workers=2)
    first, second = (json.loads((f / MANIFEST).read_text()) for f in (one, pool))
    assert first["cases"] == second["cases"] and len(first["cases"]) == 30
    assert first["normalization"] == second["normalization"]
    for entry in first["cases"].values():
        for key in ("image", "label"):
            assert np.array_equal(np.load(one / entry[key]), np.load(pool / entry[key]))
        with np.load(one / entry["locations"]) as a, np.load(pool / entry["locations"]) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not list(pool.glob(".*"))


def test_the_worker_count_follows_the_machine_and_the_cases() -> None:
    assert preprocess_workers(3, 30) == 3
    assert preprocess_workers(8, 2) == 2
    assert 1 <= preprocess_workers(None, 1000) <= 1000
    assert preprocess_workers(None, 1) == 1


def test_a_worker_count_below_one_is_a_config_error() -> None:
    from datamodules.errors import DataError

    with pytest.raises(DataError, match="preprocess_workers must be at least 1"):
        build_datamodule(dict(name="synapse", preprocess_workers=0))
