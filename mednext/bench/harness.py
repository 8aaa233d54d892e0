"""The measuring of ``mednext bench``: timed training and inference steps, the peak memory of one
training step, the networks of one comparison measured in alternation, and the progress display.

Nothing here knows which networks a part compares: a part builds its ``Network`` records and
hands them to ``measure_interleaved`` with an input and a loss.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import nn

from mednext.models.complexity import Complexity
from mednext.progress import progress_bar

MIB = 2**20

#: ``loss(model(x))``: the scalar a training step backpropagates.
Loss = Callable[[Any], torch.Tensor]
#: ``label(text)`` names what the progress display shows running and returns the callback that
#: counts one finished step.
ProgressLabel = Callable[[str], Callable[[], None]]


@dataclass(frozen=True)
class Network:
    """One network under test: how the tables name it, the model, and its parameters and FLOPs
    as its part counts them (``mednext.models.complexity.measure``)."""

    description: str
    model: nn.Module
    complexity: Complexity


@dataclass(frozen=True)
class Measurement:
    """One network's numbers: its counted complexity, median training-step time, peak allocation
    during one training step and, where measured, median inference-step time."""

    description: str
    complexity: Complexity
    step_ms: float
    peak_bytes: int
    inference_ms: float | None = None


def train_step(model: nn.Module, x: torch.Tensor, loss: Loss) -> None:
    """Forward, loss, backward, and the gradients dropped again."""
    loss(model(x)).backward()
    # Dropping the gradients inside the step lets every step, the profiled one included, start
    # from weights and input alone; gradients allocated before the profiler started and freed
    # under it would otherwise be logged by the CPU allocator as blocks of unknown size.
    model.zero_grad(set_to_none=True)


def inference_step(model: nn.Module, x: torch.Tensor) -> None:
    """Forward without gradients (the model in eval mode)."""
    with torch.no_grad():
        model(x)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of ``fn()``; CUDA work is waited for at both ends."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return (time.perf_counter() - start) * 1000


@contextmanager
def _kineto_log_quiet() -> Iterator[None]:
    # torch 2.13's Kineto backend prints "USDT ... profiler_start/stop" to stderr on every profile,
    # tearing the progress display. It reads KINETO_LOG_LEVEL when it first starts; 6 is above its
    # highest level. A level the user set is kept.
    previous = os.environ.get("KINETO_LOG_LEVEL")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KINETO_LOG_LEVEL", None)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by the CPU allocator during ``fn()`` above what it held before, from the
    PyTorch profiler's memory records: the maximum of the running sum of every allocation (+) and
    free (-) in time order. The CPU analogue of ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats``, less the memory already allocated when ``fn`` starts."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with (
        _kineto_log_quiet(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    # prof.events() folds each allocation into the cpu_memory_usage of the op that made it and
    # keeps as "[memory]" only the records outside every op, so read the raw records instead.
    records = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    records.sort(key=lambda event: event.start_ns())
    return max(accumulate((event.nbytes() for event in records), initial=0))


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on ``device`` during ``fn()`` above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def step_peak_bytes(model: nn.Module, x: torch.Tensor, loss: Loss) -> int:
    """Peak memory of one (untimed) training step above the weights and input."""
    if x.device.type == "cuda":
        return cuda_peak_bytes(lambda: train_step(model, x, loss), x.device)
    return cpu_peak_bytes(lambda: train_step(model, x, loss))


def peak_memory_method(device: torch.device) -> str:
    """How ``step_peak_bytes`` measures on ``device``, as the parts' Markdown method texts say it:
    ``"from …, above the memory held before the step (weights, input)"``."""
    if device.type == "cuda":
        source = "`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`"
    else:
        source = (
            "the PyTorch profiler's CPU allocator records (peak of the running sum of allocations "
            "and frees)"
        )
    return f"from {source}, above the memory held before the step (weights, input)"


def _rounds(
    models: Sequence[nn.Module],
    rounds: int,
    step: Callable[[nn.Module], object],
    device: torch.device,
    advance: Callable[[], None],
) -> list[list[float]]:
    """``rounds`` rounds of one timed ``step`` per model, the models alternating; milliseconds
    per model."""
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, model_times in zip(models, times, strict=True):
            model_times.append(timed(functools.partial(step, model), device))
            advance()
    return times


def measure_interleaved(
    networks: Sequence[Network],
    x: torch.Tensor,
    loss: Loss,
    warmup: int,
    steps: int,
    advance: Callable[[], None],
    inference: bool = False,
) -> list[Measurement]:
    """In train mode: warm up, profile one training step of each network, then time ``steps``
    training steps, the networks alternating step by step. With ``inference``, then in eval
    mode: ``warmup`` and ``steps`` inference steps in the same way. ``advance`` is called after
    every step. The networks are left in train mode."""
    models = [network.model for network in networks]
    train = functools.partial(train_step, x=x, loss=loss)
    infer = functools.partial(inference_step, x=x)
    for model in models:
        model.train()
    _rounds(models, warmup, train, x.device, advance)
    peaks = []
    for model in models:
        peaks.append(step_peak_bytes(model, x, loss))
        advance()
    train_times = _rounds(models, steps, train, x.device, advance)
    inference_times: list[list[float] | None] = [None] * len(models)
    if inference:
        for model in models:
            model.eval()
        _rounds(models, warmup, infer, x.device, advance)
        inference_times[:] = _rounds(models, steps, infer, x.device, advance)
        for model in models:
            model.train()
    return [
        Measurement(
            description=network.description,
            complexity=network.complexity,
            step_ms=statistics.median(network_times),
            peak_bytes=peak,
            inference_ms=None if inferred is None else statistics.median(inferred),
        )
        for network, network_times, peak, inferred in zip(
            networks, train_times, peaks, inference_times, strict=True
        )
    ]


def steps_per_network(warmup: int, steps: int, inference: bool) -> int:
    """Steps (each followed by a progress advance) that ``measure_interleaved`` runs per network."""
    return warmup + 1 + steps + ((warmup + steps) if inference else 0)


@contextmanager
def progress_display(total: int) -> Iterator[ProgressLabel]:
    """The suite's progress bar on stderr, removed when done, for ``total`` steps; yields the
    ``ProgressLabel`` that names what is running and counts its steps."""
    from rich.console import Console

    with progress_bar(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task("steps", total=total)

        def label(text: str) -> Callable[[], None]:
            progress.update(task, description=text)
            return lambda: progress.advance(task)

        yield label
