"""Ensembles: the averaged probabilities of several networks, through sliding windows and
mirroring, and how ``mednext predict`` tells models from inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mednext.cli import main
from mednext.ensemble import check_members, combine, split_models_and_inputs
from mednext.models.ensemble import EnsembleNetwork


class Fixed(nn.Module):
    """Returns the same logits for any input of its batch size."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], *self.logits.shape[1:])


def test_the_ensemble_softmax_is_the_mean_of_the_members_probabilities() -> None:
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[-3.0, 1.0, 0.5]])
    ensemble = EnsembleNetwork([Fixed(a), Fixed(b)]).eval()
    expected = (a.exp() / a.exp().sum() + b.exp() / b.exp().sum()) / 2
    torch.testing.assert_close(torch.softmax(ensemble(torch.zeros(1, 1)), dim=1), expected)
    with pytest.raises(RuntimeError, match="inference"):
        ensemble.train()(torch.zeros(1, 1))


def test_sliding_window_with_mirroring_averages_the_members(toy_runs) -> None:
    torch.manual_seed(0)
    members = [
        toy_runs.segmentation_task(
            {"name": "mednext", "variant": "S", "width": 4},
            {"mirror_tta": True, "sw_batch_size": 2, "sw_overlap": 0.5},
        )
        for _ in range(2)
    ]
    image = torch.randn(1, 1, 48, 40, 32)
    with torch.no_grad():
        single = [task.eval().predict_probabilities(image) for task in members]
        names = [Path("a.ckpt"), Path("b.ckpt")]
        ensemble = combine(members, names).eval()
        together = ensemble.predict_probabilities(image)
    assert not torch.allclose(single[0], single[1], atol=1e-3)
    torch.testing.assert_close(together, (single[0] + single[1]) / 2, atol=2e-5, rtol=1e-4)


def test_members_must_share_classes_and_preprocessing(toy_runs) -> None:
    model = {"name": "mednext", "variant": "S", "width": 4}
    first, second = toy_runs.segmentation_task(model), toy_runs.segmentation_task(model)
    first.preprocessing = {"spacing": [1.0, 1.0, 1.0]}
    second.preprocessing = {"spacing": [2.0, 2.0, 2.0]}
    with pytest.raises(ValueError, match=r"b\.ckpt: its preprocessing .* differs from a\.ckpt"):
        check_members([first, second], [Path("a.ckpt"), Path("b.ckpt")])


def test_models_come_first_then_the_inputs(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"")
    scans = tmp_path / "scans"
    scans.mkdir()
    assert split_models_and_inputs([run, checkpoint, scans]) == ([run, checkpoint], [scans])
    with pytest.raises(ValueError, match="no input given"):
        split_models_and_inputs([run, checkpoint])
    with pytest.raises(ValueError, match="name the model"):
        split_models_and_inputs([scans, run])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        split_models_and_inputs([tmp_path / "missing.ckpt", scans])
    assert main(["predict", str(scans), str(run), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "not a checkpoint (.ckpt) or a run folder" in error and "Traceback" not in error
