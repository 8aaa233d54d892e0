"""A 3D depthwise convolution with a faster backward pass for channels-last tensors on the CPU.

MedNeXt spends most of a CPU training step in the backward pass of its depthwise convolutions.
In torch 2.13 oneDNN computes the weight gradient of a stride-1 3D depthwise convolution about
13 times slower than the same sum computed as 2D depthwise weight gradients over depth slices
(32 channels at 64³, channels-last: 92 ms against 7 ms), and its input gradient about twice as
slow as the forward convolution with the flipped kernel that it equals (53 ms against 23 ms).
``depthwise_conv3d`` computes the forward pass with ``F.conv3d`` and the backward pass that way:

- the input gradient of a stride-1 convolution with padding ``p`` is the convolution of the output
  gradient with the spatially flipped kernel and the same padding;
- the weight gradient of depth tap ``a`` (offset ``a - k // 2``) is the 2D depthwise weight
  gradient of the output-gradient slices ``d`` against the input slices ``d + a - k // 2``: a
  channels-last ``(1, C, D, H, W)`` tensor is, slice by slice, a channels-last ``(D, C, H, W)``
  batch, so the pairs are views and no tensor is copied.

Both are the same sums in another order (float32 rounding aside); ``tests/test_fast_paths.py``
checks them against autograd of ``F.conv3d``. Used only where it was measured to help: by
``MedNeXtBlock`` for its stride-1 depthwise convolution on channels-last CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def applies(x: torch.Tensor) -> bool:
    """Whether ``depthwise_conv3d`` is the faster path for ``x``: a float32 channels-last 3D CPU
    tensor in a pass that records gradients, outside autocast (which the native convolution
    handles, casting in both passes)."""
    return (
        x.device.type == "cpu"
        and x.ndim == 5
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and x.is_contiguous(memory_format=torch.channels_last_3d)
    )


def _slices(x: torch.Tensor) -> torch.Tensor:
    """``(C, D, H, W)`` as the batch ``(D, C, H, W)`` of its depth slices (a view)."""
    return x.transpose(0, 1)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: int, padding: int) -> torch.Tensor:
    channels = x.shape[1]
    depth = x.shape[2]
    tap_shape = (channels, 1, kernel, kernel)
    taps = []
    for tap in range(kernel):
        offset = tap - padding
        total = None
        for g, inp in zip(grad, x, strict=True):
            g_slices, x_slices = _slices(g), _slices(inp)
            # Output slice d reads input slice d + offset; pairs that fall off the volume are
            # the zero padding and contribute nothing.
            lo, hi = max(0, -offset), min(depth, depth - offset)
            if hi <= lo:
                continue
            part = torch.ops.aten.convolution_backward(
                g_slices[lo:hi],
                x_slices[lo + offset : hi + offset],
                torch.empty(tap_shape, dtype=x.dtype),
                None,
                [1, 1],
                [padding, padding],
                [1, 1],
                False,
                [0, 0],
                channels,
                [False, True, False],
            )[1]
            total = part if total is None else total + part
        taps.append(torch.zeros(tap_shape, dtype=x.dtype) if total is None else total)
    return torch.stack(taps, dim=2)


class _DepthwiseConv3d(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv3d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        padding = ctx.padding
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip((2, 3, 4))
            grad_input = F.conv3d(grad, flipped, padding=padding, groups=x.shape[1])
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(grad, x, weight.shape[2], padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3, 4))
        return grad_input, grad_weight, grad_bias, None


def depthwise_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=padding, groups=C)`` for a stride-1 depthwise
    convolution with a cubic kernel of odd side ``2 * padding + 1`` (``weight (C, 1, k, k, k)``),
    with the backward pass described in the module docstring."""
    kernel = weight.shape[2]
    if weight.shape[1] != 1 or weight.shape[2:] != (kernel,) * 3 or kernel != 2 * padding + 1:
        raise ValueError(
            f"depthwise_conv3d needs a cubic depthwise kernel of side 2 * padding + 1, got weight "
            f"{tuple(weight.shape)} with padding {padding}"
        )
    return _DepthwiseConv3d.apply(x, weight, bias, padding)
