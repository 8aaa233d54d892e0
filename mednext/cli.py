"""The ``mednext`` command line (also ``python -m mednext``).

Each subcommand lives in the module that does the work; this file only wires them together, and
imports a subcommand's module when that subcommand runs. Building the parser, ``--help``,
``mednext train --list``, ``mednext sweep --list`` and ``mednext leaderboard`` import neither torch
nor Lightning, and a mistyped command line is reported before anything heavy loads.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mednext import cpu_allocator


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: printed without a traceback."""
    from datamodules.errors import DataError
    from mednext.config import ConfigError

    return (ConfigError, DataError, FileNotFoundError)


def _train(args: argparse.Namespace) -> int:
    from mednext.config import as_dict, compose, list_experiments

    console = _console()
    if args.list:
        print("\n".join(list_experiments()))
        return 0
    if not args.experiment:
        console.print("mednext train: name an experiment (`mednext train --list` shows them)")
        return 2
    from mednext.runs.folds import split_fold_all, train_folds

    try:
        all_folds, overrides = split_fold_all(args.overrides)
    except ValueError as error:
        console.print(f"mednext train: {error}")
        return 2
    config = as_dict(compose(args.experiment, overrides))
    if all_folds:
        return train_folds(args.experiment, overrides, config, console)
    from mednext.runs.layout import read_results
    from mednext.runs.train import run_experiment
    from mednext.tasks import headline_lines

    command = ["mednext", "train", args.experiment, *args.overrides]
    try:
        run_dir = run_experiment(config, command, console)
    except (KeyboardInterrupt, SystemExit):
        # Lightning ignores SIGINT from its first Ctrl-C on; give the process its handler back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        console.print(
            f"[yellow]interrupted[/yellow]: resume with `mednext train {args.experiment} "
            f"{' '.join(args.overrides)} resume=true`"
        )
        return 130
    results = read_results(run_dir)
    print(f"run directory: {run_dir}")
    for line in headline_lines(results.get("metrics", {}).get("test", {})):
        print(line)
    for figure in sorted((run_dir / "predictions").glob("test_*.png"))[:2]:
        print(f"{'overlay' if figure.stem.endswith('_overlay') else 'figure'}: {figure}")
    return 0


def _test(args: argparse.Namespace) -> int:
    from mednext.runs.train import test_ensemble, test_run
    from mednext.tasks import headline_lines

    targets = [Path(target) for target in args.targets]
    if len(targets) == 1 and args.out is None:
        run_dir, summary = test_run(targets[0], _console())
        print(f"run directory: {run_dir}")
    else:
        try:
            run_dir, summary = test_ensemble(targets, args.out and Path(args.out), _console())
        except ValueError as error:
            print(f"mednext test: {error}", file=sys.stderr)
            return 2
        print(f"ensemble of {len(targets)}: {run_dir}")
    for line in headline_lines(summary):
        print(line)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mednext.predict import predict_command

    try:
        return predict_command([Path(p) for p in args.paths], Path(args.out), args)
    except ValueError as error:
        # What the models and inputs given are (not a checkpoint of the suite, members that
        # disagree, no input after the models): the message names the file.
        print(f"mednext predict: {error}", file=sys.stderr)
        return 2


def _data(args: argparse.Namespace) -> int:
    from datamodules import write_dataset

    root = write_dataset(args.dataset, Path(args.out_dir), seed=args.seed)
    print(f"wrote a synthetic {args.dataset} copy to {root}")
    print(f"use it with data.root={root} (or data.source=synthetic to let the suite make one)")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from datamodules import prepare_dataset
    from datamodules.releases import summary_lines

    summary = prepare_dataset(args.dataset, Path(args.raw_root), Path(args.out_dir))
    print("\n".join(summary_lines(summary)))
    print(f"use it with data.root={args.out_dir}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mednext.sweep import sweep_command

    return sweep_command(args, _console())


def _plan(args: argparse.Namespace) -> int:
    from mednext.plan import plan_command

    try:
        return plan_command(args, _console())
    except ValueError as error:
        print(f"mednext plan: {error}", file=sys.stderr)
        return 2


def _models(args: argparse.Namespace) -> int:
    from mednext.model_table import print_model_table

    print_model_table(families=args.family, size=args.size, as_json=args.json)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mednext.bench import cli as bench

    return bench.run(args)


def _leaderboard(args: argparse.Namespace) -> int:
    from mednext.leaderboard import default_runs_dir, leaderboard_command

    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    return leaderboard_command(runs_dir, Path(args.out))


def _convert(args: argparse.Namespace) -> int:
    from mednext.models import official

    return official.convert_command(args.format, args.input, args.output)


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from mednext import bench, sweep
    from mednext.bench import cli as bench_cli

    parser = argparse.ArgumentParser(
        prog="mednext",
        description="MedNeXt / MedNeXt-Lite / CMUNeXt experiment suite.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train, validate and test an experiment",
        description="Compose experiments/EXPERIMENT.yaml with key=value overrides, train, "
        "validate, test, and write runs/<experiment>/<run_id>/ (config.yaml, split.json, "
        "checkpoints/, metrics.csv, results.json). resume=true continues the newest run from "
        "last.ckpt.",
    )
    train.add_argument("experiment", nargs="?", help="experiment name or YAML path")
    train.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=5"
    )
    train.add_argument("--list", action="store_true", help="list the shipped experiments")
    train.set_defaults(handler=_train)

    test = commands.add_parser(
        "test",
        help="test a trained run (or checkpoint, or an ensemble of runs) on its held-out split",
        description="Evaluate the best checkpoint of RUN_DIR (or the checkpoint CKPT) on the test "
        "split of its experiment and update the run's results.json. Several runs (e.g. the "
        "folds of a cross-validation) are tested as an ensemble, their class probabilities "
        "averaged; the metrics go to OUT/ensemble.json.",
    )
    test.add_argument("targets", nargs="+", metavar="RUN", help="run directories or checkpoints")
    test.add_argument(
        "--out",
        default=None,
        help="ensemble: output folder (default: <output.root>/<experiment>/ensembles/<time>)",
    )
    test.set_defaults(handler=_test)

    predict = commands.add_parser(
        "predict",
        help="segment NIfTI volumes or classify images with trained runs (one or an ensemble)",
        description="Segmentation checkpoints: read each INPUT (NIfTI), preprocess it as in "
        "training, run sliding-window inference, and write an integer label map on the input's "
        "own grid, affine and header to OUT/<name>.nii.gz. Classification checkpoints: read each "
        "image (folders: every image below them), preprocess it as in evaluation, and write "
        "OUT/predictions.csv with the predicted class and the probability of every class. "
        "Several models (e.g. the folds of a cross-validation) average their class "
        "probabilities before the argmax, as nnU-Net's ensembling does.",
    )
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="MODEL... INPUT",
        help="first the model(s): checkpoints of the suite (.ckpt) or run folders (their "
        "best.ckpt, else last.ckpt); several models are an ensemble whose probabilities are "
        "averaged; then the NIfTI files or images, or folders of them",
    )
    predict.add_argument("--out", required=True, help="output folder")
    mirroring = predict.add_mutually_exclusive_group()
    mirroring.add_argument(
        "--mirror-tta",
        action="store_true",
        help="segmentation: average over mirrored inputs (default: as the run's eval.mirror_tta)",
    )
    mirroring.add_argument(
        "--fast",
        action="store_true",
        help="segmentation: no mirroring, one forward pass per window (8× fewer in 3D)",
    )
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="classification: images per forward pass",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    predict.set_defaults(handler=_predict)

    plan = commands.add_parser(
        "plan",
        help="fingerprint a 3D dataset and plan spacing, patch and batch size for a GPU",
        description="Read every training case of DATASET once (spacings, shapes, foreground "
        "intensities per channel, as nnU-Net's fingerprint), then plan the target spacing, "
        "patch size and batch size of the experiment's network for --gpu-memory from the "
        "network's measured activation memory, nnU-Net v2's 3d_fullres rules otherwise. "
        "Writes a plan file that an experiment uses with data.plan=FILE.",
    )
    plan.add_argument(
        "dataset",
        help="an nnU-Net dataset folder (DatasetXXX_Name) or an experiment name (its data)",
    )
    plan.add_argument("overrides", nargs="*", help="key=value overrides of the experiment")
    plan.add_argument(
        "--gpu-memory",
        type=float,
        default=24.0,
        metavar="GB",
        help="memory target per GPU in GiB (default 24; nnU-Net's ResEnc presets: M 8, L 24, "
        "XL 40)",
    )
    plan.add_argument(
        "--experiment",
        default=None,
        help="for a dataset folder: the experiment whose network is planned "
        "(default nnunet_mednext_s)",
    )
    plan.add_argument(
        "--out", default=None, help="plan file (default plans/<dataset>_<experiment>_<GB>gb.yaml)"
    )
    plan.set_defaults(handler=_plan)

    sweep_parser = commands.add_parser(
        "sweep",
        help="run a sweep: every point of a grid or random set of overrides as its own run",
        description="Expand experiments/sweeps/SWEEP.yaml (or a path) into points, check every "
        "point's configuration, then run them one after another (or --parallel N at a time, one "
        "--devices id each). Runs go to <output.root>/<sweep>/<point>/<run_id>/, the record of "
        "every point to <output.root>/<sweep>/sweep.json; completed points are skipped when the "
        "sweep is run again. --wandb-export writes the equivalent W&B sweep file instead.",
    )
    sweep.add_arguments(sweep_parser)
    sweep_parser.set_defaults(handler=_sweep)

    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synthetic = data_commands.add_parser(
        "synthetic",
        help="write a small fake copy of a dataset in its real on-disk layout",
    )
    synthetic.add_argument("dataset", help="synapse, acdc, ...")
    synthetic.add_argument("out_dir", help="where to write it")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(handler=_data)
    prepare = data_commands.add_parser(
        "prepare",
        help="rebuild a 2D release (synapse2d, acdc2d) from the raw 3D download",
        description="Rebuild TransUNet's Synapse release (synapse2d) or MT-UNet's ACDC release "
        "(acdc2d) from the raw 3D download the 3D datasets read, with the release's "
        "preprocessing, into OUT_DIR (written to a temporary folder and renamed into place).",
    )
    prepare.add_argument("dataset", help="synapse2d or acdc2d")
    prepare.add_argument("raw_root", help="the raw 3D download (what data.root of synapse/acdc is)")
    prepare.add_argument("out_dir", help="where to write the release (must not exist or be empty)")
    prepare.set_defaults(handler=_data_prepare)

    models = commands.add_parser(
        "models",
        help="table of every registered model preset: parameters, FLOPs, training memory",
        description="Parameters, FLOPs and training activation memory of every registered "
        "preset, counted on the meta device (nothing is computed). FLOPs: torch FlopCounterMode "
        "(2 per multiply-add) and the paper's own convention; train GiB: the bytes autograd keeps "
        "for the backward pass of one float32 sample.",
    )
    models.add_argument(
        "--size",
        type=int,
        default=None,
        help="spatial input size (each side); default: the size each paper reports",
    )
    models.add_argument(
        "--family",
        action="append",
        default=None,
        help="only this model family (repeatable); default: all",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_models)

    bench_parser = commands.add_parser(
        "bench",
        help="speed and peak memory against reference networks measured in the same run",
        description=bench.DESCRIPTION,
    )
    bench_cli.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=_bench)

    leaderboard = commands.add_parser(
        "leaderboard",
        help="CSV, Markdown and HTML leaderboard of every run, with parameter/FLOP plots",
        description="Read every results.json below RUNS_DIR (and run directories with only a "
        "config.yaml) and write DIR/leaderboard.csv, DIR/leaderboard.md and DIR/index.html: one "
        "sortable table per dataset and task, test metric vs parameters and vs FLOPs with the "
        "Pareto front, links to each run's config.yaml.",
    )
    leaderboard.add_argument(
        "runs_dir",
        nargs="?",
        metavar="RUNS_DIR",
        help="where the runs are (default: $MEDNEXT_RUNS or runs)",
    )
    leaderboard.add_argument(
        "--out", default="leaderboard", metavar="DIR", help="output folder (default: leaderboard)"
    )
    leaderboard.set_defaults(handler=_leaderboard)

    convert = commands.add_parser(
        "convert",
        help="convert an official checkpoint to this suite's state dict",
        description="Read an official checkpoint and write a state dict (torch.save) that loads "
        "into the suite's model with load_state_dict(strict=True).",
    )
    convert.add_argument(
        "format", choices=["official-mednext", "official-cmunext"], help="checkpoint format"
    )
    convert.add_argument("input", help="official checkpoint (.pth/.model/.pt)")
    convert.add_argument("output", help="where to write the converted state dict")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before the first large tensor: reuse freed blocks instead of fresh, zero-filled mappings
    # (mednext.cpu_allocator; MEDNEXT_MALLOC=system keeps glibc's defaults).
    cpu_allocator.tune()
    # torch 2.13 deprecates a pytree check that Lightning 2.6 makes on every step; not actionable.
    warnings.filterwarnings(
        "ignore", message=r".isinstance\(treespec, LeafSpec\)", category=FutureWarning
    )
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(error, _user_errors()):
            print(f"mednext {args.command}: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
