"""MedNeXt-Lite (Xue et al., PLoS One 21(1):e0340108, 2026): a lightweight transformer-style CNN.

Only the paper's abstract is public: three modules — a Linear-Attention FFN (LAFFN), a Spatial
Encoding Module (SEM) and a Smooth DwConv FFN (SDFFN) — built solely from large-kernel
convolutions and MLPs, used as the backbone of a classifier and of a U-shaped segmenter. Every
module below is INFERRED from the closest published design (the design brief of docs/models.md,
which lists each choice with its source):

- LAFFN: MobileViTv2's separable linear self-attention (Mehta & Rastegari 2022) inside an FFN;
- SEM: SegNeXt's multi-scale convolutional attention (Guo et al. 2022) gated by a linear value
  branch as in Conv2Former (Hou et al. 2022);
- SDFFN: Conv2Former's MLP with a depthwise 3×3 "smoothing" residual;
- a block is the three of them as pre-norm residual branches with layer scale and DropPath
  (ConvNeXt, Liu et al. 2022), the encoder a four-stage pyramid at strides 4, 8, 16, 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mednext.models.layers import DropPath

#: Stem (4) and three stride-2 downsamplings: the deepest features are at 1/32 of the input.
DOWNSAMPLING_FACTOR = 32


class LinearAttentionFFN(nn.Module):
    """Separable linear attention inside an FFN (MobileViTv2), 1×1 convolutions only.

    ``q = W_q x`` (one channel), ``k = W_k x`` and ``v = W_v x`` (``ratio·C`` channels);
    ``ctx = Σ_n softmax_n(q)·k_n`` is one global context vector per image (cost O(N·C));
    ``out = W_o(GELU(v) ⊙ ctx)``. ``W_q``, ``W_k``, ``W_v`` are one fused convolution, as
    MobileViTv2's ``qkv_proj``. Input and output ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__()
        self.hidden = ratio * channels
        self.qkv = nn.Conv2d(channels, 1 + 2 * self.hidden, 1)
        self.proj = nn.Conv2d(self.hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = torch.split(self.qkv(x), [1, self.hidden, self.hidden], dim=1)
        weights = torch.softmax(q.flatten(2), dim=-1).view_as(q)
        context = (k * weights).sum(dim=(2, 3), keepdim=True)
        return self.proj(F.gelu(v) * context)


class SpatialEncodingModule(nn.Module):
    """Multi-scale large-kernel convolutional attention (SegNeXt's MSCA, Conv2Former's gating).

    ``u = GELU(W_u x)``; ``a = DW_{k×k}(u)``; ``a = a + Σ_{s∈strips} DW_{s×1}(DW_{1×s}(a))``;
    ``out = W_o(W_v(x) ⊙ W_a(a))``. The strip pairs see ``s×s`` windows at ``2·s·C`` weights each.
    Input and output ``(B, C, H, W)``.
    """

    def __init__(
        self, channels: int, kernel_size: int = 5, strip_kernels: Sequence[int] = (7, 11, 21)
    ) -> None:
        super().__init__()
        self.gate = nn.Conv2d(channels, channels, 1)
        self.local = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.strips = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, (1, s), padding=(0, s // 2), groups=channels),
                nn.Conv2d(channels, channels, (s, 1), padding=(s // 2, 0), groups=channels),
            )
            for s in strip_kernels
        )
        self.mix = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        # The design brief writes out = W(x) ⊙ W_a(a); its prototype's figures (T 4.3 M parameters,
        # 0.70 G MACs; S 11 M, 1.8 G; B 22 M, 3.6 G) are reproduced only with the output
        # projection that SegNeXt (proj_2) and Conv2Former (proj) both have.
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.local(F.gelu(self.gate(x)))
        attention = attention + sum(strip(attention) for strip in self.strips)
        return self.proj(self.value(x) * self.mix(attention))


class SmoothDwConvFFN(nn.Module):
    """Conv2Former's MLP: ``h = GELU(W_1 x)`` (``ratio·C``), ``h = h + GELU(DW3×3(h))``,
    ``out = W_2 h``. Input and output ``(B, C, H, W)``."""

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        hidden = ratio * channels
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.smooth = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        h = h + F.gelu(self.smooth(h))
        return self.fc2(h)


class LayerScale(nn.Module):
    """Per-channel learnable scale ``γ ⊙ x`` (ConvNeXt/CaiT), ``γ`` starting at ``init``."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * x


class MedNeXtLiteBlock(nn.Module):
    """``x += γ1·LAFFN(BN(x)); x += γ2·SEM(BN(x)); x += γ3·SDFFN(BN(x))``, each branch with its
    own BatchNorm, layer scale and DropPath. Input and output ``(B, C, H, W)``."""

    def __init__(
        self,
        channels: int,
        laffn_ratio: int = 2,
        ffn_ratio: int = 4,
        kernel_size: int = 5,
        strip_kernels: Sequence[int] = (7, 11, 21),
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        branches = (
            LinearAttentionFFN(channels, laffn_ratio),
            SpatialEncodingModule(channels, kernel_size, strip_kernels),
            SmoothDwConvFFN(channels, ffn_ratio),
        )
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(channels),
                branch,
                LayerScale(channels, layer_scale_init),
                DropPath(drop_path),
            )
            for branch in branches
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for branch in self.branches:
            x = x + branch(x)
        return x


def _conv_bn(in_channels: int, out_channels: int, stride: int = 2) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.BatchNorm2d(out_channels)]


class MedNeXtLiteEncoder(nn.Module):
    """Stem (conv3×3 s2 to C0/2 → BN → GELU → conv3×3 s2 to C0 → BN, 1/4) and four stages of
    blocks at widths ``width·(1, 2, 4, 8)``, with a conv3×3 s2 → BN downsampling before stages
    2-4. ``forward`` returns the four stage outputs ``(B, C_i, H/2^(i+2), W/2^(i+2))``."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        depths: Sequence[int],
        laffn_ratio: int,
        ffn_ratio: int,
        kernel_size: int,
        strip_kernels: Sequence[int],
        drop_path_rate: float,
        layer_scale_init: float,
    ) -> None:
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f"MedNeXt-Lite has four stages: depths needs 4 entries, not {depths}")
        if width % 2:
            raise ValueError(f"width must be even (the stem's first conv has width/2), not {width}")
        self.dims = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            *_conv_bn(in_channels, width // 2), nn.GELU(), *_conv_bn(width // 2, width)
        )
        # Stochastic depth grows linearly with block index over the whole network (ConvNeXt).
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.downsample = nn.ModuleList(
            nn.Sequential(*_conv_bn(self.dims[i], self.dims[i + 1])) for i in range(3)
        )
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(
                nn.Sequential(
                    *(
                        MedNeXtLiteBlock(
                            self.dims[i],
                            laffn_ratio,
                            ffn_ratio,
                            kernel_size,
                            strip_kernels,
                            rates[start + j],
                            layer_scale_init,
                        )
                        for j in range(depth)
                    )
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x)
            x = stage(x)
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    # ConvNeXt's initialisation: truncated normal (std 0.02) weights, zero biases.
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects (B, {in_channels}, H, W) input, got shape {tuple(x.shape)}"
        )
    if any(s % DOWNSAMPLING_FACTOR for s in x.shape[2:]):
        raise ValueError(
            f"{name}: height and width must be multiples of {DOWNSAMPLING_FACTOR} (the encoder "
            f"downsamples 5 times), got {tuple(x.shape[2:])}"
        )


class MedNeXtLite(nn.Module):
    """The MedNeXt-Lite classifier: encoder → global average pool → LayerNorm → dropout → Linear.

    Args:
        in_channels: image channels (3: grayscale CT is replicated).
        num_classes: output logits.
        width: channels of the first stage; the stages have ``width·(1, 2, 4, 8)``.
        depths: blocks per stage.
        laffn_ratio: hidden width of the LAFFN as a multiple of C.
        ffn_ratio: hidden width of the SDFFN as a multiple of C.
        kernel_size: the SEM's square depthwise kernel.
        strip_kernels: the SEM's strip-convolution lengths.
        drop_path_rate: stochastic depth of the last block (linear from 0).
        layer_scale_init: initial value of the layer scales.
        head_dropout: dropout before the classifier.

    Input ``(B, in_channels, H, W)`` with H, W multiples of 32; output ``(B, num_classes)``.
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        width: int = 32,
        depths: Sequence[int] = (2, 2, 4, 2),
        laffn_ratio: int = 2,
        ffn_ratio: int = 4,
        kernel_size: int = 5,
        strip_kernels: Sequence[int] = (7, 11, 21),
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = MedNeXtLiteEncoder(
            in_channels,
            width,
            depths,
            laffn_ratio,
            ffn_ratio,
            kernel_size,
            strip_kernels,
            drop_path_rate,
            layer_scale_init,
        )
        channels = self.encoder.dims[-1]
        self.norm = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(channels, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, "MedNeXt-Lite")
        pooled = self.encoder(x)[-1].mean(dim=(2, 3))
        return self.head(self.dropout(self.norm(pooled)))


class MedNeXtLiteUNet(nn.Module):
    """The MedNeXt-Lite U-shaped segmenter.

    The classifier's encoder; per decoder level (1/16, 1/8, 1/4): bilinear ×2 → 1×1 conv to the
    skip's width → concatenation with the skip → one MedNeXt-Lite block at twice that width; then
    bilinear ×4 to the input size and a 1×1 head.

    Args: as ``MedNeXtLite`` (``in_channels`` default 1, no head dropout), plus
        deep_supervision: training mode returns ``[full, 1/8, 1/16]`` logits, the extra ones from
            1×1 heads on the 1/8 and 1/16 decoder levels; eval mode returns the full ones alone.

    Input ``(B, in_channels, H, W)`` with H, W multiples of 32; output ``(B, num_classes, H, W)``.
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 9,
        width: int = 32,
        depths: Sequence[int] = (2, 2, 4, 2),
        laffn_ratio: int = 2,
        ffn_ratio: int = 4,
        kernel_size: int = 5,
        strip_kernels: Sequence[int] = (7, 11, 21),
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.encoder = MedNeXtLiteEncoder(
            in_channels,
            width,
            depths,
            laffn_ratio,
            ffn_ratio,
            kernel_size,
            strip_kernels,
            drop_path_rate,
            layer_scale_init,
        )
        dims = self.encoder.dims
        # Level i (2, 1, 0) takes the coarser output (2·dims[i+1] channels below the deepest).
        self.reduce = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in (2, 1, 0):
            incoming = dims[3] if i == 2 else 2 * dims[i + 1]
            self.reduce.append(nn.Conv2d(incoming, dims[i], 1))
            self.decoder.append(
                MedNeXtLiteBlock(
                    2 * dims[i],
                    laffn_ratio,
                    ffn_ratio,
                    kernel_size,
                    strip_kernels,
                    0.0,
                    layer_scale_init,
                )
            )
        self.head = nn.Conv2d(2 * dims[0], num_classes, 1)
        # Finest first: the 1/8 level (2·dims[1] channels), then the 1/16 level.
        self.aux_heads = (
            nn.ModuleList(nn.Conv2d(2 * dims[i], num_classes, 1) for i in (1, 2))
            if deep_supervision
            else None
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        _check_input(x, self.in_channels, "MedNeXt-Lite segmenter")
        size = x.shape[2:]
        *skips, x = self.encoder(x)
        levels = []
        for reduce, block, skip in zip(self.reduce, self.decoder, reversed(skips), strict=True):
            x = reduce(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            x = block(torch.cat([skip, x], dim=1))
            levels.append(x)
        logits = self.head(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        if not (self.deep_supervision and self.training):
            return logits
        coarser = (levels[1], levels[0])
        return [logits, *(head(level) for head, level in zip(self.aux_heads, coarser, strict=True))]


#: Presets (the design brief, docs/models.md): stage widths width·(1, 2, 4, 8) and blocks per stage.
PRESETS: dict[str, dict[str, Any]] = {
    "T": dict(width=32, depths=(2, 2, 4, 2)),
    "S": dict(width=48, depths=(2, 2, 6, 2)),
    "B": dict(width=64, depths=(2, 2, 8, 2)),
}
#: The segmenter is built on the two smaller backbones only (docs/models.md).
SEGMENTER_PRESETS: dict[str, dict[str, Any]] = {k: PRESETS[k] for k in ("T", "S")}


def _preset(presets: dict[str, dict[str, Any]], variant: str | None, what: str) -> dict[str, Any]:
    if variant is None:
        return {}
    key = str(variant).upper()
    if key not in presets:
        raise ValueError(f"unknown {what} variant {variant!r}; choose one of {', '.join(presets)}")
    return dict(presets[key])


def build_mednext_lite(variant: str | None = None, **kwargs: Any) -> MedNeXtLite:
    """The classifier from a preset (T/S/B, case-insensitive) updated by ``kwargs``."""
    return MedNeXtLite(**{**_preset(PRESETS, variant, "MedNeXt-Lite"), **kwargs})


def build_mednext_lite_segmenter(variant: str | None = None, **kwargs: Any) -> MedNeXtLiteUNet:
    """The segmenter from a preset (T/S, case-insensitive) updated by ``kwargs``."""
    return MedNeXtLiteUNet(
        **{**_preset(SEGMENTER_PRESETS, variant, "MedNeXt-Lite segmenter"), **kwargs}
    )
