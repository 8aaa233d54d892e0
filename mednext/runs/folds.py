"""``mednext train EXPERIMENT data.fold=all``: the folds of a cross-validation, one run each.

Each fold is an ordinary run of the experiment (``runs/<experiment>/<run_id>/``, its fold in
``results.json``), trained by a ``mednext train ... data.fold=k`` child process, one after the
other: a fold gets a fresh process (its memory, its DDP ranks, its Ctrl-C) exactly as if it had
been started by hand. The first fold that fails or is interrupted stops the loop, so the command
line that resumes it is the one printed. At the end the folds' validation and test headline
metrics are printed with their mean and standard deviation; the leaderboard shows the same as one
row (the runs share a ``group_key``).

Importing this module loads neither torch nor Lightning (the DataModule is built inside
``train_folds``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mednext.runs.layout import RESULTS, read_results
from mednext.tasks import HEADLINE

#: The value of ``data.fold`` that trains every fold.
ALL_FOLDS = "all"


def _fold_value(override: str) -> str | None:
    """The value of a ``data.fold=...`` override (quotes removed), else None."""
    key, _, value = override.partition("=")
    if key.strip() not in ("data.fold", "+data.fold"):
        return None
    return value.strip().strip("'\"")


def split_fold_all(overrides: Sequence[str]) -> tuple[bool, list[str]]:
    """``(whether data.fold=all is asked for, the other overrides)``; ``ValueError`` when
    ``data.fold`` is also set to a single fold."""
    asked = [o for o in overrides if _fold_value(o) == ALL_FOLDS]
    others = [o for o in overrides if _fold_value(o) != ALL_FOLDS]
    if asked and any(_fold_value(o) is not None for o in others):
        raise ValueError("data.fold=all and a single data.fold=k: give one of them")
    return bool(asked), others


def fold_commands(experiment: str, overrides: Sequence[str], num_folds: int) -> list[list[str]]:
    """The ``mednext train`` command line of each fold."""
    return [
        [sys.executable, "-m", "mednext", "train", experiment, *overrides, f"data.fold={fold}"]
        for fold in range(num_folds)
    ]


def newest_fold_run(root: Path, experiment: str, fold: int, since: float) -> Path | None:
    """The run of ``experiment`` and ``fold`` under ``root`` whose results changed last, at or
    after ``since`` (a ``time.time()``)."""
    candidates = []
    for path in (root / experiment).glob(f"*/{RESULTS}"):
        modified = path.stat().st_mtime
        if modified >= since and read_results(path.parent).get("fold") == fold:
            candidates.append((modified, path.parent))
    return max(candidates)[1] if candidates else None


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def mean_std_text(values: Sequence[float], digits: int = 4) -> str:
    """``0.8540 ± 0.0120 (n=5)``; ``0.8540 (n=1)``."""
    mean, std = mean_std(values)
    spread = "" if std is None else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread} (n={len(values)})"


def fold_summary(runs: Mapping[int, Path]) -> list[str]:
    """Per headline metric and stage, the value of each fold and their mean ± std."""
    results = {fold: read_results(run) for fold, run in sorted(runs.items())}
    lines = []
    keys = [k for keys in HEADLINE.values() for k in keys]
    for stage in ("val", "test"):
        for key in keys:
            values = {
                fold: value
                for fold, record in results.items()
                if isinstance(value := record.get("metrics", {}).get(stage, {}).get(key), float)
            }
            if not values:
                continue
            folds = ", ".join(f"{fold}: {value:.4f}" for fold, value in values.items())
            lines.append(f"{stage} {key}: {mean_std_text(list(values.values()))}  [{folds}]")
    return lines


def train_folds(
    experiment: str, overrides: Sequence[str], config: Mapping[str, Any], console: Any
) -> int:
    """Train every fold of ``config`` (the experiment composed with ``overrides``, its own fold
    unset) one child process at a time; returns the exit code of the first fold that did not
    finish, else 0."""
    import time

    from datamodules import build_datamodule

    # A dataset with its own folds (nnU-Net's splits_final.json) says how many it has.
    datamodule = build_datamodule(dict(config["data"]), seed=config["seed"])
    num_folds = int(datamodule.fold_count)
    root = Path(config["output"]["root"])
    runs: dict[int, Path] = {}
    for fold, command in enumerate(fold_commands(experiment, overrides, num_folds)):
        console.print(
            f"[bold]fold {fold} of {num_folds}[/bold]: mednext train {experiment} "
            f"{' '.join([*overrides, f'data.fold={fold}'])}"
        )
        started = time.time()
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            console.print(
                f"[red]fold {fold} ended with exit code {code}[/red]; folds "
                f"{', '.join(map(str, range(fold, num_folds)))} not finished"
            )
            return code
        run = newest_fold_run(root, config["name"], fold, started)
        if run is not None:
            runs[fold] = run
    print(f"{num_folds} folds of {config['name']}:")
    for fold, run in sorted(runs.items()):
        print(f"  fold {fold}: {run}")
    for line in fold_summary(runs):
        print(line)
    return 0
