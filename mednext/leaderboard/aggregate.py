"""Repetitions of one configuration as one leaderboard row: the completed runs of a dataset and
task that share a ``group_key`` (the resolved configuration without seed and fold, see
``mednext.runs.layout.configuration_key``) with the mean, standard deviation and number of runs
of each headline metric, the seeds and folds they cover.

Configurations are ranked by the mean validation headline (mean Dice, accuracy) where every one
of them has it, else by the mean test headline: a test metric that chose the configuration would
no longer be a test. A run without a ``group_key`` (written before the suite recorded it) is a
configuration of its own.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from mednext.leaderboard.collect import Group, Row
from mednext.tasks import HEADLINE


@dataclass(frozen=True)
class Estimate:
    """Mean, sample standard deviation (None for one run) and the number of runs."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate | None:
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))

    def text(self, digits: int = 4) -> str:
        """``0.8540 ± 0.0120 (n=5)``, ``0.8540 (n=1)``."""
        spread = "" if self.std is None else f" ± {self.std:.{digits}f}"
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


@dataclass
class Configuration:
    """The completed runs of one configuration."""

    runs: list[Row]
    test: dict[str, Estimate] = field(default_factory=dict)
    val: dict[str, Estimate] = field(default_factory=dict)
    #: 1 = best configuration of its dataset and task by the ranking stage.
    rank: int | None = None

    @property
    def first(self) -> Row:
        return self.runs[0]

    @property
    def experiments(self) -> list[str]:
        return sorted({row.experiment for row in self.runs})

    @property
    def seeds(self) -> list[int]:
        return sorted({row.seed for row in self.runs if row.seed is not None})

    @property
    def folds(self) -> list[int]:
        return sorted({row.fold for row in self.runs if row.fold is not None})


def _estimates(rows: Sequence[Row], stage: str) -> dict[str, Estimate]:
    keys = sorted({key for row in rows for key in getattr(row, stage)})
    found = {}
    for key in keys:
        values = [v for row in rows if (v := getattr(row, stage).get(key)) is not None]
        estimate = Estimate.of(values)
        if estimate is not None:
            found[key] = estimate
    return found


def ranking_stage(configurations: Sequence[Configuration], task: str) -> str | None:
    """``val`` when every configuration has the validation headline, else ``test`` when any has
    the test one; None when nothing can be ranked."""
    keys = HEADLINE.get(task)
    if not keys or not configurations:
        return None
    if all(keys[0] in c.val for c in configurations):
        return "val"
    if any(keys[0] in c.test for c in configurations):
        return "test"
    return None


def configurations(group: Group) -> tuple[list[Configuration], str | None]:
    """The completed runs of ``group`` by configuration, ranked, and the stage that ranked them
    (``val``, ``test`` or None)."""
    found: dict[str, list[Row]] = {}
    for row in group.rows:
        if row.status != "completed":
            continue
        key = row.group_key or f"run:{row.run_dir}"
        found.setdefault(key, []).append(row)
    result = [
        Configuration(runs=rows, test=_estimates(rows, "test"), val=_estimates(rows, "val"))
        for rows in found.values()
    ]
    stage = ranking_stage(result, group.task)
    headline = HEADLINE.get(group.task, (None,))[0]

    def score(configuration: Configuration) -> float | None:
        if stage is None:
            return None
        estimate = getattr(configuration, stage).get(headline)
        return None if estimate is None else estimate.mean

    result.sort(key=lambda c: (score(c) is None, -(score(c) or 0.0), c.experiments))
    for rank, configuration in enumerate((c for c in result if score(c) is not None), start=1):
        configuration.rank = rank
    return result, stage
