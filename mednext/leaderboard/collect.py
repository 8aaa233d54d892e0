"""Run folders → leaderboard rows: every ``results.json`` (or lone ``config.yaml``) below a runs
folder as a :class:`Row`, in leaderboard order and ranked, split into one :class:`Group` per
dataset and task; and the Pareto front the plots draw."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mednext.runs.layout import CONFIG, NOT_RUNS, RESULTS
from mednext.tasks import HEADLINE

#: Order of the statuses within a table: finished runs first, then what may still change.
STATUS_ORDER = ("completed", "running", "interrupted", "failed", "unknown")


@dataclass
class Row:
    """One run directory as the leaderboard shows it; ``None`` where a value is missing, null or
    not finite."""

    experiment: str
    run_id: str
    status: str
    dataset: str | None
    task: str
    model: str | None
    variant: str | None
    params: int | None
    flops: int | None
    test: dict[str, float | None] = field(default_factory=dict)
    val: dict[str, float | None] = field(default_factory=dict)
    epochs: int | None = None
    train_memory_gib: float | None = None
    peak_memory_gib: float | None = None
    wall_time_s: float | None = None
    throughput: float | None = None
    device: str | None = None
    git_commit: str | None = None
    command: str | None = None
    error: str | None = None
    seed: int | None = None
    fold: int | None = None
    #: Runs that repeat one configuration over seeds and folds share it (results.json).
    group_key: str | None = None
    run_dir: Path = Path()
    config: Path | None = None
    #: 1 = best completed run of its dataset and task; ``None`` for the others.
    rank: int | None = None

    @property
    def gflops(self) -> float | None:
        return None if self.flops is None else self.flops / 1e9

    @property
    def headline_key(self) -> str | None:
        keys = HEADLINE.get(self.task)
        return keys[0] if keys else None

    @property
    def headline(self) -> float | None:
        """The test value of the ranking metric (mean Dice or accuracy)."""
        return self.test.get(self.headline_key) if self.headline_key else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _metrics(value: Any) -> dict[str, float | None]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): _number(number) for key, number in value.items()}


def _task_of(test: Mapping[str, Any], val: Mapping[str, Any]) -> str:
    """What the metric keys say: a key counts even when its value is null."""
    keys = set(test) | set(val)
    if "dice_mean" in keys:
        return "segmentation"
    if "acc" in keys:
        return "classification"
    return "unknown"


def _experiment_from_path(run_dir: Path, runs_dir: Path) -> str:
    """``<experiment>`` of ``runs/<experiment>/<run_id>``, ``<sweep>/<point>`` of a sweep's."""
    parent = run_dir.parent
    if parent != runs_dir and parent.is_relative_to(runs_dir):
        return parent.relative_to(runs_dir).as_posix()
    return parent.name


def _row_from_results(run_dir: Path, runs_dir: Path) -> Row:
    try:
        results = json.loads((run_dir / RESULTS).read_text())
        if not isinstance(results, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        row = _row_from_config(run_dir, runs_dir)
        row.error = f"unreadable {RESULTS}: {error}"
        return row
    metrics = results.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else {}
    test, val = _metrics(metrics.get("test")), _metrics(metrics.get("val"))
    model = results.get("model")
    model = model if isinstance(model, Mapping) else {}
    status = results.get("status")
    return Row(
        experiment=_text(results.get("experiment")) or _experiment_from_path(run_dir, runs_dir),
        run_id=_text(results.get("run_id")) or run_dir.name,
        status=status if status in STATUS_ORDER else "unknown",
        dataset=_text(results.get("dataset")),
        task=_task_of(test, val),
        model=_text(model.get("name")),
        variant=_text(model.get("variant")),
        params=_integer(results.get("params")),
        flops=_integer(results.get("flops")),
        test=test,
        val=val,
        epochs=_integer(results.get("epochs")),
        train_memory_gib=_number(results.get("train_memory_gib")),
        peak_memory_gib=_number(results.get("peak_memory_gib")),
        wall_time_s=_number(results.get("wall_time_s")),
        throughput=_number(results.get("throughput")),
        device=_text(results.get("device")),
        git_commit=_text(results.get("git_commit")),
        command=_text(results.get("command")),
        error=_text(results.get("error")),
        seed=_integer(results.get("seed")),
        fold=_integer(results.get("fold")),
        group_key=_text(results.get("group_key")),
        run_dir=run_dir,
        config=run_dir / CONFIG if (run_dir / CONFIG).is_file() else None,
    )


def _row_from_config(run_dir: Path, runs_dir: Path) -> Row:
    """A run directory without (readable) results: what its ``config.yaml`` says."""
    # Only runs without results need OmegaConf: collecting finished runs never loads it.
    from omegaconf import OmegaConf

    config: dict[str, Any] = {}
    if (run_dir / CONFIG).is_file():
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG), resolve=False)
            config = loaded if isinstance(loaded, dict) else {}
        except Exception as error:  # any YAML or OmegaConf error: the row is shown regardless
            config = {"error": f"unreadable {CONFIG}: {error}"}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return Row(
        experiment=_text(config.get("name")) or _experiment_from_path(run_dir, runs_dir),
        run_id=run_dir.name,
        status="unknown",
        dataset=_text(data.get("name")),
        task="unknown",
        model=_text(model.get("name")),
        variant=_text(model.get("variant")),
        params=None,
        flops=None,
        error=config.get("error"),
        run_dir=run_dir,
        config=run_dir / CONFIG if (run_dir / CONFIG).is_file() else None,
    )


def _run_directories(runs_dir: Path) -> tuple[list[Path], list[Path]]:
    """Directories with a ``results.json``, and those with only a ``config.yaml`` and no run
    below them (a sweep may keep a config beside its points)."""
    with_results: list[Path] = []
    config_only: list[Path] = []
    for folder, subfolders, files in os.walk(runs_dir):
        here = Path(folder)
        if RESULTS in files:
            with_results.append(here)
            subfolders.clear()
            continue
        if CONFIG in files:
            config_only.append(here)
        subfolders[:] = sorted(
            name for name in subfolders if name not in NOT_RUNS and not name.startswith(".")
        )
    found = [*with_results, *config_only]
    config_only = [
        path
        for path in config_only
        if not any(other != path and other.is_relative_to(path) for other in found)
    ]
    return with_results, config_only


def _sort_key(row: Row) -> tuple[Any, ...]:
    headline = row.headline
    # Lower HD95 is better, but every task's ranking metric (Dice, accuracy) is higher-is-better.
    return (
        row.dataset or "",
        row.task,
        STATUS_ORDER.index(row.status),
        headline is None,
        -(headline or 0.0),
        row.experiment,
        row.run_id,
    )


def collect(runs_dir: Path | str) -> list[Row]:
    """Every run below ``runs_dir``, in leaderboard order: by dataset and task, completed runs
    first, best test headline (mean Dice, accuracy) first. Rows whose metrics say nothing about
    their task take the task of the other runs on the same dataset."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(
            f"{runs_dir}: no such runs directory (runs appear there after `mednext train`)"
        )
    with_results, config_only = _run_directories(runs_dir)
    rows = [_row_from_results(path, runs_dir) for path in with_results]
    rows += [_row_from_config(path, runs_dir) for path in config_only]
    known = Counter((row.dataset, row.task) for row in rows if row.task != "unknown")
    for row in rows:
        if row.task == "unknown":
            tasks = [
                (count, task)
                for (dataset, task), count in known.items()
                if dataset == row.dataset and row.dataset is not None
            ]
            if tasks:
                row.task = max(tasks)[1]
    rows.sort(key=_sort_key)
    for group in groups(rows):
        ranked = [r for r in group.rows if r.status == "completed" and r.headline is not None]
        for rank, row in enumerate(ranked, start=1):
            row.rank = rank
    return rows


@dataclass
class Group:
    """The runs of one dataset and task: one table and two plots."""

    dataset: str
    task: str
    rows: list[Row]

    @property
    def title(self) -> str:
        return f"{self.dataset} — {self.task}"

    @property
    def slug(self) -> str:
        raw = f"{self.dataset}_{self.task}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)

    @property
    def headline_key(self) -> str | None:
        keys = HEADLINE.get(self.task)
        return keys[0] if keys else None


def groups(rows: Iterable[Row]) -> list[Group]:
    """``rows`` (in :func:`collect` order) split by dataset and task."""
    found: dict[tuple[str, str], Group] = {}
    for row in rows:
        key = (row.dataset or "unknown", row.task)
        found.setdefault(key, Group(*key, rows=[])).rows.append(row)
    return list(found.values())


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points ``(cost, metric)`` that no other point dominates (a cost as low or
    lower and a metric as good or better, one of them strictly), by increasing cost. Equal points
    do not dominate each other: both are on the front."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (cost, metric) in enumerate(points):
        dominated = any(
            other_cost <= cost
            and sign * other_metric >= sign * metric
            and (other_cost < cost or sign * other_metric > sign * metric)
            for other_cost, other_metric in points
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))
