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
figures of the largest presets take well under a second. So does ``training_memory``: the bytes of
the activations autograd keeps from a training forward pass for the backward pass, measured on the
network's own graph.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

# fvcore's norm_flop_counter: "5 is just a rough estimate" per element of an affine norm; fvcore
# applies it to aten::group_norm, layer_norm and instance_norm (nnU-Net's networks).
_FVCORE_NORM_FLOPS_PER_ELEMENT = 5
_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_PAPER_CONVENTIONS = ("fvcore", "thop")


@dataclass(frozen=True)
class Complexity:
    params: int
    flops: int
    paper_flops: int
    paper_convention: str
    input_shape: tuple[int, ...]
    # Bytes of activations kept for the backward pass (``training_memory``), when measured.
    train_memory: int | None = None


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


def _meta_stand_ins(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta tensors in place of every parameter (needing a gradient where it does) and buffer,
    for ``functional_call(..., tie_weights=False)``: one name per module slot (a module reachable
    under two names, as nnU-Net's ``decoder.encoder`` and ``all_modules``, is swapped once and
    restored once) and one stand-in per tensor (a tensor shared by two modules stays shared)."""
    stand_ins: dict[str, torch.Tensor] = {}
    by_tensor: dict[int, torch.Tensor] = {}
    slots: set[tuple[int, str]] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        own = itertools.chain(
            module.named_parameters(recurse=False), module.named_buffers(recurse=False)
        )
        for attribute, tensor in own:
            if (id(module), attribute) in slots:
                continue
            slots.add((id(module), attribute))
            if id(tensor) not in by_tensor:
                by_tensor[id(tensor)] = torch.empty_like(tensor, device="meta").requires_grad_(
                    tensor.requires_grad
                )
            stand_ins[f"{prefix}.{attribute}" if prefix else attribute] = by_tensor[id(tensor)]
    return stand_ins


class _SavedForBackward:
    """Bytes of the storages autograd saves for the backward pass while the context is open
    (``torch.autograd.graph.saved_tensors_hooks``), each storage once (views and in-place
    results share one), leaving out those of ``excluded`` tensors (the parameters)."""

    def __init__(self, excluded: Iterable[torch.Tensor]) -> None:
        self.excluded = {t.untyped_storage()._cdata for t in excluded}
        self.saved: dict[int, int] = {}
        # Holding the saved tensors keeps their storages, and so their identities, alive.
        self.kept: list[torch.Tensor] = []
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.excluded:
            self.saved[storage._cdata] = storage.nbytes()
            self.kept.append(tensor)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def total(self) -> int:
        return sum(self.saved.values())

    def __enter__(self) -> _SavedForBackward:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)
        self.kept.clear()


def training_memory(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of the activations that one training forward pass of ``model`` on a float32 input of
    ``input_shape`` (batch included) keeps for the backward pass.

    Measured, not estimated: the forward pass runs in train mode with gradients enabled on the
    meta device (meta stand-ins for the parameters and buffers, as in ``measure``), under
    ``torch.autograd.graph.saved_tensors_hooks``, and the storages of every tensor autograd saves
    are summed, each once (views and in-place results share one). The parameters themselves are
    not counted (nor gradients or optimiser state); the input is, where a layer saves it.
    Gradient checkpointing is honoured: what a checkpointed region recomputes is not saved. The
    model's mode is restored afterwards. The figure is linear in the batch size. It is what stays
    allocated at the end of the forward pass besides the parameters, the input and the outputs;
    the peak of a training step adds the backward pass's transient gradients to it
    (tests/test_training_memory.py compares both with a real CPU step)."""
    return measure(model, input_shape, training=True, memory=True).train_memory


def measure(
    model: nn.Module,
    input_shape: Sequence[int],
    paper_convention: str = "fvcore",
    training: bool | None = None,
    memory: bool = False,
) -> Complexity:
    """Count parameters and FLOPs of one forward pass of ``model`` on ``input_shape`` (batch
    included), in train mode (``training=True``), eval mode (``False``) or the model's current
    mode (``None``); the model's mode is restored afterwards. With ``memory``, the same pass runs
    in train mode with gradients enabled and also measures ``train_memory`` (``training_memory``).

    The pass runs on the meta device whatever device the model lives on: the model itself is
    called with meta stand-ins for its parameters and buffers (``torch.func.functional_call``), so
    nothing is computed or allocated, the model is not copied, and a model built for training is
    counted as it is. An input the network refuses raises the network's own ``ValueError``."""
    if paper_convention not in _PAPER_CONVENTIONS:
        raise ValueError(
            f"unknown FLOP convention {paper_convention!r}; known: {', '.join(_PAPER_CONVENTIONS)}"
        )
    if memory and training is False:
        raise ValueError("the training memory is that of a training pass: memory=True needs train")
    stand_ins = _meta_stand_ins(model)
    x = torch.empty(tuple(input_shape), device="meta")
    counted, handles = (_thop_macs if paper_convention == "thop" else _norm_elements)(model)
    counter = FlopCounterMode(display=False)
    saved = _SavedForBackward(stand_ins.values()) if memory else None
    was_training = model.training
    if training is not None or memory:
        model.train(True if memory else training)
    try:
        with torch.enable_grad() if memory else torch.no_grad(), saved or nullcontext(), counter:
            functional_call(model, stand_ins, (x,), tie_weights=False)
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
        train_memory=saved.total if saved is not None else None,
    )


def registered_on_meta(
    name: str, size: int | None = None, **kwargs: Any
) -> tuple[nn.Module, tuple[int, ...], str]:
    """Registered model ``name`` built on the meta device with ``kwargs`` on top of the family's
    reference arguments, the input shape of the complexity table (batch 1, every side ``size``;
    when None the family's input size, or, for families without one, the patch the network is
    planned for) and the family's FLOP convention."""
    from mednext.models import build_model, get_family

    family = get_family(name)
    arguments = {**family.reference, **kwargs}
    with torch.device("meta"):
        model = build_model(name, **arguments)
    spatial_dims = arguments.get("spatial_dims", family.spatial_dims)
    if size is None and family.input_size is None:
        spatial = tuple(model.patch_size)
    else:
        spatial = (family.input_size if size is None else size,) * spatial_dims
    return model, (1, arguments["in_channels"], *spatial), family.paper_convention


def measure_registered(
    name: str, size: int | None = None, memory: bool = False, **kwargs: Any
) -> Complexity:
    """Complexity of registered model ``name`` built on the meta device with ``kwargs`` on top of
    the family's reference arguments, at the input of ``registered_on_meta`` (with ``memory``,
    also its training memory)."""
    model, shape, convention = registered_on_meta(name, size, **kwargs)
    return measure(model, shape, convention, memory=memory)
