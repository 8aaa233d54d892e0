"""``mednext bench``: training-step time and peak memory of our MedNeXt against MONAI's.

Both networks get the training configuration (1 input channel, 14 classes, deep supervision,
train mode) and the same input; one step is forward, a loss over every output, backward and
``zero_grad(set_to_none=True)``. Steps of the networks of one preset alternate, so a change in
machine load hits both alike. Results go to a Rich table and to a marked section of
``docs/benchmarks.md``.

MONAI's MedNeXt-S is the official design; its B/M/L are not: MONAI's down block takes the
expansion ratio of the stage it leaves, the official one that of the stage it enters. Those rows
compare against the closest MONAI configuration, and the parameter counts show the difference.

Only the standard library, torch and ``mednext.models`` are imported here at module level: the
CLI builds this subcommand's parser for every ``mednext`` call. MONAI and Rich load when it runs.
"""

from __future__ import annotations

import argparse
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
from torch import nn

from mednext.models import build_model, get_family
from mednext.models.mednext import DOWNSAMPLING_FACTOR, PRESETS

DESCRIPTION = (
    "Forward+backward time per training step (median) and peak memory of one step, of our "
    "MedNeXt presets against MONAI's MedNeXt on the same input in the same process. Writes the "
    "table to a marked section of docs/benchmarks.md (--quick: its own section)."
)

#: The training configuration (1 input channel, 14 classes, deep supervision), as the registry
#: gives it for the official parameter counts.
REFERENCE = get_family("mednext").reference
#: MONAI's ``create_mednext`` fixes ``init_filters`` to this width.
MONAI_FACTORY_WIDTH = 32
SEED = 0
MIB = 2**20
DEFAULT_OUTPUT = Path("docs/benchmarks.md")

# Per (mode, device type): the presets, cube side, warm-up and timed steps. On this suite's 2-core
# CPU machines one MedNeXt-L step at 64³ takes about 20 s, so the full CPU run keeps 1 + 3 steps.
_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("full", "cpu"): dict(variants=tuple(PRESETS), size=64, warmup=1, steps=3),
    ("full", "cuda"): dict(variants=tuple(PRESETS), size=128, warmup=3, steps=10),
    ("quick", "cpu"): dict(variants=("S", "B"), size=32, warmup=1, steps=3),
    ("quick", "cuda"): dict(variants=("S", "B"), size=32, warmup=1, steps=3),
}

_INTRO = """\
# Benchmarks

Numbers measured by the suite's own benchmark commands, each in a section that the command
rewrites between its `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers; text
outside the markers is kept.

- `make bench` (`mednext bench`): training-step time (forward + backward, median over several
  steps) and peak memory of one step, of our MedNeXt presets against MONAI's MedNeXt on the same
  input in the same process.
- `mednext bench --quick`: the same for presets S and B at 32³ in about a minute, written to its
  own section so that it never replaces the full run.
"""


@dataclass(frozen=True)
class BenchSettings:
    """What one ``mednext bench`` invocation measures."""

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


@dataclass(frozen=True)
class Network:
    """One network under test and how the tables name it."""

    description: str
    model: nn.Module


@dataclass(frozen=True)
class Measurement:
    """One network's numbers: median step time and peak allocation during one step."""

    description: str
    params: int
    step_ms: float
    peak_bytes: int


@dataclass(frozen=True)
class BenchResult:
    """One table row: our network against MONAI's on the same input."""

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


# --- networks -------------------------------------------------------------------------------


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


# --- one training step, its time and its memory --------------------------------------------


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    """Forward, loss, backward, and the gradients dropped again."""
    outputs = model(x)
    # One loss for both networks that reaches every deep-supervision head: the mean squared
    # error of each output against zeros.
    loss = sum(out.float().pow(2).mean() for out in outputs)
    loss.backward()
    # Dropping the gradients inside the step lets every step, the profiled one included, start
    # from weights and input alone; gradients allocated before the profiler started and freed
    # under it would otherwise be logged by the CPU allocator as blocks of unknown size.
    model.zero_grad(set_to_none=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(model: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one training step; CUDA work is waited for at both ends."""
    _synchronize(x.device)
    start = time.perf_counter()
    train_step(model, x)
    _synchronize(x.device)
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


def step_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak memory of one (untimed) training step above the weights and input."""
    if x.device.type == "cuda":
        return cuda_peak_bytes(lambda: train_step(model, x), x.device)
    return cpu_peak_bytes(lambda: train_step(model, x))


# --- running the benchmark ------------------------------------------------------------------


def measure_interleaved(
    networks: Sequence[Network],
    x: torch.Tensor,
    warmup: int,
    steps: int,
    advance: Callable[[], None],
) -> list[Measurement]:
    """Warm up, profile one step of each network, then time ``steps`` steps, the networks
    alternating step by step. ``advance`` is called after every step."""
    for _ in range(warmup):
        for network in networks:
            train_step(network.model, x)
            advance()
    peaks = []
    for network in networks:
        peaks.append(step_peak_bytes(network.model, x))
        advance()
    times: list[list[float]] = [[] for _ in networks]
    for _ in range(steps):
        for network, network_times in zip(networks, times, strict=True):
            network_times.append(timed_step(network.model, x))
            advance()
    return [
        Measurement(
            description=network.description,
            params=sum(p.numel() for p in network.model.parameters()),
            step_ms=statistics.median(network_times),
            peak_bytes=peak,
        )
        for network, network_times, peak in zip(networks, times, peaks, strict=True)
    ]


def bench_variant(
    variant: str, settings: BenchSettings, advance: Callable[[], None]
) -> list[BenchResult]:
    """The rows of one preset: ours against MONAI, and ours with checkpointing against MONAI."""
    torch.manual_seed(SEED)
    networks = networks_for(variant, settings)
    for network in networks.values():
        network.model.to(settings.device).train()
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(settings.input_shape, generator=generator).to(settings.device)
    measurements = measure_interleaved(
        list(networks.values()), x, settings.warmup, settings.steps, advance
    )
    measured = dict(zip(networks, measurements, strict=True))
    monai = measured.pop("monai")
    return [BenchResult(variant, settings.input_shape, ours, monai) for ours in measured.values()]


def steps_per_variant(variant: str, settings: BenchSettings) -> int:
    networks = 3 if PRESETS[variant]["checkpointing"] else 2
    return networks * (settings.warmup + 1 + settings.steps)


def run_benchmark(settings: BenchSettings) -> list[BenchResult]:
    """Every preset of ``settings``, with a Rich progress display on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    results: list[BenchResult] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        total = sum(steps_per_variant(v, settings) for v in settings.variants)
        task = progress.add_task("training steps", total=total)
        for variant in settings.variants:
            progress.update(task, description=f"MedNeXt-{variant} vs MONAI")
            results += bench_variant(variant, settings, lambda: progress.advance(task))
    return results


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


def _shape_text(shape: tuple[int, ...]) -> str:
    batch, channels, side = shape[:3]
    return f"{batch}×{channels}×{side}³"


def result_cells(result: BenchResult) -> tuple[str, ...]:
    """One row of the tables, as text in ``_COLUMNS`` order."""
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


def rich_table(results: Sequence[BenchResult], title: str) -> Any:
    """The results as a ``rich.table.Table``."""
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(_COLUMNS):
        table.add_column(column, justify="left" if index < 4 else "right", overflow="fold")
    for result in results:
        table.add_row(*result_cells(result))
    return table


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


def command_line(settings: BenchSettings, output: Path) -> str:
    """A command that repeats this measurement, every setting spelled out."""
    argv = ["mednext", "bench"] + (["--quick"] if settings.quick else [])
    argv += ["--variants", ",".join(settings.variants), "--size", str(settings.size)]
    argv += ["--kernel-size", str(settings.kernel_size), "--batch-size", str(settings.batch_size)]
    if settings.width != MONAI_FACTORY_WIDTH:
        argv += ["--width", str(settings.width)]
    argv += ["--warmup", str(settings.warmup), "--steps", str(settings.steps)]
    argv += ["--device", settings.device.type]
    if output != DEFAULT_OUTPUT:
        argv += ["--output", str(output)]
    return shlex.join(argv)


def markdown_section(results: Sequence[BenchResult], settings: BenchSettings, command: str) -> str:
    """The Markdown of one run: provenance, method, table and how to read it."""
    import monai

    title = "MedNeXt vs MONAI: training step" + (" (quick check)" if settings.quick else "")
    memory = (
        "`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`"
        if settings.device.type == "cuda"
        else "the PyTorch profiler's CPU allocator records (peak of the running sum of "
        "allocations and frees)"
    )
    lines = [
        f"## {title}",
        "",
        f"- Date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Command: `{command}`",
        f"- Machine: {machine_description(settings.device)}",
        f"- Versions: torch {torch.__version__}, MONAI {monai.__version__}",
        "",
        f"One step: forward of a batch of `{_shape_text(settings.input_shape)}` in train mode "
        f"({REFERENCE['in_channels']} input channel, {REFERENCE['num_classes']} classes, deep "
        "supervision), loss = sum over the 5 outputs of the mean squared output, backward, "
        f"`zero_grad(set_to_none=True)`. Time: median of {settings.steps} timed step(s) after "
        f"{settings.warmup} warm-up step(s), ours and MONAI's alternating, on "
        f"{settings.device.type}. Peak memory: one separate, untimed step, from {memory}, above "
        "the memory held before the step (weights, input).",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(_COLUMNS))) + "|",
        *("| " + " | ".join(result_cells(result)) + " |" for result in results),
        "",
        "MONAI's MedNeXt-S is the official network. MONAI's B/M/L are the closest MONAI "
        "configuration, not the official one: its down blocks use the expansion ratio of the "
        "stage they leave, the official ones that of the stage they enter (hence the different "
        "parameter counts). The main rows compare at equal settings, our gradient "
        "checkpointing off; rows marked `+ checkpointing (preset)` are our M/L as their "
        "presets train them, against the same MONAI measurement (MONAI has no checkpointing).",
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mednext bench``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="presets S and B at 32³, 1 warm-up and 3 timed steps, in its own Markdown section",
    )
    parser.add_argument(
        "--variants",
        type=_variant_list,
        default=None,
        help="comma-separated presets, e.g. S,B (default: all; --quick: S,B)",
    )
    parser.add_argument(
        "--size",
        type=_cube_side,
        default=None,
        help="cube side of the input, a multiple of 16 from 32 (default: 64 on CPU, 128 on CUDA; "
        "--quick: 32)",
    )
    parser.add_argument("--kernel-size", type=int, choices=(3, 5), default=3)
    parser.add_argument("--batch-size", type=_positive, default=1)
    parser.add_argument(
        "--width",
        type=_positive,
        default=MONAI_FACTORY_WIDTH,
        help="channels of the first stage of both networks; for tests (default: 32)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        help="untimed warm-up steps per network (default: 1 on CPU, 3 on CUDA; --quick: 1)",
    )
    parser.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="timed steps per network, median reported (default: 3 on CPU, 10 on CUDA)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"Markdown file whose bench section is rewritten (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")


def resolve_settings(args: argparse.Namespace) -> BenchSettings:
    """Options given on the command line, else the defaults of the mode and device."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available to this torch build")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    defaults = _DEFAULTS["quick" if args.quick else "full", device.type]
    given = {name: getattr(args, name) for name in ("variants", "size", "warmup", "steps")}
    chosen = {name: defaults[name] if value is None else value for name, value in given.items()}
    return BenchSettings(
        batch_size=args.batch_size,
        kernel_size=args.kernel_size,
        width=args.width,
        device=device,
        quick=args.quick,
        **chosen,
    )


def run(args: argparse.Namespace) -> int:
    """``mednext bench``: measure, print the table, write the Markdown section."""
    from rich.console import Console

    try:
        settings = resolve_settings(args)
    except ValueError as error:
        print(f"mednext bench: {error}", file=sys.stderr)
        return 2
    results = run_benchmark(settings)
    title = "MedNeXt vs MONAI, one training step" + (" (quick)" if settings.quick else "")
    table = rich_table(results, title)
    console = Console()
    if not console.is_terminal:
        # Piped output (a log, CI) has no width to fit, and 80 columns crush eleven: print the
        # table at its natural width.
        unbounded = console.options.update_width(10_000)
        console = Console(width=console.measure(table, options=unbounded).maximum)
    console.print(table)
    if not args.no_write:
        key = "mednext-quick" if settings.quick else "mednext"
        command = command_line(settings, args.output)
        try:
            write_section(args.output, key, markdown_section(results, settings, command))
        except ValueError as error:
            print(f"mednext bench: {error}", file=sys.stderr)
            return 1
        console.print(f"wrote section bench:{key} of {args.output}")
    return 0
