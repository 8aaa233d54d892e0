"""Sweeps (docs/scaling.md): one base experiment, a grid or a seeded random set of configuration
overrides, every point a normal run.

``experiments/sweeps/<name>.yaml``::

    experiment: synapse_mednext_s      # the base experiment
    method: grid                       # or random, with count: N (and seed:)
    parameters:                        # config key -> list of values
      model.kernel_size: [3, 5]
      model.width: [16, 32]
    overrides: {trainer.max_epochs: 100, init.upkern_from: sibling}   # every point

Each point runs as ``mednext train <experiment> <overrides> name=<sweep>/<point>`` in its own
process (a crash stays in its point), so its run directory is
``<output.root>/<sweep>/<point>/<run_id>/`` and the leaderboard lists it like any run.
``<output.root>/<sweep>/sweep.json`` records every point (parameters, command, status, run
directory, log file); re-running the sweep skips the points whose newest run completed.
``init.upkern_from: sibling`` makes a point with ``model.kernel_size`` above 3 start by UpKern from
the point with the same parameters and kernel 3, which then runs first.

``--wandb-export FILE`` writes the equivalent W&B sweep configuration: its command runs
``mednext train <experiment> key=value ...`` with the agent's choices (``${args_no_hyphens}``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from mednext.config import EXPERIMENTS_DIR, ConfigError, as_dict, compose
from mednext.files import write_json, write_text
from mednext.leaderboard import refresh_leaderboard
from mednext.runs.layout import leaderboard_dir, newest_status
from mednext.tasks import TASKS, minimised

SWEEPS_DIR = EXPERIMENTS_DIR / "sweeps"
RECORD = "sweep.json"
#: ``init.upkern_from: sibling`` -> the same point with this kernel size.
SIBLING = "sibling"
KERNEL_KEY = "model.kernel_size"
SIBLING_KERNEL = 3
_SWEEP_KEYS = {"experiment", "method", "count", "seed", "parameters", "overrides"}


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str
    path: Path
    experiment: str
    method: str
    parameters: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    count: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class SweepPoint:
    """One point: ``name`` is its experiment name (``<sweep>/<slug>``), ``parameters`` its swept
    values, ``overrides`` the whole ``key=value`` list of its ``mednext train`` command and
    ``sibling`` the point it initialises from by UpKern."""

    name: str
    slug: str
    parameters: dict[str, Any]
    overrides: list[str]
    sibling: str | None = None


def list_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def resolve_sweep_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"sweep file not found: {candidate}")
    path = SWEEPS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown sweep {name_or_path!r} (looked for {path}); known: {', '.join(list_sweeps())}"
        )
    return path


def load_sweep(name_or_path: str) -> Sweep:
    """Read and check a sweep file; a ``ConfigError`` names the file and the problem."""
    path = resolve_sweep_path(name_or_path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as error:  # OmegaConf/YAML raise many types for a malformed file
        raise ConfigError(f"{path}: cannot be read as YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping")
    unknown = sorted(set(raw) - _SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; a sweep has {sorted(_SWEEP_KEYS)}")
    if "experiment" not in raw or not raw.get("parameters"):
        raise ConfigError(f"{path}: a sweep needs `experiment` and `parameters`")
    method = raw.get("method", "grid")
    if method not in ("grid", "random"):
        raise ConfigError(f"{path}: method={method!r}: choose grid or random")
    parameters = raw["parameters"]
    if not isinstance(parameters, dict) or not all(
        isinstance(v, list) and v for v in parameters.values()
    ):
        raise ConfigError(f"{path}: `parameters` maps config keys to non-empty lists of values")
    count = raw.get("count")
    if method == "random" and (not isinstance(count, int) or count < 1):
        raise ConfigError(f"{path}: method: random needs `count:` (a positive number of points)")
    return Sweep(
        name=path.stem,
        path=path,
        experiment=str(raw["experiment"]),
        method=method,
        parameters={str(k): list(v) for k, v in parameters.items()},
        overrides=dict(raw.get("overrides") or {}),
        count=count,
        seed=int(raw.get("seed", 0)),
    )


def override_text(key: str, value: Any) -> str:
    """``key=value`` as ``mednext train`` (OmegaConf's dot-list) reads it back."""
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


def _value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "x".join(_value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))


def point_slug(parameters: Mapping[str, Any]) -> str:
    """``kernel_size=5,width=32``: the last part of each key (the whole key when two keys share
    it) with its value, in the order of the sweep file."""
    short = [key.rsplit(".", 1)[-1] for key in parameters]
    names = [s if short.count(s) == 1 else key for s, key in zip(short, parameters, strict=True)]
    return ",".join(
        f"{name}={_value_text(value)}"
        for name, value in zip(names, parameters.values(), strict=True)
    )


def _combinations(sweep: Sweep) -> list[dict[str, Any]]:
    keys = list(sweep.parameters)
    grid = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*sweep.parameters.values())
    ]
    if sweep.method == "grid":
        return grid
    if sweep.count > len(grid):
        raise ConfigError(
            f"{sweep.path}: count={sweep.count} but the parameters have only {len(grid)} "
            "combinations"
        )
    # Without replacement, by a seeded draw: the same seed gives the same points anywhere.
    chosen = np.random.default_rng(sweep.seed).choice(len(grid), size=sweep.count, replace=False)
    return [grid[i] for i in sorted(chosen)]


def expand(sweep: Sweep, extra: Sequence[str] = ()) -> list[SweepPoint]:
    """The sweep's points, kernel-3 siblings before the points that UpKern from them.

    Overrides apply in this order: the sweep's ``overrides``, then ``extra`` (the command line),
    then the point's parameters. A command-line key that the sweep varies is an error."""
    extra_keys = {item.split("=", 1)[0].strip() for item in extra}
    clash = sorted(extra_keys & set(sweep.parameters))
    if clash:
        raise ConfigError(f"{', '.join(clash)}: varied by the sweep, cannot be set for every point")
    fixed = dict(sweep.overrides)
    for item in extra:
        key, _, value = item.partition("=")
        fixed[key.strip()] = value
    upkern = fixed.pop("init.upkern_from", None)
    by_parameters: dict[tuple, str] = {}
    points = []
    for parameters in _combinations(sweep):
        slug = point_slug(parameters)
        name = f"{sweep.name}/{slug}"
        by_parameters[tuple(sorted((k, json.dumps(v)) for k, v in parameters.items()))] = name
        overrides = [override_text(k, v) for k, v in fixed.items()]
        overrides += [override_text(k, v) for k, v in parameters.items()]
        points.append((parameters, slug, name, overrides))
    result = []
    for parameters, slug, name, overrides in points:
        sibling = None
        if upkern == SIBLING:
            if KERNEL_KEY not in parameters:
                raise ConfigError(
                    f"{sweep.path}: init.upkern_from: sibling needs {KERNEL_KEY} among the "
                    "parameters"
                )
            if parameters[KERNEL_KEY] != SIBLING_KERNEL:
                key = {**parameters, KERNEL_KEY: SIBLING_KERNEL}
                sibling = by_parameters.get(
                    tuple(sorted((k, json.dumps(v)) for k, v in key.items()))
                )
                if sibling is None:
                    raise ConfigError(
                        f"{sweep.path}: point {slug} has no kernel-{SIBLING_KERNEL} sibling to "
                        f"UpKern from (add {SIBLING_KERNEL} to {KERNEL_KEY})"
                    )
                overrides = [*overrides, override_text("init.upkern_from", sibling)]
        elif upkern is not None:
            overrides = [*overrides, override_text("init.upkern_from", upkern)]
        overrides = [*overrides, override_text("name", name)]
        result.append(SweepPoint(name, slug, dict(parameters), overrides, sibling))
    # Siblings first (a stable sort keeps the sweep file's order otherwise).
    return sorted(result, key=lambda point: point.sibling is not None)


def check_points(sweep: Sweep, points: Sequence[SweepPoint]) -> dict[str, Any]:
    """Compose every point's configuration before anything runs: a wrong key or value in the
    sweep is one error naming the point. Returns the first point's configuration."""
    first: dict[str, Any] = {}
    for point in points:
        try:
            config = as_dict(compose(sweep.experiment, point.overrides))
        except ConfigError as error:
            raise ConfigError(f"{sweep.path}, point {point.slug}: {error}") from error
        first = first or config
    return first


# --- running -----------------------------------------------------------------------------------


@dataclass
class _Running:
    point: SweepPoint
    process: subprocess.Popen
    device: str | None
    log: Any
    started: float


class SweepRunner:
    """Runs the points of a sweep, ``parallel`` at a time (one device each when ``devices``
    are given), and keeps ``sweep.json`` up to date."""

    def __init__(
        self,
        sweep: Sweep,
        points: Sequence[SweepPoint],
        root: Path,
        parallel: int = 1,
        devices: Sequence[str] | None = None,
        console: Any = None,
    ) -> None:
        from rich.console import Console

        if parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, not {parallel}")
        if devices and len(devices) < parallel:
            raise ConfigError(f"--parallel {parallel} needs as many --devices, got {list(devices)}")
        self.sweep = sweep
        self.points = list(points)
        self.root = root
        self.parallel = parallel
        self.devices = list(devices or [])
        self.console = console or Console(stderr=True)
        self.folder = root / sweep.name
        self.record: dict[str, Any] = {
            "sweep": sweep.name,
            "file": str(sweep.path),
            "experiment": sweep.experiment,
            "method": sweep.method,
            "started": datetime.now().isoformat(timespec="seconds"),
            "points": {
                p.name: {
                    "parameters": p.parameters,
                    "command": ["mednext", "train", sweep.experiment, *p.overrides],
                    "sibling": p.sibling,
                    "status": "pending",
                }
                for p in points
            },
        }

    def _save(self) -> None:
        write_json(self.folder / RECORD, self.record)

    def _set(self, point: SweepPoint, **fields: Any) -> None:
        self.record["points"][point.name].update(fields)
        self._save()

    def _start(self, point: SweepPoint, device: str | None) -> _Running:
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{point.slug}.log"
        log = log_path.open("w")
        environment = dict(os.environ)
        if device is not None:
            environment["CUDA_VISIBLE_DEVICES"] = device
        command = [
            sys.executable,
            "-m",
            "mednext",
            "train",
            self.sweep.experiment,
            *point.overrides,
        ]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        self._set(point, status="running", log=str(log_path), device=device)
        self.console.print(
            f"[cyan]start[/cyan] {point.slug}" + (f" on device {device}" if device else "")
        )
        return _Running(point, process, device, log, time.monotonic())

    def _finish(self, running: _Running) -> str:
        running.log.close()
        code = running.process.returncode
        status, run_dir = newest_status(self.root, running.point.name)
        if code != 0:
            status = "interrupted" if code == 130 else "failed"
        minutes = (time.monotonic() - running.started) / 60
        self._set(
            running.point,
            status=status or "failed",
            returncode=code,
            run_dir=str(run_dir) if run_dir else None,
            minutes=round(minutes, 2),
        )
        colour = "green" if status == "completed" else "red"
        self.console.print(
            f"[{colour}]{status}[/{colour}] {running.point.slug} ({minutes:.1f} min)"
            + ("" if status == "completed" else f", log: {running.log.name}")
        )
        return status or "failed"

    def run(self) -> dict[str, Any]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        state: dict[str, str] = {}
        pending = []
        for point in self.points:
            status, run_dir = newest_status(self.root, point.name)
            if status == "completed":
                state[point.name] = "completed"
                self._set(point, status="completed", run_dir=str(run_dir), skipped=True)
                self.console.print(f"[dim]skip[/dim] {point.slug}: completed in {run_dir}")
            else:
                pending.append(point)
        self._save()
        free = list(self.devices) if self.devices else [None] * self.parallel
        running: list[_Running] = []
        with Progress(
            TextColumn(f"sweep {self.sweep.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            bar = progress.add_task("points", total=len(self.points), completed=len(state))
            while pending or running:
                for point in list(pending):
                    if not free:
                        break
                    sibling = state.get(point.sibling) if point.sibling else "completed"
                    if sibling is None:
                        continue  # its sibling has not finished yet
                    pending.remove(point)
                    if sibling != "completed":
                        state[point.name] = "skipped"
                        self._set(
                            point, status="skipped", reason=f"sibling {point.sibling} {sibling}"
                        )
                        self.console.print(
                            f"[yellow]skipped[/yellow] {point.slug}: its kernel-3 sibling {sibling}"
                        )
                        progress.advance(bar)
                        continue
                    running.append(self._start(point, free.pop(0)))
                time.sleep(0.5)
                for item in [r for r in running if r.process.poll() is not None]:
                    running.remove(item)
                    free.append(item.device)
                    state[item.point.name] = self._finish(item)
                    progress.advance(bar)
        self.record["finished"] = datetime.now().isoformat(timespec="seconds")
        self._save()
        return self.record


# --- W&B ------------------------------------------------------------------------------------------


def wandb_sweep_config(sweep: Sweep, extra: Sequence[str], config: Mapping[str, Any]) -> dict:
    """The W&B sweep configuration equivalent to ``sweep`` (``wandb sweep FILE``, then
    ``wandb agent ID``): the same parameters (fixed ones as ``value``), the run's validation
    metric as the objective, and a command that runs ``mednext train`` with the agent's
    ``key=value`` choices."""
    from datamodules import datamodule_class

    kind = datamodule_class(config["data"]["name"]).task
    metric = config["eval"]["monitor"] or TASKS[kind].monitor
    fixed = dict(sweep.overrides)
    for item in extra:
        key = item.split("=", 1)[0].strip()
        fixed[key] = _plain(OmegaConf.select(OmegaConf.from_dotlist([item]), key))
    # A W&B agent runs points independently: there is no kernel-3 sibling to wait for.
    fixed.pop("init.upkern_from", None)
    parameters: dict[str, Any] = {k: {"values": v} for k, v in sweep.parameters.items()}
    parameters.update({k: {"value": _plain(v)} for k, v in fixed.items()})
    exported: dict[str, Any] = {
        "name": sweep.name,
        "method": sweep.method,
        "metric": {
            "name": f"val/{metric}",
            "goal": "minimize" if minimised(metric) else "maximize",
        },
        "parameters": parameters,
        "command": ["${env}", "mednext", "train", sweep.experiment, "${args_no_hyphens}"],
    }
    if sweep.method == "random":
        exported["run_cap"] = sweep.count
    return exported


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value)
    return value


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", nargs="?", help="sweep name (experiments/sweeps/) or YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every point")
    parser.add_argument("--list", action="store_true", help="list the shipped sweeps")
    parser.add_argument("--parallel", type=int, default=1, help="points run at the same time")
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated GPU ids, one per running point (CUDA_VISIBLE_DEVICES); "
        "default: all points see every device",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the points and stop")
    parser.add_argument(
        "--wandb-export", metavar="FILE", help="write the equivalent W&B sweep file and stop"
    )


def sweep_command(args: argparse.Namespace, console: Any) -> int:
    """``mednext sweep``: expand, check every point, then export, print or run."""
    import yaml

    if args.list:
        print("\n".join(list_sweeps()))
        return 0
    if not args.sweep:
        raise ConfigError("name a sweep (`mednext sweep --list` shows them)")
    sweep = load_sweep(args.sweep)
    points = expand(sweep, args.overrides)
    config = check_points(sweep, points)
    if args.wandb_export:
        exported = wandb_sweep_config(sweep, args.overrides, config)
        write_text(Path(args.wandb_export), yaml.safe_dump(exported, sort_keys=False))
        print(
            f"wrote {args.wandb_export}: `wandb sweep {args.wandb_export}`, then `wandb agent <id>`"
        )
        return 0
    if args.dry_run:
        for point in points:
            print(" ".join(["mednext", "train", sweep.experiment, *point.overrides]))
        return 0
    root = Path(config["output"]["root"])
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    runner = SweepRunner(sweep, points, root, args.parallel, devices, console)
    record = runner.run()
    refresh_leaderboard(root, leaderboard_dir(config), console)
    statuses = [p["status"] for p in record["points"].values()]
    summary = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    print(f"sweep {sweep.name}: {summary}; record: {root / sweep.name / RECORD}")
    return 0 if all(s == "completed" for s in statuses) else 1
