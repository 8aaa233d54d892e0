"""MedNeXt (Roy et al., MICCAI 2023): a fully ConvNeXt 3D/2D segmentation network.

Structure follows the official code (MIC-DKFZ/MedNeXt,
``nnunet_mednext/network_architecture/mednextv1``) module for module, so that official checkpoints
map onto it key for key (see ``mednext.models.official``). Deviations, each deliberate:

- no ``dummy_tensor`` parameter: checkpointing is non-reentrant, which needs none (the official
  dummy parameter breaks DDP, official issue #27);
- the output heads are ``ConvNd(C, K, 1)`` instead of ``ConvTransposeNd(C, K, 1)``: the same
  function, with the weight stored transposed (the importer converts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mednext.models.depthwise import (
    applies,
    depthwise_conv3d,
    upsampling_applies,
    upsampling_depthwise_conv3d,
    upsampling_pointwise_conv3d,
)
from mednext.models.layers import GlobalResponseNorm

#: Total downsampling of the four encoder stages: every spatial size must be a multiple of it.
DOWNSAMPLING_FACTOR = 16

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    layout = _CHANNELS_LAST[x.ndim - 2]
    return layout if x.is_contiguous(memory_format=layout) else torch.contiguous_format


def _front_pad(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    # A stride-2 transposed conv with padding k//2 gives 2n-1 voxels; the official code restores 2n
    # by one zero plane at the front of every spatial axis (MedNeXtUpBlock.forward).
    return F.pad(x, (1, 0) * spatial_dims)


class MedNeXtBlock(nn.Module):
    """One MedNeXt block, optionally resampling (the official Block, DownBlock and UpBlock).

    ``depthwise conv k → GroupNorm(C groups) → 1×1 conv to exp_r·C → GELU → [GRN] → 1×1 conv``.

    - ``resample=None``: ``in_channels == out_channels``; the result is added to the input when
      ``do_res``.
    - ``resample="down"``: the depthwise conv has stride 2; the residual is ``Conv(in, out, 1,
      stride 2)`` when ``do_res``.
    - ``resample="up"``: the depthwise conv is transposed with stride 2; output and residual
      (``ConvTranspose(in, out, 1, stride 2)``) get one zero plane at the front of every axis.

    Input ``(B, in_channels, *spatial)``; output ``(B, out_channels, *spatial')`` with spatial sizes
    unchanged, halved or doubled.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        exp_r: int,
        kernel_size: int,
        spatial_dims: int = 3,
        grn: bool = False,
        do_res: bool = True,
        resample: Literal["down", "up"] | None = None,
    ) -> None:
        super().__init__()
        if resample is None and in_channels != out_channels:
            raise ValueError("a non-resampling MedNeXt block keeps its width")
        conv = _CONV[spatial_dims]
        depthwise = _CONV_TRANSPOSE[spatial_dims] if resample == "up" else conv
        self.spatial_dims = spatial_dims
        self.resample = resample
        self.do_res = do_res
        hidden = exp_r * in_channels
        self.conv1 = depthwise(
            in_channels,
            in_channels,
            kernel_size,
            stride=1 if resample is None else 2,
            padding=kernel_size // 2,
            groups=in_channels,
        )
        self.norm = nn.GroupNorm(num_groups=in_channels, num_channels=in_channels)
        self.conv2 = conv(in_channels, hidden, 1)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, spatial_dims) if grn else None
        self.conv3 = conv(hidden, out_channels, 1)
        if resample is not None and do_res:
            residual = _CONV_TRANSPOSE[spatial_dims] if resample == "up" else conv
            self.res_conv = residual(in_channels, out_channels, 1, stride=2)
        else:
            self.res_conv = None

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv1
        if self.resample is None and applies(x):
            return depthwise_conv3d(x, conv.weight, conv.bias, conv.padding[0])
        if self.resample == "up" and upsampling_applies(x):
            return upsampling_depthwise_conv3d(x, conv.weight, conv.bias, conv.padding[0])
        return conv(x)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.res_conv
        if self.resample == "up" and upsampling_applies(x):
            return upsampling_pointwise_conv3d(x, conv.weight, conv.bias)
        return conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv2(self.norm(self._depthwise(x))))
        if self.grn is not None:
            y = self.grn(y)
        y = self.conv3(y)
        if self.resample == "up":
            y = _front_pad(y, self.spatial_dims)
        if self.resample is None:
            return x + y if self.do_res else y
        if self.res_conv is not None:
            res = self._residual(x)
            if self.resample == "up":
                res = _front_pad(res, self.spatial_dims)
            # A 1×1 strided (transposed) convolution returns the default layout even for a
            # channels-last input; adding that to the channels-last branch would be a
            # mixed-layout add, several times slower on the CPU than either layout alone.
            y = y + res.contiguous(memory_format=_layout_of(y))
        return y


#: The values of ``MedNeXt(checkpointing=...)`` besides ``True``/``False``/``None``.
CHECKPOINTING = ("block", "stage")


def checkpointing_granularity(value: bool | str | None) -> str | None:
    """``checkpointing`` as ``"block"``, ``"stage"`` or ``None`` (off); ``True`` is ``"block"``.
    Anything else is a ValueError naming the choices."""
    if value is None or value is False:
        return None
    if value is True:
        return "block"
    if isinstance(value, str) and value in CHECKPOINTING:
        return value
    raise ValueError(
        f"checkpointing must be one of {', '.join(CHECKPOINTING)}, true or false, got {value!r}"
    )


def _per_stage(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    values = (value,) * 9 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 9:
        raise ValueError(
            f"{name} needs 9 values (4 encoder stages, bottleneck, 4 decoder stages), "
            f"got {len(values)}: {list(values)}"
        )
    if min(values) < 1:
        raise ValueError(f"{name} values must be >= 1, got {list(values)}")
    return values


class MedNeXt(nn.Module):
    """MedNeXt encoder-decoder for ``spatial_dims``-D segmentation.

    Args:
        in_channels: input channels (image modalities).
        num_classes: output channels (classes, background included).
        width: channels of the first stage; stage i has ``width * 2**i`` (the official
            ``n_channels``).
        exp_r: expansion ratio of the inverted bottleneck, one int or 9 values (encoder stages
            0-3, bottleneck, decoder stages 3-0). A down block uses the ratio of the stage it
            enters, an up block that of the decoder stage it feeds.
        block_counts: blocks per stage, 9 values in the same order.
        kernel_size: depthwise kernel of the encoder, and of the decoder unless
            ``dec_kernel_size`` is given.
        dec_kernel_size: depthwise kernel of the bottleneck, up blocks and decoder stages.
        deep_supervision: add 1×1 heads at 1/2, 1/4, 1/8 (decoder stages) and 1/16 (bottleneck);
            in training mode ``forward`` then returns ``[full, 1/2, 1/4, 1/8, 1/16]``.
        spatial_dims: 3 for volumes ``(B, C, D, H, W)``, 2 for images ``(B, C, H, W)``.
        checkpointing: recompute activations in the backward pass (non-reentrant gradient
            checkpointing) to trade compute for activation memory: ``"block"`` (or ``True``)
            keeps only the input of every block, down and up block; ``"stage"`` only the input
            of every encoder, bottleneck and decoder stage and of every down and up block, and
            recomputes a stage's blocks together; ``False`` (or ``None``) keeps everything.
        grn: Global Response Normalisation after the expansion (MedNeXt-v2 option).
        do_res: residual connection inside every non-resampling block.
        do_res_up_down: residual 1×1 (transposed) conv around the down and up blocks.

    Every spatial size of the input must be divisible by 16. ``use_channels_last()`` switches
    weights and activations to the channels-last layout (same function, faster on the CPU).
    """

    #: The layout of the activations from the stem on (``use_channels_last``).
    memory_format: torch.memory_format = torch.contiguous_format

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        exp_r: int | Sequence[int] = 4,
        block_counts: Sequence[int] = (2,) * 9,
        kernel_size: int = 3,
        dec_kernel_size: int | None = None,
        deep_supervision: bool = False,
        spatial_dims: int = 3,
        checkpointing: bool | Literal["block", "stage"] | None = False,
        grn: bool = False,
        do_res: bool = True,
        do_res_up_down: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, k in (("kernel_size", kernel_size), ("dec_kernel_size", dec_kernel_size)):
            if k is not None and (k < 1 or k % 2 == 0):
                raise ValueError(f"{name} must be a positive odd integer, got {k}")
        exp_r = _per_stage(exp_r, "exp_r")
        block_counts = _per_stage(block_counts, "block_counts")
        dec_kernel_size = kernel_size if dec_kernel_size is None else dec_kernel_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.checkpointing = checkpointing_granularity(checkpointing)

        def stage(channels: int, index: int, kernel: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    MedNeXtBlock(
                        channels, channels, exp_r[index], kernel, spatial_dims, grn, do_res
                    )
                    for _ in range(block_counts[index])
                )
            )

        widths = [width * 2**level for level in range(5)]
        self.stem = _CONV[spatial_dims](in_channels, width, 1)
        # Index i of encoder/down/up/decoder/heads is resolution level i (1/2**i), as the official
        # enc_block_i / down_i / up_i / dec_block_i / out_i.
        self.encoder = nn.ModuleList(stage(widths[i], i, kernel_size) for i in range(4))
        self.down = nn.ModuleList(
            MedNeXtBlock(
                widths[i],
                widths[i + 1],
                exp_r[i + 1],
                kernel_size,
                spatial_dims,
                grn,
                do_res_up_down,
                resample="down",
            )
            for i in range(4)
        )
        self.bottleneck = stage(widths[4], 4, dec_kernel_size)
        self.up = nn.ModuleList(
            MedNeXtBlock(
                widths[i + 1],
                widths[i],
                exp_r[8 - i],
                dec_kernel_size,
                spatial_dims,
                grn,
                do_res_up_down,
                resample="up",
            )
            for i in range(4)
        )
        self.decoder = nn.ModuleList(stage(widths[i], 8 - i, dec_kernel_size) for i in range(4))
        head_levels = range(5) if deep_supervision else range(1)
        self.heads = nn.ModuleList(
            _CONV[spatial_dims](widths[level], num_classes, 1) for level in head_levels
        )

    def use_channels_last(self) -> MedNeXt:
        """Keep weights and activations channels-last (``torch.channels_last_3d`` in 3D): the
        same function, computed by oneDNN's channels-last kernels and, on the CPU in training,
        the depthwise convolutions' backward pass of ``mednext.models.depthwise``. Returns the
        network, changed in place."""
        self.memory_format = _CHANNELS_LAST[self.spatial_dims]
        return self.to(memory_format=self.memory_format)

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing is not None and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing == "stage":
            return self._run(stage, x)
        for block in stage:
            x = self._run(block, x)
        return x

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem if ``x`` cannot go through the network."""
        expected_ndim = self.spatial_dims + 2
        if x.ndim != expected_ndim:
            raise ValueError(
                f"MedNeXt with spatial_dims={self.spatial_dims} expects a {expected_ndim}-D input "
                f"(B, C, {', '.join('DHW'[-self.spatial_dims :])}), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"MedNeXt expects {self.in_channels} input channel(s), got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(size % DOWNSAMPLING_FACTOR for size in spatial):
            suggestion = tuple(
                -(-size // DOWNSAMPLING_FACTOR) * DOWNSAMPLING_FACTOR for size in spatial
            )
            raise ValueError(
                f"MedNeXt downsamples 4 times: every spatial size must be divisible by "
                f"{DOWNSAMPLING_FACTOR}, got {spatial}. Pad or crop the input, e.g. to "
                f"{suggestion}."
            )
        if all(size == DOWNSAMPLING_FACTOR for size in spatial):
            # The bottleneck would hold one voxel: GroupNorm with one channel per group then
            # normalises a single value, which torch rejects for batch 1 and which silently
            # zeroes the signal otherwise.
            raise ValueError(
                f"MedNeXt cannot run on {spatial} inputs: the bottleneck would be a single voxel. "
                f"Use patches with at least one side of {2 * DOWNSAMPLING_FACTOR} or more."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes, *spatial)``; with deep supervision in training mode, the list
        ``[full, 1/2, 1/4, 1/8, 1/16]`` of logits at decreasing resolution."""
        self.check_input(x)
        with_aux = self.deep_supervision and self.training
        # The stem maps a one-channel input, which is in both layouts at once, so its output's
        # layout is torch's guess: set it.
        layout = self.memory_format
        x = self.stem(x.contiguous(memory_format=layout)).contiguous(memory_format=layout)
        skips = []
        for level in range(4):
            x = self._run_stage(self.encoder[level], x)
            skips.append(x)
            x = self._run(self.down[level], x)
        x = self._run_stage(self.bottleneck, x)
        aux = [self.heads[4](x)] if with_aux else []
        for level in reversed(range(4)):
            # Skips are added, not concatenated (official MedNeXt.forward).
            x = self._run_stage(self.decoder[level], skips.pop() + self._run(self.up[level], x))
            if with_aux and level > 0:
                aux.append(self.heads[level](x))
        out = self.heads[0](x)
        return [out, *reversed(aux)] if with_aux else out


#: The official compound-scaling presets (create_mednext_v1.py); all width 32, residuals on.
PRESETS: dict[str, dict[str, Any]] = {
    "S": dict(exp_r=2, block_counts=(2,) * 9, checkpointing=False),
    "B": dict(exp_r=(2, 3, 4, 4, 4, 4, 4, 3, 2), block_counts=(2,) * 9, checkpointing=False),
    "M": dict(
        exp_r=(2, 3, 4, 4, 4, 4, 4, 3, 2),
        block_counts=(3, 4, 4, 4, 4, 4, 4, 4, 3),
        checkpointing="block",
    ),
    "L": dict(
        exp_r=(3, 4, 8, 8, 8, 8, 8, 4, 3),
        block_counts=(3, 4, 8, 8, 8, 8, 8, 4, 3),
        checkpointing="block",
    ),
}


def build_mednext(variant: str | None = None, **kwargs: Any) -> MedNeXt:
    """A MedNeXt from a preset (``variant`` S/B/M/L, case-insensitive) updated by ``kwargs``, or
    from ``kwargs`` alone when ``variant`` is None. ``in_channels`` and ``num_classes`` are always
    required."""
    config: dict[str, Any] = {}
    if variant is not None:
        key = str(variant).upper()
        if key not in PRESETS:
            raise ValueError(
                f"unknown MedNeXt variant {variant!r}; choose one of {', '.join(PRESETS)}"
            )
        config.update(PRESETS[key])
    config.update(kwargs)
    return MedNeXt(**config)


def _resize_kernel(weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = {4: "bilinear", 5: "trilinear"}[weight.ndim]
    return F.interpolate(weight, size=tuple(size), mode=mode, align_corners=False)


@torch.no_grad()
def upkern(
    small: nn.Module | Mapping[str, torch.Tensor], large: MedNeXt, strict: bool = True
) -> MedNeXt:
    """UpKern (Roy et al. 2023, Sec. 2.3): initialise ``large`` from a trained small-kernel
    network.

    Every depthwise ``conv1`` weight (blocks, down and up blocks) is resized to the large kernel by
    trilinear (2D: bilinear) interpolation with ``align_corners=False``; every other tensor is
    copied. No renormalisation. ``small`` is a model or its state dict; ``large`` is updated in
    place and returned. Tensors that only ``large`` has (deep-supervision heads, say) keep their
    initialisation. A tensor present in both with incompatible shapes (another width or number of
    classes) is an error, as in the official ``upkern_load_weights``, unless ``strict=False``, which
    keeps such tensors at their initialisation.
    """
    source = small.state_dict() if isinstance(small, nn.Module) else small
    target = large.state_dict()
    if not source.keys() & target.keys():
        raise ValueError(
            "upkern: the source shares no parameter names with the target MedNeXt (an official "
            "checkpoint needs mednext.models.official.load_official_mednext first); source keys "
            f"start with {sorted(source)[:3]}"
        )
    updated, mismatched = {}, []
    for key, value in target.items():
        if key not in source:
            continue
        weight = source[key].to(dtype=value.dtype, device=value.device)
        if weight.shape == value.shape:
            updated[key] = weight
        elif key.endswith("conv1.weight") and weight.shape[:2] == value.shape[:2]:
            updated[key] = _resize_kernel(weight, value.shape[2:])
        else:
            mismatched.append(f"{key}: {tuple(weight.shape)} -> {tuple(value.shape)}")
    if mismatched and strict:
        raise ValueError(
            "upkern: source and target differ beyond the kernel size (pass strict=False to keep "
            "these at their initialisation):\n  " + "\n  ".join(mismatched)
        )
    large.load_state_dict(updated, strict=False)
    return large
