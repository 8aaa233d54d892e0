"""The embedded demo learns: the real `brain_demo_mednext_s` experiment, unchanged (about ten
minutes on a 2-core CPU; `make test-slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mednext.cli import main


@pytest.mark.slow
def test_demo_reaches_the_documented_dice(tmp_path: Path, capsys) -> None:
    arguments = [
        f"output.root={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "logger.wandb.mode=disabled",
    ]
    assert main(["train", "brain_demo_mednext_s", *arguments]) == 0
    printed = capsys.readouterr().out
    assert "test mean Dice" in printed and "overlay:" in printed
    results_file = next((tmp_path / "runs" / "brain_demo_mednext_s").glob("*/results.json"))
    test = json.loads(results_file.read_text())["metrics"]["test"]
    assert test["dice_mean"] >= 0.80
    assert min(test["dice/csf"], test["dice/gray_matter"], test["dice/white_matter"]) >= 0.6
