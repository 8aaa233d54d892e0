"""Model registry: every network of the suite is built by name from plain keyword arguments.

``build_model("mednext", variant="B", kernel_size=5, in_channels=1, num_classes=14)`` builds a
preset; leaving out ``variant`` and passing every constructor argument builds any configuration.
Configuration files name models only through this registry, never by import path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mednext.models import cmunext, mednext, mednext_lite, nnunet_baselines


@dataclass(frozen=True)
class ModelFamily:
    """A registered model family.

    Attributes:
        name: registry name.
        builder: ``builder(variant=None, **kwargs) -> nn.Module``.
        constructor: the network class; its ``__init__`` arguments are the family's options.
        presets: variant name -> constructor arguments.
        catalog: the rows of ``mednext models``: label -> ``build_model`` arguments.
        reference: arguments shared by every catalog row (channels and classes of the published
            complexity figures).
        input_size: default spatial size of the complexity table (the papers' input); None: each
            preset at the patch its network is planned for (``patch_size``, nnU-Net's networks).
        paper_convention: how the paper counted FLOPs (see ``mednext.models.complexity``).
        spatial_dims: the networks' spatial dimensions unless ``spatial_dims`` says otherwise.
    """

    name: str
    builder: Callable[..., nn.Module]
    constructor: type[nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    catalog: Mapping[str, Mapping[str, Any]]
    reference: Mapping[str, Any] = field(default_factory=dict)
    input_size: int | None = 128
    paper_convention: str = "fvcore"
    spatial_dims: int = 2


_REGISTRY: dict[str, ModelFamily] = {}


def register_model(family: ModelFamily) -> None:
    if family.name in _REGISTRY:
        raise ValueError(f"model {family.name!r} is already registered")
    _REGISTRY[family.name] = family


def get_family(name: str) -> ModelFamily:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def list_models() -> list[str]:
    """Registered model names."""
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build registered model ``name``; ``variant=`` picks a preset, other arguments override it."""
    return get_family(name).builder(**kwargs)


register_model(
    ModelFamily(
        name="mednext",
        builder=mednext.build_mednext,
        constructor=mednext.MedNeXt,
        presets=mednext.PRESETS,
        catalog={
            f"{variant} k{kernel}": {"variant": variant, "kernel_size": kernel}
            for kernel in (3, 5)
            for variant in mednext.PRESETS
        },
        # The configuration of the official parameter counts and published FLOPs (docs/models.md).
        reference={"in_channels": 1, "num_classes": 14, "deep_supervision": True},
        input_size=128,
        paper_convention="fvcore",
        spatial_dims=3,
    )
)

register_model(
    ModelFamily(
        name="mednext_lite",
        builder=mednext_lite.build_mednext_lite,
        constructor=mednext_lite.MedNeXtLite,
        presets=mednext_lite.PRESETS,
        catalog={variant: {"variant": variant} for variant in mednext_lite.PRESETS},
        # The design's complexity figures (docs/models.md): a 2-class classifier at 3×224².
        reference={"in_channels": 3, "num_classes": 2},
        input_size=224,
        paper_convention="thop",
    )
)

register_model(
    ModelFamily(
        name="mednext_lite_seg",
        builder=mednext_lite.build_mednext_lite_segmenter,
        constructor=mednext_lite.MedNeXtLiteUNet,
        presets=mednext_lite.SEGMENTER_PRESETS,
        catalog={variant: {"variant": variant} for variant in mednext_lite.SEGMENTER_PRESETS},
        # Synapse 2D (TransUNet release): 1×224², background + 8 organs.
        reference={"in_channels": 1, "num_classes": 9},
        input_size=224,
        paper_convention="thop",
    )
)

register_model(
    ModelFamily(
        name="cmunext",
        builder=cmunext.build_cmunext,
        constructor=cmunext.CMUNeXt,
        presets=cmunext.PRESETS,
        catalog={variant: {"variant": variant} for variant in cmunext.PRESETS},
        # The published figures (Tang et al. 2023): 3 → 1 channels at 256², counted with thop.
        reference={"in_channels": 3, "num_classes": 1},
        input_size=256,
        paper_convention="thop",
    )
)

register_model(
    ModelFamily(
        name="unet",
        builder=nnunet_baselines.build_nnunet_unet,
        constructor=nnunet_baselines.NNUNetPlainUNet,
        presets=nnunet_baselines.UNET_PRESETS,
        catalog={variant: {"variant": variant} for variant in nnunet_baselines.UNET_PRESETS},
        # Beside MedNeXt's reference configuration: 1 → 14 channels (Synapse), deep supervision.
        reference={"in_channels": 1, "num_classes": 14, "deep_supervision": True},
        input_size=None,
        # No published FLOP figure; MedNeXt's convention, so that the two read side by side.
        paper_convention="fvcore",
        spatial_dims=3,
    )
)

register_model(
    ModelFamily(
        name="resenc",
        builder=nnunet_baselines.build_resenc,
        constructor=nnunet_baselines.NNUNetResEncUNet,
        presets=nnunet_baselines.RESENC_PRESETS,
        catalog={variant: {"variant": variant} for variant in nnunet_baselines.RESENC_PRESETS},
        reference={"in_channels": 1, "num_classes": 14, "deep_supervision": True},
        input_size=None,
        paper_convention="fvcore",
        spatial_dims=3,
    )
)

__all__ = ["ModelFamily", "build_model", "get_family", "list_models", "register_model"]
