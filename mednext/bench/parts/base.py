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
    """What one part of one ``mednext bench`` invocation measures: the options every part takes,
    and in ``options`` the part's own (``BenchPart.options``, by ``option_dest`` name)."""

    part: BenchPart
    batch_size: int
    warmup: int
    steps: int
    device: torch.device
    quick: bool
    options: Mapping[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One step's input, ``(B, C, *spatial)``."""
        return self.part.input_shape(self)

    @property
    def key(self) -> str:
        """The name of this run's Markdown section: a quick run has a section of its own."""
        return self.part.section + ("-quick" if self.quick else "")


class BenchPart(ABC):
    """One part of ``mednext bench``: its networks against a reference, on one input."""

    #: The ``--part`` value.
    name: str
    #: The Markdown section of a full run (``<!-- bench:SECTION:start -->``).
    section: str
    #: The title of the Rich table.
    title: str
    #: The heading of the Markdown section.
    heading: str
    #: The options that only this part takes (``--size``); giving one without the part is an
    #: error. ``--batch-size``, ``--warmup`` and ``--steps`` belong to every part.
    options: tuple[str, ...]
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
        """One step's input, ``(B, C, *spatial)``."""

    @abstractmethod
    def command_options(self, settings: BenchSettings) -> list[str]:
        """The part's own options, spelled out so that the command repeats the run."""

    @abstractmethod
    def step_count(self, settings: BenchSettings) -> int:
        """How many steps ``measure`` runs: the length of the progress bar."""

    @abstractmethod
    def measure(self, settings: BenchSettings, label: ProgressLabel) -> list[list[str]]:
        """Build and measure every network of the part; the table rows as text, in ``columns``
        order. ``label`` names on the progress display what is running and counts its steps."""

    @abstractmethod
    def method(self, settings: BenchSettings) -> str:
        """The Markdown paragraph that says what one step is and how it was timed and measured."""
