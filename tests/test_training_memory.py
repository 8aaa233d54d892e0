"""``training_memory`` (meta device, saved-tensor hooks) against a real CPU training step measured
by the allocator's own records (``torch.profiler`` with ``profile_memory``), and its scaling.

The real step is measured independently of the saved-tensor mechanism: every CPU allocation and
release of one forward and backward pass, in order. What is still allocated when the forward pass
ends is exactly what autograd keeps for the backward pass plus the outputs; the input batch,
allocated before the profiler starts, is saved by the first convolution and so counted by
``training_memory`` but not by the records.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from mednext.models import build_model
from mednext.models.complexity import measure, training_memory

TINY = {
    "unet": dict(width=4, patch_size=[32, 32, 32]),
    "resenc": dict(width=4, n_blocks_per_stage=[1, 2, 2, 2], patch_size=[32, 32, 32]),
    "mednext": dict(variant="S", width=4),
}


def _real_step(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes allocated at the end of the forward pass and at the peak of forward + backward,
    counted from the profiler's allocation records of a real CPU step; and the outputs' bytes."""
    x = torch.randn(shape)
    model.train()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("forward"):
            out = model(x)
        outputs = out if isinstance(out, list) else [out]
        output_bytes = sum(o.untyped_storage().nbytes() for o in outputs)
        sum(o.mean() for o in outputs).backward()
    events = prof.profiler.kineto_results.events()
    forward_end = next(e.end_ns() for e in events if e.name() == "forward")
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    current = peak = after_forward = 0
    for start, nbytes in records:
        current += nbytes
        peak = max(peak, current)
        if start <= forward_end:
            after_forward = current
    return {
        "after_forward": after_forward,
        "peak": peak,
        "outputs": output_bytes,
        "input": x.nbytes,
    }


@pytest.mark.parametrize("name", list(TINY))
def test_training_memory_is_what_a_real_forward_pass_keeps(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=3, **TINY[name])
    shape = (2, 1, 32, 32, 32)
    measured = training_memory(model, shape)
    real = _real_step(model, shape)
    kept = real["after_forward"] - real["outputs"] + real["input"]
    # The same tensors: only allocations of a few bytes (scalars) may differ.
    assert kept == pytest.approx(measured, rel=0.01)
    # Everything kept is alive when the backward pass starts, so the step's peak is at least the
    # measured figure; the rest of the peak is the backward pass's own gradients and workspaces.
    assert real["peak"] >= measured
    assert model.training and not any(p.is_meta for p in model.parameters())


def test_training_memory_is_linear_in_the_batch_and_leaves_the_model_as_it_was() -> None:
    with torch.device("meta"):
        model = build_model("resenc", variant="M", in_channels=1, num_classes=14)
    model.eval()
    one = training_memory(model, (1, 1, 128, 128, 128))
    assert training_memory(model, (2, 1, 128, 128, 128)) == 2 * one
    assert training_memory(model, (3, 1, 128, 128, 128)) == 3 * one
    assert not model.training


def test_gradient_checkpointing_keeps_less() -> None:
    plain = build_model("mednext", variant="S", in_channels=1, num_classes=3, width=4)
    checkpointed = build_model(
        "mednext", variant="S", in_channels=1, num_classes=3, width=4, checkpointing="block"
    )
    shape = (1, 1, 32, 32, 32)
    assert training_memory(checkpointed, shape) < training_memory(plain, shape) / 2


def test_measure_reads_flops_and_memory_in_one_pass() -> None:
    model = build_model("unet", in_channels=1, num_classes=3, **TINY["unet"])
    shape = (1, 1, 32, 32, 32)
    both = measure(model, shape, training=True, memory=True)
    assert both.train_memory == training_memory(model, shape)
    assert both.flops == measure(model, shape, training=True).flops
    assert measure(model, shape).train_memory is None
    with pytest.raises(ValueError, match="training pass"):
        measure(model, shape, training=False, memory=True)
