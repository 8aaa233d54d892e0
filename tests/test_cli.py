"""The command line: listing, data utilities and user errors without tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.synapse import SynapseVolumeDataModule
from mednext.cli import main


def test_train_list_shows_the_shipped_experiments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "synapse_mednext_b_k5" in listed and "brain_demo_mednext_s" in listed


def test_data_synthetic_writes_a_layout_the_datamodule_reads(tmp_path: Path, capsys) -> None:
    assert main(["data", "synthetic", "synapse", str(tmp_path / "Synapse")]) == 0
    assert "data.root=" in capsys.readouterr().out
    datamodule = SynapseVolumeDataModule(
        SynapseVolumeDataModule.Config(root=str(tmp_path / "Synapse"))
    )
    cases, problems = datamodule.find_cases(datamodule.root)
    assert len(cases) == 30 and not problems


def test_config_errors_are_one_line_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "synapse_mednext_s", "trainer.max_epoch=3"]) == 2
    error = capsys.readouterr().err
    assert "mednext train: unknown key 'trainer.max_epoch'" in error and "Traceback" not in error


@pytest.mark.parametrize(
    ("experiment", "loss", "trains_with"),
    [("synapse_mednext_s", "ce", "dice_ce"), ("sarscov2_mednext_lite_t", "dice_ce", "ce")],
)
def test_a_loss_the_task_does_not_train_with_is_refused_before_any_run(
    experiment: str, loss: str, trains_with: str, tmp_path: Path, capsys
) -> None:
    overrides = [f"loss.name={loss}", f"output.root={tmp_path / 'runs'}", "data.source=synthetic"]
    assert main(["train", experiment, *overrides]) == 2
    error = capsys.readouterr().err
    assert f"loss.name={loss!r}" in error and f"trains with {trains_with}" in error
    assert "Traceback" not in error and not (tmp_path / "runs").exists()


def test_data_synthetic_refuses_a_folder_that_holds_something(tmp_path: Path, capsys) -> None:
    (tmp_path / "Synapse").mkdir()
    (tmp_path / "Synapse" / "notes.txt").write_text("mine")
    assert main(["data", "synthetic", "synapse", str(tmp_path / "Synapse")]) == 2
    error = capsys.readouterr().err
    assert "exists and is not an empty folder" in error and "Traceback" not in error
    assert [p.name for p in (tmp_path / "Synapse").iterdir()] == ["notes.txt"]


def test_data_synthetic_of_an_unknown_dataset_names_the_known_ones(tmp_path: Path, capsys) -> None:
    assert main(["data", "synthetic", "synapze", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert "did you mean 'synapse'?" in error and "brain_demo" in error
    assert not (tmp_path / "x").exists()
