"""The columns of the leaderboard tables, shared by the CSV, the Markdown and the HTML page:
for each, the value the CSV holds (and the page sorts by) and the text a table shows."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mednext.leaderboard.collect import Row
from mednext.tasks import HEADLINE


@dataclass(frozen=True)
class Column:
    """``value`` is what the CSV holds and the HTML sorts by; ``text`` what a table shows."""

    key: str
    value: Callable[[Row], Any]
    text: Callable[[Row], str]


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _metric_column(stage: str, key: str) -> Column:
    source = (lambda r: r.test.get(key)) if stage == "test" else (lambda r: r.val.get(key))
    return Column(f"{stage}/{key}", source, lambda r: _fmt(source(r), ".4f"))


def _gflops_text(row: Row) -> str:
    if row.gflops is None:
        return ""
    return f"{row.gflops:.4g}" if row.gflops < 1000 else f"{row.gflops:,.0f}"


def _plain(key: str, value: Callable[[Row], Any]) -> Column:
    return Column(key, value, lambda r: "" if value(r) is None else str(value(r)))


def _relative_link(path: Path | None, out_dir: Path) -> str | None:
    if path is None:
        return None
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def table_columns(rows: Sequence[Row], out_dir: Path) -> dict[str, Column]:
    """Every column for ``rows``, by key, in table order; ``config`` links are relative to
    ``out_dir``, where the tables are written."""
    test_keys = {key for row in rows for key in row.test}
    headline = [k for keys in HEADLINE.values() for k in keys if k in test_keys]
    others = sorted(test_keys - set(headline))
    val_keys = [keys[0] for keys in HEADLINE.values() if any(keys[0] in row.val for row in rows)]
    columns = [
        _plain("dataset", lambda r: r.dataset),
        _plain("task", lambda r: r.task),
        _plain("rank", lambda r: r.rank),
        _plain("experiment", lambda r: r.experiment),
        _plain("run_id", lambda r: r.run_id),
        Column("status", lambda r: r.status, lambda r: r.status),
        _plain("model", lambda r: r.model),
        _plain("variant", lambda r: r.variant),
        Column("params", lambda r: r.params, lambda r: _fmt(r.params and r.params / 1e6, ".2f")),
        Column("gflops", lambda r: r.gflops, _gflops_text),
        Column(
            "train_memory_gib",
            lambda r: r.train_memory_gib,
            lambda r: _fmt(r.train_memory_gib, ".2f"),
        ),
        Column(
            "peak_memory_gib", lambda r: r.peak_memory_gib, lambda r: _fmt(r.peak_memory_gib, ".2f")
        ),
        *(_metric_column("test", key) for key in [*headline, *others]),
        *(_metric_column("val", key) for key in val_keys),
        _plain("epochs", lambda r: r.epochs),
        Column("wall_time_s", lambda r: r.wall_time_s, lambda r: _fmt(r.wall_time_s, ".0f")),
        Column("throughput", lambda r: r.throughput, lambda r: _fmt(r.throughput, ".1f")),
        _plain("device", lambda r: r.device),
        _plain("git_commit", lambda r: r.git_commit),
        _plain("command", lambda r: r.command),
        _plain("config", lambda r: _relative_link(r.config, out_dir)),
        _plain("error", lambda r: r.error),
    ]
    return {column.key: column for column in columns}


#: Column headers where the key alone would be cryptic.
HEADERS = {
    "params": "params (M)",
    "gflops": "GFLOPs",
    "train_memory_gib": "train activations (GiB)",
    "peak_memory_gib": "peak GPU memory (GiB)",
    "wall_time_s": "wall time (s)",
    "throughput": "samples/s",
}

#: Columns of text, aligned left.
TEXT_COLUMNS = frozenset(
    {
        "dataset",
        "task",
        "experiment",
        "run_id",
        "status",
        "model",
        "variant",
        "device",
        "git_commit",
        "command",
        "config",
        "error",
    }
)
