"""The ``3d`` part of ``mednext bench``: our 3D MedNeXt against MONAI's MedNeXt in the training
configuration (1 input channel, 14 classes, deep supervision), in every training-step mode
(``mednext.bench.parts.modes``: channels-last, compile, autocast, checkpointing) against MONAI's
network in the same mode and in plain fp32. One step is forward, a loss over every output,
backward and ``zero_grad(set_to_none=True)``.

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
from mednext.bench.parts.base import SEED, BenchPart, BenchSettings, PartResult, shape_text
from mednext.bench.parts.modes import PLAIN, Mode, check_modes, prepare
from mednext.models import build_model, complexity, get_family
from mednext.models.mednext import CHECKPOINTING, PRESETS
from mednext.models.runtime import missing_compiler

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


def build_ours(
    variant: str, kernel_size: int, width: int, checkpointing: bool | str | None
) -> nn.Module:
    """Our preset in the training configuration, gradient checkpointing set explicitly
    (``False``/``None``, ``"block"``, ``"stage"``)."""
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
class ModeComparison:
    """One row of the 3D table: our network in one mode against MONAI's in the same mode (as far
    as MONAI has it) and in plain fp32."""

    variant: str
    mode: Mode
    ours: harness.Measurement
    monai: harness.Measurement
    monai_plain: harness.Measurement

    @property
    def time_ratio(self) -> float:
        return self.ours.step_ms / self.monai.step_ms

    @property
    def memory_ratio(self) -> float:
        return self.ours.peak_bytes / self.monai.peak_bytes

    def cells(self, input_shape: tuple[int, ...]) -> list[str]:
        """The row as text, in the table's column order."""
        ours, monai, plain = self.ours, self.monai, self.monai_plain
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
            f"{ours.step_ms / plain.step_ms:.2f}",
            f"{ours.peak_bytes / plain.peak_bytes:.2f}",
        ]

    def figures(self) -> dict[str, Any]:
        """The row for ``bench.json``."""
        return {
            "variant": self.variant,
            "mode": self.mode.name,
            "monai_mode": self.mode.without_checkpointing.name,
            "ours_ms": self.ours.step_ms,
            "monai_ms": self.monai.step_ms,
            "monai_fp32_ms": self.monai_plain.step_ms,
            "ours_peak_bytes": self.ours.peak_bytes,
            "monai_peak_bytes": self.monai.peak_bytes,
            "monai_fp32_peak_bytes": self.monai_plain.peak_bytes,
            "time_ratio_same_mode": self.time_ratio,
            "time_ratio_vs_monai_fp32": self.ours.step_ms / self.monai_plain.step_ms,
            "memory_ratio_vs_monai_fp32": self.ours.peak_bytes / self.monai_plain.peak_bytes,
            "ours_params": self.ours.complexity.params,
            "monai_params": self.monai.complexity.params,
        }


def default_modes(variant: str, device: torch.device) -> tuple[Mode, ...]:
    """The modes of a full run: every fast path and combination for S and B (compile only with
    a C++ compiler; fp16 only on CUDA), the layout and checkpointing modes for M and L, whose
    compilation alone would take most of a CPU run."""
    autocast = "fp16" if device.type == "cuda" else "bf16"
    layouts = [PLAIN, Mode(channels_last=True)]
    checkpointed = [
        Mode(channels_last=layout, checkpointing=granularity)
        for layout in (False, True)
        for granularity in CHECKPOINTING
    ]
    if variant not in ("S", "B"):
        return (*layouts, *checkpointed)
    compiled = [Mode(compile=True), Mode(channels_last=True, compile=True)]
    if missing_compiler() is not None:
        compiled = []
    return (*layouts, *compiled, Mode(autocast=autocast), *checkpointed)


_QUICK_MODES = (PLAIN, Mode(channels_last=True), Mode(checkpointing="block"))


def _described(base: str, mode: Mode) -> str:
    return base if mode == PLAIN else f"{base} + {mode.name}"


class MedNeXtVsMonai(BenchPart):
    """Each selected preset of our MedNeXt in each selected mode against MONAI's MedNeXt in the
    same mode (without checkpointing, which it lacks) and in plain fp32, all networks of a preset
    measured in alternation. Its own options: ``variants``, ``modes`` (None: ``default_modes``),
    ``size`` (cube side), ``kernel_size`` and ``width`` (of the first stage, both networks)."""

    name = "3d"
    section = "mednext"
    title = "MedNeXt vs MONAI, one training step"
    heading = "MedNeXt vs MONAI: training step"
    options = ("--variants", "--modes", "--size", "--kernel-size", "--width")
    defaults: ClassVar[Mapping[tuple[str, str], Mapping[str, Any]]] = {
        mode: {
            **values,
            "modes": _QUICK_MODES if mode[0] == "quick" else None,
            "kernel_size": DEFAULT_KERNEL_SIZE,
            "width": MONAI_FACTORY_WIDTH,
        }
        for mode, values in _MODE_DEFAULTS.items()
    }
    text_columns = 4
    notes = (
        "MONAI's MedNeXt-S is the official network. MONAI's B/M/L are the closest MONAI "
        "configuration, not the official one: its down blocks use the expansion ratio of the "
        "stage they leave, the official ones that of the stage they enter (hence the different "
        "parameter counts). Each row is our network in one mode against MONAI's in the same mode "
        "(its columns) and in plain fp32 (the last two columns). MONAI has no gradient "
        "checkpointing: the checkpointing rows compare with MONAI in the mode without it. "
        "MONAI's channels-last mode is what a MONAI user would do (`.to(memory_format="
        "torch.channels_last_3d)` for the network and the input); its stem's output on a "
        "one-channel input stays in the default layout, so the rest of MONAI's network runs in "
        "mixed layouts, where ours sets the layout after the stem.",
        "Modes: `channels-last` is `model.channels_last=true`; `compile` is "
        "`model.compile=true` (torch.compile, inductor; its compilation is part of the untimed "
        "warm-up); `bf16`/`fp16` is `trainer.precision=bf16-mixed`/`16-mixed` (autocast of the "
        "forward pass); `checkpoint-block`/`checkpoint-stage` is `model.checkpointing=block|"
        "stage`. Only `bf16`/`fp16` changes the arithmetic; `tests/test_fast_paths.py` checks "
        "that every other mode computes the plain step's loss and gradients.",
    )

    def columns(self) -> tuple[str, ...]:
        return (*_COLUMNS, "Time ÷ MONAI fp32", "Memory ÷ MONAI fp32")

    def check(self, settings: BenchSettings) -> None:
        for variant in settings.options["variants"]:
            check_modes(self.modes(variant, settings), settings.device)

    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        side = settings.options["size"]
        return (settings.batch_size, REFERENCE["in_channels"], side, side, side)

    def command_options(self, settings: BenchSettings) -> list[str]:
        options = settings.options
        argv = ["--variants", ",".join(options["variants"]), "--size", str(options["size"])]
        argv += ["--kernel-size", str(options["kernel_size"])]
        if options["width"] != MONAI_FACTORY_WIDTH:
            argv += ["--width", str(options["width"])]
        if options["modes"] is not None:
            argv += ["--modes", ",".join(mode.name for mode in options["modes"])]
        return argv

    def modes(self, variant: str, settings: BenchSettings) -> tuple[Mode, ...]:
        """Our modes for ``variant``, the plain one first."""
        chosen = settings.options["modes"] or default_modes(variant, settings.device)
        return (PLAIN, *(mode for mode in chosen if mode != PLAIN))

    def monai_modes(self, variant: str, settings: BenchSettings) -> tuple[Mode, ...]:
        """MONAI's modes for ``variant``: plain fp32 and each of ours without checkpointing."""
        modes = [mode.without_checkpointing for mode in self.modes(variant, settings)]
        return tuple(dict.fromkeys(modes))

    def step_count(self, settings: BenchSettings) -> int:
        per_network = harness.steps_per_network(settings.warmup, settings.steps, inference=False)
        return sum(
            per_network * (len(self.modes(v, settings)) + len(self.monai_modes(v, settings)))
            for v in settings.options["variants"]
        )

    def networks(
        self, variant: str, settings: BenchSettings
    ) -> dict[tuple[str, Mode], harness.Network]:
        """The networks of one preset on the settings' device, ``("ours", mode)`` and
        ``("monai", mode)``, each counted before it is put in its mode."""
        k, width = settings.options["kernel_size"], settings.options["width"]
        note = "" if width == MONAI_FACTORY_WIDTH else f", width {width}"
        match = "" if monai_matches_official(variant) else " (closest MONAI config)"
        shape = settings.input_shape
        counted: dict[str, complexity.Complexity] = {}
        networks = {}
        for family, modes in (
            ("ours", self.modes(variant, settings)),
            ("monai", self.monai_modes(variant, settings)),
        ):
            for mode in modes:
                if family == "ours":
                    described = f"MedNeXt-{variant} k{k}{note}"
                    model = build_ours(variant, k, width, checkpointing=mode.checkpointing)
                else:
                    described = f"create_mednext('{variant}') k{k}{note}{match}"
                    model = build_monai(variant, k, width)
                if family not in counted:
                    counted[family] = complexity.measure(model, shape, training=True)
                networks[family, mode] = harness.Network(
                    _described(described, mode),
                    prepare(model, mode, settings.device),
                    counted[family],
                )
        return networks

    def compare(
        self, variant: str, settings: BenchSettings, label: harness.ProgressLabel
    ) -> list[ModeComparison]:
        """The rows of one preset, one per mode of ours."""
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
        return [
            ModeComparison(
                variant,
                mode,
                ours,
                measured["monai", mode.without_checkpointing],
                measured["monai", PLAIN],
            )
            for (family, mode), ours in measured.items()
            if family == "ours"
        ]

    def measure(self, settings: BenchSettings, label: harness.ProgressLabel) -> PartResult:
        comparisons = [
            comparison
            for variant in settings.options["variants"]
            for comparison in self.compare(variant, settings, label)
        ]
        return PartResult(
            rows=[comparison.cells(settings.input_shape) for comparison in comparisons],
            figures={
                "input": list(settings.input_shape),
                "rows": [comparison.figures() for comparison in comparisons],
            },
        )

    def method(self, settings: BenchSettings) -> str:
        return (
            f"One step: forward of a batch of `{shape_text(settings.input_shape)}` in train mode "
            f"({REFERENCE['in_channels']} input channel, {REFERENCE['num_classes']} classes, deep "
            "supervision), loss = sum over the 5 outputs of the mean squared output, backward, "
            f"`zero_grad(set_to_none=True)`. Time: median of {settings.steps} timed step(s) after "
            f"{settings.warmup} warm-up step(s), all networks of a preset (ours in every mode, "
            f"MONAI's in every mode it has) alternating step by step, on "
            f"{settings.device.type}. Peak memory: one separate, untimed step, "
            f"{harness.peak_memory_method(settings.device)}."
        )


MEDNEXT_VS_MONAI = MedNeXtVsMonai()
