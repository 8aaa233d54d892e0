"""The leaderboard's plots: per dataset and task, the test headline metric of every completed run
against parameters and against GFLOPs, with the Pareto front, and the caption saying what they
leave out. matplotlib is imported inside :func:`plot_group` only: collecting runs and writing the
CSV or Markdown never load it."""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Callable, Sequence

from mednext.leaderboard.collect import Group, Row, pareto_front

#: Plot x axes: what is counted, the axis label, the value (``None`` when unknown).
AXES: dict[str, tuple[str, str, Callable[[Row], float | None]]] = {
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
    for axis, (name, _, value) in AXES.items():
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

    name, label, value = AXES[axis]
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
