"""The run folder and its ``results.json``: where everything of a run lies, and the record of it.

``<output.root>/<experiment>/<run_id>/`` (a sweep point: ``<sweep>/<point>/<run_id>/``) holds
``config.yaml`` (fully resolved), ``split.json``, ``checkpoints/`` (``last.ckpt``, ``best.ckpt``),
``metrics.csv``, ``results.json``, per-case tables, ``predictions/`` and the W&B offline run
(``wandb/``); docs/architecture.md draws it. ``results.json`` is rewritten atomically at every
change of status, so a crash or Ctrl-C leaves it saying ``failed`` or ``interrupted`` next to a
``last.ckpt`` that ``resume=true`` continues from.

Nothing here imports torch or Lightning: the sweep runner and the leaderboard read run folders
through these functions without loading a network.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mednext.files import write_json

RESULTS = "results.json"
CONFIG = "config.yaml"
#: The configuration a resumed session ran with, beside the original ``config.yaml``.
RESUME_CONFIG = "config.resume.yaml"
SPLIT = "split.json"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"
#: Subfolders of a run folder that never hold another run (W&B writes a config.yaml of its own).
NOT_RUNS = frozenset({"wandb", CHECKPOINTS, "predictions"})


#: Keys that say where and how a run is recorded, not what it computes.
RECORDING_KEYS = ("name", "resume", "output", "logger")
#: What a repetition of one configuration varies: runs that differ only here form one group of
#: the leaderboard (mean ± std over seeds and folds).
REPETITION_KEYS = ("seed", "data.fold")


def configuration_key(config: Mapping[str, Any], ignore: Sequence[str] = ()) -> str:
    """A short hash of the resolved configuration without ``RECORDING_KEYS`` and the dotted keys
    of ``ignore``: equal for two runs exactly when they compute the same thing."""
    content = _plain({k: v for k, v in config.items() if k not in RECORDING_KEYS})
    for dotted in ignore:
        *parents, last = dotted.split(".")
        node: Any = content
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` with every mapping as a fresh dict (so that keys can be removed) and every
    sequence as a list."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: Data modules that read any dataset of a layout: the folder names the dataset.
GENERIC_DATASETS = ("nnunet",)


def dataset_label(data: Mapping[str, Any]) -> str | None:
    """The dataset a run is compared within: ``data.name``, and for a module that reads any
    dataset of its layout (nnU-Net's) the dataset folder too, ``nnunet/Dataset004_Hippocampus``
    (``nnunet/synthetic`` for the synthetic copy)."""
    name = data.get("name")
    if name in GENERIC_DATASETS:
        folder = (
            "synthetic"
            if data.get("source") == "synthetic"
            else Path(str(data.get("root") or "")).name
        )
        return f"{name}/{folder or 'unknown'}"
    return name


def new_run_dir(root: Path, experiment: str) -> Path:
    """A fresh ``root/experiment/<timestamp>`` (suffixed when two runs start in one second)."""
    base = root / experiment
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        run_dir = base / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


def newest_resumable_run(root: Path, experiment: str, fold: int | None = None) -> Path | None:
    """The most recent run of ``experiment`` that has a ``last.ckpt`` (of cross-validation fold
    ``fold``: a run's fold is in its results.json)."""
    candidates = sorted(
        (
            p
            for p in (root / experiment).glob("*")
            if (p / CHECKPOINTS / LAST).is_file() and read_results(p).get("fold") == fold
        ),
        key=lambda p: (p / CHECKPOINTS / LAST).stat().st_mtime,
    )
    return candidates[-1] if candidates else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """``best.ckpt`` when a validation metric selected one, else ``last.ckpt``."""
    for name in (BEST, LAST):
        path = run_dir / CHECKPOINTS / name
        if path.is_file():
            return path
    return None


def run_and_checkpoint(target: Path) -> tuple[Path, Path]:
    """``(run directory, checkpoint)`` of a run directory (its best checkpoint) or of a checkpoint
    file (the run directory above its ``checkpoints/``)."""
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == CHECKPOINTS else target.parent
        return run_dir, target
    if target.is_dir():
        checkpoint = best_checkpoint(target)
        if checkpoint is None:
            raise FileNotFoundError(f"{target}: no {CHECKPOINTS}/{BEST} or {LAST}")
        return target, checkpoint
    raise FileNotFoundError(f"{target}: neither a run directory nor a checkpoint file")


def resolve_checkpoint(reference: str, root: Path) -> Path:
    """A checkpoint file, a run directory (its best checkpoint), or an experiment name (the best
    checkpoint of its newest completed run under ``root``)."""
    path = Path(reference)
    if path.is_file():
        return path
    if path.is_dir():
        found = best_checkpoint(path)
        if found:
            return found
        raise FileNotFoundError(f"{path}: a run directory without {CHECKPOINTS}/{BEST} or {LAST}")
    runs = sorted((root / reference).glob("*/" + RESULTS))
    completed = [p.parent for p in runs if read_results(p.parent).get("status") == "completed"]
    for run_dir in reversed(completed):
        found = best_checkpoint(run_dir)
        if found:
            return found
    raise FileNotFoundError(
        f"{reference!r} is neither a checkpoint file, a run directory, nor an experiment with a "
        f"completed run under {root / reference}"
    )


def newest_status(root: Path, experiment: str) -> tuple[str | None, Path | None]:
    """``(status, run directory)`` of the newest run of ``experiment`` under ``root``."""
    runs = sorted((root / experiment).glob(f"*/{RESULTS}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None, None
    return read_results(runs[-1].parent).get("status"), runs[-1].parent


def leaderboard_dir(config: Mapping[str, Any]) -> Path:
    """``output.leaderboard``, or ``leaderboard/`` beside the runs folder."""
    configured = config["output"].get("leaderboard")
    return Path(configured) if configured else Path(config["output"]["root"]).parent / "leaderboard"


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (nested in mappings) as ``None``: JSON has no NaN,
    so undefined metrics are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    return value


def read_results(run_dir: Path) -> dict[str, Any]:
    """The run's ``results.json``; empty when there is none yet."""
    path = run_dir / RESULTS
    return json.loads(path.read_text()) if path.is_file() else {}


def git_commit() -> str:
    """The commit of the suite's checkout, ``-dirty`` when tracked files are modified;
    ``unknown`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunRecorder:
    """Keeps ``results.json`` of one run; only the process with ``is_writer`` (rank 0) writes.

    The keys: ``experiment``, ``run_id``, ``status`` (running, completed, failed, interrupted),
    ``model`` (name, variant), ``params``, ``flops``, ``dataset``, ``metrics`` (``val``, ``test``),
    ``epochs``, ``wall_time_s``, ``throughput``, ``device``, ``git_commit``, ``command``, ``seed``,
    ``fold``, ``train_memory_gib`` (activations one training batch keeps for the backward pass,
    float32, measured on the meta device), ``peak_memory_gib`` (CUDA: ``max_memory_allocated``
    of the training), ``config_hash`` (``configuration_key`` of the resolved configuration),
    ``group_key`` (the same without seed and fold: the runs that repeat one configuration) and,
    after a failure, ``error``. A resumed or re-tested run keeps what describes its training.
    """

    def __init__(
        self,
        run_dir: Path,
        experiment: str,
        config: Mapping[str, Any],
        command: Sequence[str],
        device: str,
        is_writer: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.is_writer = is_writer
        previous = read_results(run_dir)
        self.results: dict[str, Any] = {
            "experiment": experiment,
            "run_id": run_dir.name,
            "status": "running",
            "model": {
                "name": config["model"].get("name"),
                "variant": config["model"].get("variant"),
            },
            "params": None,
            "flops": None,
            "train_memory_gib": None,
            "peak_memory_gib": None,
            "dataset": dataset_label(config["data"]),
            "metrics": {"val": {}, "test": {}},
            "epochs": 0,
            "wall_time_s": previous.get("wall_time_s", 0.0),
            "throughput": None,
            "device": device,
            "git_commit": git_commit(),
            "command": shlex.join(command),
            "seed": config.get("seed"),
            "fold": config["data"].get("fold"),
            "config_hash": configuration_key(config),
            "group_key": configuration_key(config, REPETITION_KEYS),
        }
        kept = ("params", "flops", "train_memory_gib", "peak_memory_gib", "metrics", "epochs")
        for key in (*kept, "throughput", "command", "git_commit"):
            if key in previous:
                self.results[key] = previous[key]
        self._started = time.monotonic()
        self._base_wall = self.results["wall_time_s"]

    def update(self, **fields: Any) -> None:
        """Set ``fields`` and the wall time so far, and rewrite ``results.json``."""
        self.results.update(fields)
        self.results["wall_time_s"] = round(self._base_wall + time.monotonic() - self._started, 1)
        if self.is_writer:
            write_json(self.run_dir / RESULTS, finite(self.results))

    def set_metrics(self, stage: str, summary: Mapping[str, float]) -> None:
        """The summary metrics of a ``val`` or ``test`` evaluation."""
        self.results["metrics"][stage] = {k: float(v) for k, v in summary.items()}
        self.update()
