"""Cross-validation and repetitions: the configuration key that groups runs over seeds and folds,
and how ``data.fold=all`` becomes one ``mednext train`` per fold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mednext.cli import main
from mednext.runs.folds import fold_commands, fold_summary, split_fold_all
from mednext.runs.layout import REPETITION_KEYS, configuration_key, newest_resumable_run

CONFIG = {
    "name": "synapse_mednext_s",
    "seed": 0,
    "resume": False,
    "model": {"name": "mednext", "variant": "S"},
    "data": {"name": "synapse", "fold": 0, "num_folds": 5},
    "optim": {"lr": 1e-3},
    "output": {"root": "runs"},
    "logger": {"wandb": {"mode": "offline"}},
}


def _changed(dotted: str, value: object) -> dict:
    config = json.loads(json.dumps(CONFIG))
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    return config


def test_the_configuration_key_ignores_only_where_a_run_is_recorded() -> None:
    key = configuration_key(CONFIG)
    assert len(key) == 16 and configuration_key(json.loads(json.dumps(CONFIG))) == key
    for dotted, value in [
        ("name", "other"),
        ("output.root", "/elsewhere"),
        ("logger.wandb.mode", "disabled"),
    ]:
        assert configuration_key(_changed(dotted, value)) == key, dotted
    changes = [("seed", 1), ("data.fold", 1), ("optim.lr", 1e-2), ("model.variant", "B")]
    for dotted, value in changes:
        assert configuration_key(_changed(dotted, value)) != key, dotted


def test_the_group_key_also_ignores_seed_and_fold_and_leaves_the_config_alone() -> None:
    group = configuration_key(CONFIG, REPETITION_KEYS)
    assert configuration_key(_changed("seed", 7), REPETITION_KEYS) == group
    assert configuration_key(_changed("data.fold", 3), REPETITION_KEYS) == group
    assert configuration_key(_changed("optim.lr", 1e-2), REPETITION_KEYS) != group
    assert CONFIG["data"]["fold"] == 0 and CONFIG["seed"] == 0  # nothing removed from the input


def test_fold_all_is_split_from_the_other_overrides() -> None:
    assert split_fold_all(["trainer.max_epochs=2", "data.fold=all"]) == (
        True,
        ["trainer.max_epochs=2"],
    )
    assert split_fold_all(["data.fold='all'"]) == (True, [])
    assert split_fold_all(["data.fold=2"]) == (False, ["data.fold=2"])
    with pytest.raises(ValueError, match=r"data\.fold=all and a single data\.fold=k"):
        split_fold_all(["data.fold=all", "data.fold=1"])
    commands = fold_commands("acdc_mednext_s", ["seed=3"], 3)
    assert [c[-1] for c in commands] == ["data.fold=0", "data.fold=1", "data.fold=2"]
    assert commands[0][:5] == [sys.executable, "-m", "mednext", "train", "acdc_mednext_s"]
    assert all(c[5] == "seed=3" for c in commands)


def test_fold_all_with_a_single_fold_is_one_message(capsys) -> None:
    assert main(["train", "synapse_mednext_s", "data.fold=all", "data.fold=0"]) == 2
    assert "data.fold=all and a single data.fold=k" in capsys.readouterr().err


def _run(root: Path, name: str, fold: int | None, metrics: dict) -> Path:
    run = root / "exp" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    record = {"status": "completed", "fold": fold, "metrics": metrics}
    (run / "results.json").write_text(json.dumps(record))
    return run


def test_fold_summary_gives_every_fold_and_mean_std(tmp_path: Path) -> None:
    runs = {
        fold: _run(tmp_path, f"r{fold}", fold, {"val": {"dice_mean": v}, "test": {}})
        for fold, v in enumerate([0.5, 0.7])
    }
    assert fold_summary(runs) == ["val dice_mean: 0.6000 ± 0.1414 (n=2)  [0: 0.5000, 1: 0.7000]"]


def test_resume_picks_the_newest_run_of_the_same_fold(tmp_path: Path) -> None:
    older = _run(tmp_path, "a", 1, {})
    _run(tmp_path, "b", 2, {})
    _run(tmp_path, "c", None, {})
    assert newest_resumable_run(tmp_path, "exp", 1) == older
    assert newest_resumable_run(tmp_path, "exp", 3) is None
    assert newest_resumable_run(tmp_path, "exp") == tmp_path / "exp" / "c"


def test_runs_of_any_nnunet_dataset_are_compared_within_their_dataset() -> None:
    from mednext.runs.layout import dataset_label

    assert dataset_label({"name": "synapse", "root": "/data/Synapse"}) == "synapse"
    nnunet = {"name": "nnunet", "root": "/data/nnUNet_raw/Dataset004_Hippocampus/"}
    assert dataset_label(nnunet) == "nnunet/Dataset004_Hippocampus"
    assert (
        dataset_label({"name": "nnunet", "root": "", "source": "synthetic"}) == "nnunet/synthetic"
    )
