"""Sliding-window inference with mirroring: the flips of a window batched into fewer forward
passes compute the per-flip average, fewer flips at a time where memory does not allow them all,
and the defaults per device."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mednext.config import ConfigError, compose
from mednext.models import build_model
from mednext.tasks.segmentation import (
    SegmentationTask,
    flips_per_forward,
    mirror_flips,
    mirrored_probabilities,
)


def _network(spatial_dims: int) -> nn.Module:
    torch.manual_seed(0)
    net = build_model(
        "mednext", variant="S", in_channels=1, num_classes=3, width=4, spatial_dims=spatial_dims
    )
    return net.eval()


@pytest.mark.parametrize(("spatial_dims", "batch"), [(3, 8), (3, 3), (2, 4), (2, 2)])
def test_batched_flips_average_the_same_probabilities(spatial_dims: int, batch: int) -> None:
    net = _network(spatial_dims)
    x = torch.randn(2, 1, *(32,) * spatial_dims)
    with torch.no_grad():
        one_by_one = mirrored_probabilities(net, x, True, spatial_dims, flips_per_forward=1)
        batched = mirrored_probabilities(net, x, True, spatial_dims, flips_per_forward=batch)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)
    assert len(mirror_flips(spatial_dims, True)) == 2**spatial_dims


def test_without_mirroring_one_forward_pass() -> None:
    calls = []
    net = _network(3)
    net.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    with torch.no_grad():
        mirrored_probabilities(net, torch.randn(1, 1, 32, 32, 32), False, 3, flips_per_forward=8)
    assert calls == [1]


def test_flips_per_forward_defaults_by_device() -> None:
    assert flips_per_forward(None, 3, torch.device("cuda")) == 8
    assert flips_per_forward(None, 2, torch.device("cuda")) == 4
    assert flips_per_forward(None, 3, torch.device("cpu")) == 1
    assert flips_per_forward(2, 3, torch.device("cpu")) == 2


class MemoryLimit(nn.Module):
    """A network on a device that runs out of memory above ``limit`` windows per forward pass
    (``torch.OutOfMemoryError``, what CUDA raises), for the fallback that needs one."""

    def __init__(self, net: nn.Module, limit: int) -> None:
        super().__init__()
        self.net = net
        self.limit = limit
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> Any:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (test limit)")
        self.batches.append(len(x))
        return self.net(x)


def _task(toy_runs: Any, mirror_batch: int | None) -> SegmentationTask:
    torch.manual_seed(0)
    evaluation = dict(sw_overlap=0.5, sw_batch_size=1, mirror_tta=True, mirror_batch=mirror_batch)
    model = {"name": "mednext", "variant": "S", "width": 4}
    return toy_runs.segmentation_task(model, evaluation).eval()


def test_too_many_flips_for_memory_fall_back_to_fewer(toy_runs) -> None:
    plain, limited = _task(toy_runs, 1), _task(toy_runs, 8)
    limited.net.load_state_dict(plain.net.state_dict())
    limited.net = MemoryLimit(limited.net, limit=2)
    image = torch.randn(1, 1, 40, 32, 32)
    with torch.no_grad():
        expected = plain.predict_probabilities(image)
        got = limited.predict_probabilities(image)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert limited._flips_per_forward == 2
    assert set(limited.net.batches) == {2}


def test_mirror_batch_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"eval\.mirror_batch=0: at least 1"):
        compose("synapse_mednext_s", ["eval.mirror_batch=0"])
