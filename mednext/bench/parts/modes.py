"""The training-step modes of the ``3d`` part: each fast path of ``mednext.models.runtime`` and
MedNeXt's checkpointing, alone or combined, applied to a network the way a user switches it on.

A mode is ``fp32`` (the plain step) or ``+``-joined features: ``channels-last`` (our
``use_channels_last``; for MONAI's network ``.to(memory_format=...)`` and a channels-last input,
what a MONAI user would do), ``compile`` (``nn.Module.compile``), ``bf16`` / ``fp16`` (the forward
pass under ``torch.autocast``, as ``trainer.precision=bf16-mixed`` / ``16-mixed`` run it) and
``checkpoint-block`` / ``checkpoint-stage`` (``MedNeXt(checkpointing=...)``). MONAI's MedNeXt
has no checkpointing: its "same mode" is the mode without it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from mednext.bench import MODE_FEATURES, PLAIN_MODE
from mednext.models.mednext import MedNeXt
from mednext.models.runtime import missing_compiler

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Mode:
    """One way of running a training step."""

    channels_last: bool = False
    compile: bool = False
    autocast: str | None = None
    checkpointing: str | None = None

    @property
    def name(self) -> str:
        features = [
            "channels-last" if self.channels_last else None,
            "compile" if self.compile else None,
            self.autocast,
            f"checkpoint-{self.checkpointing}" if self.checkpointing else None,
        ]
        return "+".join(f for f in features if f) or PLAIN_MODE

    @property
    def without_checkpointing(self) -> Mode:
        """The mode as MONAI's MedNeXt, which has no checkpointing, can run it."""
        return replace(self, checkpointing=None)


PLAIN = Mode()


def parse_mode(text: str) -> Mode:
    """``channels-last+compile`` as a ``Mode``; a ValueError names an unknown or doubled
    feature."""
    if text == PLAIN_MODE:
        return PLAIN
    features = text.split("+")
    unknown = [f for f in features if f not in MODE_FEATURES]
    if unknown or len(set(features)) != len(features):
        raise ValueError(
            f"mode {text!r}: features are {PLAIN_MODE} alone or {', '.join(MODE_FEATURES)} "
            "joined by +, each once"
        )
    autocast = [f for f in features if f in _AUTOCAST]
    checkpointing = [f.removeprefix("checkpoint-") for f in features if f.startswith("checkpoint")]
    if len(autocast) > 1 or len(checkpointing) > 1:
        raise ValueError(f"mode {text!r}: one autocast type and one checkpointing at most")
    return Mode(
        channels_last="channels-last" in features,
        compile="compile" in features,
        autocast=autocast[0] if autocast else None,
        checkpointing=checkpointing[0] if checkpointing else None,
    )


def check_modes(modes: tuple[Mode, ...], device: torch.device) -> None:
    """A ValueError for a mode this machine cannot run: compile without a C++ compiler, fp16
    autocast on the CPU."""
    if any(mode.compile for mode in modes):
        problem = missing_compiler()
        if problem is not None:
            raise ValueError(f"--modes compile: {problem}")
    if device.type == "cpu" and any(mode.autocast == "fp16" for mode in modes):
        raise ValueError("--modes fp16: fp16 mixed precision needs CUDA; use bf16 on the CPU")


class InMode(nn.Module):
    """``net`` run in ``mode``: its input made channels-last when asked, its forward pass under
    autocast when asked. Layout, compilation and checkpointing are set on ``net`` itself
    (``prepare``)."""

    def __init__(self, net: nn.Module, mode: Mode) -> None:
        super().__init__()
        self.net = net
        self.mode = mode

    def forward(self, x: torch.Tensor) -> object:
        if self.mode.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        dtype = _AUTOCAST.get(self.mode.autocast or "")
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return self.net(x)


def prepare(net: nn.Module, mode: Mode, device: torch.device) -> InMode:
    """``net`` on ``device`` in ``mode``'s layout, compiled when the mode says so. Our MedNeXt
    switches layout with its own ``use_channels_last``; any other network is converted."""
    net = net.to(device)
    if mode.channels_last and isinstance(net, MedNeXt):
        net.use_channels_last()
    elif mode.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    if mode.compile:
        net.compile()
    return InMode(net, mode)
