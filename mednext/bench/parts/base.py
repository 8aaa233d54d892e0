"""The interface of a part of ``mednext bench`` (``BenchPart``) and what one invocation measures
of it (``BenchSettings``).

A part is one comparison against a reference measured in the same process. It knows its
defaults, builds and measures its networks, and says how its table and its Markdown section
read; the command line, the tables and the Markdown file around it are the same for every part
(``mednext.bench.report``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mednext.bench.harness import ProgressLabel

#: Seeds the weights and the random input of every part, so reruns measure the same tensors.
SEED = 0


def option_dest(option: str) -> str:
    """The ``argparse.Namespace`` attribute of ``option``: ``--kernel-size`` -> ``kernel_size``."""
    return option.removeprefix("--").replace("-", "_")


def shape_text(shape: tuple[int, ...]) -> str:
    """An input shape as the tables write it: ``2×3×64²``, ``1×1×32³``."""
    batch, channels, side = shape[:3]
    return f"{batch}×{channels}×{side}{'²' if len(shape) == 4 else '³'}"


@dataclass(frozen=True)
class BenchSettings:
    """What one part of one ``mednext bench`` invocation measures: the device, whether it is a
    quick run, and in ``options`` the value of every option the part takes (``BenchPart.shared``
    and ``BenchPart.options``, by ``option_dest`` name)."""

    part: BenchPart
    device: torch.device
    quick: bool
    options: Mapping[str, Any]

    @property
    def batch_size(self) -> int:
        return self.options["batch_size"]

    @property
    def warmup(self) -> int:
        return self.options["warmup"]

    @property
    def steps(self) -> int:
        return self.options["steps"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One step's input, ``(B, C, *spatial)``."""
        return self.part.input_shape(self)

    @property
    def key(self) -> str:
        """The name of this run's Markdown section: a quick run has a section of its own."""
        return self.part.section + ("-quick" if self.quick else "")


@dataclass(frozen=True)
class PartResult:
    """What ``BenchPart.measure`` found: the table rows as text (in ``columns`` order), the same
    numbers as figures for ``bench.json``, and notes that depend on the numbers."""

    rows: list[list[str]]
    figures: dict[str, Any]
    notes: tuple[str, ...] = ()


#: The options of ``mednext bench`` that several parts take.
SHARED_OPTIONS = ("--batch-size", "--warmup", "--steps")


class BenchPart(ABC):
    """One part of ``mednext bench``: what the suite does against a reference measured in the
    same run, on one input."""

    #: The ``--part`` value.
    name: str
    #: The Markdown section of a full run (``<!-- bench:SECTION:start -->``).
    section: str
    #: The title of the Rich table.
    title: str
    #: The heading of the Markdown section.
    heading: str
    #: The options that only this part takes (``--size``); giving one without the part is an
    #: error.
    options: tuple[str, ...]
    #: The ``SHARED_OPTIONS`` this part takes (spelled out after its own in the command line).
    shared: tuple[str, ...] = SHARED_OPTIONS
    #: The part draws progress bars of its own (the suite's cache build): no bench display.
    own_progress: bool = False
    #: ``(mode, device type) -> {setting: value}``, mode ``"full"`` or ``"quick"``: the value of
    #: every option of ``BenchSettings`` not given on the command line.
    defaults: Mapping[tuple[str, str], Mapping[str, Any]]
    #: Table columns before this index are text (left-aligned), the rest numbers.
    text_columns: int
    #: Paragraphs of the Markdown section after the table.
    notes: tuple[str, ...]

    @abstractmethod
    def columns(self) -> tuple[str, ...]:
        """The header of the part's table."""

    @abstractmethod
    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        """One step's input, ``(B, C, *spatial)`` (a part without steps: its input's shape)."""

    @abstractmethod
    def command_options(self, settings: BenchSettings) -> list[str]:
        """The part's own options, spelled out so that the command repeats the run."""

    @abstractmethod
    def step_count(self, settings: BenchSettings) -> int:
        """How many steps ``measure`` runs: the length of the progress bar."""

    @abstractmethod
    def measure(self, settings: BenchSettings, label: ProgressLabel) -> PartResult:
        """Build and measure everything the part compares. ``label`` names on the progress
        display what is running and counts its steps."""

    @abstractmethod
    def method(self, settings: BenchSettings) -> str:
        """The Markdown paragraph that says what one step is and how it was timed and measured."""

    def check(self, settings: BenchSettings) -> None:  # noqa: B027 (optional hook)
        """Raise a ValueError when this machine cannot run ``settings`` (before anything is
        measured); nothing to check by default."""

    def versions(self) -> dict[str, str]:
        """Versions of what the part measures besides torch and MONAI (a reference package)."""
        return {}
