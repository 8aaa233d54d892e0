"""The ``3d`` part of ``mednext bench``: our 3D MedNeXt against MONAI's MedNeXt in the training
configuration (1 input channel, 14 classes, deep supervision). One step is forward, a loss over
every output, backward and ``zero_grad(set_to_none=True)``.

MONAI's MedNeXt-S is the official design; its B/M/L are not: MONAI's down block takes the
expansion ratio of the stage it leaves, the official one that of the stage it enters. Those rows
compare against the closest MONAI configuration, and the parameter counts show the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mednext.bench import DEFAULT_KERNEL_SIZE, MONAI_FACTORY_WIDTH, harness
from mednext.bench.parts.base import SEED, BenchPart, BenchSettings, shape_text
from mednext.models import build_model, complexity, get_family
from mednext.models.mednext import PRESETS

#: The training configuration (1 input channel, 14 classes, deep supervision), as the registry
#: gives it for the official parameter counts.
REFERENCE = get_family("mednext").reference

# On this suite's 2-core CPU machines one MedNeXt-L step at 64³ takes about 20 s, so the full CPU
# run keeps 1 + 3 steps.
_MODE_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("full", "cpu"): dict(variants=tuple(PRESETS), size=64, batch_size=1, warmup=1, steps=3),
    ("full", "cuda"): dict(variants=tuple(PRESETS), size=128, batch_size=1, warmup=3, steps=10),
    ("quick", "cpu"): dict(variants=("S", "B"), size=32, batch_size=1, warmup=1, steps=3),
    ("quick", "cuda"): dict(variants=("S", "B"), size=32, batch_size=1, warmup=1, steps=3),
}

_COLUMNS = (
    "Preset",
    "Ours",
    "MONAI",
    "Input",
    "Ours ms/step",
    "MONAI ms/step",
    "Time ours/MONAI",
    "Ours peak MiB",
    "MONAI peak MiB",
    "Memory ours/MONAI",
    "Params ours / MONAI",
)


def _nine(value: int | Sequence[int]) -> tuple[int, ...]:
    return (value,) * 9 if isinstance(value, int) else tuple(value)


def monai_matches_official(variant: str) -> bool:
    """Whether MONAI's MedNeXt of this preset is the official network: only when the expansion
    ratio is the same from stage 0 to the bottleneck, where MONAI's down-block convention (the
    ratio of the stage it leaves) and the official one (the stage it enters) agree."""
    return len(set(_nine(PRESETS[variant]["exp_r"])[:5])) == 1


def build_ours(variant: str, kernel_size: int, width: int, checkpointing: bool) -> nn.Module:
    """Our preset in the training configuration, gradient checkpointing set explicitly."""
    return build_model(
        "mednext",
        variant=variant,
        kernel_size=kernel_size,
        width=width,
        checkpointing=checkpointing,
        **REFERENCE,
    )


def monai_arguments(variant: str, kernel_size: int, width: int) -> dict[str, Any]:
    """Arguments of ``monai.networks.nets.MedNeXt`` for the closest MONAI configuration of our
    preset: the same per-stage expansion ratios and block counts (equal to what MONAI's
    ``create_mednext`` passes at width 32)."""
    preset = PRESETS[variant]
    exp_r, blocks = _nine(preset["exp_r"]), _nine(preset["block_counts"])
    return dict(
        spatial_dims=3,
        init_filters=width,
        in_channels=REFERENCE["in_channels"],
        out_channels=REFERENCE["num_classes"],
        kernel_size=kernel_size,
        deep_supervision=REFERENCE["deep_supervision"],
        use_residual_connection=True,
        norm_type="group",
        global_resp_norm=False,
        encoder_expansion_ratio=exp_r[:4],
        bottleneck_expansion_ratio=exp_r[4],
        decoder_expansion_ratio=exp_r[5:],
        blocks_down=blocks[:4],
        blocks_bottleneck=blocks[4],
        blocks_up=blocks[5:],
    )


def build_monai(variant: str, kernel_size: int, width: int) -> nn.Module:
    """MONAI's MedNeXt preset through its own factory; at another width (the tests' tiny
    networks), the same configuration through the class, since the factory fixes the width."""
    from monai.networks.nets import MedNeXt
    from monai.networks.nets.mednext import create_mednext

    if width == MONAI_FACTORY_WIDTH:
        return create_mednext(
            variant,
            spatial_dims=3,
            in_channels=REFERENCE["in_channels"],
            out_channels=REFERENCE["num_classes"],
            kernel_size=kernel_size,
            deep_supervision=REFERENCE["deep_supervision"],
        )
    return MedNeXt(**monai_arguments(variant, kernel_size, width))


def deep_supervision_mse(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One loss for our and MONAI's 3D MedNeXt that reaches every deep-supervision head: the mean
    squared error of each output against zeros."""
    return sum(out.float().pow(2).mean() for out in outputs)


@dataclass(frozen=True)
class MonaiComparison:
    """One row of the 3D table: one of our networks against MONAI's on the same input."""

    variant: str
    ours: harness.Measurement
    monai: harness.Measurement

    @property
    def time_ratio(self) -> float:
        return self.ours.step_ms / self.monai.step_ms

    @property
    def memory_ratio(self) -> float:
        return self.ours.peak_bytes / self.monai.peak_bytes

    def cells(self, input_shape: tuple[int, ...]) -> list[str]:
        """The row as text, in the table's column order."""
        ours, monai = self.ours, self.monai
        return [
            self.variant,
            ours.description,
            monai.description,
            shape_text(input_shape),
            f"{ours.step_ms:,.0f}",
            f"{monai.step_ms:,.0f}",
            f"{self.time_ratio:.2f}",
            f"{ours.peak_bytes / harness.MIB:,.1f}",
            f"{monai.peak_bytes / harness.MIB:,.1f}",
            f"{self.memory_ratio:.2f}",
            f"{ours.complexity.params:,} / {monai.complexity.params:,}",
        ]


class MedNeXtVsMonai(BenchPart):
    """Each selected preset of our MedNeXt against MONAI's at equal settings, and the presets
    that train with gradient checkpointing also as they train. Its own options: ``variants``,
    ``size`` (cube side), ``kernel_size`` and ``width`` (of the first stage, both networks)."""

    name = "3d"
    section = "mednext"
    title = "MedNeXt vs MONAI, one training step"
    heading = "MedNeXt vs MONAI: training step"
    options = ("--variants", "--size", "--kernel-size", "--width")
    defaults: ClassVar[Mapping[tuple[str, str], Mapping[str, Any]]] = {
        mode: {**values, "kernel_size": DEFAULT_KERNEL_SIZE, "width": MONAI_FACTORY_WIDTH}
        for mode, values in _MODE_DEFAULTS.items()
    }
    text_columns = 4
    notes = (
        "MONAI's MedNeXt-S is the official network. MONAI's B/M/L are the closest MONAI "
        "configuration, not the official one: its down blocks use the expansion ratio of the "
        "stage they leave, the official ones that of the stage they enter (hence the different "
        "parameter counts). The main rows compare at equal settings, our gradient "
        "checkpointing off; rows marked `+ checkpointing (preset)` are our M/L as their "
        "presets train them, against the same MONAI measurement (MONAI has no checkpointing).",
    )

    def columns(self) -> tuple[str, ...]:
        return _COLUMNS

    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        side = settings.options["size"]
        return (settings.batch_size, REFERENCE["in_channels"], side, side, side)

    def command_options(self, settings: BenchSettings) -> list[str]:
        options = settings.options
        argv = ["--variants", ",".join(options["variants"]), "--size", str(options["size"])]
        argv += ["--kernel-size", str(options["kernel_size"])]
        if options["width"] != MONAI_FACTORY_WIDTH:
            argv += ["--width", str(options["width"])]
        return argv

    def step_count(self, settings: BenchSettings) -> int:
        per_network = harness.steps_per_network(settings.warmup, settings.steps, inference=False)
        return sum(
            per_network * (3 if PRESETS[variant]["checkpointing"] else 2)
            for variant in settings.options["variants"]
        )

    def networks(self, variant: str, settings: BenchSettings) -> dict[str, harness.Network]:
        """The networks of one preset on the settings' device: ``ours`` and ``monai`` at equal
        settings (no checkpointing), plus ``ours_checkpointed`` when the preset enables gradient
        checkpointing."""
        k, width = settings.options["kernel_size"], settings.options["width"]
        note = "" if width == MONAI_FACTORY_WIDTH else f", width {width}"
        match = "" if monai_matches_official(variant) else " (closest MONAI config)"
        built = {
            "ours": (f"MedNeXt-{variant} k{k}{note}", build_ours(variant, k, width, False)),
            "monai": (
                f"create_mednext('{variant}') k{k}{note}{match}",
                build_monai(variant, k, width),
            ),
        }
        if PRESETS[variant]["checkpointing"]:
            built["ours_checkpointed"] = (
                f"MedNeXt-{variant} k{k}{note} + checkpointing (preset)",
                build_ours(variant, k, width, True),
            )
        return {
            key: harness.Network(
                description,
                model.to(settings.device),
                complexity.measure(model, settings.input_shape, training=True),
            )
            for key, (description, model) in built.items()
        }

    def compare(
        self, variant: str, settings: BenchSettings, label: harness.ProgressLabel
    ) -> list[MonaiComparison]:
        """The rows of one preset: ours against MONAI, and ours with checkpointing against
        MONAI."""
        advance = label(f"MedNeXt-{variant} vs MONAI")
        torch.manual_seed(SEED)
        networks = self.networks(variant, settings)
        generator = torch.Generator().manual_seed(SEED)
        x = torch.randn(settings.input_shape, generator=generator).to(settings.device)
        measurements = harness.measure_interleaved(
            list(networks.values()),
            x,
            deep_supervision_mse,
            settings.warmup,
            settings.steps,
            advance,
        )
        measured = dict(zip(networks, measurements, strict=True))
        monai = measured.pop("monai")
        return [MonaiComparison(variant, ours, monai) for ours in measured.values()]

    def measure(self, settings: BenchSettings, label: harness.ProgressLabel) -> list[list[str]]:
        return [
            comparison.cells(settings.input_shape)
            for variant in settings.options["variants"]
            for comparison in self.compare(variant, settings, label)
        ]

    def method(self, settings: BenchSettings) -> str:
        return (
            f"One step: forward of a batch of `{shape_text(settings.input_shape)}` in train mode "
            f"({REFERENCE['in_channels']} input channel, {REFERENCE['num_classes']} classes, deep "
            "supervision), loss = sum over the 5 outputs of the mean squared output, backward, "
            f"`zero_grad(set_to_none=True)`. Time: median of {settings.steps} timed step(s) after "
            f"{settings.warmup} warm-up step(s), ours and MONAI's alternating, on "
            f"{settings.device.type}. Peak memory: one separate, untimed step, "
            f"{harness.peak_memory_method(settings.device)}."
        )


MEDNEXT_VS_MONAI = MedNeXtVsMonai()
