"""Which run folder a process of a (possibly distributed) run writes into.

One run is one folder whatever launched it: a single process, the ranks Lightning starts for
``strategy=ddp`` (they re-run the command and inherit rank 0's environment), torchrun (which
starts every rank at once and gives them a shared rendezvous id) or a multi-task SLURM job (a
shared job id). Rank 0 creates the folder (or picks the run to resume) and writes its files; the
other ranks only join it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mednext.files import write_text
from mednext.runs.layout import (
    CHECKPOINTS,
    CONFIG,
    LAST,
    RESUME_CONFIG,
    new_run_dir,
    newest_resumable_run,
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


def run_location(
    config: Mapping[str, Any], root: Path, console: Any
) -> tuple[Path, Path | None, bool]:
    """``(run directory, checkpoint to resume from, whether this process writes)``: rank 0
    creates a new run directory (or picks the newest resumable one) and writes the configuration
    into it; the other ranks of the job join it."""
    from omegaconf import OmegaConf

    primary = process_rank() == 0
    inherited = os.environ.get(RUN_DIR_ENV)
    shared = shared_run_id()
    if inherited and not primary:
        run_dir = Path(inherited)
    elif config["resume"]:
        found = newest_resumable_run(root, config["name"], config["data"].get("fold"))
        if found is None:
            raise FileNotFoundError(
                f"resume=true: no run of {config['name']} with {CHECKPOINTS}/{LAST} under "
                f"{root / config['name']}"
            )
        run_dir = found
    elif shared:
        run_dir = root / config["name"] / shared
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(root, config["name"])
    checkpoint_path = run_dir / CHECKPOINTS / LAST if config["resume"] else None
    if primary:
        if checkpoint_path is not None:
            console.print(f"resuming {run_dir} from {checkpoint_path}")
        name = RESUME_CONFIG if config["resume"] else CONFIG
        write_text(run_dir / name, OmegaConf.to_yaml(OmegaConf.create(dict(config))))
    return run_dir, checkpoint_path, primary


@contextmanager
def shared_with_launched_ranks(run_dir: Path) -> Iterator[None]:
    """While the run lasts, the ranks Lightning launches (they re-run this command) find the run
    folder in the environment; at the end the process group is destroyed, without which a share
    of gloo/NCCL runs abort at interpreter exit."""
    import torch

    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
