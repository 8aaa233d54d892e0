"""How a registry network runs, as opposed to what it computes: the switches of the ``model``
group that are not constructor arguments.

- ``model.channels_last`` (default ``false``): weights and activations in the channels-last
  layout (``MedNeXt.use_channels_last``). The same function; on the CPU a MedNeXt training step
  takes about half the time (docs/benchmarks.md).
- ``model.compile`` (default ``auto``): ``torch.compile`` the network in place
  (``nn.Module.compile``, which keeps the state-dict keys). ``auto`` compiles on CUDA, as
  nnU-Net v2 does, and not on the CPU, where compiling takes minutes; ``true`` and ``false``
  force it. Without a C++ compiler, which inductor needs, the network runs eagerly and the run
  says why.

Mixed precision is the Trainer's (``trainer.precision``), gradient checkpointing MedNeXt's own
(``model.checkpointing: block|stage``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: The ``model`` keys of this module, with their defaults.
RUN_OPTIONS: dict[str, Any] = {"channels_last": False, "compile": "auto"}


def split_run_options(model: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model`` as (constructor arguments, run options with defaults filled in); a run option
    of the wrong kind is a ValueError naming the key."""
    arguments = {k: v for k, v in model.items() if k not in RUN_OPTIONS}
    options = {
        key: default if model.get(key) is None else model[key]
        for key, default in RUN_OPTIONS.items()
    }
    if not isinstance(options["channels_last"], bool):
        raise ValueError(
            f"model.channels_last must be true or false, got {options['channels_last']!r}"
        )
    if not (options["compile"] == "auto" or isinstance(options["compile"], bool)):
        raise ValueError(f"model.compile must be auto, true or false, got {options['compile']!r}")
    return arguments, options


def use_channels_last(net: nn.Module, name: str) -> nn.Module:
    """``net`` switched to channels-last by its own ``use_channels_last``; a network that has
    none (only MedNeXt was measured) is a ValueError naming the model."""
    method = getattr(type(net), "use_channels_last", None)
    if method is None:
        raise ValueError(
            f"model.channels_last: the {name} networks do not implement it (only MedNeXt, whose "
            "speed-up is measured in docs/benchmarks.md)"
        )
    return method(net)


def missing_compiler() -> str | None:
    """Why ``torch.compile`` cannot build kernels here (no C++ compiler on ``PATH``, inductor's
    ``cpp.cxx`` candidates, ``CXX`` first), or None."""
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, tuple | list) else (config.cpp.cxx,)
    names = [str(c) for c in candidates if c]
    if any(shutil.which(name) for name in names):
        return None
    return (
        f"no C++ compiler ({', '.join(names) or 'none configured'}) on PATH; torch.compile's "
        "inductor backend needs one (install g++, or set CXX)"
    )


def compile_decision(setting: Any, device: torch.device) -> tuple[bool, str | None]:
    """Whether to compile for ``device`` under ``model.compile=setting``, and the notice to
    show: why a requested compile falls back to eager."""
    wanted = device.type == "cuda" if setting == "auto" else bool(setting)
    if not wanted:
        return False, None
    problem = missing_compiler()
    if problem is not None:
        return False, f"model.compile={setting}: {problem}; running eagerly"
    return True, None


def compile_network(net: nn.Module, setting: Any, device: torch.device) -> str | None:
    """Compile ``net`` in place when ``compile_decision`` says so; the notice, if any. A network
    that is already compiled is left as it is."""
    compile_now, notice = compile_decision(setting, device)
    if compile_now and getattr(net, "_compiled_call_impl", None) is None:
        net.compile()
    return notice
