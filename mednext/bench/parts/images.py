"""The 2D parts of ``mednext bench``, one ``ImagePart`` each, told apart by their data only:

- ``classifier``: the MedNeXt-Lite classifiers T/S/B against MONAI's ResNet-50 at 3×224², two
  classes.
- ``seg2d``: CMUNeXt S/base/L and the MedNeXt-Lite segmenters T/S at 1×224², nine classes (the
  TransUNet Synapse protocol), against CMUNeXt-base.

Both time training steps (cross-entropy) and inference steps (eval mode, no gradients), reported
as images per second, with parameters and multiply-adds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mednext.bench import harness
from mednext.bench.parts.base import SEED, BenchPart, BenchSettings, PartResult, shape_text
from mednext.models import build_model, complexity, get_family

RESNET50 = "resnet50"
#: MONAI's ResNet defaults are the Med3D layout: a stride-1 stem and biased 1×1 shortcut convs,
#: which at 224² give four times the multiply-adds of the ImageNet ResNet-50 (16.3 G instead of
#: 4.1 G). These arguments make it torchvision's ``resnet50`` (He et al. 2016): stride-2 stem, no
#: shortcut bias, the network classification papers compare against.
RESNET50_IMAGENET_LAYOUT: dict[str, Any] = dict(conv1_t_stride=2, bias_downsample=False)

_IMAGE_DESCRIPTIONS = {
    RESNET50: "ResNet-50 (MONAI)",
    "mednext_lite": "MedNeXt-Lite-{variant}",
    "mednext_lite_seg": "MedNeXt-Lite-{variant} segmenter",
    "cmunext": "CMUNeXt-{variant}",
}

# On this suite's 2-core CPU machines one CMUNeXt-L step of 4×1×224² takes about 14 s: batches of
# 4 and 3 timed steps (the classifiers: 5) keep the whole `make bench` near a quarter of an hour.
_IMAGE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("full", "cpu"): dict(image_size=224, batch_size=4, warmup=1, steps=3),
    ("full", "cuda"): dict(image_size=224, batch_size=32, warmup=5, steps=20),
    ("quick", "cpu"): dict(image_size=224, batch_size=2, warmup=1, steps=3),
    ("quick", "cuda"): dict(image_size=224, batch_size=8, warmup=1, steps=3),
}


@dataclass(frozen=True)
class ImageNetwork:
    """A 2D network of a part: a registered family and preset, or MONAI's ResNet-50."""

    family: str
    variant: str | None = None

    @property
    def description(self) -> str:
        return _IMAGE_DESCRIPTIONS[self.family].format(variant=self.variant)


def build_image_network(network: ImageNetwork, in_channels: int, num_classes: int) -> nn.Module:
    """The network with ``in_channels`` inputs and ``num_classes`` outputs."""
    if network.family == RESNET50:
        from monai.networks.nets import resnet50

        return resnet50(
            spatial_dims=2,
            n_input_channels=in_channels,
            num_classes=num_classes,
            **RESNET50_IMAGENET_LAYOUT,
        )
    return build_model(
        network.family, variant=network.variant, in_channels=in_channels, num_classes=num_classes
    )


def _count(
    network: ImageNetwork, model: nn.Module, in_channels: int, size: int
) -> complexity.Complexity:
    """Parameters and FLOPs of ``model`` (``network`` as built) on one ``size``² image in eval
    mode, in the family's paper convention; ResNet-50, not in the registry, in fvcore's."""
    convention = (
        "fvcore" if network.family == RESNET50 else get_family(network.family).paper_convention
    )
    return complexity.measure(model, (1, in_channels, size, size), convention, training=False)


def _multiply_adds(network: ImageNetwork, counted: complexity.Complexity) -> int:
    """The GMACs column: the family's paper convention (``mednext models``); for ResNet-50
    FlopCounterMode's FLOPs / 2, convolutions and matrix products only."""
    return counted.flops // 2 if network.family == RESNET50 else counted.paper_flops


def image_complexity(network: ImageNetwork, part: ImagePart, size: int) -> tuple[int, int]:
    """Multiply-adds and FLOPs of one ``size``² image in eval mode, as the part's table reports
    them, for the network built on the meta device. FLOPs are FlopCounterMode's for every
    network."""
    with torch.device("meta"):
        model = build_image_network(network, part.in_channels, part.num_classes)
    counted = _count(network, model, part.in_channels, size)
    return _multiply_adds(network, counted), counted.flops


@dataclass(frozen=True)
class ImageRow:
    """One 2D network's numbers; ratios are taken against the part's reference row."""

    network: ImageNetwork
    measured: harness.Measurement
    batch_size: int

    @property
    def macs(self) -> int:
        return _multiply_adds(self.network, self.measured.complexity)

    @property
    def flops(self) -> int:
        return self.measured.complexity.flops

    @property
    def train_images_per_s(self) -> float:
        return self.batch_size * 1000 / self.measured.step_ms

    @property
    def inference_images_per_s(self) -> float:
        return self.batch_size * 1000 / self.measured.inference_ms

    def ratios(self, reference: ImageRow) -> tuple[float, float, float, float]:
        """Training time per image, inference time per image, training-step peak memory and
        FLOPs, each of this network divided by the reference's."""
        return (
            reference.train_images_per_s / self.train_images_per_s,
            reference.inference_images_per_s / self.inference_images_per_s,
            self.measured.peak_bytes / reference.measured.peak_bytes,
            self.flops / reference.flops,
        )


def _rate_text(per_s: float) -> str:
    # Two decimals below 10 images/s: a CPU trains the larger networks at under one.
    return f"{per_s:,.2f}" if per_s < 10 else f"{per_s:,.1f}"


def image_row_cells(row: ImageRow, reference: ImageRow, input_shape: tuple[int, ...]) -> list[str]:
    """One row of a 2D part's table, as text in ``image_columns`` order."""
    name = row.network.description
    return [
        f"{name} (reference)" if row.network == reference.network else name,
        shape_text(input_shape),
        f"{row.measured.complexity.params:,}",
        f"{row.macs / 1e9:.2f}",
        f"{row.flops / 1e9:.2f}",
        _rate_text(row.train_images_per_s),
        _rate_text(row.inference_images_per_s),
        f"{row.measured.peak_bytes / harness.MIB:,.1f}",
        *(f"{ratio:.2f}" for ratio in row.ratios(reference)),
    ]


def image_columns(part: ImagePart) -> tuple[str, ...]:
    """The header of a 2D part's table; the ratio columns name the reference."""
    reference = part.reference.description
    return (
        "Network",
        "Input",
        "Params",
        "GMACs",
        "GFLOPs",
        "Train img/s",
        "Inference img/s",
        "Train peak MiB",
        f"Train time/img ÷ {reference}",
        f"Inference time/img ÷ {reference}",
        f"Memory ÷ {reference}",
        f"FLOPs ÷ {reference}",
    )


@dataclass(frozen=True)
class ImagePart(BenchPart):
    """A 2D comparison: its networks (table order, reference included), the input and the task.
    Its own option: ``image_size``, the side of the square input."""

    name: str
    title: str
    networks: tuple[ImageNetwork, ...]
    #: The networks of a ``--quick`` run.
    quick_networks: tuple[ImageNetwork, ...]
    reference: ImageNetwork
    in_channels: int
    num_classes: int
    #: A label per pixel (segmentation) rather than one per image.
    dense: bool
    defaults: Mapping[tuple[str, str], Mapping[str, Any]]
    notes: tuple[str, ...] = ()
    options: ClassVar[tuple[str, ...]] = ("--image-size",)
    text_columns: ClassVar[int] = 2

    @property
    def section(self) -> str:
        return self.name

    @property
    def heading(self) -> str:
        return f"{self.title}: images/s and memory"

    def selected(self, settings: BenchSettings) -> tuple[ImageNetwork, ...]:
        """The networks that ``settings`` measures, in table order."""
        return self.quick_networks if settings.quick else self.networks

    def columns(self) -> tuple[str, ...]:
        return image_columns(self)

    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        side = settings.options["image_size"]
        return (settings.batch_size, self.in_channels, side, side)

    def command_options(self, settings: BenchSettings) -> list[str]:
        return ["--image-size", str(settings.options["image_size"])]

    def step_count(self, settings: BenchSettings) -> int:
        per_network = harness.steps_per_network(settings.warmup, settings.steps, inference=True)
        return per_network * len(self.selected(settings))

    def batch(self, settings: BenchSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded random batch and random labels (one per image, or a label map), on the
        device."""
        generator = torch.Generator().manual_seed(SEED)
        x = torch.randn(settings.input_shape, generator=generator)
        batch, _, height, width = settings.input_shape
        label_shape = (batch, height, width) if self.dense else (batch,)
        target = torch.randint(self.num_classes, label_shape, generator=generator)
        return x.to(settings.device), target.to(settings.device)

    def rows(self, settings: BenchSettings, label: harness.ProgressLabel) -> list[ImageRow]:
        """Every selected network measured, in table order."""
        advance = label(self.title)
        torch.manual_seed(SEED)
        selected = self.selected(settings)
        networks = []
        for network in selected:
            model = build_image_network(network, self.in_channels, self.num_classes)
            counted = _count(network, model, self.in_channels, settings.options["image_size"])
            networks.append(
                harness.Network(network.description, model.to(settings.device), counted)
            )
        x, target = self.batch(settings)
        measurements = harness.measure_interleaved(
            networks,
            x,
            functools.partial(F.cross_entropy, target=target),
            settings.warmup,
            settings.steps,
            advance,
            inference=True,
        )
        return [
            ImageRow(network, measured, settings.batch_size)
            for network, measured in zip(selected, measurements, strict=True)
        ]

    def measure(self, settings: BenchSettings, label: harness.ProgressLabel) -> PartResult:
        rows = self.rows(settings, label)
        (reference,) = [row for row in rows if row.network == self.reference]
        figures = [
            {
                "network": row.network.description,
                "reference": row.network == reference.network,
                "params": row.measured.complexity.params,
                "macs": row.macs,
                "flops": row.flops,
                "train_images_per_s": row.train_images_per_s,
                "inference_images_per_s": row.inference_images_per_s,
                "train_peak_bytes": row.measured.peak_bytes,
                **dict(
                    zip(
                        ("train_time_ratio", "inference_time_ratio", "memory_ratio", "flop_ratio"),
                        row.ratios(reference),
                        strict=True,
                    )
                ),
            }
            for row in rows
        ]
        return PartResult(
            rows=[image_row_cells(row, reference, settings.input_shape) for row in rows],
            figures={"input": list(settings.input_shape), "networks": figures},
        )

    def method(self, settings: BenchSettings) -> str:
        selected = self.selected(settings)
        labels = "a random label map" if self.dense else "a random label per image"
        families = sorted({network.family for network in selected} - {RESNET50})
        conventions = ", ".join(f"{f} {get_family(f).paper_convention}" for f in families)
        resnet = (
            "; ResNet-50: FlopCounterMode's FLOPs / 2 (convolutions and matrix products only)"
            if any(network.family == RESNET50 for network in selected)
            else ""
        )
        return (
            f"Training step: forward of a batch of `{shape_text(settings.input_shape)}` in train "
            f"mode, cross-entropy over the {self.num_classes} classes against {labels}, backward, "
            "`zero_grad(set_to_none=True)`. Inference step: the same batch in eval mode under "
            f"`torch.no_grad()`. Images/s: batch size / median of {settings.steps} timed step(s) "
            f"after {settings.warmup} warm-up step(s), the networks alternating step by step, on "
            f"{settings.device.type}. Train peak: one separate, untimed training step, "
            f"{harness.peak_memory_method(settings.device)}. GMACs: multiply-adds of one image in "
            "the convention of the family's paper, as `mednext models` reports them "
            f"({conventions}){resnet}. GFLOPs: `torch.utils.flop_counter.FlopCounterMode` for "
            "every network, the basis of the FLOP ratio. Ratios: this network divided by the "
            "reference measured in the same run (below 1: less time, memory or arithmetic than "
            "the reference)."
        )


def _lite(variant: str) -> ImageNetwork:
    return ImageNetwork("mednext_lite", variant)


def _lite_seg(variant: str) -> ImageNetwork:
    return ImageNetwork("mednext_lite_seg", variant)


def _cmunext(variant: str) -> ImageNetwork:
    return ImageNetwork("cmunext", variant)


IMAGE_PARTS: dict[str, ImagePart] = {
    "classifier": ImagePart(
        name="classifier",
        title="MedNeXt-Lite classifiers vs ResNet-50",
        networks=(ImageNetwork(RESNET50), _lite("T"), _lite("S"), _lite("B")),
        quick_networks=(ImageNetwork(RESNET50), _lite("T")),
        reference=ImageNetwork(RESNET50),
        in_channels=3,
        num_classes=2,
        dense=False,
        defaults={
            **_IMAGE_DEFAULTS,
            ("full", "cpu"): {**_IMAGE_DEFAULTS["full", "cpu"], "steps": 5},
        },
        notes=(
            "ResNet-50 is `monai.networks.nets.resnet50(spatial_dims=2, n_input_channels=3, "
            "num_classes=2, conv1_t_stride=2, bias_downsample=False)`, the ImageNet layout "
            "(torchvision's `resnet50`). MONAI's defaults are the Med3D layout, a stride-1 stem "
            "and biased shortcuts: four times the multiply-adds at 224² (16.3 G).",
        ),
    ),
    # The TransUNet Synapse protocol: one CT channel, background + 8 organs.
    "seg2d": ImagePart(
        name="seg2d",
        title="CMUNeXt vs MedNeXt-Lite segmenters",
        networks=(
            _cmunext("S"),
            _cmunext("base"),
            _cmunext("L"),
            _lite_seg("T"),
            _lite_seg("S"),
        ),
        quick_networks=(_cmunext("base"), _lite_seg("T")),
        reference=_cmunext("base"),
        in_channels=1,
        num_classes=9,
        dense=True,
        defaults=_IMAGE_DEFAULTS,
    ),
}
