"""The leaderboard: every run's ``results.json`` → ``leaderboard.csv``, ``leaderboard.md`` and a
static ``index.html`` (one sortable table per dataset and task, metric-vs-parameters and
metric-vs-FLOPs plots with the Pareto front, links to each run's ``config.yaml``).

Runs are found at any depth below the runs directory: ``<experiment>/<run_id>/`` and sweep points
``<sweep>/<point>/<run_id>/``. A run directory with a ``config.yaml`` but no ``results.json`` (a run
that died before its first record) is listed with status ``unknown``. Nothing here imports torch or
Lightning: the command stays quick, and the training code can call :func:`write_leaderboard`
after every run.

The parts, each depending only on those before it: ``collect`` (run folders → rows and groups,
the Pareto front), ``plots`` (matplotlib, imported only to draw), ``columns`` (what the tables
show), ``render`` (CSV, Markdown, the HTML page with ``static/leaderboard.css`` and
``static/leaderboard.js`` inlined), ``write`` (the files on disk) and ``command`` (``mednext
leaderboard``, the refresh after a run or sweep).
"""

from mednext.leaderboard.collect import collect, pareto_front
from mednext.leaderboard.command import default_runs_dir, leaderboard_command, refresh_leaderboard
from mednext.leaderboard.write import write_leaderboard

__all__ = [
    "collect",
    "default_runs_dir",
    "leaderboard_command",
    "pareto_front",
    "refresh_leaderboard",
    "write_leaderboard",
]
