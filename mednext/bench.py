"""``mednext bench``: training and inference speed and peak memory of the suite's networks against
a reference measured in the same process, in three parts (``--part``, default all):

- ``3d``: our 3D MedNeXt against MONAI's MedNeXt in the training configuration (1 input channel,
  14 classes, deep supervision); one step is forward, a loss over every output, backward and
  ``zero_grad(set_to_none=True)``.
- ``classifier``: the MedNeXt-Lite classifiers T/S/B against MONAI's ResNet-50 at 3×224², two
  classes; training steps (cross-entropy) and inference steps (eval mode, no gradients), reported
  as images per second, with parameters and multiply-adds.
- ``seg2d``: CMUNeXt S/base/L and the MedNeXt-Lite segmenters T/S at 1×224², nine classes (the
  TransUNet Synapse protocol), against CMUNeXt-base, measured as the classifiers.

The steps of the networks of one comparison alternate, so a change in machine load hits them alike.
Each part prints a Rich table and rewrites its own marked section of ``docs/benchmarks.md``, with
the machine and the command that repeats it, so parts can be re-run independently.

MONAI's MedNeXt-S is the official design; its B/M/L are not: MONAI's down block takes the
expansion ratio of the stage it leaves, the official one that of the stage it enters. Those rows
compare against the closest MONAI configuration, and the parameter counts show the difference.

Only the standard library, torch and ``mednext.models`` are imported here at module level: the
CLI builds this subcommand's parser for every ``mednext`` call. MONAI and Rich load when it runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mednext.models import build_model, get_family
from mednext.models.complexity import measure
from mednext.models.mednext import DOWNSAMPLING_FACTOR, PRESETS
from mednext.models.mednext_lite import DOWNSAMPLING_FACTOR as LITE_DOWNSAMPLING_FACTOR

DESCRIPTION = (
    "Training and inference speed, and peak memory of one training step, against a reference "
    "measured in the same process: our 3D MedNeXt vs MONAI's MedNeXt (--part 3d), the "
    "MedNeXt-Lite classifiers vs MONAI's ResNet-50 at 224² (--part classifier), CMUNeXt and the "
    "MedNeXt-Lite segmenters vs CMUNeXt-base at 224² (--part seg2d). Each part rewrites its own "
    "marked section of docs/benchmarks.md (--quick: sections of their own)."
)

#: The training configuration (1 input channel, 14 classes, deep supervision), as the registry
#: gives it for the official parameter counts.
REFERENCE = get_family("mednext").reference
#: MONAI's ``create_mednext`` fixes ``init_filters`` to this width.
MONAI_FACTORY_WIDTH = 32
SEED = 0
MIB = 2**20
DEFAULT_OUTPUT = Path("docs/benchmarks.md")
DEFAULT_KERNEL_SIZE = 3
PARTS = ("3d", "classifier", "seg2d")

# Per (part, mode, device type): what a run measures unless options say otherwise. On this suite's
# 2-core CPU machines one MedNeXt-L step at 64³ takes about 20 s, so the full 3D CPU run keeps
# 1 + 3 steps, and the 2D parts use batches of 4 (one CMUNeXt-L step of 4×1×224² takes about
# 14 s), which keeps the whole `make bench` near a quarter of an hour.
_DEFAULTS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("3d", "full", "cpu"): dict(variants=tuple(PRESETS), size=64, batch_size=1, warmup=1, steps=3),
    ("3d", "full", "cuda"): dict(
        variants=tuple(PRESETS), size=128, batch_size=1, warmup=3, steps=10
    ),
    ("3d", "quick", "cpu"): dict(variants=("S", "B"), size=32, batch_size=1, warmup=1, steps=3),
    ("3d", "quick", "cuda"): dict(variants=("S", "B"), size=32, batch_size=1, warmup=1, steps=3),
    ("classifier", "full", "cpu"): dict(image_size=224, batch_size=4, warmup=1, steps=5),
    ("classifier", "full", "cuda"): dict(image_size=224, batch_size=32, warmup=5, steps=20),
    ("classifier", "quick", "cpu"): dict(image_size=224, batch_size=2, warmup=1, steps=3),
    ("classifier", "quick", "cuda"): dict(image_size=224, batch_size=8, warmup=1, steps=3),
    ("seg2d", "full", "cpu"): dict(image_size=224, batch_size=4, warmup=1, steps=3),
    ("seg2d", "full", "cuda"): dict(image_size=224, batch_size=32, warmup=5, steps=20),
    ("seg2d", "quick", "cpu"): dict(image_size=224, batch_size=2, warmup=1, steps=3),
    ("seg2d", "quick", "cuda"): dict(image_size=224, batch_size=8, warmup=1, steps=3),
}

_INTRO = """\
# Benchmarks

Numbers measured by the suite's own benchmark commands, each in a section that the command
rewrites between its `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers; text
outside the markers is kept.

`make bench` (`mednext bench`) runs three parts; `--part 3d|classifier|seg2d` (repeatable) runs
only some, each writing its own section:

- `3d`: training-step time (forward + backward, median over several steps) and peak memory of one
  step, of our MedNeXt presets against MONAI's MedNeXt on the same input in the same process.
- `classifier`: training and inference images/s and training-step peak memory of the
  MedNeXt-Lite classifiers T/S/B against MONAI's ResNet-50 at 3×224².
- `seg2d`: the same for CMUNeXt S/base/L and the MedNeXt-Lite segmenters T/S at 1×224², nine
  classes, against CMUNeXt-base.

`mednext bench --quick` measures a small subset of each part (MedNeXt S and B at 32³; the
reference and the smallest MedNeXt-Lite network at 224²) in under a minute per part, written to
sections of its own so that it never replaces a full run.
"""


@dataclass(frozen=True)
class BenchSettings:
    """What the ``3d`` part of one ``mednext bench`` invocation measures."""

    variants: tuple[str, ...]
    size: int
    batch_size: int
    kernel_size: int
    width: int
    warmup: int
    steps: int
    device: torch.device
    quick: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch_size, REFERENCE["in_channels"], self.size, self.size, self.size)

    @property
    def key(self) -> str:
        return "mednext-quick" if self.quick else "mednext"


@dataclass(frozen=True)
class Network:
    """One network under test and how the tables name it."""

    description: str
    model: nn.Module


@dataclass(frozen=True)
class Measurement:
    """One network's numbers: median training-step time, peak allocation during one training step
    and, where measured, median inference-step time."""

    description: str
    params: int
    step_ms: float
    peak_bytes: int
    inference_ms: float | None = None


@dataclass(frozen=True)
class BenchResult:
    """One 3D table row: our network against MONAI's on the same input."""

    variant: str
    input_shape: tuple[int, ...]
    ours: Measurement
    monai: Measurement

    @property
    def time_ratio(self) -> float:
        return self.ours.step_ms / self.monai.step_ms

    @property
    def memory_ratio(self) -> float:
        return self.ours.peak_bytes / self.monai.peak_bytes


# --- 3D networks ----------------------------------------------------------------------------


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


def _width_note(width: int) -> str:
    return "" if width == MONAI_FACTORY_WIDTH else f", width {width}"


def networks_for(variant: str, settings: BenchSettings) -> dict[str, Network]:
    """The networks of one preset: ``ours`` and ``monai`` at equal settings (no checkpointing),
    plus ``ours_checkpointed`` when the preset enables gradient checkpointing."""
    k, width = settings.kernel_size, settings.width
    note = _width_note(width)
    match = "" if monai_matches_official(variant) else " (closest MONAI config)"
    built = {
        "ours": Network(f"MedNeXt-{variant} k{k}{note}", build_ours(variant, k, width, False)),
        "monai": Network(
            f"create_mednext('{variant}') k{k}{note}{match}", build_monai(variant, k, width)
        ),
    }
    if PRESETS[variant]["checkpointing"]:
        built["ours_checkpointed"] = Network(
            f"MedNeXt-{variant} k{k}{note} + checkpointing (preset)",
            build_ours(variant, k, width, True),
        )
    return built


# --- 2D networks ----------------------------------------------------------------------------

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


@dataclass(frozen=True)
class ImageNetwork:
    """A 2D network of a part: a registered family and preset, or MONAI's ResNet-50."""

    family: str
    variant: str | None = None

    @property
    def description(self) -> str:
        return _IMAGE_DESCRIPTIONS[self.family].format(variant=self.variant)


@dataclass(frozen=True)
class ImagePart:
    """A 2D comparison: its networks (table order, reference included), the input and the task."""

    key: str
    title: str
    in_channels: int
    num_classes: int
    #: A label per pixel (segmentation) rather than one per image.
    dense: bool
    reference: ImageNetwork
    networks: tuple[ImageNetwork, ...]
    quick_networks: tuple[ImageNetwork, ...]


def _lite(variant: str) -> ImageNetwork:
    return ImageNetwork("mednext_lite", variant)


def _lite_seg(variant: str) -> ImageNetwork:
    return ImageNetwork("mednext_lite_seg", variant)


def _cmunext(variant: str) -> ImageNetwork:
    return ImageNetwork("cmunext", variant)


IMAGE_PARTS: dict[str, ImagePart] = {
    "classifier": ImagePart(
        key="classifier",
        title="MedNeXt-Lite classifiers vs ResNet-50",
        in_channels=3,
        num_classes=2,
        dense=False,
        reference=ImageNetwork(RESNET50),
        networks=(ImageNetwork(RESNET50), _lite("T"), _lite("S"), _lite("B")),
        quick_networks=(ImageNetwork(RESNET50), _lite("T")),
    ),
    # The TransUNet Synapse protocol: one CT channel, background + 8 organs.
    "seg2d": ImagePart(
        key="seg2d",
        title="CMUNeXt vs MedNeXt-Lite segmenters",
        in_channels=1,
        num_classes=9,
        dense=True,
        reference=_cmunext("base"),
        networks=(
            _cmunext("S"),
            _cmunext("base"),
            _cmunext("L"),
            _lite_seg("T"),
            _lite_seg("S"),
        ),
        quick_networks=(_cmunext("base"), _lite_seg("T")),
    ),
}


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


def image_complexity(network: ImageNetwork, part: ImagePart, size: int) -> tuple[int, int]:
    """Multiply-adds and FLOPs of one ``size``² image in eval mode, counted on the meta device.
    Multiply-adds follow the family's paper convention (``mednext models``); ResNet-50, not in the
    registry, gets FlopCounterMode's FLOPs / 2. FLOPs are FlopCounterMode's for every network."""
    with torch.device("meta"):
        model = build_image_network(network, part.in_channels, part.num_classes)
    model.eval()
    shape = (1, part.in_channels, size, size)
    if network.family == RESNET50:
        counted = measure(model, shape)
        return counted.flops // 2, counted.flops
    counted = measure(model, shape, get_family(network.family).paper_convention)
    return counted.paper_flops, counted.flops


# --- steps, their time and their memory -----------------------------------------------------

Loss = Callable[[Any], torch.Tensor]


def deep_supervision_mse(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One loss for our and MONAI's 3D MedNeXt that reaches every deep-supervision head: the mean
    squared error of each output against zeros."""
    return sum(out.float().pow(2).mean() for out in outputs)


def train_step(model: nn.Module, x: torch.Tensor, loss: Loss) -> None:
    """Forward, loss, backward, and the gradients dropped again."""
    loss(model(x)).backward()
    # Dropping the gradients inside the step lets every step, the profiled one included, start
    # from weights and input alone; gradients allocated before the profiler started and freed
    # under it would otherwise be logged by the CPU allocator as blocks of unknown size.
    model.zero_grad(set_to_none=True)


def inference_step(model: nn.Module, x: torch.Tensor) -> None:
    """Forward without gradients (the model in eval mode)."""
    with torch.no_grad():
        model(x)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of ``fn()``; CUDA work is waited for at both ends."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return (time.perf_counter() - start) * 1000


@contextmanager
def _kineto_log_quiet() -> Iterator[None]:
    # torch 2.13's Kineto backend prints "USDT ... profiler_start/stop" to stderr on every profile,
    # tearing the progress display. It reads KINETO_LOG_LEVEL when it first starts; 6 is above its
    # highest level. A level the user set is kept.
    previous = os.environ.get("KINETO_LOG_LEVEL")
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KINETO_LOG_LEVEL", None)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by the CPU allocator during ``fn()`` above what it held before, from the
    PyTorch profiler's memory records: the maximum of the running sum of every allocation (+) and
    free (-) in time order. The CPU analogue of ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats``, less the memory already allocated when ``fn`` starts."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with (
        _kineto_log_quiet(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    # prof.events() folds each allocation into the cpu_memory_usage of the op that made it and
    # keeps as "[memory]" only the records outside every op, so read the raw records instead.
    records = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    records.sort(key=lambda event: event.start_ns())
    return max(accumulate((event.nbytes() for event in records), initial=0))


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on ``device`` during ``fn()`` above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def step_peak_bytes(model: nn.Module, x: torch.Tensor, loss: Loss) -> int:
    """Peak memory of one (untimed) training step above the weights and input."""
    if x.device.type == "cuda":
        return cuda_peak_bytes(lambda: train_step(model, x, loss), x.device)
    return cpu_peak_bytes(lambda: train_step(model, x, loss))


# --- running a comparison -------------------------------------------------------------------


def _rounds(
    models: Sequence[nn.Module],
    rounds: int,
    step: Callable[[nn.Module], object],
    device: torch.device,
    advance: Callable[[], None],
) -> list[list[float]]:
    """``rounds`` rounds of one timed ``step`` per model, the models alternating; milliseconds
    per model."""
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, model_times in zip(models, times, strict=True):
            model_times.append(timed(functools.partial(step, model), device))
            advance()
    return times


def measure_interleaved(
    networks: Sequence[Network],
    x: torch.Tensor,
    loss: Loss,
    warmup: int,
    steps: int,
    advance: Callable[[], None],
    inference: bool = False,
) -> list[Measurement]:
    """In train mode: warm up, profile one training step of each network, then time ``steps``
    training steps, the networks alternating step by step. With ``inference``, then in eval
    mode: ``warmup`` and ``steps`` inference steps in the same way. ``advance`` is called after
    every step. The networks are left in train mode."""
    models = [network.model for network in networks]
    train = functools.partial(train_step, x=x, loss=loss)
    infer = functools.partial(inference_step, x=x)
    for model in models:
        model.train()
    _rounds(models, warmup, train, x.device, advance)
    peaks = []
    for model in models:
        peaks.append(step_peak_bytes(model, x, loss))
        advance()
    train_times = _rounds(models, steps, train, x.device, advance)
    inference_times: list[list[float] | None] = [None] * len(models)
    if inference:
        for model in models:
            model.eval()
        _rounds(models, warmup, infer, x.device, advance)
        inference_times[:] = _rounds(models, steps, infer, x.device, advance)
        for model in models:
            model.train()
    return [
        Measurement(
            description=network.description,
            params=sum(p.numel() for p in network.model.parameters()),
            step_ms=statistics.median(network_times),
            peak_bytes=peak,
            inference_ms=None if inferred is None else statistics.median(inferred),
        )
        for network, network_times, peak, inferred in zip(
            networks, train_times, peaks, inference_times, strict=True
        )
    ]


def steps_per_network(warmup: int, steps: int, inference: bool) -> int:
    """Steps (each followed by a progress advance) that ``measure_interleaved`` runs per network."""
    return warmup + 1 + steps + ((warmup + steps) if inference else 0)


@contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[str], Callable[[], None]]]:
    """A Rich progress display on stderr; yields ``label(text) -> advance``, which names what is
    running and returns the callback that counts one step."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)

        def label(text: str) -> Callable[[], None]:
            progress.update(task, description=text)
            return lambda: progress.advance(task)

        yield label


def bench_variant(
    variant: str, settings: BenchSettings, advance: Callable[[], None]
) -> list[BenchResult]:
    """The rows of one preset: ours against MONAI, and ours with checkpointing against MONAI."""
    torch.manual_seed(SEED)
    networks = networks_for(variant, settings)
    for network in networks.values():
        network.model.to(settings.device)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(settings.input_shape, generator=generator).to(settings.device)
    measurements = measure_interleaved(
        list(networks.values()),
        x,
        deep_supervision_mse,
        settings.warmup,
        settings.steps,
        advance,
    )
    measured = dict(zip(networks, measurements, strict=True))
    monai = measured.pop("monai")
    return [BenchResult(variant, settings.input_shape, ours, monai) for ours in measured.values()]


def steps_per_variant(variant: str, settings: BenchSettings) -> int:
    networks = 3 if PRESETS[variant]["checkpointing"] else 2
    return networks * steps_per_network(settings.warmup, settings.steps, inference=False)


def run_benchmark(settings: BenchSettings) -> list[BenchResult]:
    """Every 3D preset of ``settings``, with a Rich progress display on stderr."""
    results: list[BenchResult] = []
    total = sum(steps_per_variant(v, settings) for v in settings.variants)
    with _progress(total, "training steps") as label:
        for variant in settings.variants:
            advance = label(f"MedNeXt-{variant} vs MONAI")
            results += bench_variant(variant, settings, advance)
    return results


@dataclass(frozen=True)
class ImageBenchSettings:
    """What one 2D part of one ``mednext bench`` invocation measures."""

    part: ImagePart
    image_size: int
    batch_size: int
    warmup: int
    steps: int
    device: torch.device
    quick: bool

    @property
    def networks(self) -> tuple[ImageNetwork, ...]:
        return self.part.quick_networks if self.quick else self.part.networks

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.part.in_channels, self.image_size, self.image_size)

    @property
    def key(self) -> str:
        return self.part.key + ("-quick" if self.quick else "")


@dataclass(frozen=True)
class ImageRow:
    """One 2D network's numbers; ratios are taken against the part's reference row."""

    network: ImageNetwork
    measured: Measurement
    batch_size: int
    macs: int
    flops: int

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


def image_batch(settings: ImageBenchSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch and random labels (one per image, or a label map), on the device."""
    part = settings.part
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(settings.input_shape, generator=generator)
    batch, _, height, width = settings.input_shape
    label_shape = (batch, height, width) if part.dense else (batch,)
    target = torch.randint(part.num_classes, label_shape, generator=generator)
    return x.to(settings.device), target.to(settings.device)


def bench_image_part(settings: ImageBenchSettings, advance: Callable[[], None]) -> list[ImageRow]:
    """The rows of one 2D part, in the part's table order."""
    part = settings.part
    torch.manual_seed(SEED)
    networks = [
        Network(
            network.description,
            build_image_network(network, part.in_channels, part.num_classes).to(settings.device),
        )
        for network in settings.networks
    ]
    x, target = image_batch(settings)
    measurements = measure_interleaved(
        networks,
        x,
        functools.partial(F.cross_entropy, target=target),
        settings.warmup,
        settings.steps,
        advance,
        inference=True,
    )
    return [
        ImageRow(
            network,
            measured,
            settings.batch_size,
            *image_complexity(network, part, settings.image_size),
        )
        for network, measured in zip(settings.networks, measurements, strict=True)
    ]


def run_image_benchmark(settings: ImageBenchSettings) -> list[ImageRow]:
    """One 2D part, with a Rich progress display on stderr."""
    per_network = steps_per_network(settings.warmup, settings.steps, inference=True)
    with _progress(per_network * len(settings.networks), "steps") as label:
        return bench_image_part(settings, label(settings.part.title))


# --- tables and the Markdown file -----------------------------------------------------------

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
# Columns before this index are text (left-aligned), the rest numbers.
_TEXT_COLUMNS = 4
_IMAGE_TEXT_COLUMNS = 2


def _shape_text(shape: tuple[int, ...]) -> str:
    batch, channels, side = shape[:3]
    return f"{batch}×{channels}×{side}{'²' if len(shape) == 4 else '³'}"


def result_cells(result: BenchResult) -> tuple[str, ...]:
    """One row of the 3D tables, as text in ``_COLUMNS`` order."""
    ours, monai = result.ours, result.monai
    return (
        result.variant,
        ours.description,
        monai.description,
        _shape_text(result.input_shape),
        f"{ours.step_ms:,.0f}",
        f"{monai.step_ms:,.0f}",
        f"{result.time_ratio:.2f}",
        f"{ours.peak_bytes / MIB:,.1f}",
        f"{monai.peak_bytes / MIB:,.1f}",
        f"{result.memory_ratio:.2f}",
        f"{ours.params:,} / {monai.params:,}",
    )


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


def _rate_text(per_s: float) -> str:
    # Two decimals below 10 images/s: a CPU trains the larger networks at under one.
    return f"{per_s:,.2f}" if per_s < 10 else f"{per_s:,.1f}"


def image_row_cells(row: ImageRow, reference: ImageRow, input_shape: tuple[int, ...]) -> list[str]:
    """One row of a 2D part's table, as text in ``image_columns`` order."""
    name = row.network.description
    return [
        f"{name} (reference)" if row.network == reference.network else name,
        _shape_text(input_shape),
        f"{row.measured.params:,}",
        f"{row.macs / 1e9:.2f}",
        f"{row.flops / 1e9:.2f}",
        _rate_text(row.train_images_per_s),
        _rate_text(row.inference_images_per_s),
        f"{row.measured.peak_bytes / MIB:,.1f}",
        *(f"{ratio:.2f}" for ratio in row.ratios(reference)),
    ]


def image_table_rows(rows: Sequence[ImageRow], settings: ImageBenchSettings) -> list[list[str]]:
    """Every row of a 2D part as text, ratios against the part's reference."""
    (reference,) = [row for row in rows if row.network == settings.part.reference]
    return [image_row_cells(row, reference, settings.input_shape) for row in rows]


def _rich_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], text: int
) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index < text else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def rich_table(results: Sequence[BenchResult], title: str) -> Any:
    """The 3D results as a ``rich.table.Table``."""
    return _rich_table(title, _COLUMNS, [result_cells(r) for r in results], _TEXT_COLUMNS)


def image_rich_table(rows: Sequence[ImageRow], settings: ImageBenchSettings) -> Any:
    """A 2D part's results as a ``rich.table.Table``."""
    title = settings.part.title + (" (quick)" if settings.quick else "")
    cells = image_table_rows(rows, settings)
    return _rich_table(title, image_columns(settings.part), cells, _IMAGE_TEXT_COLUMNS)


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], text: int) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i < text else "---:" for i in range(len(columns))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def machine_description(device: torch.device) -> str:
    """CPU model and torch threads, plus the GPU on CUDA."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def _command_start(part: str, quick: bool) -> list[str]:
    return ["mednext", "bench", "--part", part] + (["--quick"] if quick else [])


def _command_end(settings: BenchSettings | ImageBenchSettings, output: Path) -> list[str]:
    argv = ["--warmup", str(settings.warmup), "--steps", str(settings.steps)]
    argv += ["--device", settings.device.type]
    if output != DEFAULT_OUTPUT:
        argv += ["--output", str(output)]
    return argv


def command_line(settings: BenchSettings | ImageBenchSettings, output: Path) -> str:
    """A command that repeats this part's measurement, every setting spelled out."""
    if isinstance(settings, ImageBenchSettings):
        argv = _command_start(settings.part.key, settings.quick)
        argv += ["--image-size", str(settings.image_size)]
    else:
        argv = _command_start("3d", settings.quick)
        argv += ["--variants", ",".join(settings.variants), "--size", str(settings.size)]
        argv += ["--kernel-size", str(settings.kernel_size)]
        if settings.width != MONAI_FACTORY_WIDTH:
            argv += ["--width", str(settings.width)]
    argv += ["--batch-size", str(settings.batch_size)]
    return shlex.join(argv + _command_end(settings, output))


def _memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`"
    return (
        "the PyTorch profiler's CPU allocator records (peak of the running sum of allocations "
        "and frees)"
    )


def _provenance(command: str, device: torch.device, wall_s: float) -> list[str]:
    import monai

    return [
        f"- Date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Command: `{command}`",
        f"- Machine: {machine_description(device)}",
        f"- Versions: torch {torch.__version__}, MONAI {monai.__version__}",
        f"- Wall time of this part: {wall_s:,.0f} s",
    ]


def markdown_section(
    results: Sequence[BenchResult], settings: BenchSettings, command: str, wall_s: float
) -> str:
    """The Markdown of one 3D run: provenance, method, table and how to read it."""
    title = "MedNeXt vs MONAI: training step" + (" (quick check)" if settings.quick else "")
    lines = [
        f"## {title}",
        "",
        *_provenance(command, settings.device, wall_s),
        "",
        f"One step: forward of a batch of `{_shape_text(settings.input_shape)}` in train mode "
        f"({REFERENCE['in_channels']} input channel, {REFERENCE['num_classes']} classes, deep "
        "supervision), loss = sum over the 5 outputs of the mean squared output, backward, "
        f"`zero_grad(set_to_none=True)`. Time: median of {settings.steps} timed step(s) after "
        f"{settings.warmup} warm-up step(s), ours and MONAI's alternating, on "
        f"{settings.device.type}. Peak memory: one separate, untimed step, from "
        f"{_memory_method(settings.device)}, above the memory held before the step (weights, "
        "input).",
        "",
        *_markdown_table(_COLUMNS, [result_cells(r) for r in results], _TEXT_COLUMNS),
        "",
        "MONAI's MedNeXt-S is the official network. MONAI's B/M/L are the closest MONAI "
        "configuration, not the official one: its down blocks use the expansion ratio of the "
        "stage they leave, the official ones that of the stage they enter (hence the different "
        "parameter counts). The main rows compare at equal settings, our gradient "
        "checkpointing off; rows marked `+ checkpointing (preset)` are our M/L as their "
        "presets train them, against the same MONAI measurement (MONAI has no checkpointing).",
    ]
    return "\n".join(lines) + "\n"


def image_markdown_section(
    rows: Sequence[ImageRow], settings: ImageBenchSettings, command: str, wall_s: float
) -> str:
    """The Markdown of one 2D part: provenance, method, table and how to read it."""
    part = settings.part
    title = f"{part.title}: images/s and memory" + (" (quick check)" if settings.quick else "")
    labels = "a random label map" if part.dense else "a random label per image"
    families = sorted({row.network.family for row in rows} - {RESNET50})
    conventions = ", ".join(f"{f} {get_family(f).paper_convention}" for f in families)
    lines = [
        f"## {title}",
        "",
        *_provenance(command, settings.device, wall_s),
        "",
        f"Training step: forward of a batch of `{_shape_text(settings.input_shape)}` in train "
        f"mode, cross-entropy over the {part.num_classes} classes against {labels}, backward, "
        "`zero_grad(set_to_none=True)`. Inference step: the same batch in eval mode under "
        f"`torch.no_grad()`. Images/s: batch size / median of {settings.steps} timed step(s) "
        f"after {settings.warmup} warm-up step(s), the networks alternating step by step, on "
        f"{settings.device.type}. Train peak: one separate, untimed training step, from "
        f"{_memory_method(settings.device)}, above the memory held before the step (weights, "
        "input). GMACs: multiply-adds of one image in the convention of the family's paper, as "
        f"`mednext models` reports them ({conventions})"
        + (
            "; ResNet-50: FlopCounterMode's FLOPs / 2 (convolutions and matrix products only)"
            if any(row.network.family == RESNET50 for row in rows)
            else ""
        )
        + ". GFLOPs: `torch.utils.flop_counter.FlopCounterMode` for every network, the basis of "
        "the FLOP ratio. Ratios: this network divided by the reference measured in the same "
        "run (below 1: less time, memory or arithmetic than the reference).",
        "",
        *_markdown_table(
            image_columns(part), image_table_rows(rows, settings), _IMAGE_TEXT_COLUMNS
        ),
    ]
    if part.reference.family == RESNET50:
        lines += [
            "",
            "ResNet-50 is `monai.networks.nets.resnet50(spatial_dims=2, n_input_channels=3, "
            "num_classes=2, conv1_t_stride=2, bias_downsample=False)`, the ImageNet layout "
            "(torchvision's `resnet50`). MONAI's defaults are the Med3D layout, a stride-1 stem "
            "and biased shortcuts: four times the multiply-adds at 224² (16.3 G).",
        ]
    return "\n".join(lines) + "\n"


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def replace_section(text: str, key: str, body: str) -> str:
    """``text`` with the section marked ``key`` set to ``body``; appended when absent."""
    start, end = _markers(key)
    section = f"{start}\n{body}{end}"
    begin = text.find(start)
    if begin < 0:
        return text.rstrip("\n") + "\n\n" + section + "\n"
    finish = text.find(end, begin)
    if finish < 0:
        raise ValueError(f"section {key!r} has the marker {start} but no {end}")
    return text[:begin] + section + text[finish + len(end) :]


def write_section(path: Path, key: str, body: str) -> None:
    """Set section ``key`` of the Markdown file ``path`` to ``body``, keeping everything else;
    a new file starts with the benchmarks introduction. The file is replaced atomically."""
    text = path.read_text() if path.exists() else _INTRO
    try:
        updated = replace_section(text, key, body)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(updated)
    os.replace(temporary, path)


# --- command line ---------------------------------------------------------------------------


def _variant_list(text: str) -> tuple[str, ...]:
    variants = tuple(v.strip().upper() for v in text.split(",") if v.strip())
    unknown = [v for v in variants if v not in PRESETS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(
            f"unknown preset(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(PRESETS)}, comma-separated"
        )
    return variants


def _cube_side(text: str) -> int:
    size = int(text)
    # A 16³ cube leaves the bottleneck a single voxel, which MedNeXt.check_input rejects.
    smallest = 2 * DOWNSAMPLING_FACTOR
    if size < smallest or size % DOWNSAMPLING_FACTOR:
        raise argparse.ArgumentTypeError(
            f"--size must be a multiple of {DOWNSAMPLING_FACTOR} of at least {smallest}, got {size}"
        )
    return size


def _image_side(text: str) -> int:
    size = int(text)
    # MedNeXt-Lite downsamples 32×; at 32² its last stage and ResNet-50's are a single pixel,
    # which BatchNorm cannot normalise in training at batch size 1.
    smallest = 2 * LITE_DOWNSAMPLING_FACTOR
    if size < smallest or size % LITE_DOWNSAMPLING_FACTOR:
        raise argparse.ArgumentTypeError(
            f"--image-size must be a multiple of {LITE_DOWNSAMPLING_FACTOR} of at least "
            f"{smallest}, got {size}"
        )
    return size


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


#: Options of a single part: ``(option, dest, part or parts)``.
_PART_OPTIONS = (
    ("--variants", "variants", ("3d",)),
    ("--size", "size", ("3d",)),
    ("--kernel-size", "kernel_size", ("3d",)),
    ("--width", "width", ("3d",)),
    ("--image-size", "image_size", tuple(IMAGE_PARTS)),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mednext bench``."""
    parser.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        default=None,
        help="run only this part (repeatable; default: all): 3d = MedNeXt vs MONAI, classifier = "
        "MedNeXt-Lite vs ResNet-50, seg2d = CMUNeXt and MedNeXt-Lite segmenters",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small subset of each part (3d: presets S and B at 32³; 2D: the reference and the "
        "smallest MedNeXt-Lite at batch 2), 1 warm-up and 3 timed steps, in Markdown sections "
        "of their own",
    )
    parser.add_argument(
        "--variants",
        type=_variant_list,
        default=None,
        help="3d: comma-separated presets, e.g. S,B (default: all; --quick: S,B)",
    )
    parser.add_argument(
        "--size",
        type=_cube_side,
        default=None,
        help="3d: cube side of the input, a multiple of 16 from 32 (default: 64 on CPU, 128 on "
        "CUDA; --quick: 32)",
    )
    parser.add_argument(
        "--kernel-size",
        type=int,
        choices=(3, 5),
        default=None,
        help=f"3d: MedNeXt kernel size (default: {DEFAULT_KERNEL_SIZE})",
    )
    parser.add_argument(
        "--width",
        type=_positive,
        default=None,
        help=f"3d: channels of the first stage of both networks; for tests (default: "
        f"{MONAI_FACTORY_WIDTH})",
    )
    parser.add_argument(
        "--image-size",
        type=_image_side,
        default=None,
        help="classifier, seg2d: side of the square input, a multiple of 32 from 64 (default: 224)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="images or volumes per step (default: 3d 1; classifier and seg2d 4 on CPU, 32 on "
        "CUDA, --quick 2 on CPU, 8 on CUDA)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        help="untimed warm-up steps per network (default: 1 on CPU; 3 (3d) or 5 on CUDA; "
        "--quick: 1)",
    )
    parser.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="timed steps per network, median reported (default: 3 on CPU, 5 for the "
        "classifiers; 10 (3d) or 20 on CUDA; --quick: 3)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"Markdown file whose bench sections are rewritten (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only")


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available to this torch build")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def selected_parts(args: argparse.Namespace) -> tuple[str, ...]:
    """The parts to run, in the order of ``PARTS``; an option of a part not selected is an
    error rather than silently ignored."""
    parts = tuple(part for part in PARTS if args.part is None or part in args.part)
    for option, dest, owners in _PART_OPTIONS:
        if getattr(args, dest) is not None and not set(owners) & set(parts):
            raise ValueError(f"{option} applies to --part {' or '.join(owners)}, not selected")
    return parts


def resolve_settings(args: argparse.Namespace) -> list[BenchSettings | ImageBenchSettings]:
    """The settings of every selected part: options given on the command line, else the defaults
    of the part, the mode and the device."""
    device = _device(args.device)
    mode = "quick" if args.quick else "full"
    plans: list[BenchSettings | ImageBenchSettings] = []
    for part in selected_parts(args):
        defaults = _DEFAULTS[part, mode, device.type]
        names = ("batch_size", "warmup", "steps")
        names += ("variants", "size") if part == "3d" else ("image_size",)
        given = {name: getattr(args, name) for name in names}
        chosen = {name: defaults[name] if value is None else value for name, value in given.items()}
        if part == "3d":
            plans.append(
                BenchSettings(
                    kernel_size=args.kernel_size or DEFAULT_KERNEL_SIZE,
                    width=args.width or MONAI_FACTORY_WIDTH,
                    device=device,
                    quick=args.quick,
                    **chosen,
                )
            )
        else:
            plans.append(
                ImageBenchSettings(
                    part=IMAGE_PARTS[part], device=device, quick=args.quick, **chosen
                )
            )
    return plans


def _print_table(table: Any) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Piped output (a log, CI) has no width to fit, and 80 columns crush a dozen: print the
        # table at its natural width.
        unbounded = console.options.update_width(10_000)
        console = Console(width=console.measure(table, options=unbounded).maximum)
    console.print(table)


def run_part(settings: BenchSettings | ImageBenchSettings, output: Path) -> tuple[Any, str]:
    """Measure one part: its Rich table and its Markdown section."""
    start = time.perf_counter()
    command = command_line(settings, output)
    if isinstance(settings, ImageBenchSettings):
        rows = run_image_benchmark(settings)
        wall_s = time.perf_counter() - start
        return (
            image_rich_table(rows, settings),
            image_markdown_section(rows, settings, command, wall_s),
        )
    results = run_benchmark(settings)
    wall_s = time.perf_counter() - start
    title = "MedNeXt vs MONAI, one training step" + (" (quick)" if settings.quick else "")
    return rich_table(results, title), markdown_section(results, settings, command, wall_s)


def run(args: argparse.Namespace) -> int:
    """``mednext bench``: measure each selected part, print its table, write its section."""
    try:
        plans = resolve_settings(args)
    except ValueError as error:
        print(f"mednext bench: {error}", file=sys.stderr)
        return 2
    for settings in plans:
        start = time.perf_counter()
        table, section = run_part(settings, args.output)
        _print_table(table)
        print(f"bench:{settings.key}: {time.perf_counter() - start:,.0f} s")
        if args.no_write:
            continue
        try:
            write_section(args.output, settings.key, section)
        except ValueError as error:
            print(f"mednext bench: {error}", file=sys.stderr)
            return 1
        print(f"wrote section bench:{settings.key} of {args.output}")
    return 0
