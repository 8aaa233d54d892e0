"""Bad values that used to be accepted: each is one clear message naming the key, before any run
folder exists, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mednext.cli import main
from mednext.config import ConfigError, compose


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("name=../outside", "name='../outside': the run folder's name below output.root"),
        ("name=/abs/run", "must be a relative path"),
        ("name=a/./b", "without '..', '.'"),
        ("optim.lr=-1", "optim.lr=-1.0: must be a positive learning rate"),
        ("optim.lr=0", "optim.lr=0.0: must be a positive learning rate"),
        ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: must be at least 0"),
        ("optim.momentum=1.5", "optim.momentum=1.5: must be in [0, 1)"),
        ("optim.min_lr=1", "optim.min_lr=1.0: must be in [0, optim.lr]"),
        ("optim.lr=nan", "optim.lr=nan: must be a positive learning rate"),
    ],
)
def test_out_of_range_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose("synapse_mednext_s", [override])
    assert message in str(error.value)


def test_a_sweep_point_name_stays_allowed() -> None:
    assert compose("synapse_mednext_s", ["name=compound/variant=B"]).name == "compound/variant=B"


def test_train_with_a_bad_value_creates_no_run_folder(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "synapse_mednext_s", "optim.lr=-1", f"output.root={runs}"]) == 2
    error = capsys.readouterr().err
    assert "optim.lr=-1.0" in error and "Traceback" not in error
    assert not runs.exists()


def test_predict_refuses_a_batch_size_below_one(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "run", "scans", "--out", "out", "--batch-size", "0"])
    assert exit_.value.code == 2
    assert "--batch-size: 0 is not at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\n  bad: [1,\n", "mapping values are not allowed"),
        (
            'name: !!python/object/apply:os.system ["echo hi"]\n',
            "could not determine a constructor",
        ),
    ],
)
def test_unreadable_experiment_files_are_one_message(
    tmp_path: Path, capsys, content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["train", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: cannot be read as YAML" in error and message in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--out", "{file}"], "a file, not a folder"),
        (["--out", "{out}", "--device", "tpu"], "--device tpu: not a device"),
        pytest.param(
            ["--out", "{out}", "--device", "cuda"],
            "--device cuda: no CUDA GPU here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_predict_refuses_a_bad_output_or_device(
    tmp_path: Path, capsys, arguments: list[str], message: str
) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a_file").write_text("")
    filled = [a.format(file=tmp_path / "a_file", out=tmp_path / "out") for a in arguments]
    assert main(["predict", str(tmp_path / "run"), str(tmp_path), *filled]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
