"""The training-step fast paths compute what the plain float32 step computes.

Each switch (``model.channels_last``, ``model.checkpointing: block|stage``, bf16 autocast,
``model.compile``) is compared at toy size with the plain step of the same task and weights: the
loss, every output and every parameter gradient. How fast each one is belongs to
``mednext bench`` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mednext.cli import main
from mednext.config import ConfigError
from mednext.models import build_model, runtime
from mednext.models.depthwise import (
    applies,
    depthwise_conv3d,
    upsampling_applies,
    upsampling_depthwise_conv3d,
    upsampling_pointwise_conv3d,
)
from mednext.tasks.segmentation import SegmentationTask

_TINY_MEDNEXT = {"name": "mednext", "variant": "B", "width": 4, "deep_supervision": True}


def _task(toy_runs: Any, **model: Any) -> SegmentationTask:
    return toy_runs.segmentation_task({**_TINY_MEDNEXT, **model})


def _batch(batch_size: int = 2, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch_size, 1, side, side, side, generator=generator)
    label = torch.randint(0, 3, (batch_size, 1, side, side, side), generator=generator)
    return image, label


def _step(task: SegmentationTask, image: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
    """One training step's loss, outputs and parameter gradients (the plain layout)."""
    task.train()
    task.net.zero_grad(set_to_none=True)
    outputs = task.net(image)
    loss = task.criterion(outputs, label)
    loss.backward()
    return {
        "loss": loss.detach(),
        "outputs": [out.detach().contiguous() for out in outputs],
        "grads": {name: p.grad.contiguous() for name, p in task.net.named_parameters()},
    }


def _pair(
    toy_runs: Any, architecture: dict[str, Any] | None = None, **fast: Any
) -> tuple[SegmentationTask, SegmentationTask]:
    """The plain task and one with the ``fast`` switches, same network and weights."""
    torch.manual_seed(0)
    plain = _task(toy_runs, **(architecture or {}))
    other = _task(toy_runs, **(architecture or {}), **fast)
    other.net.load_state_dict(plain.net.state_dict())
    return plain, other


def _assert_same_step(expected: dict[str, Any], actual: dict[str, Any], rtol: float) -> None:
    torch.testing.assert_close(actual["loss"], expected["loss"], rtol=rtol, atol=0.0)
    for want, got in zip(expected["outputs"], actual["outputs"], strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())
    assert actual["grads"].keys() == expected["grads"].keys()
    # Gradients compared on the scale of the largest one: the biases of the depthwise
    # convolutions feed a per-channel GroupNorm and have a true gradient of zero, computed as
    # rounding noise in either order.
    scale = max(g.abs().max().item() for g in expected["grads"].values())
    for name, want in expected["grads"].items():
        torch.testing.assert_close(actual["grads"][name], want, rtol=rtol, atol=rtol * scale)


# --- the depthwise convolutions ----------------------------------------------------------------


def _gradients(conv: Any, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``conv(*tensors)`` and the gradients of every input for a fixed random upstream
    gradient."""
    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    out = conv(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(upstream)
    return (out.detach(), *(t.grad for t in inputs))


@pytest.mark.parametrize(("batch", "depth", "kernel"), [(1, 12, 3), (2, 8, 5), (1, 2, 5)])
def test_depthwise_backward_matches_autograd_of_conv3d(batch: int, depth: int, kernel: int) -> None:
    """Input, weight and bias gradients of ``depthwise_conv3d`` against autograd of
    ``F.conv3d``, including a volume thinner than the kernel (taps entirely in the padding)."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, 6, depth, 10, 9)
    x = torch.randn(shape, generator=generator).to(memory_format=torch.channels_last_3d)
    weight = torch.randn(6, 1, kernel, kernel, kernel, generator=generator)
    bias = torch.randn(6, generator=generator)
    padding = kernel // 2
    assert applies(x)
    tensors = (x, weight, bias)
    want = _gradients(lambda a, w, b: F.conv3d(a, w, b, padding=padding, groups=6), tensors)
    got = _gradients(lambda a, w, b: depthwise_conv3d(a, w, b, padding), tensors)
    for expected, actual in zip(want, got, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def test_depthwise_fast_path_is_only_taken_where_it_was_measured() -> None:
    cl = torch.channels_last_3d
    x = torch.randn(1, 4, 4, 4, 4).to(memory_format=cl)
    assert applies(x)
    assert not applies(torch.randn(1, 4, 4, 4, 4))  # default layout
    assert not applies(x.double())
    with torch.no_grad():
        assert not applies(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(x)
    with pytest.raises(ValueError, match="cubic depthwise kernel"):
        depthwise_conv3d(x, torch.randn(4, 1, 3, 3, 3), None, padding=2)


@pytest.mark.parametrize(("kernel", "shape"), [(3, (8, 8, 8)), (3, (5, 7, 2)), (5, (6, 5, 4))])
def test_upsampling_depthwise_matches_conv_transpose3d(kernel: int, shape: tuple[int, ...]) -> None:
    """The up blocks' eight-parity forward pass against ``F.conv_transpose3d``, gradients
    included."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *shape, generator=generator).to(memory_format=torch.channels_last_3d)
    weight = torch.randn(6, 1, kernel, kernel, kernel, generator=generator)
    bias = torch.randn(6, generator=generator)
    assert upsampling_applies(x)
    padding = kernel // 2
    want = _gradients(
        lambda a, w, b: F.conv_transpose3d(a, w, b, stride=2, padding=padding, groups=6),
        (x, weight, bias),
    )
    got = _gradients(
        lambda a, w, b: upsampling_depthwise_conv3d(a, w, b, padding), (x, weight, bias)
    )
    assert got[0].is_contiguous(memory_format=torch.channels_last_3d)
    for expected, actual in zip(want, got, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def test_upsampling_pointwise_matches_conv_transpose3d() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 4, 3, generator=generator).to(memory_format=torch.channels_last_3d)
    weight = torch.randn(6, 3, 1, 1, 1, generator=generator)
    bias = torch.randn(3, generator=generator)
    want = _gradients(lambda a, w, b: F.conv_transpose3d(a, w, b, stride=2), (x, weight, bias))
    got = _gradients(upsampling_pointwise_conv3d, (x, weight, bias))
    assert got[0].is_contiguous(memory_format=torch.channels_last_3d)
    for expected, actual in zip(want, got, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


# --- channels-last ----------------------------------------------------------------------------


def test_channels_last_training_step_matches_the_plain_step(toy_runs) -> None:
    plain, fast = _pair(toy_runs, channels_last=True)
    assert fast.net.memory_format is torch.channels_last_3d
    assert fast.net.heads[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    image, label = _batch()
    _assert_same_step(_step(plain, image, label), _step(fast, image, label), rtol=1e-4)
    # The output of every level stays channels-last (no mixed-layout additions on the way).
    assert all(o.is_contiguous(memory_format=torch.channels_last_3d) for o in fast.net(image))


def test_channels_last_kernel5_and_eval_forward_match(toy_runs) -> None:
    plain, fast = _pair(toy_runs, {"kernel_size": 5}, channels_last=True)
    image, label = _batch(batch_size=1)
    _assert_same_step(_step(plain, image, label), _step(fast, image, label), rtol=1e-4)
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast.net(image), plain.net(image), rtol=1e-4, atol=1e-5)


def test_channels_last_2d_mednext_matches() -> None:
    torch.manual_seed(0)
    options = dict(in_channels=1, num_classes=3, width=4, spatial_dims=2, deep_supervision=True)
    plain = build_model("mednext", variant="S", **options)
    fast = build_model("mednext", variant="S", **options)
    fast.load_state_dict(plain.state_dict())
    fast.use_channels_last()
    x = torch.randn(2, 1, 64, 64)
    for want, got in zip(plain(x), fast(x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_channels_last_weights_load_into_a_plain_network(toy_runs) -> None:
    plain, fast = _pair(toy_runs, channels_last=True)
    state = fast.net.state_dict()
    assert state.keys() == plain.net.state_dict().keys()
    fresh = _task(toy_runs)
    fresh.net.load_state_dict(state)
    for name, tensor in fresh.net.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0.0, atol=0.0)


def test_channels_last_of_a_network_without_it_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model cmunext: model\.channels_last: the cmunext"):
        SegmentationTask(
            model={"name": "cmunext", "variant": "S", "channels_last": True},
            in_channels=1,
            num_classes=2,
            patch_size=[64, 64],
            spacing=[1.0, 1.0],
            class_names=["background", "a"],
            optim={},
            loss={},
            evaluation={},
        )


# --- gradient checkpointing ---------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["block", "stage"])
def test_checkpointing_matches_the_plain_step(granularity: str, toy_runs) -> None:
    plain, fast = _pair(toy_runs, checkpointing=granularity)
    assert fast.net.checkpointing == granularity
    image, label = _batch()
    _assert_same_step(_step(plain, image, label), _step(fast, image, label), rtol=1e-5)


def test_checkpointing_with_channels_last_matches_the_plain_step(toy_runs) -> None:
    plain, fast = _pair(toy_runs, checkpointing="stage", channels_last=True)
    image, label = _batch(batch_size=1)
    _assert_same_step(_step(plain, image, label), _step(fast, image, label), rtol=1e-4)


def test_unknown_checkpointing_is_a_config_error(toy_runs) -> None:
    with pytest.raises(ConfigError, match="checkpointing must be one of block, stage"):
        _task(toy_runs, checkpointing="layer")


# --- bf16 autocast ------------------------------------------------------------------------------


def test_bf16_autocast_step_stays_close_to_the_plain_step(toy_runs) -> None:
    """What ``trainer.precision=bf16-mixed`` runs on the CPU: the forward pass and loss under
    ``torch.autocast("cpu", torch.bfloat16)``; bf16's 8-bit mantissa allows about 1 % error."""
    plain, fast = _pair(toy_runs)
    image, label = _batch(batch_size=1)
    expected = _step(plain, image, label)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = _step(fast, image, label)
    torch.testing.assert_close(actual["loss"], expected["loss"], rtol=2e-2, atol=0.0)
    want = torch.cat([g.flatten() for g in expected["grads"].values()])
    got = torch.cat([g.flatten() for g in actual["grads"].values()])
    assert F.cosine_similarity(got.float(), want, dim=0) > 0.99


def test_fast_paths_train_through_the_configuration(tmp_path: Path, toy_runs) -> None:
    """``model.channels_last``, ``model.checkpointing`` and ``trainer.precision=bf16-mixed``
    together, as a user switches them on, in a toy run of ``mednext train``."""
    arguments = toy_runs.overrides(
        "volumes",
        tmp_path / "runs",
        tmp_path / "cache",
        "model.channels_last=true",
        "model.checkpointing=stage",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1",
    )
    assert main(["train", "synapse_mednext_s", *arguments]) == 0
    run = toy_runs.only_run(tmp_path / "runs", "synapse_mednext_s")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    assert 0 <= results["metrics"]["test"]["dice_mean"] <= 1


# --- torch.compile ----------------------------------------------------------------------------


def test_compile_is_on_for_cuda_and_off_for_cpu_unless_asked() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.compile_decision("auto", cpu) == (False, None)
    assert runtime.compile_decision(False, cuda) == (False, None)
    if runtime.missing_compiler() is None:
        assert runtime.compile_decision("auto", cuda) == (True, None)
        assert runtime.compile_decision(True, cpu) == (True, None)


def test_compile_without_a_compiler_says_so_and_runs_eagerly(toy_runs) -> None:
    from torch._inductor import config

    task = _task(toy_runs, compile=True)
    with config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        notice = task.prepare_network(torch.device("cpu"))
    assert notice is not None
    assert "no C++ compiler (no-such-c++-compiler) on PATH" in notice
    assert notice.endswith("running eagerly")
    assert getattr(task.net, "_compiled_call_impl", None) is None


def test_compile_setting_is_checked(toy_runs) -> None:
    with pytest.raises(ConfigError, match=r"model\.compile must be auto, true or false"):
        _task(toy_runs, compile="sometimes")


@pytest.mark.slow
@pytest.mark.skipif(
    runtime.missing_compiler() is not None, reason="torch.compile needs a C++ compiler"
)
def test_compiled_training_step_matches_the_eager_step(toy_runs) -> None:
    """``model.compile=true`` on the CPU (a minute of compilation, hence slow)."""
    plain, fast = _pair(toy_runs, compile=True)
    assert fast.prepare_network(torch.device("cpu")) is None
    assert fast.net._compiled_call_impl is not None
    assert fast.net.state_dict().keys() == plain.net.state_dict().keys()
    image, label = _batch(batch_size=1)
    _assert_same_step(_step(plain, image, label), _step(fast, image, label), rtol=1e-4)
