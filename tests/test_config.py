"""Experiment configuration: composition, overrides, interpolation and the error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mednext.config import EXPERIMENTS_DIR, ConfigError, compose, list_experiments


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_shipped_experiment_composes() -> None:
    names = list_experiments()
    assert {
        "synapse_mednext_s",
        "synapse_mednext_b_k5",
        "acdc_mednext_l",
        "brain_demo_mednext_s",
    } <= set(names)
    for name in names:
        config = compose(name)
        assert config.name == name
        assert config.data.source == "real"


def test_official_recipe_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDNEXT_DATA", "/datasets")
    config = compose(
        "synapse_mednext_b",
        ["trainer.max_epochs=3", "data.patch_size=[64,64,32]", "model.exp_r=2", "optim.lr=0.01"],
    )
    assert config.model.variant == "B" and config.model.kernel_size == 3
    assert config.optim.name == "adamw" and config.optim.eps == 1e-4 and config.optim.lr == 0.01
    assert config.optim.weight_decay == 3e-5
    assert config.trainer.max_epochs == 3 and config.trainer.gradient_clip_val == 12
    assert list(config.data.patch_size) == [64, 64, 32]
    assert config.model.exp_r == 2
    assert config.data.root == "/datasets/Synapse"
    assert list(config.loss.ds_weights) == [0.5161, 0.2581, 0.1290, 0.0645, 0.0323]


def test_kernel5_experiment_initialises_from_the_kernel3_run_by_upkern() -> None:
    config = compose("synapse_mednext_b_k5")
    assert config.model.kernel_size == 5
    assert config.init.upkern_from == "synapse_mednext_b"


@pytest.mark.parametrize(
    "override, key, closest",
    [
        ("trainer.max_epoch=3", "trainer.max_epoch", "max_epochs"),
        ("data.patch_sizee=[32,32,32]", "data.patch_sizee", "patch_size"),
        ("model.kernel_sze=5", "model.kernel_sze", "kernel_size"),
        ("optim.weight_decy=0.1", "optim.weight_decy", "weight_decay"),
        ("logger.wandb.mdoe=online", "logger.wandb.mdoe", "mode"),
        ("sead=3", "sead", "seed"),
    ],
)
def test_unknown_override_names_key_source_and_closest(
    override: str, key: str, closest: str
) -> None:
    with pytest.raises(ConfigError) as error:
        compose("synapse_mednext_s", [override])
    message = str(error.value)
    assert repr(key) in message and "the command line" in message and f"{closest}?" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mine.yaml",
        f"extends: {EXPERIMENTS_DIR / 'synapse_mednext_s.yaml'}\n"
        "name: mine\noptim:\n  learning_rate: 0.1\n",
    )
    with pytest.raises(ConfigError) as error:
        compose(path)
    message = str(error.value)
    assert "'optim.learning_rate'" in message and "mine.yaml" in message


def test_mistyped_value_names_key_and_source() -> None:
    with pytest.raises(ConfigError, match=r"'optim.lr' in the command line"):
        compose("synapse_mednext_s", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"'data.batch_size' in the command line"):
        compose("synapse_mednext_s", ["data.batch_size=two"])


def test_invalid_choices_and_reserved_trainer_keys() -> None:
    with pytest.raises(ConfigError, match=re.escape("logger.wandb.mode='sometimes'")):
        compose("synapse_mednext_s", ["logger.wandb.mode=sometimes"])
    with pytest.raises(ConfigError, match=re.escape("data.source='fake'")):
        compose("synapse_mednext_s", ["data.source=fake"])
    with pytest.raises(ConfigError, match=re.escape("set by the suite; use output.root")):
        compose("synapse_mednext_s", ["trainer.default_root_dir=/tmp"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        compose("synapse_mednext_s", ["trainer.max_epochs"])
    with pytest.raises(ConfigError, match=re.escape("data.name")):
        compose("synapse_mednext_s", ["data.name=imagenet"])


def test_unknown_experiment_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean synapse_mednext_s"):
        compose("synapse_mednext_z")
    with pytest.raises(ConfigError, match="experiment file not found"):
        compose(tmp_path / "none.yaml")


def test_extends_cycle_and_missing_parent(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", f"extends: {tmp_path / 'b.yaml'}\n")
    write(tmp_path / "b.yaml", f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="cycle"):
        compose(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=re.escape("`extends: nowhere.yaml` not found")):
        compose(tmp_path / "c.yaml")
