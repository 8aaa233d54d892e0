"""The nnU-Net user's path end to end at toy size: a two-channel nnU-Net v2 dataset planned,
trained over every fold (``data.fold=all``), the leaderboard's mean ± std over folds with a ResEnc
baseline beside, the folds as an ensemble in ``mednext predict`` and ``mednext test``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from datamodules import synthetic
from datamodules.nnunet import nnunet_case
from mednext.cli import main

#: A quiet toy run: tiny networks, a few iterations, validation every epoch, no mirroring.
TOY = [
    "data.num_workers=0",
    "data.iterations_per_epoch=2",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "logger.wandb.mode=disabled",
    "eval.mirror_tta=false",
    "model.width=4",
]


def _labelled_test_cases(root: Path) -> list[str]:
    """Replace the unlabelled ``imagesTs`` cases by labelled ones (``labelsTs``), so that every
    fold shares one test set."""
    rng = np.random.default_rng(7)
    cases = sorted({p.name.split("_")[1] for p in (root / "imagesTs").glob("*.nii.gz")})
    for number in cases:
        images, label, affine = nnunet_case(rng, (32, 32, 24), ("T2", "ADC"))
        for channel, image in enumerate(images):
            synthetic.save_nifti(
                image, affine, root / "imagesTs" / f"case_{number}_{channel:04d}.nii.gz"
            )
        synthetic.save_nifti(label, affine, root / "labelsTs" / f"case_{number}.nii.gz")
    return [f"case_{number}" for number in cases]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("nnunet")
    root = base / "Dataset777_Toy"
    assert main(["data", "synthetic", "nnunet", str(root)]) == 0
    test_cases = _labelled_test_cases(root)
    runs, cache = base / "runs", base / "cache"
    common = [f"data.root={root}", f"output.root={runs}", f"data.cache_dir={cache}", *TOY]
    plan = base / "plan.yaml"
    assert (
        main(
            [
                "plan",
                str(root),
                "model.width=4",
                f"data.cache_dir={cache}",
                "--gpu-memory",
                "0.3",
                "--out",
                str(plan),
            ]
        )
        == 0
    )
    folds = ["data.fold=all", "data.num_folds=2", f"data.plan={plan}"]
    assert main(["train", "nnunet_mednext_s", *common, *folds]) == 0
    resenc = [*common, "data.patch_size=[32,32,32]", "data.spacing=[1,1,3]"]
    assert main(["train", "nnunet_resenc_l", *resenc]) == 0
    return dict(base=base, root=root, runs=runs, plan=plan, test_cases=test_cases)


def test_every_fold_trains_with_the_plan(workflow: dict, capsys) -> None:
    runs = sorted((workflow["runs"] / "nnunet_mednext_s").iterdir())
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    assert sorted(r["fold"] for r in results) == [0, 1]
    assert all(r["status"] == "completed" for r in results)
    assert all(r["train_memory_gib"] > 0 for r in results)
    assert len({r["group_key"] for r in results}) == 1
    assert len({r["config_hash"] for r in results}) == 2
    plan = yaml.safe_load(workflow["plan"].read_text())
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["data"]["patch_size"] == plan["data"]["patch_size"]
        assert config["data"]["batch_size"] == plan["data"]["batch_size"]
        split = json.loads((run / "split.json").read_text())["split"]
        assert split["test"] == workflow["test_cases"]


def test_the_leaderboard_shows_folds_as_mean_std_beside_resenc(workflow: dict) -> None:
    out = workflow["base"] / "board"
    assert main(["leaderboard", str(workflow["runs"]), "--out", str(out)]) == 0
    text = (out / "leaderboard.md").read_text()
    configurations = text.split("### Configurations")[1].split("### Runs")[0]
    rows = [line for line in configurations.splitlines() if line.startswith("| ")]
    assert "| params (M) | GFLOPs | train GiB |" in rows.pop(0)
    mednext = next(row for row in rows if "nnunet_mednext_s" in row)
    assert "| mednext | S |" in mednext and "| 2 | 0 | 0, 1 |" in mednext and "(n=2)" in mednext
    resenc = next(row for row in rows if "nnunet_resenc_l" in row)
    assert "| resenc | L |" in resenc and "(n=1)" in resenc
    assert "## nnunet/Dataset777_Toy — segmentation" in text


def test_the_folds_predict_as_an_ensemble(workflow: dict, capsys) -> None:
    runs = sorted((workflow["runs"] / "nnunet_mednext_s").iterdir())
    out = workflow["base"] / "predicted"
    images = workflow["root"] / "imagesTs"
    assert main(["predict", *map(str, runs), str(images), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "ensemble of 2 models" in err and "using checkpoints/best.ckpt" in err
    for case in workflow["test_cases"]:
        written = nib.load(out / f"{case}.nii.gz")
        source = nib.load(images / f"{case}_0000.nii.gz")
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2}


def test_the_folds_test_as_an_ensemble(workflow: dict, capsys) -> None:
    runs = sorted((workflow["runs"] / "nnunet_mednext_s").iterdir())
    out = workflow["base"] / "ensemble"
    assert main(["test", *map(str, runs), "--out", str(out)]) == 0
    record = json.loads((out / "ensemble.json").read_text())
    assert [m["fold"] for m in record["members"]] == [0, 1]
    assert record["test_cases"] == len(workflow["test_cases"])
    assert 0 <= record["metrics"]["test"]["dice_mean"] <= 1
    assert (out / "test_cases.csv").is_file()
    assert "test mean Dice" in capsys.readouterr().out
