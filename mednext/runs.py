"""Run directories, ``results.json`` and the callbacks that keep them true.

``runs/<experiment>/<run_id>/``: ``config.yaml`` (fully resolved), ``split.json``,
``checkpoints/`` (``last.ckpt``, ``best.ckpt``), ``metrics.csv``, ``results.json``,
``predictions/`` and the W&B offline run (``wandb/``). ``results.json`` is rewritten atomically at
every change of status, so a crash or Ctrl-C leaves it saying ``failed`` or ``interrupted`` next to
a ``last.ckpt`` that ``resume=true`` continues from.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shlex
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import OmegaConf

RESULTS = "results.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"


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


def newest_resumable_run(root: Path, experiment: str) -> Path | None:
    """The most recent run of ``experiment`` that has a ``last.ckpt``."""
    candidates = sorted(
        (p for p in (root / experiment).glob("*") if (p / CHECKPOINTS / "last.ckpt").is_file()),
        key=lambda p: (p / CHECKPOINTS / "last.ckpt").stat().st_mtime,
    )
    return candidates[-1] if candidates else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """``best.ckpt`` when a validation metric selected one, else ``last.ckpt``."""
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / CHECKPOINTS / name
        if path.is_file():
            return path
    return None


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        commit = result.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_description() -> str:
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count}× {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    return value


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)


def read_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULTS
    return json.loads(path.read_text()) if path.is_file() else {}


class RunRecorder:
    """Keeps ``results.json`` of one run (rank 0 only writes)."""

    def __init__(
        self,
        run_dir: Path,
        experiment: str,
        config: Mapping[str, Any],
        command: Sequence[str],
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
            "dataset": config["data"].get("name"),
            "metrics": {"val": {}, "test": {}},
            "epochs": 0,
            "wall_time_s": previous.get("wall_time_s", 0.0),
            "throughput": None,
            "device": device_description(),
            "git_commit": git_commit(),
            "command": shlex.join(command),
        }
        # A resumed or re-tested run keeps what describes its training.
        for key in ("params", "flops", "metrics", "epochs", "throughput", "command", "git_commit"):
            if key in previous:
                self.results[key] = previous[key]
        self._started = time.monotonic()
        self._base_wall = self.results["wall_time_s"]

    def update(self, **fields: Any) -> None:
        self.results.update(fields)
        self.results["wall_time_s"] = round(self._base_wall + time.monotonic() - self._started, 1)
        if self.is_writer:
            write_json_atomic(self.run_dir / RESULTS, self.results)

    def set_metrics(self, stage: str, summary: Mapping[str, float]) -> None:
        self.results["metrics"][stage] = {k: float(v) for k, v in summary.items()}
        self.update()


class RunStatusCallback(Callback):
    """Records progress in ``results.json``; on Ctrl-C or a crash saves ``last.ckpt`` and marks
    the run ``interrupted`` or ``failed``."""

    def __init__(self, recorder: RunRecorder, checkpoint_dir: Path) -> None:
        self.recorder = recorder
        self.checkpoint_dir = checkpoint_dir
        self._train_start: float | None = None
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = time.monotonic()
        self._samples = 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        image = batch["image"] if isinstance(batch, Mapping) else batch[0]
        self._samples += len(image) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.monotonic() - (self._train_start or time.monotonic())
        throughput = round(self._samples / elapsed, 3) if elapsed > 0 else None
        self.recorder.update(epochs=trainer.current_epoch + 1, throughput=throughput)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluation = getattr(pl_module, "last_evaluation", None)
        if not trainer.sanity_checking and evaluation and evaluation["stage"] == "val":
            self.recorder.set_metrics("val", evaluation["summary"])

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt)
        if trainer.state.fn == "fit" and trainer.global_step > 0:
            # Lightning writes through an fsspec transaction (temporary file, then a move), so a
            # second Ctrl-C during this save cannot leave a truncated last.ckpt behind.
            trainer.save_checkpoint(self.checkpoint_dir / "last.ckpt")
        self.recorder.update(
            status="interrupted" if interrupted else "failed",
            error=None if interrupted else f"{type(exception).__name__}: {exception}",
        )


# --- running an experiment -----------------------------------------------------------------


def _resolve_checkpoint(reference: str, root: Path) -> Path:
    """A checkpoint file, a run directory, or an experiment name (its newest completed run)."""
    path = Path(reference)
    if path.is_file():
        return path
    if path.is_dir():
        found = best_checkpoint(path)
        if found:
            return found
        raise FileNotFoundError(
            f"{path}: a run directory without checkpoints/best.ckpt or last.ckpt"
        )
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
        path = _resolve_checkpoint(str(init["checkpoint"]), root)
        task.net.load_state_dict(network_state(path), strict=True)
        return f"weights from {path}"
    if init.get("upkern_from"):
        path = _resolve_checkpoint(str(init["upkern_from"]), root)
        upkern(network_state(path), task.net)
        return f"UpKern from {path}"
    return None


def _precision(trainer: dict[str, Any]) -> str | None:
    """fp16 mixed precision needs CUDA; on a CPU-only machine run in 32-bit and say so."""
    precision = str(trainer.get("precision", "32-true"))
    if precision in ("16-mixed", "16", "16-true") and not torch.cuda.is_available():
        trainer["precision"] = "32-true"
        return f"trainer.precision={precision} needs a GPU; running in 32-bit on this CPU"
    return None


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` (and warns about the non-empty
    run directory); a resumed run must append to it instead, under the header it already has."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in the run directory, kept across resumed sessions."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=run_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


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


class _SplitWriter(Callback):
    """Writes the DataModule's split into the run directory once it exists (after setup)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if trainer.is_global_zero and datamodule is not None and hasattr(datamodule, "write_split"):
            datamodule.write_split(self.run_dir / "split.json")


#: Per task kind: the validation metric that picks ``best.ckpt`` unless ``eval.monitor`` names
#: another.
MONITOR = {"segmentation": "dice_mean", "classification": "acc"}


_HEADLINE_LABELS = {
    "dice_mean": "mean Dice",
    "hd95_mean": "mean HD95",
    "acc": "accuracy",
    "balanced_acc": "balanced accuracy",
    "f1_macro": "macro F1",
    "auroc": "macro AUROC",
}


def headline(summary: Mapping[str, Any], stage: str = "test") -> list[str]:
    """The lines a finished run or test prints: ``test mean Dice: 0.8540`` and the like."""
    return [
        f"{stage} {label}: {summary[key]:.4f}"
        for key, label in _HEADLINE_LABELS.items()
        if summary.get(key) is not None
    ]


def task_kind(datamodule: Any) -> str:
    """``classification`` or ``segmentation``: what the DataModule's batches are for."""
    return getattr(datamodule, "task", "segmentation")


def input_size(datamodule: Any) -> tuple[int, ...]:
    """The spatial size the network is trained on (patch or image)."""
    if task_kind(datamodule) == "classification":
        return (datamodule.image_size, datamodule.image_size)
    return tuple(datamodule.patch_size)


def _complexity(config: Mapping[str, Any], datamodule: Any) -> tuple[int, int]:
    from mednext.models import build_model, get_family
    from mednext.models.complexity import count_parameters, measure

    arguments = {k: v for k, v in config["model"].items() if v is not None}
    name = arguments.pop("name")
    with torch.device("meta"):
        meta = build_model(
            name,
            in_channels=datamodule.in_channels,
            num_classes=datamodule.num_classes,
            **arguments,
        )
    shape = (1, datamodule.in_channels, *input_size(datamodule))
    # One inference forward pass (eval mode: no deep-supervision heads, BatchNorm on one image).
    complexity = measure(meta.eval(), shape, get_family(name).paper_convention)
    return count_parameters(meta), complexity.flops


def checked_complexity(config: Mapping[str, Any], datamodule: Any) -> tuple[int, int]:
    """``(parameters, FLOPs)`` of the experiment's network on the data's input size; a
    ``ConfigError`` naming the size key when the network cannot take that size."""
    from mednext.config import ConfigError

    try:
        return _complexity(config, datamodule)
    except ValueError as error:
        if task_kind(datamodule) == "classification":
            setting = f"data.image_size={datamodule.image_size}"
        else:
            setting = f"data.patch_size={list(datamodule.patch_size)}"
        raise ConfigError(
            f"{setting} does not fit model {config['model']['name']}: {error}"
        ) from error


def build_task(config: Mapping[str, Any], datamodule: Any) -> Any:
    """The LightningModule for the DataModule's kind of task."""
    if task_kind(datamodule) == "classification":
        from mednext.tasks.classification import ClassificationTask

        return ClassificationTask(
            model=config["model"],
            in_channels=datamodule.in_channels,
            num_classes=datamodule.num_classes,
            class_names=list(datamodule.class_names),
            image_size=datamodule.image_size,
            optim=config["optim"],
            loss=config["loss"],
            log_images=config["logger"]["log_images"],
        )
    from mednext.tasks.segmentation import SegmentationTask

    return SegmentationTask(
        model=config["model"],
        in_channels=datamodule.in_channels,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        patch_size=list(datamodule.patch_size),
        spacing=list(datamodule.spacing),
        optim=config["optim"],
        loss=config["loss"],
        evaluation=config["eval"],
        log_images=config["logger"]["log_images"],
        protocol=getattr(datamodule, "evaluation", "volume"),
    )


#: Set by rank 0 for the ranks Lightning launches (they inherit its environment).
RUN_DIR_ENV = "MEDNEXT_RUN_DIR"


def process_rank() -> int:
    """This process's global rank as the launcher states it (torchrun ``RANK``, SLURM
    ``SLURM_PROCID``, Lightning's launched ranks ``LOCAL_RANK``); 0 when not distributed."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def shared_run_id() -> str | None:
    """A run id every rank of a job knows when an external launcher starts them all at once:
    torchrun's rendezvous id, or the SLURM job id of a multi-task job."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if elastic and elastic != "none":
        return f"torchrun-{elastic}"
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return None


def _run_location(
    config: Mapping[str, Any], root: Path, console: Any
) -> tuple[Path, Path | None, bool]:
    """``(run directory, checkpoint to resume from, whether this process writes)``: rank 0
    creates a new run directory (or picks the newest resumable one), the other ranks of the job
    join it."""
    primary = process_rank() == 0
    inherited = os.environ.get(RUN_DIR_ENV)
    shared = shared_run_id()
    if inherited and not primary:
        run_dir = Path(inherited)
    elif config["resume"]:
        found = newest_resumable_run(root, config["name"])
        if found is None:
            raise FileNotFoundError(
                f"resume=true: no run of {config['name']} with {CHECKPOINTS}/last.ckpt under "
                f"{root / config['name']}"
            )
        run_dir = found
    elif shared:
        run_dir = root / config["name"] / shared
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(root, config["name"])
    checkpoint_path = run_dir / CHECKPOINTS / "last.ckpt" if config["resume"] else None
    if primary:
        if checkpoint_path is not None:
            console.print(f"resuming {run_dir} from {checkpoint_path}")
        (run_dir / ("config.resume.yaml" if config["resume"] else CONFIG)).write_text(
            OmegaConf.to_yaml(OmegaConf.create(dict(config)))
        )
    return run_dir, checkpoint_path, primary


def leaderboard_dir(config: Mapping[str, Any]) -> Path:
    """``output.leaderboard``, or ``leaderboard/`` beside the runs folder."""
    configured = config["output"].get("leaderboard")
    return Path(configured) if configured else Path(config["output"]["root"]).parent / "leaderboard"


def update_leaderboard(root: Path, config: Mapping[str, Any], console: Any) -> None:
    """Regenerate the leaderboard of ``root`` after a run. A failure here is reported and does
    not change the finished run."""
    from mednext.leaderboard import write_leaderboard

    try:
        written = write_leaderboard(root, leaderboard_dir(config))
    except Exception as error:  # a plotting or file error must not fail the finished run
        console.print(f"[yellow]leaderboard not updated: {type(error).__name__}: {error}[/yellow]")
        return
    console.print(f"leaderboard: {written['index.html']}")


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
            logger.experiment.summary.update(_finite(summary))
            # Nothing is logged after the test: close the W&B run now (offline: its files are
            # complete, wandb-summary.json included) rather than at interpreter exit.
            logger.experiment.finish()


def _checkpointing(config: Mapping[str, Any], datamodule: Any, checkpoint_dir: Path) -> Any:
    """``last.ckpt`` always; ``best.ckpt`` by the validation metric (``eval.monitor`` or the
    task's; HD95 is minimised, everything else maximised) when there is a validation set."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    options: dict[str, Any] = dict(
        dirpath=checkpoint_dir,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    if not getattr(datamodule, "has_validation", True):
        return ModelCheckpoint(**options, save_top_k=0)
    metric = config["eval"]["monitor"] or MONITOR[task_kind(datamodule)]
    return ModelCheckpoint(
        **options,
        filename="best",
        monitor=f"val/{metric}",
        mode="min" if metric.startswith("hd95") else "max",
    )


def run_experiment(config: Mapping[str, Any], command: Sequence[str], console: Any) -> Path:
    """Train, validate and test one experiment; returns its run directory. Under DDP every rank
    runs this; only rank 0 writes the run's files and the leaderboard."""
    from datamodules import build_datamodule
    from mednext.config import ConfigError

    root = Path(config["output"]["root"])
    L.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(dict(config["data"]), seed=config["seed"])
    try:
        task = build_task(config, datamodule)
    except ValueError as error:
        # The network's constructor refuses an option (an odd width, a wrong preset name).
        raise ConfigError(f"model {config['model']['name']}: {error}") from error
    # Before a run directory exists: a network that cannot take the data's input size is a
    # configuration error, not a run that fails at its first step.
    params, flops = checked_complexity(config, datamodule)
    run_dir, checkpoint_path, primary = _run_location(config, root, console)
    task.output_dir = run_dir
    if checkpoint_path is None:
        loaded = initialise_weights(task, config["init"], root)
        if loaded:
            console.print(loaded)
    recorder = RunRecorder(run_dir, config["name"], config, command, is_writer=primary)
    recorder.update(status="running", params=params, flops=flops)
    # Ranks that Lightning launches for DDP re-run this command: they find the run here.
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        _train_and_test(config, datamodule, task, recorder, run_dir, checkpoint_path, console)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Without it a fraction of gloo/NCCL runs abort at interpreter exit.
            torch.distributed.destroy_process_group()
        if primary:
            # Failed and interrupted runs are shown too.
            update_leaderboard(root, config, console)
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
    if not getattr(datamodule, "has_validation", True):
        # No validation set (TransUNet's Synapse protocol): the last epoch's model is tested.
        trainer_arguments["limit_val_batches"] = 0
    notice = _precision(trainer_arguments)
    if notice:
        console.print(f"[yellow]{notice}[/yellow]")
    checkpoint_dir = run_dir / CHECKPOINTS
    loggers = _loggers(config, run_dir)
    trainer = L.Trainer(
        **trainer_arguments,
        default_root_dir=run_dir,
        logger=loggers,
        callbacks=[
            _checkpointing(config, datamodule, checkpoint_dir),
            LearningRateMonitor(logging_interval="epoch"),
            RichProgressBar(),
            RunStatusCallback(recorder, checkpoint_dir),
            _SplitWriter(run_dir),
        ],
    )
    recorder.is_writer = trainer.is_global_zero
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
    best = best_checkpoint(run_dir)
    trainer.test(task, datamodule=datamodule, ckpt_path=best, weights_only=True)
    recorder.set_metrics("test", task.last_evaluation["summary"])
    recorder.update(status="completed")
    if trainer.is_global_zero:
        _wandb_summary(trainer, recorder.results)


def _run_and_checkpoint(target: Path) -> tuple[Path, Path]:
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == CHECKPOINTS else target.parent
        return run_dir, target
    if target.is_dir():
        checkpoint = best_checkpoint(target)
        if checkpoint is None:
            raise FileNotFoundError(f"{target}: no {CHECKPOINTS}/best.ckpt or last.ckpt")
        return target, checkpoint
    raise FileNotFoundError(f"{target}: neither a run directory nor a checkpoint file")


def test_run(target: Path, console: Any) -> tuple[Path, dict[str, float]]:
    """``mednext test RUN_DIR|CKPT``: evaluate a checkpoint on the test split of its run's
    experiment (``config.yaml`` beside it), in one process on one device, and record the metrics
    in the run's results.json."""
    from lightning.pytorch.callbacks import RichProgressBar

    from datamodules import build_datamodule
    from mednext.config import as_dict, compose

    run_dir, checkpoint = _run_and_checkpoint(target)
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: the run's configuration is missing")
    config = as_dict(compose(config_path))
    datamodule = build_datamodule(dict(config["data"]), seed=config["seed"])
    task = build_task(config, datamodule)
    task.output_dir = run_dir
    # One process on one device, whatever the run trained on (a DDP run's test matches it).
    trainer_arguments = {
        k: v for k, v in config["trainer"].items() if k in ("accelerator", "precision")
    }
    trainer_arguments["devices"] = 1
    notice = _precision(trainer_arguments)
    if notice:
        console.print(f"[yellow]{notice}[/yellow]")
    trainer = L.Trainer(
        **trainer_arguments,
        default_root_dir=run_dir,
        logger=False,
        callbacks=[RichProgressBar()],
    )
    # The weights alone: a Trainer given ckpt_path would also want the training callbacks back.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    task.load_state_dict(state["state_dict"])
    task.on_load_checkpoint(state)
    trainer.test(task, datamodule=datamodule)
    summary = task.last_evaluation["summary"]
    if trainer.is_global_zero:
        recorder = RunRecorder(run_dir, config["name"], config, ["mednext", "test", str(target)])
        recorder.results["status"] = read_results(run_dir).get("status", "completed")
        recorder.set_metrics("test", summary)
        update_leaderboard(Path(config["output"]["root"]), config, console)
    return run_dir, summary
