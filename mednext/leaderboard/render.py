"""The leaderboard as files: ``leaderboard.csv`` (every run, every column), ``leaderboard.md``
(one table per dataset and task, the headline columns) and ``index.html``, a self-contained page
whose styles and sorting script (``static/``) and plots are inlined, so that it opens from any
folder, an artifact store or a mail attachment without a server or a network."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mednext.leaderboard.aggregate import configurations
from mednext.leaderboard.collect import STATUS_ORDER, Group, Row
from mednext.leaderboard.columns import HEADERS, TEXT_COLUMNS, Column, table_columns
from mednext.leaderboard.plots import AXES, plot_caption
from mednext.tasks import HEADLINE

_MARKDOWN_COLUMNS = ("rank", "experiment", "run_id", "status", "model", "variant", "params")
_MARKDOWN_TAIL = ("epochs", "wall_time_s", "config")


def run_count_text(count: int) -> str:
    """``1 run``, ``3 runs``."""
    return f"{count} run{'' if count == 1 else 's'}"


def configuration_table(group: Group) -> tuple[list[str], list[list[tuple[object, str]]], str]:
    """The configurations of ``group`` (runs repeating one configuration over seeds and folds)
    as a header, rows of ``(sort value, text)`` cells and a caption saying how they are ranked."""
    found, stage = configurations(group)
    metrics = [
        (part, key)
        for part in ("val", "test")
        for key in HEADLINE.get(group.task, ())[: 1 if part == "val" else 2]
        if any(key in getattr(c, part) for c in found)
    ]
    header = ["rank", "experiment", "model", "variant", "params (M)", "GFLOPs", "train GiB"]
    header += ["runs", "seeds"]
    header += ["folds", *(f"{part}/{key} (mean ± std)" for part, key in metrics)]
    rows = []
    for configuration in found:
        first = configuration.first
        cells: list[tuple[object, str]] = [
            (configuration.rank, "" if configuration.rank is None else str(configuration.rank)),
            (", ".join(configuration.experiments), ", ".join(configuration.experiments)),
            (first.model, first.model or ""),
            (first.variant, first.variant or ""),
            (first.params, "" if first.params is None else f"{first.params / 1e6:.2f}"),
            (first.gflops, "" if first.gflops is None else f"{first.gflops:.4g}"),
            (
                first.train_memory_gib,
                "" if first.train_memory_gib is None else f"{first.train_memory_gib:.2f}",
            ),
            (len(configuration.runs), str(len(configuration.runs))),
            (None, ", ".join(map(str, configuration.seeds))),
            (None, ", ".join(map(str, configuration.folds))),
        ]
        for part, key in metrics:
            estimate = getattr(configuration, part).get(key)
            cells.append((None, "") if estimate is None else (estimate.mean, estimate.text()))
        rows.append(cells)
    if stage is None:
        caption = "No completed run with a headline metric yet."
    else:
        caption = (
            f"Completed runs that differ only in seed or fold, one row per configuration: mean ± "
            f"sample standard deviation over its n runs; ranked by the mean {stage} "
            f"{HEADLINE[group.task][0]}"
            + (" (not every configuration has a validation set)" if stage == "test" else "")
            + "."
        )
    return header, rows, caption


def csv_table(rows: Sequence[Row], out_dir: Path, runs_dir: Path) -> bytes:
    """``leaderboard.csv``: a line per run with every column, then its folder below
    ``runs_dir``."""
    columns = list(table_columns(rows, out_dir).values())
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*(c.key for c in columns), "run_dir"])
    for row in rows:
        values = ["" if (v := c.value(row)) is None else v for c in columns]
        writer.writerow([*values, row.run_dir.relative_to(runs_dir).as_posix()])
    return stream.getvalue().encode()


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_page(
    all_groups: Sequence[Group], out_dir: Path, runs_dir: Path, generated: str
) -> bytes:
    """``leaderboard.md``: per dataset and task, links to its plots, their caption and a table
    of the headline columns."""
    lines = [
        "# Leaderboard",
        "",
        f"Generated {generated} from `{runs_dir}`. Every column, per-class metrics included, is "
        "in `leaderboard.csv` and `index.html`.",
    ]
    if not all_groups:
        lines += ["", f"No runs under `{runs_dir}` yet."]
    for group in all_groups:
        columns = table_columns(group.rows, out_dir)
        keys = [
            *_MARKDOWN_COLUMNS,
            "gflops",
            "train_memory_gib",
            *(f"test/{k}" for k in HEADLINE.get(group.task, ()) if f"test/{k}" in columns),
            *(f"val/{k}" for k in HEADLINE.get(group.task, ())[:1] if f"val/{k}" in columns),
            *_MARKDOWN_TAIL,
        ]
        lines += ["", f"## {group.title}", ""]
        if group.headline_key:
            lines += [
                f"![{group.headline_key} vs {axis}](plots/{group.slug}_{axis}.png)" for axis in AXES
            ]
            lines.append("")
        lines += [plot_caption(group), ""]
        header, configuration_rows, caption = configuration_table(group)
        if configuration_rows:
            lines += ["### Configurations", "", caption, ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            for cells in configuration_rows:
                lines.append("| " + " | ".join(_markdown_cell(t) for _, t in cells) + " |")
            lines += ["", "### Runs", ""]
        lines.append("| " + " | ".join(HEADERS.get(k, k) for k in keys) + " |")
        lines.append("|" + "|".join("---:" if k not in TEXT_COLUMNS else "---" for k in keys) + "|")
        for row in group.rows:
            cells = []
            for key in keys:
                text = _markdown_cell(columns[key].text(row))
                if key == "config" and text:
                    text = f"[config]({quote(text)})"
                elif key == "status" and row.status != "completed":
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n").encode()


def _static(name: str) -> str:
    """A file of ``static/``, shipped as package data beside this module."""
    return (files(__package__) / "static" / name).read_text(encoding="utf-8")


def _escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _html_cell(column: Column, row: Row) -> str:
    value, text = column.value(row), column.text(row)
    sort_value = STATUS_ORDER.index(row.status) if column.key == "status" else value
    attributes = f' data-value="{_escape(sort_value)}"'
    if column.key in TEXT_COLUMNS:
        attributes += ' class="text"'
    if column.key == "status":
        title = f' title="{_escape(row.error)}"' if row.error else ""
        content = f'<span class="badge status-{_escape(row.status)}"{title}>{_escape(text)}</span>'
    elif column.key == "config" and text:
        content = f'<a href="{_escape(quote(text))}">config.yaml</a>'
    elif column.key in ("command", "git_commit") and text:
        content = f"<code>{_escape(text)}</code>"
    else:
        content = _escape(text)
    return f"<td{attributes}>{content}</td>"


def _html_group(group: Group, out_dir: Path, images: Mapping[str, bytes]) -> str:
    columns = table_columns(group.rows, out_dir)
    hidden = {"dataset", "task"}
    if not any(row.error for row in group.rows):
        hidden.add("error")
    shown = [c for key, c in columns.items() if key not in hidden]
    header = "".join(
        f'<th class="text" data-key="{_escape(c.key)}">{_escape(HEADERS.get(c.key, c.key))}</th>'
        if c.key in TEXT_COLUMNS
        else f'<th data-key="{_escape(c.key)}">{_escape(HEADERS.get(c.key, c.key))}</th>'
        for c in shown
    )
    body = []
    for index, row in enumerate(group.rows):
        inactive = ' class="inactive"' if row.status != "completed" else ""
        cells = "".join(_html_cell(c, row) for c in shown)
        body.append(f'<tr data-index="{index}"{inactive}>{cells}</tr>')
    pictures = "".join(
        f'<img alt="{_escape(f"test {group.headline_key} vs {name}")}" '
        f'src="data:image/png;base64,{base64.b64encode(images[axis]).decode()}">'
        for axis, (name, _, _) in AXES.items()
        if axis in images
    )
    return (
        f'<section id="{_escape(group.slug)}">'
        f"<h2>{_escape(group.title)}</h2>"
        f"<figure>{pictures}<figcaption>{_escape(plot_caption(group))}</figcaption></figure>"
        f"{_html_configurations(group)}"
        f'<div class="scroll"><table class="runs"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _html_configurations(group: Group) -> str:
    """The configurations table of ``group``, sortable like the runs table; empty without
    completed runs."""
    header, rows, caption = configuration_table(group)
    if not rows:
        return ""
    head = "".join(f"<th>{_escape(name)}</th>" for name in header)
    body = "".join(
        f'<tr data-index="{index}">'
        + "".join(f'<td data-value="{_escape(v)}">{_escape(t)}</td>' for v, t in cells)
        + "</tr>"
        for index, cells in enumerate(rows)
    )
    return (
        f'<h3>Configurations</h3><p class="caption">{_escape(caption)}</p>'
        f'<div class="scroll"><table class="runs configurations"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div><h3>Runs</h3>"
    )


def html_page(
    all_groups: Sequence[Group],
    rows: Sequence[Row],
    images: Mapping[str, Mapping[str, bytes]],
    out_dir: Path,
    runs_dir: Path,
    generated: str,
) -> bytes:
    """``index.html``: a summary of the statuses, then per dataset and task its plots (``images``:
    group slug → axis → PNG) and a sortable table of every column."""
    statuses = Counter(row.status for row in rows)
    counts = ", ".join(f"{statuses[s]} {s}" for s in STATUS_ORDER if statuses[s])
    navigation = "".join(f'<a href="#{_escape(g.slug)}">{_escape(g.title)}</a>' for g in all_groups)
    sections = "".join(_html_group(g, out_dir, images.get(g.slug, {})) for g in all_groups)
    if not all_groups:
        sections = f"<p>No runs under <code>{_escape(runs_dir)}</code> yet.</p>"
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>MedNeXt suite leaderboard</title>"
        f"<style>{_static('leaderboard.css')}</style></head><body>"
        "<header><h1>Leaderboard</h1>"
        f"<p>Generated {_escape(generated)} from <code>{_escape(runs_dir)}</code></p>"
        f"<p>{run_count_text(len(rows))}{': ' + _escape(counts) if counts else ''}. "
        "Click a column header to sort by it; completed runs are ranked by the test "
        f"{'/'.join(keys[0] for keys in HEADLINE.values())} of their dataset.</p>"
        f"<nav>{navigation}</nav></header>{sections}"
        f"<script>{_static('leaderboard.js')}</script></body></html>\n"
    )
    return page.encode()
