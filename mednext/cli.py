"""The ``mednext`` command line (also ``python -m mednext``).

Each subcommand lives in the module that does the work; this file only wires them together, and
imports a subcommand's module when that subcommand runs, so ``mednext models`` does not pay for
Lightning or MONAI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _models(args: argparse.Namespace) -> int:
    from mednext.model_table import print_model_table

    print_model_table(families=args.family, size=args.size, as_json=args.json)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mednext import bench

    return bench.run(args)


def _convert(args: argparse.Namespace) -> int:
    from mednext.models import official

    return official.convert_command(args.format, args.input, args.output)


def build_parser() -> argparse.ArgumentParser:
    from mednext import bench

    parser = argparse.ArgumentParser(
        prog="mednext",
        description="MedNeXt / MedNeXt-Lite / CMUNeXt experiment suite.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser(
        "models",
        help="table of every registered model preset: parameters and FLOPs",
        description="Parameters and FLOPs of every registered preset, counted on the meta device "
        "(nothing is computed). FLOPs: torch FlopCounterMode (2 per multiply-add) and the paper's "
        "own convention.",
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
        help="training-step time and peak memory against MONAI's MedNeXt",
        description=bench.DESCRIPTION,
    )
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=_bench)

    convert = commands.add_parser(
        "convert",
        help="convert an official checkpoint to this suite's state dict",
        description="Read an official checkpoint and write a state dict (torch.save) that loads "
        "into the suite's model with load_state_dict(strict=True).",
    )
    convert.add_argument("format", choices=["official-mednext"], help="checkpoint format")
    convert.add_argument("input", help="official checkpoint (.pth/.model/.pt)")
    convert.add_argument("output", help="where to write the converted state dict")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
