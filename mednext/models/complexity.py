"""Parameter and FLOP counts, in both conventions of the suite (DESIGN 4.4).

- ``flops``: what ``torch.utils.flop_counter.FlopCounterMode`` counts, 2 per multiply-add of
  convolutions and matrix products.
- ``paper``: the convention of the paper that published the model's complexity. For MedNeXt that
  is fvcore's ``FlopCountAnalysis`` (the official script): multiply-adds of convolutions (a
  transposed convolution counted over its input positions, as FlopCounterMode also does) plus 5 per
  element of every affine GroupNorm/LayerNorm (fvcore's ``norm_flop_counter``), nothing for
  activations, additions or padding.

Counting runs on the meta device: no memory is allocated and nothing is computed, so the full-size
figures of the largest presets take well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# fvcore's norm_flop_counter: "5 is just a rough estimate" per element of an affine norm.
_FVCORE_NORM_FLOPS_PER_ELEMENT = 5
_NORMS = (nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Complexity:
    params: int
    flops: int
    paper_flops: int
    paper_convention: str
    input_shape: tuple[int, ...]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _norm_elements(model: nn.Module) -> tuple[int, Any]:
    total = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if getattr(module, "weight", None) is not None:
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _NORMS)]
    return total, handles


def measure(
    model: nn.Module, input_shape: Sequence[int], paper_convention: str = "fvcore"
) -> Complexity:
    """Count parameters and FLOPs of one forward pass of ``model`` on ``input_shape`` (batch
    included). The model may live on the meta device; it is run in its current train/eval mode."""
    if paper_convention != "fvcore":
        raise ValueError(f"unknown FLOP convention {paper_convention!r}; known: fvcore")
    device = next(model.parameters()).device
    x = torch.empty(tuple(input_shape), device=device)
    norm_total, handles = _norm_elements(model)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    flops = counter.get_total_flops()
    paper = flops // 2 + _FVCORE_NORM_FLOPS_PER_ELEMENT * norm_total[0]
    return Complexity(
        params=count_parameters(model),
        flops=flops,
        paper_flops=paper,
        paper_convention=paper_convention,
        input_shape=tuple(input_shape),
    )


def measure_registered(name: str, size: int | None = None, **kwargs: Any) -> Complexity:
    """Complexity of registered model ``name`` built on the meta device with ``kwargs`` on top of
    the family's reference arguments, at spatial size ``size`` (the family default when None)."""
    from mednext.models import build_model, get_family

    family = get_family(name)
    arguments = {**family.reference, **kwargs}
    with torch.device("meta"):
        model = build_model(name, **arguments)
    spatial_dims = getattr(model, "spatial_dims", 2)
    in_channels = getattr(model, "in_channels", arguments.get("in_channels", 3))
    size = family.input_size if size is None else size
    shape = (1, in_channels) + (size,) * spatial_dims
    return measure(model, shape, family.paper_convention)
