"""The leaderboard: every run's ``results.json`` → ``leaderboard.csv``, ``leaderboard.md`` and a
static ``index.html`` (one sortable table per dataset and task, metric-vs-parameters and
metric-vs-FLOPs plots with the Pareto front, links to each run's ``config.yaml``).

Runs are found at any depth below the runs directory: ``<experiment>/<run_id>/`` and sweep points
``<sweep>/<point>/<run_id>/``. A run directory with a ``config.yaml`` but no ``results.json`` (a run
that died before its first record) is listed with status ``unknown``. Nothing here imports torch or
Lightning: the command stays quick, and the training code can call :func:`write_leaderboard`
after every run.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

RESULTS = "results.json"
CONFIG = "config.yaml"

#: Per task kind, the test metrics shown first. The first one ranks the runs and is plotted; it
#: is the metric ``mednext.runs.MONITOR`` selects ``best.ckpt`` by (a test keeps them equal).
HEADLINE = {
    "segmentation": ("dice_mean", "hd95_mean"),
    "classification": ("acc", "balanced_acc", "f1_macro", "auroc"),
}

#: Order of the statuses within a table: finished runs first, then what may still change.
STATUS_ORDER = ("completed", "running", "interrupted", "failed", "unknown")

# Inside a run directory these hold checkpoints, figures and W&B files (W&B writes a config.yaml
# of its own), never another run.
_NOT_RUNS = frozenset({"wandb", "checkpoints", "predictions"})


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
    wall_time_s: float | None = None
    throughput: float | None = None
    device: str | None = None
    git_commit: str | None = None
    command: str | None = None
    error: str | None = None
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


# --- collecting ----------------------------------------------------------------------------


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
        wall_time_s=_number(results.get("wall_time_s")),
        throughput=_number(results.get("throughput")),
        device=_text(results.get("device")),
        git_commit=_text(results.get("git_commit")),
        command=_text(results.get("command")),
        error=_text(results.get("error")),
        run_dir=run_dir,
        config=run_dir / CONFIG if (run_dir / CONFIG).is_file() else None,
    )


def _row_from_config(run_dir: Path, runs_dir: Path) -> Row:
    """A run directory without (readable) results: what its ``config.yaml`` says."""
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
            name for name in subfolders if name not in _NOT_RUNS and not name.startswith(".")
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


# --- the Pareto front ------------------------------------------------------------------------


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


# --- plots -----------------------------------------------------------------------------------

#: Plot x axes: what is counted, the axis label, the value (``None`` when unknown).
_AXES: dict[str, tuple[str, str, Callable[[Row], float | None]]] = {
    "params": ("parameters", "parameters (M)", lambda r: r.params and r.params / 1e6),
    "flops": ("FLOPs", "GFLOPs", lambda r: r.gflops),
}


#: Up to this many runs in a plot every point is labelled; beyond, only the Pareto front (the
#: table has the rest), or the labels of a sweep's dozens of points would cover the plot.
MAX_LABELLED_POINTS = 6


def _labels(
    rows: Sequence[Row], points: Sequence[tuple[float, float]], chosen: set[int]
) -> dict[tuple[float, float], str]:
    """Point → label for the runs ``chosen``: the experiment name (a sweep point's own part
    only), with the run id where one experiment has several runs here; runs at the same point
    share one label, a line each."""
    counts = Counter(row.experiment for row in rows)
    labels: dict[tuple[float, float], list[str]] = {}
    for index, (row, point) in enumerate(zip(rows, points, strict=True)):
        if index not in chosen:
            continue
        short = row.experiment.rsplit("/", 1)[-1]
        name = short if counts[row.experiment] == 1 else f"{short} ({row.run_id})"
        labels.setdefault(point, []).append(name)
    return {point: "\n".join(names) for point, names in labels.items()}


def plot_caption(group: Group) -> str:
    """What the plots of ``group`` show and what they leave out."""
    if group.headline_key is None:
        return "No plots: no run of this dataset has a test metric yet."
    plotted = [r for r in group.rows if r.status == "completed" and r.headline is not None]
    caption = f"{len(plotted)} completed run{'' if len(plotted) == 1 else 's'} plotted"
    left_out = Counter(r.status for r in group.rows if r.status != "completed")
    parts = [f"{count} {status}" for status, count in sorted(left_out.items())]
    no_metric = sum(r.status == "completed" and r.headline is None for r in group.rows)
    if no_metric:
        parts.append(f"{no_metric} completed without a test {group.headline_key}")
    for axis, (name, _, value) in _AXES.items():
        missing = sum(value(r) is None for r in plotted)
        if missing:
            parts.append(f"{missing} without {name} (left out of the {axis} plot)")
    if parts:
        caption += "; not plotted: " + ", ".join(parts)
    return caption + ". Pareto front: the best test metric for its cost (red)."


def _label_2_and_5(tick: float, _: int) -> str:
    leading = round(tick / 10 ** math.floor(math.log10(tick)))
    return f"{tick:g}" if leading in (2, 5) else ""


def plot_group(group: Group, axis: str) -> bytes:
    """A PNG: the test headline of every completed run of ``group`` against parameters
    (``axis="params"``) or GFLOPs (``"flops"``), log x, each point labelled, the Pareto front
    drawn and its points marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    name, label, value = _AXES[axis]
    rows = [
        r
        for r in group.rows
        if r.status == "completed" and r.headline is not None and (value(r) or 0) > 0
    ]
    points = [(float(value(r)), float(r.headline)) for r in rows]
    figure = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    plot = figure.add_subplot()
    plot.set_xscale("log")
    plot.set_xlabel(label)
    plot.set_ylabel(f"test {group.headline_key}")
    plot.set_title(
        f"{group.dataset} ({group.task}): test {group.headline_key} vs {name}", fontsize=10
    )
    plot.grid(True, which="both", alpha=0.3)
    if not points:
        plot.text(
            0.5,
            0.5,
            f"no completed run with {name} and a test {group.headline_key}",
            ha="center",
            va="center",
            transform=plot.transAxes,
        )
        plot.set_xlim(0.1, 10)
    else:
        front = pareto_front(points)
        xs, ys = zip(*points, strict=True)
        plot.scatter(xs, ys, s=28, color="tab:blue", zorder=2, label="run")
        fx, fy = zip(*(points[i] for i in front), strict=True)
        plot.step(fx, fy, where="post", color="tab:red", linewidth=1.2, zorder=1)
        plot.scatter(
            fx, fy, s=70, facecolors="none", edgecolors="tab:red", zorder=3, label="Pareto front"
        )
        if len(set(xs)) == 1:
            plot.set_xlim(xs[0] / 2, xs[0] * 2)
        else:
            plot.margins(x=0.08, y=0.1)
        low, high = (math.log10(limit) for limit in plot.get_xlim())
        chosen = set(range(len(points))) if len(points) <= MAX_LABELLED_POINTS else set(front)
        for (x, y), text in _labels(rows, points, chosen).items():
            # Labels of points on the right half go to their left, inside the axes.
            left = (math.log10(x) - low) / (high - low) > 0.55
            plot.annotate(
                text,
                (x, y),
                xytext=(-5 if left else 5, 4),
                textcoords="offset points",
                ha="right" if left else "left",
                fontsize=7,
                zorder=4,
            )
        plot.legend(loc="best", fontsize=8)
    # Plain numbers (0.5, 2, 30), not powers of ten. The runs of one dataset often span a decade
    # or two: then minor ticks are labelled too, all of them or only 2× and 5×.
    low, high = plot.get_xlim()
    plot.xaxis.set_major_formatter(FuncFormatter(lambda tick, _: f"{tick:g}"))
    if high / low <= 12:
        plot.xaxis.set_minor_formatter(FuncFormatter(lambda tick, _: f"{tick:g}"))
    elif high / low <= 1000:
        plot.xaxis.set_minor_formatter(FuncFormatter(_label_2_and_5))
    else:
        plot.xaxis.set_minor_formatter(NullFormatter())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- columns ---------------------------------------------------------------------------------


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


def _columns(rows: Sequence[Row], out_dir: Path) -> dict[str, Column]:
    """Every column for ``rows``, by key, in table order."""
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


def _relative_link(path: Path | None, out_dir: Path) -> str | None:
    if path is None:
        return None
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


#: Column headers where the key alone would be cryptic.
_HEADERS = {
    "params": "params (M)",
    "gflops": "GFLOPs",
    "wall_time_s": "wall time (s)",
    "throughput": "samples/s",
}

#: Columns of text, aligned left.
_LEFT = frozenset(
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

_MARKDOWN_COLUMNS = ("rank", "experiment", "run_id", "status", "model", "variant", "params")
_MARKDOWN_TAIL = ("epochs", "wall_time_s", "config")


# --- writing ---------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    # A unique temporary name: runs of a sweep may regenerate the leaderboard at the same time.
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _csv(rows: Sequence[Row], out_dir: Path, runs_dir: Path) -> bytes:
    columns = list(_columns(rows, out_dir).values())
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*(c.key for c in columns), "run_dir"])
    for row in rows:
        values = ["" if (v := c.value(row)) is None else v for c in columns]
        writer.writerow([*values, row.run_dir.relative_to(runs_dir).as_posix()])
    return stream.getvalue().encode()


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown(all_groups: Sequence[Group], out_dir: Path, runs_dir: Path, generated: str) -> bytes:
    lines = [
        "# Leaderboard",
        "",
        f"Generated {generated} from `{runs_dir}`. Every column, per-class metrics included, is "
        "in `leaderboard.csv` and `index.html`.",
    ]
    if not all_groups:
        lines += ["", f"No runs under `{runs_dir}` yet."]
    for group in all_groups:
        columns = _columns(group.rows, out_dir)
        keys = [
            *_MARKDOWN_COLUMNS,
            "gflops",
            *(f"test/{k}" for k in HEADLINE.get(group.task, ()) if f"test/{k}" in columns),
            *(f"val/{k}" for k in HEADLINE.get(group.task, ())[:1] if f"val/{k}" in columns),
            *_MARKDOWN_TAIL,
        ]
        lines += ["", f"## {group.title}", ""]
        if group.headline_key:
            lines += [
                f"![{group.headline_key} vs {axis}](plots/{group.slug}_{axis}.png)"
                for axis in _AXES
            ]
            lines.append("")
        lines += [plot_caption(group), ""]
        lines.append("| " + " | ".join(_HEADERS.get(k, k) for k in keys) + " |")
        lines.append("|" + "|".join("---:" if k not in _LEFT else "---" for k in keys) + "|")
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


_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #1d232a; background: #fff; }
header p { margin: 2px 0; color: #56606b; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
nav a { margin-right: 12px; }
section { margin-top: 32px; }
figure { margin: 8px 0; }
figure img { max-width: 48%; height: auto; border: 1px solid #e2e6ea; margin-right: 1%; }
figcaption { color: #56606b; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #e2e6ea; padding: 4px 8px; text-align: right;
         white-space: nowrap; }
th { background: #f3f5f7; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.text, th.text { text-align: left; }
tr.inactive td { color: #7a838c; }
tbody tr:hover { background: #f8fafc; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; }
.status-completed { background: #2e7d32; }
.status-running { background: #1565c0; }
.status-interrupted { background: #ef8f00; }
.status-failed { background: #c62828; }
.status-unknown { background: #6b7280; }
"""

# Click a header to sort by it (again to reverse). Cells sort by their data-value: numbers as
# numbers, text with numeric-aware comparison, empty cells always last.
_JS = """
document.querySelectorAll("table.runs").forEach((table) => {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((header, column) => {
    header.addEventListener("click", () => {
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => h.removeAttribute("aria-sort"));
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.tBodies[0];
      const value = (row) => row.cells[column].dataset.value;
      const rows = Array.from(body.rows).sort((a, b) => {
        const x = value(a), y = value(b);
        const order = Number(a.dataset.index) - Number(b.dataset.index);
        if (x === "" || y === "") return (x === "") - (y === "") || order;
        const nx = Number(x), ny = Number(y);
        const c = Number.isNaN(nx) || Number.isNaN(ny)
          ? x.localeCompare(y, undefined, { numeric: true }) : nx - ny;
        return (ascending ? c : -c) || order;
      });
      body.append(...rows);
    });
  });
});
"""


def _runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _escape(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _html_cell(column: Column, row: Row) -> str:
    value, text = column.value(row), column.text(row)
    sort_value = STATUS_ORDER.index(row.status) if column.key == "status" else value
    attributes = f' data-value="{_escape(sort_value)}"'
    if column.key in _LEFT:
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
    columns = _columns(group.rows, out_dir)
    hidden = {"dataset", "task"}
    if not any(row.error for row in group.rows):
        hidden.add("error")
    shown = [c for key, c in columns.items() if key not in hidden]
    header = "".join(
        f'<th class="text" data-key="{_escape(c.key)}">{_escape(_HEADERS.get(c.key, c.key))}</th>'
        if c.key in _LEFT
        else f'<th data-key="{_escape(c.key)}">{_escape(_HEADERS.get(c.key, c.key))}</th>'
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
        for axis, (name, _, _) in _AXES.items()
        if axis in images
    )
    return (
        f'<section id="{_escape(group.slug)}">'
        f"<h2>{_escape(group.title)}</h2>"
        f"<figure>{pictures}<figcaption>{_escape(plot_caption(group))}</figcaption></figure>"
        f'<div class="scroll"><table class="runs"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _html(
    all_groups: Sequence[Group],
    rows: Sequence[Row],
    images: Mapping[str, Mapping[str, bytes]],
    out_dir: Path,
    runs_dir: Path,
    generated: str,
) -> bytes:
    statuses = Counter(row.status for row in rows)
    counts = ", ".join(f"{statuses[s]} {s}" for s in STATUS_ORDER if statuses[s])
    navigation = "".join(f'<a href="#{_escape(g.slug)}">{_escape(g.title)}</a>' for g in all_groups)
    sections = "".join(_html_group(g, out_dir, images.get(g.slug, {})) for g in all_groups)
    if not all_groups:
        sections = f"<p>No runs under <code>{_escape(runs_dir)}</code> yet.</p>"
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>MedNeXt suite leaderboard</title><style>{_CSS}</style></head><body>"
        "<header><h1>Leaderboard</h1>"
        f"<p>Generated {_escape(generated)} from <code>{_escape(runs_dir)}</code></p>"
        f"<p>{_runs(len(rows))}{': ' + _escape(counts) if counts else ''}. "
        "Click a column header to sort by it; completed runs are ranked by the test "
        f"{'/'.join(keys[0] for keys in HEADLINE.values())} of their dataset.</p>"
        f"<nav>{navigation}</nav></header>{sections}<script>{_JS}</script></body></html>\n"
    )
    return page.encode()


def write_leaderboard(runs_dir: Path | str, out_dir: Path | str) -> dict[str, Path]:
    """Collect the runs below ``runs_dir`` and write ``leaderboard.csv``, ``leaderboard.md``,
    ``index.html`` (self-contained: styles, script and plots inline) and the plots as
    ``plots/<dataset>_<task>_{params,flops}.png`` into ``out_dir``, each file atomically.
    Returns the written paths by their name relative to ``out_dir``, the plots last."""
    return _write(collect(runs_dir), Path(runs_dir), Path(out_dir))


def _write(rows: Sequence[Row], runs_dir: Path, out_dir: Path) -> dict[str, Path]:
    all_groups = groups(rows)
    generated = datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    # A group whose task is unknown (no run has a metric yet) has nothing to plot.
    images = {
        group.slug: {axis: plot_group(group, axis) for axis in _AXES}
        for group in all_groups
        if group.headline_key
    }
    plots = {
        f"plots/{slug}_{axis}.png": png
        for slug, pictures in images.items()
        for axis, png in pictures.items()
    }
    files = {
        "leaderboard.csv": _csv(rows, out_dir, runs_dir),
        "leaderboard.md": _markdown(all_groups, out_dir, runs_dir.resolve(), generated),
        "index.html": _html(all_groups, rows, images, out_dir, runs_dir.resolve(), generated),
        **plots,
    }
    for name, data in files.items():
        _write_atomic(out_dir / name, data)
    # Plots of a dataset that no longer has runs would only mislead.
    for stale in plots_dir.glob("*.png"):
        if f"plots/{stale.name}" not in files:
            stale.unlink(missing_ok=True)
    return {name: out_dir / name for name in files}


def default_runs_dir() -> Path:
    """Where runs go unless ``output.root`` says otherwise: ``$MEDNEXT_RUNS`` or ``runs``."""
    return Path(os.environ.get("MEDNEXT_RUNS") or "runs")


def leaderboard_command(runs_dir: Path, out_dir: Path) -> int:
    """``mednext leaderboard``: write the files, print their paths and a summary table."""
    from rich.console import Console
    from rich.table import Table

    rows = collect(runs_dir)
    written = _write(rows, runs_dir, out_dir)
    for name in ("leaderboard.csv", "leaderboard.md", "index.html"):
        print(written[name])
    plots = [name for name in written if name.startswith("plots/")]
    if plots:
        print(f"{out_dir / 'plots'} ({len(plots)} plots)")
    table = Table(title=f"{_runs(len(rows))} under {runs_dir}")
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
