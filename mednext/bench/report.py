"""What ``mednext bench`` shows and writes of a part: a Rich table on the terminal, a Markdown
section (provenance, method, table, notes) set between the part's markers in a Markdown file,
whatever else the file holds being kept, and the same numbers under the part's key of
``bench.json`` beside it (nnU-Net's ``benchmark_result.json`` in spirit: machine, versions and
every figure, for scripts and dashboards).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mednext.bench import DEFAULT_OUTPUT, JSON_NAME
from mednext.bench.harness import progress_display
from mednext.bench.parts.base import BenchSettings, PartResult, option_dest
from mednext.files import write_text

_INTRO = """\
# Benchmarks

Numbers measured by the suite's own benchmark commands, each in a section that the command
rewrites between its `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers; text
outside the markers is kept. The same figures, with machine and versions, are in
[bench.json](bench.json) under the section's name.

`make bench` (`mednext bench`) runs six parts; `--part NAME` (repeatable) runs only some, each
writing its own section, every reference measured in the same process:

- `3d` (section `mednext`): training-step time and peak memory of our MedNeXt presets in every
  fast mode (channels-last, compile, bf16/fp16 autocast, gradient checkpointing per block or per
  stage) against MONAI's MedNeXt in the same mode and in plain fp32.
- `loader`: CPU seconds per augmented 3D training patch, ours against nnU-Net v2's own pipeline
  (batchgeneratorsv2, the `bench` extra); `ratio_vs_nnunet` in bench.json.
- `preprocess`: building a dataset's cache with one process and with a pool, cases per minute.
- `predict`: sliding-window inference with mirroring of one CT-sized volume, ours against
  MONAI's `sliding_window_inference` looping over the flips, on the same network.
- `classifier`: training and inference images/s and training-step peak memory of the
  MedNeXt-Lite classifiers T/S/B against MONAI's ResNet-50 at 3×224².
- `seg2d`: the same for CMUNeXt S/base/L and the MedNeXt-Lite segmenters T/S at 1×224², nine
  classes, against CMUNeXt-base.

`mednext bench --quick` measures a small subset of each part and only prints its tables; with
`--output FILE` it writes sections (and bench.json entries) of its own, so that it never
replaces a full run.
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


def command_line(settings: BenchSettings, output: Path | None) -> str:
    """A command that repeats this part's measurement, every setting spelled out."""
    part = settings.part
    argv = ["mednext", "bench", "--part", part.name]
    if settings.quick:
        argv.append("--quick")
    argv += part.command_options(settings)
    for option in part.shared:
        argv += [option, str(settings.options[option_dest(option)])]
    argv += ["--device", settings.device.type]
    if output is not None and (output != DEFAULT_OUTPUT or settings.quick):
        argv += ["--output", str(output)]
    return shlex.join(argv)


def versions(settings: BenchSettings) -> dict[str, str]:
    """Python, torch, MONAI and whatever else the part measures (its ``versions``)."""
    import monai

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        **settings.part.versions(),
    }


@dataclass(frozen=True)
class PartRun:
    """One part measured: what it found, the command that repeats it and how long it took."""

    settings: BenchSettings
    result: PartResult
    command: str
    wall_s: float
    date: str

    def record(self) -> dict[str, Any]:
        """The part's entry of ``bench.json``: provenance, then its figures."""
        return {
            "date": self.date,
            "command": self.command,
            "machine": machine_description(self.settings.device),
            "device": self.settings.device.type,
            "versions": versions(self.settings),
            "wall_s": round(self.wall_s, 1),
            **self.result.figures,
        }

    def markdown(self) -> str:
        """The Markdown of the run: provenance, method, table and how to read it."""
        settings, part = self.settings, self.settings.part
        version_text = ", ".join(f"{name} {value}" for name, value in versions(settings).items())
        lines = [
            f"## {part.heading}" + (" (quick check)" if settings.quick else ""),
            "",
            f"- Date: {self.date}",
            f"- Command: `{self.command}`",
            f"- Machine: {machine_description(settings.device)}",
            f"- Versions: {version_text}",
            f"- Wall time of this part: {self.wall_s:,.0f} s",
            "",
            part.method(settings),
            "",
            *markdown_table(part.columns(), self.result.rows, part.text_columns),
        ]
        for note in (*part.notes, *self.result.notes):
            lines += ["", note]
        return "\n".join(lines) + "\n"


def run_part(settings: BenchSettings, output: Path | None) -> PartRun:
    """Measure one part, with a progress display on stderr."""
    start = time.perf_counter()
    command = command_line(settings, output)
    if settings.part.own_progress:
        result = settings.part.measure(settings, lambda text: lambda: None)
    else:
        with progress_display(settings.part.step_count(settings)) as label:
            result = settings.part.measure(settings, label)
    date = datetime.now().astimezone().isoformat(timespec="seconds")
    return PartRun(settings, result, command, time.perf_counter() - start, date)


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


def json_path(markdown: Path) -> Path:
    """Where the figures of a Markdown file's runs go: ``bench.json`` beside it."""
    return markdown.parent / JSON_NAME


def write_json(path: Path, key: str, record: Mapping[str, Any]) -> None:
    """Set entry ``key`` of the JSON file ``path`` to ``record``, keeping the other entries; the
    file is replaced atomically. A file that is not a JSON object is reported, not overwritten."""
    entries: dict[str, Any] = {}
    if path.exists():
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: not valid JSON ({error}); move it away to rewrite it"
            ) from error
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: not a JSON object of bench entries")
    entries[key] = dict(record)
    write_text(path, json.dumps(entries, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_section(path: Path, key: str, body: str) -> None:
    """Set section ``key`` of the Markdown file ``path`` to ``body``, keeping everything else;
    a new file starts with the benchmarks introduction. The file is replaced atomically."""
    text = path.read_text() if path.exists() else _INTRO
    try:
        updated = replace_section(text, key, body)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    write_text(path, updated)
