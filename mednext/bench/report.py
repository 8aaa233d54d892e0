"""What ``mednext bench`` shows and writes of a part: a Rich table on the terminal, and a Markdown
section (provenance, method, table, notes) set between the part's markers in a Markdown file,
whatever else the file holds being kept.
"""

from __future__ import annotations

import os
import platform
import shlex
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mednext.bench import DEFAULT_OUTPUT
from mednext.bench.harness import progress_display
from mednext.bench.parts.base import BenchSettings
from mednext.files import write_text

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


def rich_table(settings: BenchSettings, rows: Sequence[Sequence[str]]) -> Any:
    """A part's rows (``BenchPart.measure``) as a ``rich.table.Table``."""
    from rich.table import Table

    part = settings.part
    table = Table(title=part.title + (" (quick)" if settings.quick else ""))
    for index, column in enumerate(part.columns()):
        justify = "left" if index < part.text_columns else "right"
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def print_table(table: Any) -> None:
    """Print a Rich table on stdout; piped, at its natural width."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Piped output (a log, CI) has no width to fit, and 80 columns crush a dozen: print the
        # table at its natural width.
        unbounded = console.options.update_width(10_000)
        console = Console(width=console.measure(table, options=unbounded).maximum)
    console.print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], text: int) -> list[str]:
    """The lines of a Markdown table; the first ``text`` columns left-aligned, the rest right."""
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


def command_line(settings: BenchSettings, output: Path) -> str:
    """A command that repeats this part's measurement, every setting spelled out."""
    argv = ["mednext", "bench", "--part", settings.part.name]
    if settings.quick:
        argv.append("--quick")
    argv += settings.part.command_options(settings)
    argv += ["--batch-size", str(settings.batch_size)]
    argv += ["--warmup", str(settings.warmup), "--steps", str(settings.steps)]
    argv += ["--device", settings.device.type]
    if output != DEFAULT_OUTPUT:
        argv += ["--output", str(output)]
    return shlex.join(argv)


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
    settings: BenchSettings, rows: Sequence[Sequence[str]], command: str, wall_s: float
) -> str:
    """The Markdown of one part's run: provenance, method, table and how to read it."""
    part = settings.part
    lines = [
        f"## {part.heading}" + (" (quick check)" if settings.quick else ""),
        "",
        *_provenance(command, settings.device, wall_s),
        "",
        part.method(settings),
        "",
        *markdown_table(part.columns(), rows, part.text_columns),
    ]
    for note in part.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def run_part(settings: BenchSettings, output: Path) -> tuple[Any, str]:
    """Measure one part, with a progress display on stderr: its Rich table and its Markdown
    section."""
    start = time.perf_counter()
    command = command_line(settings, output)
    with progress_display(settings.part.step_count(settings)) as label:
        rows = settings.part.measure(settings, label)
    wall_s = time.perf_counter() - start
    return rich_table(settings, rows), markdown_section(settings, rows, command, wall_s)


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
    write_text(path, updated)
