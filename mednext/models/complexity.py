"""Parameter and FLOP counts, in both conventions of the suite (docs/models.md, "Complexity
conventions").

- ``flops``: what ``torch.utils.flop_counter.FlopCounterMode`` counts, 2 per multiply-add of
  convolutions and matrix products.
- ``paper``: the convention of the paper that published the model's complexity. For MedNeXt that
  is fvcore's ``FlopCountAnalysis`` (the official script): multiply-adds of convolutions (a
  transposed convolution counted over its input positions, as FlopCounterMode also does) plus 5 per
  element of every affine GroupNorm/LayerNorm (fvcore's ``norm_flop_counter``), nothing for
  activations, additions or padding.
  For CMUNeXt it is thop's ``profile`` (thop 0.1.1, the last PyPI release of
  Lyken17/pytorch-OpCounter): per-module rules keyed by the module's exact type, whose "FLOPs" are
  multiply-accumulates. The rules are re-stated here as forward hooks (``_THOP_RULES``) rather than
  imported: thop 0.1.1 imports ``distutils`` (gone from the standard library since Python 3.12)
  and adds buffers to every module it profiles. On every CMUNeXt preset the count equals thop's.

Counting runs on the meta device: no memory is allocated and nothing is computed, so the full-size
figures of the largest presets take well under a second.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

# fvcore's norm_flop_counter: "5 is just a rough estimate" per element of an affine norm.
_FVCORE_NORM_FLOPS_PER_ELEMENT = 5
_NORMS = (nn.GroupNorm, nn.LayerNorm)
_PAPER_CONVENTIONS = ("fvcore", "thop")


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


_ThopRule = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], int]


def _thop_conv(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    # thop calculate_conv2d_flops: output elements x input channels per group x kernel elements;
    # no bias term, and a transposed conv is counted over its output positions too.
    kernel = math.prod(module.weight.shape[2:])
    return output.numel() * (inputs[0].shape[1] // module.groups) * kernel


def _thop_norm(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    # thop count_normalization: 2 per input element, twice that for an affine norm.
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return (4 if affine else 2) * inputs[0].numel()


# thop calculate_upsample, per output element; other modes (trilinear included) count zero.
_THOP_UPSAMPLE_OPS = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 224 + 35}


def _thop_upsample(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
) -> int:
    return _THOP_UPSAMPLE_OPS.get(module.mode, 0) * output.numel()


def _thop_linear(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return module.in_features * output.numel()


def _thop_avgpool(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return output.numel()


def _thop_adaptive_avgpool(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
) -> int:
    # thop count_adap_avgpool: (input/output size ratio + 1 division) per output element.
    ratio = math.prod(i / o for i, o in zip(inputs[0].shape[2:], output.shape[2:], strict=True))
    return int((ratio + 1) * output.numel())


# thop's register_hooks for the layer types of this suite, matched on type(module) exactly as thop
# does. Types without a rule count zero, as in thop: activations (ReLU, GELU), max pooling,
# GroupNorm, and every functional op (additions, concatenation, F.interpolate, matmul). thop's
# rules for PReLU, LeakyReLU, Softmax and recurrent layers are not reproduced; no model uses them.
_THOP_RULES: dict[type[nn.Module], _ThopRule] = {
    **dict.fromkeys(
        (
            nn.Conv1d,
            nn.Conv2d,
            nn.Conv3d,
            nn.ConvTranspose1d,
            nn.ConvTranspose2d,
            nn.ConvTranspose3d,
        ),
        _thop_conv,
    ),
    **dict.fromkeys(
        (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.SyncBatchNorm,
            nn.LayerNorm,
            nn.InstanceNorm1d,
            nn.InstanceNorm2d,
            nn.InstanceNorm3d,
        ),
        _thop_norm,
    ),
    **dict.fromkeys((nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d), _thop_upsample),
    nn.Linear: _thop_linear,
    **dict.fromkeys((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), _thop_avgpool),
    **dict.fromkeys(
        (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
        _thop_adaptive_avgpool,
    ),
}


def _thop_macs(model: nn.Module) -> tuple[list[int], list[Any]]:
    total = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        total[0] += _THOP_RULES[type(module)](module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in _THOP_RULES]
    return total, handles


def measure(
    model: nn.Module,
    input_shape: Sequence[int],
    paper_convention: str = "fvcore",
    training: bool | None = None,
) -> Complexity:
    """Count parameters and FLOPs of one forward pass of ``model`` on ``input_shape`` (batch
    included), in train mode (``training=True``), eval mode (``False``) or the model's current
    mode (``None``); the model's mode is restored afterwards.

    The pass runs on the meta device whatever device the model lives on: the model itself is
    called with meta stand-ins for its parameters and buffers (``torch.func.functional_call``), so
    nothing is computed or allocated, the model is not copied, and a model built for training is
    counted as it is. An input the network refuses raises the network's own ``ValueError``."""
    if paper_convention not in _PAPER_CONVENTIONS:
        raise ValueError(
            f"unknown FLOP convention {paper_convention!r}; known: {', '.join(_PAPER_CONVENTIONS)}"
        )
    stand_ins = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    x = torch.empty(tuple(input_shape), device="meta")
    counted, handles = (_thop_macs if paper_convention == "thop" else _norm_elements)(model)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    if training is not None:
        model.train(training)
    try:
        with torch.no_grad(), counter:
            functional_call(model, stand_ins, (x,))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    flops = counter.get_total_flops()
    if paper_convention == "thop":
        paper = counted[0]
    else:
        paper = flops // 2 + _FVCORE_NORM_FLOPS_PER_ELEMENT * counted[0]
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
    spatial_dims = arguments.get("spatial_dims", family.spatial_dims)
    size = family.input_size if size is None else size
    shape = (1, arguments["in_channels"]) + (size,) * spatial_dims
    return measure(model, shape, family.paper_convention)
