"""nnU-Net's baseline networks: the plain U-Net and the residual-encoder U-Net (ResEnc M/L/XL).

The networks are MIC-DKFZ's own, from ``dynamic-network-architectures``
(``dynamic_network_architectures.architectures.unet``: ``PlainConvUNet``,
``ResidualEncoderUNet``), not re-written: the classes here only turn plain keyword arguments into
the constructor arguments nnU-Net v2's planners write into a plans file for ``3d_fullres``, and
fit the output to the suite's model contract. Their state-dict keys are nnU-Net's.

What nnU-Net v2 plans (``nnunetv2/experiment_planning/experiment_planners/``:
``default_experiment_planner.py``, ``residual_unets/residual_encoder_unet_planners.py``,
``network_topology.py``), re-stated here:

- topology from the patch size and spacing (``get_pool_and_conv_props``, ``nnunet_topology``):
  an axis is halved while it stays at least 2 × 4 voxels and its spacing is within a factor 2 of
  the finest; its kernel is 3 once its spacing is within a factor 2 of the finest, else 1; the
  bottleneck is always 3. A 128³ patch at 1 mm gives 6 stages, strides 1, 2, 2, 2, 2, 2;
- features ``min(32 · 2**i, 320)`` (512 in 2D), conv bias, InstanceNorm (affine, eps 1e-5),
  LeakyReLU (in place, slope 0.01), no dropout, deep-supervision heads on every decoder stage,
  He initialisation (and, for ResEnc, the last norm of every residual block zeroed);
- PlainConvUNet: 2 convolutions per encoder and decoder stage; ResidualEncoderUNet:
  ``(1, 3, 4, 6, 6, 6, ...)`` basic residual blocks per encoder stage, 1 convolution per decoder
  stage.

ResEnc M, L and XL are the same network rule: their planners differ only in the GPU memory target
(8, 24, 40 GB), which sets the patch size (and with it the topology) and the batch size
(``plan_3d_fullres``). A preset here is therefore the patch its planner chooses for a reference
dataset, 1 mm isotropic with a field of view of at least 256 voxels in every axis (docs/models.md);
``patch_size`` and ``spacing`` override it, and the topology follows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

# nnU-Net v2 ExperimentPlanner: UNet_base_num_features, UNet_max_features_2d/3d,
# UNet_featuremap_min_edge_length.
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MIN_EDGE_LENGTH = 4
# ExperimentPlanner.UNet_blocks_per_stage_encoder/decoder (plain U-Net).
PLAIN_CONVS_PER_STAGE = 2
# ResEncUNetPlanner.UNet_blocks_per_stage_encoder/decoder.
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
RESENC_DECODER_CONVS_PER_STAGE = 1
# The planners' norm_op_kwargs.
_NORM_KWARGS = {"eps": 1e-5, "affine": True}

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


@dataclass(frozen=True)
class Topology:
    """Strides and kernel sizes per stage, first stage (stride 1) to bottleneck."""

    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    @property
    def divisor(self) -> tuple[int, ...]:
        """What every spatial size must be a multiple of: the product of the strides per axis."""
        return tuple(math.prod(axis) for axis in zip(*self.strides, strict=True))


def nnunet_topology(
    patch_size: Sequence[int], spacing: Sequence[float], min_edge: int = MIN_EDGE_LENGTH
) -> Topology:
    """nnU-Net v2's ``get_pool_and_conv_props`` (``network_topology.py``) for ``patch_size`` voxels
    of ``spacing`` mm: stages are added while some axis can be halved (at least ``2 · min_edge``
    voxels, a third axis alone needs ``3 · min_edge``) among those whose spacing is within a factor
    2 of the finest; those axes are halved together."""
    if len(patch_size) != len(spacing):
        raise ValueError(
            f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} have different lengths"
        )
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    kernel = [1] * dims
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = []
    while True:
        large = [i for i in range(dims) if current_size[i] >= 2 * min_edge]
        if not large:
            break
        finest = min(current_spacing[i] for i in large)
        axes = [i for i in large if current_spacing[i] / finest < 2]
        if len(axes) == 1 and current_size[axes[0]] < 3 * min_edge:
            break
        # A kernel becomes 3 once its axis is within a factor 2 of the finest spacing overall.
        for i in range(dims):
            if current_spacing[i] / min(current_spacing) < 2:
                kernel[i] = 3
        for i in axes:
            current_spacing[i] *= 2
            current_size[i] = math.ceil(current_size[i] / 2)
        strides.append(tuple(2 if i in axes else 1 for i in range(dims)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dims)
    return Topology(strides=tuple(strides), kernel_sizes=tuple(kernels))


def _per_stage(value: int | Sequence[int], n_stages: int, name: str) -> tuple[int, ...]:
    """An int for every stage, or the first ``n_stages`` entries of a list (as nnU-Net slices its
    per-stage tuples)."""
    if isinstance(value, int):
        return (value,) * n_stages
    if len(value) < n_stages:
        raise ValueError(f"{name} needs {n_stages} entries for this patch size, got {list(value)}")
    return tuple(int(v) for v in value[:n_stages])


def _geometry(
    patch_size: Sequence[int] | None, spacing: Sequence[float] | None, spatial_dims: int
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    patch = tuple(int(s) for s in patch_size) if patch_size is not None else (128,) * spatial_dims
    grid = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * spatial_dims
    if len(patch) != spatial_dims or len(grid) != spatial_dims:
        raise ValueError(
            f"patch_size {patch} and spacing {grid} must have spatial_dims={spatial_dims} entries"
        )
    return patch, grid


class _PlannedUNet:
    """What the suite adds to a dynamic-network-architectures U-Net: the planned geometry, the
    input check, and deep supervision only in training mode (the model contract of
    docs/architecture.md; nnU-Net switches ``decoder.deep_supervision`` off for inference)."""

    encoder: nn.Module
    decoder: nn.Module
    family: str

    def _plan(
        self,
        in_channels: int,
        patch_size: Sequence[int] | None,
        spacing: Sequence[float] | None,
        spatial_dims: int,
        width: int,
        max_features: int | None,
    ) -> dict[str, Any]:
        """The constructor arguments shared by both networks, and the geometry recorded on
        ``self``."""
        self.patch_size, self.spacing = _geometry(patch_size, spacing, spatial_dims)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.topology = nnunet_topology(self.patch_size, self.spacing)
        cap = MAX_FEATURES[spatial_dims] if max_features is None else max_features
        n = self.topology.n_stages
        return dict(
            input_channels=in_channels,
            n_stages=n,
            features_per_stage=[min(cap, width * 2**i) for i in range(n)],
            conv_op=_CONV[spatial_dims],
            kernel_sizes=[list(k) for k in self.topology.kernel_sizes],
            strides=[list(s) for s in self.topology.strides],
            conv_bias=True,
            norm_op=_INSTANCE_NORM[spatial_dims],
            norm_op_kwargs=dict(_NORM_KWARGS),
            dropout_op=None,
            dropout_op_kwargs=None,
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=True,
        )

    def _finish(self, deep_supervision: bool) -> None:
        self.deep_supervision = deep_supervision
        # nnU-Net's get_network_from_plans: network.apply(network.initialize). Meta tensors (the
        # planner's and the complexity table's networks) hold no values to initialise.
        if not next(self.parameters()).is_meta:
            self.apply(self.initialize)
        self.train(self.training)

    def train(self, mode: bool = True) -> _PlannedUNet:
        super().train(mode)
        self.decoder.deep_supervision = self.deep_supervision and mode
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem if ``x`` cannot go through the network."""
        expected = self.spatial_dims + 2
        if x.ndim != expected or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.family} expects {self.in_channels} channel(s) and {self.spatial_dims} "
                f"spatial axes: a {expected}-D input (B, {self.in_channels}, ...), got "
                f"{tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        divisor = self.topology.divisor
        if any(size % d for size, d in zip(spatial, divisor, strict=True)):
            suggestion = tuple(-(-s // d) * d for s, d in zip(spatial, divisor, strict=True))
            raise ValueError(
                f"{self.family} planned for patch {self.patch_size} at spacing {self.spacing} has "
                f"strides {[list(s) for s in self.topology.strides]}: every spatial size must be "
                f"a multiple of {divisor}, got {spatial}. Pad or crop the input, e.g. to "
                f"{suggestion}, or plan for this size (model.patch_size)."
            )
        if all(size == d for size, d in zip(spatial, divisor, strict=True)):
            raise ValueError(
                f"{self.family} cannot run on {spatial} inputs: the bottleneck would be a single "
                "voxel, which InstanceNorm cannot normalise in training"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes, *spatial)``; with deep supervision in training mode, the list
        ``[full, 1/2, ...]`` from every decoder stage (full resolution first)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))


class NNUNetPlainUNet(_PlannedUNet, PlainConvUNet):
    """nnU-Net's plain U-Net (``PlainConvUNet``) as its default planner configures it.

    Args:
        in_channels, num_classes: input channels and output classes (background included).
        patch_size: the training patch the topology is planned for (stages, strides, kernels).
        spacing: voxel size in mm of that patch; anisotropic spacings pool the fine axes first.
        width: features of the first stage, doubled per stage (nnU-Net: 32).
        max_features: feature cap (nnU-Net: 320 in 3D, 512 in 2D; None: that).
        n_conv_per_stage, n_conv_per_stage_decoder: convolutions per stage (an int or a list).
        deep_supervision: return every decoder stage's logits in training mode.
        spatial_dims: 2 or 3.

    Input ``(B, in_channels, *spatial)`` with every side a multiple of ``topology.divisor``.
    """

    family = "nnU-Net PlainConvUNet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        width: int = BASE_FEATURES,
        max_features: int | None = None,
        n_conv_per_stage: int | Sequence[int] = PLAIN_CONVS_PER_STAGE,
        n_conv_per_stage_decoder: int | Sequence[int] = PLAIN_CONVS_PER_STAGE,
        deep_supervision: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        arguments = self._plan(in_channels, patch_size, spacing, spatial_dims, width, max_features)
        n = arguments["n_stages"]
        PlainConvUNet.__init__(
            self,
            num_classes=num_classes,
            n_conv_per_stage=_per_stage(n_conv_per_stage, n, "n_conv_per_stage"),
            n_conv_per_stage_decoder=_per_stage(
                n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder"
            ),
            **arguments,
        )
        self._finish(deep_supervision)


class NNUNetResEncUNet(_PlannedUNet, ResidualEncoderUNet):
    """nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``, the ResEnc presets).

    Args: as ``NNUNetPlainUNet``, with ``n_blocks_per_stage`` (basic residual blocks per encoder
    stage, nnU-Net: ``(1, 3, 4, 6, 6, 6, ...)``) instead of ``n_conv_per_stage``, and one
    convolution per decoder stage by default.
    """

    family = "nnU-Net ResidualEncoderUNet"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        width: int = BASE_FEATURES,
        max_features: int | None = None,
        n_blocks_per_stage: int | Sequence[int] = RESENC_BLOCKS_PER_STAGE,
        n_conv_per_stage_decoder: int | Sequence[int] = RESENC_DECODER_CONVS_PER_STAGE,
        deep_supervision: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        arguments = self._plan(in_channels, patch_size, spacing, spatial_dims, width, max_features)
        n = arguments["n_stages"]
        ResidualEncoderUNet.__init__(
            self,
            num_classes=num_classes,
            n_blocks_per_stage=_per_stage(n_blocks_per_stage, n, "n_blocks_per_stage"),
            n_conv_per_stage_decoder=_per_stage(
                n_conv_per_stage_decoder, n - 1, "n_conv_per_stage_decoder"
            ),
            **arguments,
        )
        self._finish(deep_supervision)


# --- the planners: patch and batch size for a memory target ----------------------------------


@dataclass(frozen=True)
class Planner:
    """One of nnU-Net v2's 3D planners: the network it plans and its memory budget.

    ``reference`` is a count of feature-map elements (``compute_conv_feature_map_size``) that fits
    ``reference_gb`` of GPU memory at batch 2; the budget is ``reference · target_gb /
    reference_gb``. ``max_dataset_covered``: the batch may hold at most this fraction of the
    dataset's voxels (1: no cap).
    """

    network: type[_PlannedUNet]
    reference: int
    reference_gb: float
    target_gb: float
    max_dataset_covered: float

    @property
    def budget(self) -> float:
        return self.reference * self.target_gb / self.reference_gb


#: ExperimentPlanner (default nnU-Net) and nnUNetPlannerResEncM/L/XL: UNet_reference_val_3d,
#: UNet_reference_val_corresp_GB, gpu_memory_target_in_gb, max_dataset_covered.
PLANNERS: dict[str, Planner] = {
    "3d_fullres": Planner(NNUNetPlainUNet, 560_000_000, 8, 8, 0.05),
    "M": Planner(NNUNetResEncUNet, 680_000_000, 8, 8, 1.0),
    "L": Planner(NNUNetResEncUNet, 2_100_000_000, 24, 24, 1.0),
    "XL": Planner(NNUNetResEncUNet, 3_600_000_000, 40, 40, 1.0),
}
# ExperimentPlanner: UNet_reference_val_corresp_bs_3d and UNet_min_batch_size.
_REFERENCE_BATCH = 2
_MIN_BATCH = 2
# The planners' first patch has the volume of a 256³ cube, shaped by the spacing.
_INITIAL_PATCH_VOXELS = 256**3


@dataclass(frozen=True)
class Plan:
    """A planner's 3d_fullres choice: patch, batch, topology and the memory estimate."""

    patch_size: tuple[int, ...]
    batch_size: int
    topology: Topology
    feature_map_elements: int


def _padded(patch: Sequence[float], spacing: Sequence[float]) -> tuple[tuple[int, ...], Topology]:
    """nnU-Net's ``pad_shape``: the patch rounded up to a multiple of its topology's divisor."""
    topology = nnunet_topology(patch, spacing)
    padded = tuple(-(-int(p) // d) * d for p, d in zip(patch, topology.divisor, strict=True))
    return padded, topology


def _feature_map_elements(
    planner: Planner,
    patch: Sequence[int],
    spacing: Sequence[float],
    in_channels: int,
    num_classes: int,
) -> int:
    with torch.device("meta"):
        network = planner.network(
            in_channels=in_channels, num_classes=num_classes, patch_size=patch, spacing=spacing
        )
    return int(network.compute_conv_feature_map_size(tuple(patch)))


def plan_3d_fullres(
    preset: str,
    spacing: Sequence[float],
    median_shape: Sequence[int],
    in_channels: int,
    num_classes: int,
    dataset_voxels: float | None = None,
) -> Plan:
    """The patch and batch size nnU-Net v2's planner ``preset`` (``3d_fullres``: the default
    planner; ``M``, ``L``, ``XL``: ResEnc) chooses for a dataset of ``median_shape`` voxels at
    ``spacing`` (``get_plans_for_configuration``, re-stated).

    The first patch has the volume of 256³ in the aspect ratio of the spacing, cut to the median
    shape and rounded up to the topology's divisor. While dynamic-network-architectures'
    estimate (``compute_conv_feature_map_size``) exceeds the planner's budget, the axis largest
    relative to the median shape (the last of equals, as ``np.argsort(...)[-1]``) shrinks by one
    divisor step. The batch is ``round(budget / estimate · 2)``, at most ``max_dataset_covered``
    of ``dataset_voxels`` (when given), at least 2.
    """
    if preset not in PLANNERS:
        raise ValueError(f"unknown nnU-Net planner {preset!r}; choose one of {', '.join(PLANNERS)}")
    if len(spacing) != 3 or len(median_shape) != 3:
        raise ValueError("plan_3d_fullres plans 3D patches: give 3 spacings and 3 sizes")
    planner = PLANNERS[preset]
    aspect = [1.0 / s for s in spacing]
    scale = (_INITIAL_PATCH_VOXELS / math.prod(aspect)) ** (1 / 3)
    first = [min(round(a * scale), m) for a, m in zip(aspect, median_shape, strict=True)]
    patch, topology = _padded(first, spacing)
    estimate = _feature_map_elements(planner, patch, spacing, in_channels, num_classes)
    # The default planner tests estimate / 2 · 2 against the budget in 3D: the same test.
    while estimate > planner.budget:
        ratios = [p / m for p, m in zip(patch, median_shape, strict=True)]
        axis = max(range(3), key=lambda i: (ratios[i], i))
        # One step is the divisor of the patch one step smaller (so that 224 is not skipped
        # between 256 and 192: nnU-Net's comment).
        smaller = list(patch)
        smaller[axis] -= topology.divisor[axis]
        step = nnunet_topology(smaller, spacing).divisor[axis]
        reduced = list(patch)
        reduced[axis] -= step
        patch, topology = _padded(reduced, spacing)
        estimate = _feature_map_elements(planner, patch, spacing, in_channels, num_classes)
    batch = round(planner.budget / estimate * _REFERENCE_BATCH)
    if dataset_voxels is not None:
        batch = min(batch, round(dataset_voxels * planner.max_dataset_covered / math.prod(patch)))
    return Plan(
        patch_size=tuple(patch),
        batch_size=max(batch, _MIN_BATCH),
        topology=topology,
        feature_map_elements=estimate,
    )


# --- presets and builders --------------------------------------------------------------------

#: Each planner's patch for the reference dataset (1 mm isotropic, median shape of at least 256
#: voxels per axis; ``plan_3d_fullres(preset, (1, 1, 1), (256, 256, 256), 1, 14)``, checked by
#: tests/test_nnunet_baselines.py); every one gives batch 2.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "3d_fullres": dict(patch_size=(128, 128, 128), spacing=(1.0, 1.0, 1.0)),
}
RESENC_PRESETS: dict[str, dict[str, Any]] = {
    "M": dict(patch_size=(128, 128, 128), spacing=(1.0, 1.0, 1.0)),
    "L": dict(patch_size=(192, 192, 192), spacing=(1.0, 1.0, 1.0)),
    "XL": dict(patch_size=(256, 224, 224), spacing=(1.0, 1.0, 1.0)),
}


def _preset(
    presets: Mapping[str, Mapping[str, Any]], variant: str | None, label: str
) -> dict[str, Any]:
    if variant is None:
        return {}
    keys = {key.lower(): key for key in presets}
    if str(variant).lower() not in keys:
        raise ValueError(f"unknown {label} variant {variant!r}; choose one of {', '.join(presets)}")
    return dict(presets[keys[str(variant).lower()]])


def build_nnunet_unet(variant: str | None = None, **kwargs: Any) -> NNUNetPlainUNet:
    """nnU-Net's plain U-Net from a preset (``3d_fullres``) updated by ``kwargs``, or from
    ``kwargs`` alone; ``in_channels`` and ``num_classes`` are always required."""
    return NNUNetPlainUNet(**{**_preset(UNET_PRESETS, variant, "nnU-Net U-Net"), **kwargs})


def build_resenc(variant: str | None = None, **kwargs: Any) -> NNUNetResEncUNet:
    """nnU-Net's ResEnc U-Net from a preset (``M``, ``L``, ``XL``, case-insensitive) updated by
    ``kwargs``, or from ``kwargs`` alone; ``in_channels`` and ``num_classes`` are required."""
    return NNUNetResEncUNet(**{**_preset(RESENC_PRESETS, variant, "ResEnc"), **kwargs})
