"""Writing the leaderboard folder: the CSV, the Markdown, the page and the plots, each file
through :mod:`mednext.files` so that a reader (a browser, a sweep point reading the CSV) never
sees half of one, and plots of datasets that no longer have runs removed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from mednext.files import write_bytes
from mednext.leaderboard.collect import Row, collect, groups
from mednext.leaderboard.plots import AXES, plot_group
from mednext.leaderboard.render import csv_table, html_page, markdown_page


def write_leaderboard(runs_dir: Path | str, out_dir: Path | str) -> dict[str, Path]:
    """Collect the runs below ``runs_dir`` and write ``leaderboard.csv``, ``leaderboard.md``,
    ``index.html`` (self-contained: styles, script and plots inline) and the plots as
    ``plots/<dataset>_<task>_{params,flops}.png`` into ``out_dir``, each file atomically.
    Returns the written paths by their name relative to ``out_dir``, the plots last."""
    return write_rows(collect(runs_dir), Path(runs_dir), Path(out_dir))


def write_rows(rows: Sequence[Row], runs_dir: Path, out_dir: Path) -> dict[str, Path]:
    """:func:`write_leaderboard` of ``rows`` already collected from ``runs_dir``."""
    all_groups = groups(rows)
    generated = datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    # A group whose task is unknown (no run has a metric yet) has nothing to plot.
    images = {
        group.slug: {axis: plot_group(group, axis) for axis in AXES}
        for group in all_groups
        if group.headline_key
    }
    plots = {
        f"plots/{slug}_{axis}.png": png
        for slug, pictures in images.items()
        for axis, png in pictures.items()
    }
    files = {
        "leaderboard.csv": csv_table(rows, out_dir, runs_dir),
        "leaderboard.md": markdown_page(all_groups, out_dir, runs_dir.resolve(), generated),
        "index.html": html_page(all_groups, rows, images, out_dir, runs_dir.resolve(), generated),
        **plots,
    }
    for name, data in files.items():
        write_bytes(out_dir / name, data)
    # Plots of a dataset that no longer has runs would only mislead. Hidden names are left
    # alone: they are the temporary files of another sweep point rewriting this folder right now
    # (mednext.files names them ``.<unique>.tmp-<name>.png``), and removing one would fail its
    # rename.
    for stale in plots_dir.glob("*.png"):
        if not stale.name.startswith(".") and f"plots/{stale.name}" not in files:
            stale.unlink(missing_ok=True)
    return {name: out_dir / name for name in files}
