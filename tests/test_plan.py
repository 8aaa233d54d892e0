"""``mednext plan``: nnU-Net v2's target-spacing rule, the patch and batch search against a
network's measured activation memory, the plan file and ``data.plan`` in an experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mednext.cli import main
from mednext.config import ConfigError, compose
from mednext.plan import (
    DIVISOR,
    GIB,
    MIN_BATCH_SIZE,
    initial_patch,
    network_memory_model,
    plan_patch_and_batch,
    target_spacing,
)


def test_isotropic_data_take_the_median_spacing() -> None:
    spacings = np.array([[0.7, 0.7, 1.0], [0.8, 0.8, 1.2], [0.9, 0.9, 1.1]])
    shapes = np.array([[512, 512, 200]] * 3)
    assert target_spacing(spacings, shapes) == [0.8, 0.8, 1.1]


def test_anisotropic_data_take_the_tenth_percentile_of_the_coarse_axis() -> None:
    # Slices of 5 mm in most cases, 2.5 mm in some: the median is 5, more than three times the
    # in-plane 0.8 mm, and 30 slices are fewer than a third of 512 voxels: nnU-Net takes the 10th
    # percentile of the slice spacings (2.5 mm), which is still coarser than in-plane.
    z = np.array([2.5, 2.5, 5, 5, 5, 5, 5, 5, 5, 5])
    spacings = np.stack([np.full(10, 0.8), np.full(10, 0.8), z], axis=1)
    shapes = np.array([[512, 512, 30]] * 10)
    assert target_spacing(spacings, shapes) == [0.8, 0.8, 2.5]
    # Without the voxel anisotropy (as many slices as in-plane voxels) the median stays.
    assert target_spacing(spacings, np.array([[100, 100, 100]] * 10)) == [0.8, 0.8, 5.0]


def test_the_initial_patch_follows_the_physical_extent_and_the_median_image() -> None:
    assert initial_patch([1.0, 1.0, 1.0], [400, 400, 400]) == [256, 256, 256]
    assert initial_patch([1.0, 1.0, 1.0], [150, 400, 90]) == [160, 256, 96]
    anisotropic = initial_patch([0.8, 0.8, 3.2], [500, 500, 500])
    assert anisotropic[0] == anisotropic[1] > anisotropic[2]
    assert all(p % DIVISOR == 0 for p in anisotropic)


@pytest.fixture(scope="module")
def memory():
    model = {"name": "mednext", "variant": "S", "width": 4, "deep_supervision": True}
    return network_memory_model(model, 2, 3, "adamw")


def test_a_smaller_target_gets_a_smaller_patch_and_every_plan_fits(memory) -> None:
    spacing, median = [1.0, 1.0, 1.0], [160, 160, 160]
    big_patch, big_batch = plan_patch_and_batch(memory, 4 * GIB, spacing, median, 1e12)
    small_patch, small_batch = plan_patch_and_batch(memory, 0.25 * GIB, spacing, median, 1e12)
    assert np.prod(small_patch) < np.prod(big_patch)
    for patch, batch, budget in [(big_patch, big_batch, 4), (small_patch, small_batch, 0.25)]:
        assert batch >= MIN_BATCH_SIZE and all(p % DIVISOR == 0 for p in patch)
        assert memory.total(patch, batch) <= budget * GIB
    # The measured memory is linear in the batch: one more sample would not fit.
    assert memory.total(small_patch, small_batch + 1) > 0.25 * GIB or small_batch == MIN_BATCH_SIZE
    with pytest.raises(ValueError, match="more than the"):
        plan_patch_and_batch(memory, 1e5, spacing, median, 1e12)


def test_the_batch_covers_at_most_five_percent_of_the_dataset(memory) -> None:
    patch, batch = plan_patch_and_batch(memory, 8 * GIB, [1.0] * 3, [64, 64, 64], 64**3 * 400)
    assert patch == [64, 64, 64] and batch == 20  # 5 % of 400 volumes of one patch each


def test_plan_writes_a_file_an_experiment_uses(tmp_path: Path, capsys, monkeypatch) -> None:
    from datamodules import write_dataset

    root = write_dataset("nnunet", tmp_path / "Dataset321_Toy", seed=0)
    monkeypatch.chdir(tmp_path)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    tiny = ["model.width=4", cache]
    assert main(["plan", str(root), *tiny, "--gpu-memory", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "plan file: plans/" in out and "training cases of" in out
    plan_file = next((tmp_path / "plans").glob("*.yaml"))
    plan = yaml.safe_load(plan_file.read_text())
    assert plan["model"] == {"name": "mednext", "variant": "S", "kernel_size": 3}
    assert plan["fingerprint"]["cases"] >= 2 and len(plan["fingerprint"]["intensities"]) == 2
    assert plan["estimate"]["planned_gib"] <= 0.5
    assert plan["estimate"]["peak_over_saved_activations"] >= 1
    config = compose("nnunet_mednext_s", [f"data.root={root}", f"data.plan={plan_file}", cache])
    assert list(config.data.patch_size) == plan["data"]["patch_size"]
    assert config.data.batch_size == plan["data"]["batch_size"]
    assert list(config.data.spacing) == pytest.approx(plan["data"]["spacing"])
    # The command line still wins over the plan.
    config = compose(
        "nnunet_mednext_s", [f"data.root={root}", f"data.plan={plan_file}", "data.batch_size=7"]
    )
    assert config.data.batch_size == 7
    with pytest.raises(ConfigError, match=r"was made for model\.variant=S"):
        compose("nnunet_mednext_b", [f"data.root={root}", f"data.plan={plan_file}"])
    with pytest.raises(ConfigError, match="does not exist"):
        compose("nnunet_mednext_s", [f"data.root={root}", "data.plan=missing.yaml"])
