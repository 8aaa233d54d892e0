"""CMUNeXt (Tang et al., ISBI 2024, arXiv 2308.01239): a large-kernel depthwise U-Net with
Skip-Fusion for 2D segmentation.

Structure follows the official code (FengheTan9/CMUNeXt, ``network/CMUNeXt.py``) layer for layer,
so that official checkpoints map onto it by one rename table (``mednext.models.official``). Our
modules are named for what they are, with index ``i`` of ``encoder`` and ``decoder`` the resolution
level ``1/2**i`` (official ``encoder{i+1}``, ``Up{i+2}`` / ``Up_conv{i+2}``). Deviations, each
deliberate:

- ``num_classes`` and ``in_channels`` are honoured by the presets (the official factory functions
  ``cmunext``/``cmunext_s``/``cmunext_l`` drop them and always build 3 → 1 channels);
- spatial sizes not divisible by 16 raise a ``ValueError`` naming the shape (the official model
  fails inside ``torch.cat`` with a size mismatch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: Total downsampling of the four max-pooling steps: every spatial size must be a multiple of it.
DOWNSAMPLING_FACTOR = 16

#: Inverted-bottleneck expansion of the CMUNeXt block and of Skip-Fusion (official ``ch_in * 4``).
EXPANSION = 4


class ConvNormReLU(nn.Module):
    """conv3×3 (bias) → BatchNorm → ReLU (the official ``conv_block``).

    Input ``(B, in_channels, H, W)``; output ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class CMUNeXtBlock(nn.Module):
    """One CMUNeXt block at constant width C.

    ``x = x + BN(GELU(DWConv_k(x)))``, then ``x = BN(GELU(Conv1×1(C → 4C)(x)))`` and
    ``x = BN(GELU(Conv1×1(4C → C)(x)))``: the activation comes BEFORE BatchNorm, every conv keeps
    its bias, and only the depthwise part is residual (official ``CMUNeXtBlock.block``).

    Input and output ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        hidden = EXPANSION * channels
        self.dwconv = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.norm = nn.BatchNorm2d(channels)
        self.pwconv1 = nn.Conv2d(channels, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.pwconv2 = nn.Conv2d(hidden, channels, 1)
        self.norm2 = nn.BatchNorm2d(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm(self.act(self.dwconv(x)))
        x = self.norm1(self.act(self.pwconv1(x)))
        return self.norm2(self.act(self.pwconv2(x)))


class CMUNeXtStage(nn.Module):
    """``depth`` CMUNeXt blocks at the incoming width, then ``ConvNormReLU`` to the stage's own
    width (the official ``CMUNeXtBlock(ch_in, ch_out, depth, k)``, whose conv3×3 is named ``up``).

    Input ``(B, in_channels, H, W)``; output ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, kernel_size: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(CMUNeXtBlock(in_channels, kernel_size) for _ in range(depth)))
        self.proj = ConvNormReLU(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.blocks(x))


class SkipFusion(nn.Module):
    """Skip-Fusion of ``cat(skip, up)`` (the official ``fusion_conv``).

    conv3×3 with 2 groups (2C → 2C, so each half mixes within skip or upsampled features) → GELU
    → BN → 1×1 (2C → 4C) → GELU → BN → 1×1 (4C → C) → GELU → BN.

    Input ``(B, 2C, H, W)``; output ``(B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = EXPANSION * channels
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2)
        self.norm = nn.BatchNorm2d(2 * channels)
        self.pwconv1 = nn.Conv2d(2 * channels, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.pwconv2 = nn.Conv2d(hidden, channels, 1)
        self.norm2 = nn.BatchNorm2d(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.conv(x)))
        x = self.norm1(self.act(self.pwconv1(x)))
        return self.norm2(self.act(self.pwconv2(x)))


class DecoderLevel(nn.Module):
    """One decoder level: bilinear ×2 → ``ConvNormReLU`` to the skip's width → Skip-Fusion of
    ``cat(skip, up)`` (official ``Up{i}`` and ``Up_conv{i}``; the skip comes first in the
    concatenation, which decides what each group of the fusion conv sees).

    Inputs ``x`` ``(B, in_channels, H/2, W/2)`` and ``skip`` ``(B, out_channels, H, W)``; output
    ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # nn.Upsample(mode="bilinear") in the official code: align_corners defaults to False.
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up = ConvNormReLU(in_channels, out_channels)
        self.fusion = SkipFusion(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat((skip, self.up(self.upsample(x))), dim=1))


def _five(values: Sequence[int], name: str, minimum: int = 1) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    if len(values) != 5:
        raise ValueError(f"{name} needs 5 values (one per resolution level), got {list(values)}")
    if min(values) < minimum:
        raise ValueError(f"{name} values must be >= {minimum}, got {list(values)}")
    return values


class CMUNeXt(nn.Module):
    """CMUNeXt U-Net for 2D segmentation: logits ``(B, num_classes, H, W)`` from ``(B, in_channels,
    H, W)``.

    Encoder: stem ``ConvNormReLU(in_channels → dims[0])`` at full resolution, then five stages;
    stage ``i`` runs ``depths[i]`` CMUNeXt blocks with kernel ``kernels[i]`` at the width of the
    previous level (``dims[i-1]``, ``dims[0]`` for the first) and a conv3×3 to ``dims[i]``; stages
    1-4 are each preceded by MaxPool2d(2). Decoder: four ``DecoderLevel``s from 1/16 back to full
    resolution, then a 1×1 head. No deep supervision.

    Args:
        in_channels: input channels (3 for RGB ultrasound/dermoscopy as in the paper).
        num_classes: output channels (1 for the paper's binary sigmoid output).
        dims: width of each resolution level 1, 1/2, 1/4, 1/8, 1/16.
        depths: CMUNeXt blocks in each encoder stage.
        kernels: depthwise kernel size (odd) of each encoder stage.

    Every spatial size of the input must be divisible by 16.
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        dims: Sequence[int] = (16, 32, 128, 160, 256),
        depths: Sequence[int] = (1, 1, 1, 3, 1),
        kernels: Sequence[int] = (3, 3, 7, 7, 7),
    ) -> None:
        super().__init__()
        dims = _five(dims, "dims")
        depths = _five(depths, "depths")
        kernels = _five(kernels, "kernels")
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(
                f"kernels must be odd (same-size depthwise convs), got {list(kernels)}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem = ConvNormReLU(in_channels, dims[0])
        self.pool = nn.MaxPool2d(2)
        incoming = (dims[0], *dims[:-1])
        self.encoder = nn.ModuleList(
            CMUNeXtStage(incoming[i], dims[i], depths[i], kernels[i]) for i in range(5)
        )
        self.decoder = nn.ModuleList(DecoderLevel(dims[i + 1], dims[i]) for i in range(4))
        self.head = nn.Conv2d(dims[0], num_classes, 1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem if ``x`` cannot go through the network."""
        if x.ndim != 4:
            raise ValueError(
                f"CMUNeXt expects a 4-D input (B, C, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"CMUNeXt expects {self.in_channels} input channel(s), got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(size % DOWNSAMPLING_FACTOR for size in spatial):
            suggestion = tuple(
                -(-size // DOWNSAMPLING_FACTOR) * DOWNSAMPLING_FACTOR for size in spatial
            )
            raise ValueError(
                f"CMUNeXt downsamples 4 times: every spatial size must be divisible by "
                f"{DOWNSAMPLING_FACTOR}, got {spatial}. Pad or crop the input, e.g. to "
                f"{suggestion}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for an input ``(B, in_channels, H, W)``."""
        self.check_input(x)
        x = self.stem(x)
        skips = []
        for level, stage in enumerate(self.encoder):
            x = stage(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(4)):
            x = self.decoder[level](x, skips.pop())
        return self.head(x)


#: The official presets (``network/CMUNeXt.py``: ``cmunext_s``, ``cmunext``, ``cmunext_l``).
PRESETS: dict[str, dict[str, Any]] = {
    "S": dict(dims=(8, 16, 32, 64, 128), depths=(1, 1, 1, 1, 1), kernels=(3, 3, 7, 7, 9)),
    "base": dict(dims=(16, 32, 128, 160, 256), depths=(1, 1, 1, 3, 1), kernels=(3, 3, 7, 7, 7)),
    "L": dict(dims=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 3), kernels=(3, 3, 7, 7, 7)),
}


def build_cmunext(variant: str | None = None, **kwargs: Any) -> CMUNeXt:
    """A CMUNeXt from a preset (``variant`` S, base or L, case-insensitive) updated by ``kwargs``,
    or from ``kwargs`` alone (the constructor defaults are the base preset) when ``variant`` is
    None. ``in_channels`` and ``num_classes`` default to 3 and 1, the paper's setting."""
    config: dict[str, Any] = {}
    if variant is not None:
        keys = {key.lower(): key for key in PRESETS}
        key = keys.get(str(variant).lower())
        if key is None:
            raise ValueError(
                f"unknown CMUNeXt variant {variant!r}; choose one of {', '.join(PRESETS)}"
            )
        config.update(PRESETS[key])
    config.update(kwargs)
    return CMUNeXt(**config)
