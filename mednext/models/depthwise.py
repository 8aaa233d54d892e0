"""MedNeXt's 3D depthwise convolutions, computed faster for channels-last tensors on the CPU.

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

The up blocks' stride-2 transposed depthwise convolution takes oneDNN 37 ms in the forward pass
at 64 channels from 32³ (channels-last), where ``upsampling_depthwise_conv3d`` takes 5 ms: every
output voxel of one parity (even or odd along each axis) reads the same few taps, so the eight
parities are eight small ordinary depthwise convolutions of the input, written interleaved into
the output. Their residual, a stride-2 transposed 1×1 convolution (22 ms there), is the 1×1
convolution of the input written into the even voxels of a bias-filled output
(``upsampling_pointwise_conv3d``). Both keep oneDNN's backward pass (through the eight small
convolutions it would be slower).
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


def upsampling_applies(x: torch.Tensor) -> bool:
    """Whether ``upsampling_depthwise_conv3d`` and ``upsampling_pointwise_conv3d`` are the faster
    path for ``x``: a float32 channels-last 3D CPU tensor outside autocast."""
    return (
        x.device.type == "cpu"
        and x.ndim == 5
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and x.is_contiguous(memory_format=torch.channels_last_3d)
    )


def _channels_last_empty(like: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return torch.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last_3d
    )


def _parity_taps(kernel: int, padding: int, parity: int) -> list[int]:
    """The kernel taps that output voxels ``2 m + parity`` of a stride-2 transposed convolution
    read, in the order of the input voxels they multiply (``x[m - d]``, ``d`` decreasing)."""
    taps = [k for k in range(kernel) if (k - parity - padding) % 2 == 0]
    return sorted(taps, key=lambda k: -(k - parity - padding) // 2)


def _by_parity(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int):
    channels, kernel, sizes = x.shape[1], weight.shape[2], x.shape[2:]
    out_sizes = [2 * (n - 1) - 2 * padding + kernel for n in sizes]
    out = _channels_last_empty(x, [x.shape[0], channels, *out_sizes])
    for parities in ((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)):
        sub = weight
        pads: list[int] = []
        for axis, parity in enumerate(parities):
            taps = _parity_taps(kernel, padding, parity)
            sub = sub.index_select(2 + axis, torch.tensor(taps, device=weight.device))
            # Output voxel m of this parity reads input voxels m + first ... m + first + len - 1.
            first = -((taps[0] - parity - padding) // 2)
            count = len(range(parity, out_sizes[axis], 2))
            left = -first
            pads.append((left, count + len(taps) - 1 - sizes[axis] - left))
        # F.pad takes the last axis first; a negative pad crops.
        padded = F.pad(x, [p for pair in reversed(pads) for p in pair])
        a, b, c = parities
        out[:, :, a::2, b::2, c::2] = F.conv3d(padded, sub, bias, groups=channels)
    return out


def _even_voxels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    out = _channels_last_empty(x, [x.shape[0], weight.shape[1], *(2 * n - 1 for n in x.shape[2:])])
    out[:] = 0.0 if bias is None else bias.view(1, -1, 1, 1, 1)
    out[:, :, ::2, ::2, ::2] = F.conv3d(x, weight.transpose(0, 1), bias)
    return out


class _UpsamplingConv3d(torch.autograd.Function):
    """A stride-2 transposed convolution: the forward pass by ``_by_parity`` (depthwise) or
    ``_even_voxels`` (1×1), the backward pass oneDNN's own."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        if weight.shape[2] == 1:
            return _even_voxels(x, weight, bias)
        return _by_parity(x, weight, bias, padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        depthwise = weight.shape[1] == 1 and weight.shape[2] > 1
        groups = x.shape[1] if depthwise else 1
        out_channels = weight.shape[1] * groups
        grads = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=torch.channels_last_3d),
            x,
            weight,
            [out_channels] if ctx.has_bias else None,
            [2, 2, 2],
            [ctx.padding] * 3,
            [1, 1, 1],
            True,
            [0, 0, 0],
            groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias],
        )
        return grads[0], grads[1], grads[2] if ctx.has_bias else None, None


def upsampling_depthwise_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride=2, padding=padding, groups=C)`` for a cubic
    depthwise kernel (``weight (C, 1, k, k, k)``), as eight ordinary depthwise convolutions, one
    per output parity, interleaved into a channels-last output; oneDNN's backward pass."""
    return _UpsamplingConv3d.apply(x, weight, bias, padding)


def upsampling_pointwise_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride=2)`` for a 1×1×1 kernel (``weight
    (C_in, C_out, 1, 1, 1)``): every even voxel the 1×1 convolution of its input voxel, every
    other voxel the bias; oneDNN's backward pass."""
    return _UpsamplingConv3d.apply(x, weight, bias, 0)
