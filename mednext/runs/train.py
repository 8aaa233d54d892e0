"""``mednext train`` and ``mednext test``: one experiment from its resolved configuration to a
finished run folder.

The flow (docs/architecture.md): the DataModule of ``data.name`` and the task of its declared
kind are built once; the network's size is checked on the data's input size before any run folder
exists; the Trainer fits, validates and tests with the suite's callbacks; ``results.json``, the
leaderboard and W&B are updated at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mednext.files import write_json
from mednext.leaderboard import refresh_leaderboard
from mednext.runs.callbacks import RunCSVLogger, RunStatusCallback, SplitWriter, checkpointing
from mednext.runs.launch import run_location, shared_with_launched_ranks
from mednext.runs.layout import (
    CHECKPOINTS,
    CONFIG,
    SPLIT,
    RunRecorder,
    best_checkpoint,
    finite,
    git_commit,
    leaderboard_dir,
    new_run_dir,
    read_results,
    resolve_checkpoint,
    run_and_checkpoint,
)
from mednext.tasks import TASKS


def device_description() -> str:
    """What the run trains on, for ``results.json``: the GPUs, or the CPU and its cores."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count}× {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def build_task(config: Mapping[str, Any], datamodule: Any) -> Any:
    """The LightningModule of the DataModule's declared kind of task, built from the experiment's
    configuration; a network constructor that refuses an option is a ``ConfigError``."""
    from mednext.config import ConfigError

    task_class = TASKS[datamodule.task].load()
    try:
        return task_class.from_experiment(config, datamodule)
    except ValueError as error:
        raise ConfigError(f"model {config['model']['name']}: {error}") from error


def checked_complexity(config: Mapping[str, Any], datamodule: Any, net: torch.nn.Module) -> Any:
    """The parameters and FLOPs of one inference forward pass of the run's network on the data's
    input size (counted on the meta device); a ``ConfigError`` naming the size key when the
    network cannot take that size."""
    from mednext.config import ConfigError
    from mednext.models import get_family
    from mednext.models.complexity import measure

    shape = (1, datamodule.in_channels, *datamodule.input_size)
    convention = get_family(config["model"]["name"]).paper_convention
    try:
        return measure(net, shape, convention, training=False)
    except ValueError as error:
        raise ConfigError(
            f"{datamodule.input_size_setting} does not fit model {config['model']['name']}: {error}"
        ) from error


def activation_memory(
    config: Mapping[str, Any], datamodule: Any, net: torch.nn.Module
) -> int | None:
    """Bytes of the activations one training batch keeps for the backward pass (float32,
    ``training_memory`` on the meta device), for the leaderboard's cost columns; None for a
    network the measurement cannot run."""
    from mednext.models.complexity import training_memory

    batch = int(config["data"].get("batch_size") or 1)
    try:
        return training_memory(net, (batch, datamodule.in_channels, *datamodule.input_size))
    except (ValueError, RuntimeError, NotImplementedError):
        return None


def network_state(path: Path) -> dict[str, torch.Tensor]:
    """The network weights of a suite checkpoint (Lightning, ``net.`` prefix) or a plain state
    dict, loaded with ``weights_only=True``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    if any(key.startswith("net.") for key in state):
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return state


def initialise_weights(task: Any, init: Mapping[str, Any], root: Path) -> str | None:
    """Apply ``init.checkpoint`` (weights as they are) or ``init.upkern_from`` (UpKern from a
    smaller-kernel network) to ``task.net``; returns what was loaded, for the log."""
    from mednext.models.mednext import upkern

    if init.get("checkpoint") and init.get("upkern_from"):
        raise ValueError("init.checkpoint and init.upkern_from are exclusive: choose one")
    if init.get("checkpoint"):
        path = resolve_checkpoint(str(init["checkpoint"]), root)
        task.net.load_state_dict(network_state(path), strict=True)
        return f"weights from {path}"
    if init.get("upkern_from"):
        path = resolve_checkpoint(str(init["upkern_from"]), root)
        upkern(network_state(path), task.net)
        return f"UpKern from {path}"
    return None


def precision_fallback(trainer: dict[str, Any]) -> str | None:
    """fp16 mixed precision needs CUDA; on a CPU-only machine ``trainer`` is set to 32-bit and the
    notice to print is returned."""
    precision = str(trainer.get("precision", "32-true"))
    if precision in ("16-mixed", "16", "16-true") and not torch.cuda.is_available():
        trainer["precision"] = "32-true"
        return f"trainer.precision={precision} needs a GPU; running in 32-bit on this CPU"
    return None


def wandb_run_id(config: Mapping[str, Any], run_dir: Path) -> str:
    """``<experiment>-<run_id>`` with every character W&B refuses in an id (``/``, ``,``, ``:``,
    ... of sweep point names) replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", f"{config['name']}-{run_dir.name}")


def _loggers(config: Mapping[str, Any], run_dir: Path) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    loggers: list[Any] = [RunCSVLogger(run_dir)]
    wandb = config["logger"]["wandb"]
    if wandb["mode"] != "disabled":
        loggers.append(
            WandbLogger(
                project=wandb["project"],
                entity=wandb["entity"],
                name=f"{config['name']}/{run_dir.name}",
                # One W&B run per run directory: a resumed run continues the same W&B run.
                # Under `wandb agent` the agent's run id (WANDB_RUN_ID) is the one to use.
                id=None if os.environ.get("WANDB_SWEEP_ID") else wandb_run_id(config, run_dir),
                resume="allow",
                save_dir=str(run_dir),
                mode=wandb["mode"],
                tags=list(wandb["tags"]),
                config=dict(config),
            )
        )
    return loggers


def _wandb_summary(trainer: L.Trainer, results: Mapping[str, Any]) -> None:
    """The leaderboard's columns as W&B summary values, so a W&B project table lists the same
    runs with the same numbers."""
    from lightning.pytorch.loggers import WandbLogger

    summary: dict[str, Any] = {
        "status": results["status"],
        "model": results["model"]["name"],
        "variant": results["model"]["variant"],
        "dataset": results["dataset"],
        "params": results["params"],
        "gflops": results["flops"] / 1e9 if results["flops"] else None,
        "epochs": results["epochs"],
        "wall_time_s": results["wall_time_s"],
        "throughput": results["throughput"],
    }
    for stage in ("val", "test"):
        for key, value in results["metrics"][stage].items():
            summary[f"{stage}/{key}"] = value
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(finite(summary))
            # Nothing is logged after the test: close the W&B run now (offline: its files are
            # complete, wandb-summary.json included) rather than at interpreter exit.
            logger.experiment.finish()


def _prepare_network(task: Any, trainer: L.Trainer, console: Any) -> None:
    """``model.compile`` for the device the Trainer runs on, and why not where it cannot."""
    notice = task.prepare_network(trainer.strategy.root_device)
    if notice and trainer.is_global_zero:
        console.print(f"[yellow]{notice}[/yellow]")


def run_experiment(config: Mapping[str, Any], command: Sequence[str], console: Any) -> Path:
    """Train, validate and test one experiment; returns its run directory. Under DDP every rank
    runs this; only rank 0 writes the run's files and the leaderboard."""
    from datamodules import build_datamodule

    root = Path(config["output"]["root"])
    L.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(dict(config["data"]), seed=config["seed"])
    task = build_task(config, datamodule)
    # Before a run directory exists: a network that cannot take the data's input size is a
    # configuration error, not a run that fails at its first step.
    complexity = checked_complexity(config, datamodule, task.net)
    run_dir, checkpoint_path, primary = run_location(config, root, console)
    task.output_dir = run_dir
    if checkpoint_path is None:
        loaded = initialise_weights(task, config["init"], root)
        if loaded:
            console.print(loaded)
    recorder = RunRecorder(
        run_dir, config["name"], config, command, device_description(), is_writer=primary
    )
    memory = activation_memory(config, datamodule, task.net)
    recorder.update(
        status="running",
        params=complexity.params,
        flops=complexity.flops,
        train_memory_gib=None if memory is None else round(memory / 2**30, 3),
    )
    try:
        with shared_with_launched_ranks(run_dir):
            _train_and_test(config, datamodule, task, recorder, run_dir, checkpoint_path, console)
    finally:
        if primary:
            # Failed and interrupted runs are shown too.
            refresh_leaderboard(root, leaderboard_dir(config), console)
    return run_dir


def _train_and_test(
    config: Mapping[str, Any],
    datamodule: Any,
    task: Any,
    recorder: RunRecorder,
    run_dir: Path,
    checkpoint_path: Path | None,
    console: Any,
) -> None:
    from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar

    trainer_arguments = dict(config["trainer"])
    if not datamodule.has_validation:
        # No validation set (TransUNet's Synapse protocol): the last epoch's model is tested.
        trainer_arguments["limit_val_batches"] = 0
    notice = precision_fallback(trainer_arguments)
    if notice:
        console.print(f"[yellow]{notice}[/yellow]")
    checkpoint_dir = run_dir / CHECKPOINTS
    monitor = config["eval"]["monitor"] or TASKS[datamodule.task].monitor
    trainer = L.Trainer(
        **trainer_arguments,
        default_root_dir=run_dir,
        logger=_loggers(config, run_dir),
        callbacks=[
            checkpointing(monitor if datamodule.has_validation else None, checkpoint_dir),
            LearningRateMonitor(logging_interval="epoch"),
            RichProgressBar(),
            RunStatusCallback(recorder, checkpoint_dir),
            SplitWriter(run_dir),
        ],
    )
    recorder.is_writer = trainer.is_global_zero
    _prepare_network(task, trainer, console)
    with warnings.catch_warnings():
        if checkpoint_path is not None:
            # Resuming: the checkpoints already there are this run's own.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            # A Ctrl-C checkpoint is mid-epoch. Training patches are drawn independently with
            # replacement, so there is no data order to restore: the epoch simply goes on.
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended"
            )
        trainer.fit(task, datamodule=datamodule, ckpt_path=checkpoint_path, weights_only=True)
    if trainer.interrupted:
        return
    device = trainer.strategy.root_device
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        recorder.update(peak_memory_gib=round(peak / 2**30, 3))
    best = best_checkpoint(run_dir)
    trainer.test(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
    recorder.set_metrics("test", task.last_evaluation["summary"])
    recorder.update(status="completed")
    if trainer.is_global_zero:
        _wandb_summary(trainer, recorder.results)


def _member_task(run_dir: Path, checkpoint: Path) -> tuple[dict[str, Any], Any, Any]:
    """``(configuration, DataModule, task with the checkpoint's weights)`` of one trained run,
    rebuilt from its ``config.yaml``."""
    from datamodules import build_datamodule
    from mednext.config import as_dict, compose

    config_path = run_dir / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: the run's configuration is missing")
    config = as_dict(compose(config_path))
    datamodule = build_datamodule(dict(config["data"]), seed=config["seed"])
    task = build_task(config, datamodule)
    task.output_dir = run_dir
    # The weights alone: a Trainer given ckpt_path would also want the training callbacks back.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    task.load_state_dict(state["state_dict"])
    task.on_load_checkpoint(state)
    return config, datamodule, task


def _test_trainer(config: Mapping[str, Any], output_dir: Path, console: Any) -> L.Trainer:
    """A Trainer that tests in one process on one device, whatever the run trained on (a DDP
    run's test matches it)."""
    from lightning.pytorch.callbacks import RichProgressBar

    trainer_arguments = {
        k: v for k, v in config["trainer"].items() if k in ("accelerator", "precision")
    }
    trainer_arguments["devices"] = 1
    notice = precision_fallback(trainer_arguments)
    if notice:
        console.print(f"[yellow]{notice}[/yellow]")
    return L.Trainer(
        **trainer_arguments,
        default_root_dir=output_dir,
        logger=False,
        callbacks=[RichProgressBar()],
    )


def test_run(target: Path, console: Any) -> tuple[Path, dict[str, float]]:
    """``mednext test RUN_DIR|CKPT``: evaluate a checkpoint on the test split of its run's
    experiment (``config.yaml`` beside it), in one process on one device, and record the metrics
    in the run's results.json."""
    run_dir, checkpoint = run_and_checkpoint(target)
    config, datamodule, task = _member_task(run_dir, checkpoint)
    trainer = _test_trainer(config, run_dir, console)
    _prepare_network(task, trainer, console)
    trainer.test(task, datamodule=datamodule)
    summary = task.last_evaluation["summary"]
    if trainer.is_global_zero:
        command = ["mednext", "test", str(target)]
        recorder = RunRecorder(run_dir, config["name"], config, command, device_description())
        recorder.results["status"] = read_results(run_dir).get("status", "completed")
        recorder.set_metrics("test", summary)
        refresh_leaderboard(Path(config["output"]["root"]), leaderboard_dir(config), console)
    return run_dir, summary


#: What ``mednext test RUN_A RUN_B ...`` writes beside its per-case table.
ENSEMBLE_RECORD = "ensemble.json"


def _test_split(run_dir: Path) -> Any:
    """The test part of a run's ``split.json`` (None when it has none)."""
    path = run_dir / SPLIT
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    split = record.get("split", record)
    return split.get("test") if isinstance(split, Mapping) else None


def test_ensemble(
    targets: Sequence[Path], out_dir: Path | None, console: Any
) -> tuple[Path, dict[str, float]]:
    """``mednext test RUN_A RUN_B ...``: the ensemble of the runs (probabilities averaged,
    ``mednext.ensemble``) evaluated on the test split of the first one, which every member must
    share. Writes the per-case table, the figures and ``ensemble.json`` (members, metrics) into
    ``out_dir`` (default ``<output.root>/<experiment>/ensembles/<timestamp>``)."""
    from mednext.ensemble import combine

    members = [run_and_checkpoint(target) for target in targets]
    built = [_member_task(run_dir, checkpoint) for run_dir, checkpoint in members]
    config, datamodule, _ = built[0]
    first_split = _test_split(members[0][0])
    for run_dir, _ in members[1:]:
        if _test_split(run_dir) != first_split:
            raise ValueError(
                f"{run_dir}: its test split differs from {members[0][0]}'s; an ensemble is "
                "tested on the cases every member left out"
            )
    task = combine([task for _, _, task in built], [checkpoint for _, checkpoint in members])
    if out_dir is None:
        out_dir = new_run_dir(Path(config["output"]["root"]) / config["name"], "ensembles")
    out_dir.mkdir(parents=True, exist_ok=True)
    task.output_dir = out_dir
    trainer = _test_trainer(config, out_dir, console)
    _prepare_network(task, trainer, console)
    trainer.test(task, datamodule=datamodule)
    summary = task.last_evaluation["summary"]
    record = {
        "experiment": config["name"],
        "members": [
            {
                "run_dir": str(run_dir),
                "checkpoint": str(checkpoint),
                "fold": member_config["data"].get("fold"),
            }
            for (run_dir, checkpoint), (member_config, _, _) in zip(members, built, strict=True)
        ],
        "metrics": {"test": {k: float(v) for k, v in summary.items()}},
        "test_cases": len(datamodule.split["test"]) if datamodule.split else None,
        "command": shlex.join(["mednext", "test", *map(str, targets)]),
        "device": device_description(),
        "git_commit": git_commit(),
    }
    write_json(out_dir / ENSEMBLE_RECORD, finite(record))
    return out_dir, summary
