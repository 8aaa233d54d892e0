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
