"""Where the leaderboard is asked for: the ``mednext leaderboard`` command and the refresh after
every training run and sweep."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mednext.leaderboard.collect import collect, groups
from mednext.leaderboard.render import run_count_text
from mednext.leaderboard.write import write_leaderboard, write_rows


def default_runs_dir() -> Path:
    """Where runs go unless ``output.root`` says otherwise: ``$MEDNEXT_RUNS`` or ``runs``."""
    return Path(os.environ.get("MEDNEXT_RUNS") or "runs")


def leaderboard_command(runs_dir: Path, out_dir: Path) -> int:
    """``mednext leaderboard``: write the files, print their paths and a summary table."""
    from rich.console import Console
    from rich.table import Table

    rows = collect(runs_dir)
    written = write_rows(rows, runs_dir, out_dir)
    for name in ("leaderboard.csv", "leaderboard.md", "index.html"):
        print(written[name])
    plots = [name for name in written if name.startswith("plots/")]
    if plots:
        print(f"{out_dir / 'plots'} ({len(plots)} plots)")
    table = Table(title=f"{run_count_text(len(rows))} under {runs_dir}")
    # The test metric names the task: the table fits 80 columns (a CI log, a pipe).
    for header in ("dataset", "completed/all", "best run", "test"):
        table.add_column(header, justify="right" if header == "completed/all" else "left")
    for group in groups(rows):
        completed = [r for r in group.rows if r.status == "completed"]
        best = next((r for r in completed if r.headline is not None), None)
        table.add_row(
            group.dataset,
            f"{len(completed)}/{len(group.rows)}",
            best.experiment if best else "",
            f"{group.headline_key} {best.headline:.4f}" if best else "",
        )
    Console().print(table)
    return 0


def refresh_leaderboard(runs_dir: Path, out_dir: Path, console: Any) -> None:
    """Regenerate the leaderboard of ``runs_dir`` into ``out_dir`` after a run or a sweep and say
    where it is. A failure here is reported and changes nothing else: the run is finished."""
    try:
        written = write_leaderboard(runs_dir, out_dir)
    except Exception as error:  # a plotting or file error must not fail the finished run
        console.print(f"[yellow]leaderboard not updated: {type(error).__name__}: {error}[/yellow]")
        return
    console.print(f"leaderboard: {written['index.html']}")
