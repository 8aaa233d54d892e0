"""DDP with two CPU processes (gloo): one run directory written by rank 0, and test metrics equal
to a single process's on the same checkpoint.

`strategy=ddp` re-launches the command once per rank, so the run goes through a subprocess with a
clean environment (ENVIRONMENT.md: inside pytest it would re-launch pytest itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mednext.cli import main

#: Variables a launcher sets; none may leak into the DDP run from the test process.
_LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "MEDNEXT_RUN_DIR",
    "TORCHELASTIC_RUN_ID",
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
)


def run_ddp(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    environment.update(WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run(
        [sys.executable, "-m", "mednext", "train", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "experiment, extra",
    [
        (
            "sarscov2_mednext_lite_t",
            [
                "data.image_size=64",
                "data.batch_size=8",
                "data.synthetic_per_class=40",
                "model.width=8",
                "model.depths=[1,1,1,1]",
            ],
        ),
        (
            "synapse_mednext_s",
            [
                "data.patch_size=[32,32,16]",
                "data.spacing=[2,2,4]",
                "data.iterations_per_epoch=2",
                "model.width=4",
                "eval.mirror_tta=false",
            ],
        ),
    ],
)
def test_two_process_ddp_trains_tests_and_matches_a_single_process(
    experiment: str, extra: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    arguments = [
        experiment,
        "data.source=synthetic",
        "data.num_workers=0",
        f"data.cache_dir={tmp_path / 'cache'}",
        *extra,
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.enable_model_summary=false",
        "logger.wandb.mode=disabled",
        f"output.root={root}",
    ]
    completed = run_ddp(arguments, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = list((root / experiment).iterdir())
    assert len(runs) == 1, runs  # every rank used rank 0's run directory
    run = runs[0]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 2
    ddp_metrics = results["metrics"]["test"]
    assert ddp_metrics
    assert (run / "split.json").is_file() and (run / "metrics.csv").is_file()

    # The same checkpoint tested by one process.
    assert main(["test", str(run)]) == 0
    single = json.loads((run / "results.json").read_text())["metrics"]["test"]
    for key, value in ddp_metrics.items():
        if value is None:
            assert single[key] is None, key
        else:
            assert single[key] == pytest.approx(value, abs=1e-5), key
