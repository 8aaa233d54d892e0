"""The one progress bar of the suite (Rich), for every long piece of work: checking and
preprocessing datasets, writing synthetic copies, benchmarks, sweeps and predictions.

``with progress_bar() as progress: task = progress.add_task("checking", total=n)`` and
``progress.advance(task)``; or ``for item in progress.track(items, description=...)``.
"""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(transient: bool = False, console: Any = None) -> Progress:
    """A Rich progress display: description, bar, done/total, elapsed and remaining time.
    ``transient`` removes it when done; ``console`` (a Rich ``Console``) is where it draws, Rich's
    own console when ``None``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
        console=console,
    )
