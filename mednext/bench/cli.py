"""The options of ``mednext bench``, built without importing torch (every ``mednext`` call builds
them), and ``run``, which imports the measuring code (``parts``, ``report``) when the command
runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mednext.bench import DEFAULT_KERNEL_SIZE, DEFAULT_OUTPUT, MONAI_FACTORY_WIDTH, PARTS


def _variant_list(text: str) -> tuple[str, ...]:
    from mednext.models.mednext import PRESETS

    variants = tuple(v.strip().upper() for v in text.split(",") if v.strip())
    unknown = [v for v in variants if v not in PRESETS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(
            f"unknown preset(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(PRESETS)}, comma-separated"
        )
    return variants


def _input_side(text: str, option: str, factor: int) -> int:
    """``text`` as the side of the input of a network that downsamples ``factor``×: a multiple of
    ``factor``, at least twice it."""
    size = int(text)
    smallest = 2 * factor
    if size < smallest or size % factor:
        raise argparse.ArgumentTypeError(
            f"{option} must be a multiple of {factor} of at least {smallest}, got {size}"
        )
    return size


def _cube_side(text: str) -> int:
    from mednext.models.mednext import DOWNSAMPLING_FACTOR

    # A 16³ cube leaves the bottleneck a single voxel, which MedNeXt.check_input rejects.
    return _input_side(text, "--size", DOWNSAMPLING_FACTOR)


def _image_side(text: str) -> int:
    from mednext.models.mednext_lite import DOWNSAMPLING_FACTOR

    # MedNeXt-Lite downsamples 32×; at 32² its last stage and ResNet-50's are a single pixel,
    # which BatchNorm cannot normalise in training at batch size 1.
    return _input_side(text, "--image-size", DOWNSAMPLING_FACTOR)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mednext bench``."""
    parser.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        default=None,
        help="run only this part (repeatable; default: all): 3d = MedNeXt vs MONAI, classifier = "
        "MedNeXt-Lite vs ResNet-50, seg2d = CMUNeXt and MedNeXt-Lite segmenters",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small subset of each part (3d: presets S and B at 32³; 2D: the reference and the "
        "smallest MedNeXt-Lite at batch 2), 1 warm-up and 3 timed steps, in Markdown sections "
        "of their own",
    )
    parser.add_argument(
        "--variants",
        type=_variant_list,
        default=None,
        help="3d: comma-separated presets, e.g. S,B (default: all; --quick: S,B)",
    )
    parser.add_argument(
        "--size",
        type=_cube_side,
        default=None,
        help="3d: cube side of the input, a multiple of 16 from 32 (default: 64 on CPU, 128 on "
        "CUDA; --quick: 32)",
    )
    parser.add_argument(
        "--kernel-size",
        type=int,
        choices=(3, 5),
        default=None,
        help=f"3d: MedNeXt kernel size (default: {DEFAULT_KERNEL_SIZE})",
    )
    parser.add_argument(
        "--width",
        type=_positive,
        default=None,
        help=f"3d: channels of the first stage of both networks; for tests (default: "
        f"{MONAI_FACTORY_WIDTH})",
    )
    parser.add_argument(
        "--image-size",
        type=_image_side,
        default=None,
        help="classifier, seg2d: side of the square input, a multiple of 32 from 64 (default: 224)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="images or volumes per step (default: 3d 1; classifier and seg2d 4 on CPU, 32 on "
        "CUDA, --quick 2 on CPU, 8 on CUDA)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        help="untimed warm-up steps per network (default: 1 on CPU; 3 (3d) or 5 on CUDA; "
        "--quick: 1)",
    )
    parser.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="timed steps per network, median reported (default: 3 on CPU, 5 for the "
        "classifiers; 10 (3d) or 20 on CUDA; --quick: 3)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"Markdown file whose bench sections are rewritten (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only")


def run(args: argparse.Namespace) -> int:
    """``mednext bench``: measure each selected part, print its table, write its section."""
    import time

    from mednext.bench.parts import resolve_settings
    from mednext.bench.report import print_table, run_part, write_section

    try:
        plans = resolve_settings(args)
    except ValueError as error:
        print(f"mednext bench: {error}", file=sys.stderr)
        return 2
    for settings in plans:
        start = time.perf_counter()
        table, section = run_part(settings, args.output)
        print_table(table)
        print(f"bench:{settings.key}: {time.perf_counter() - start:,.0f} s")
        if args.no_write:
            continue
        try:
            write_section(args.output, settings.key, section)
        except ValueError as error:
            print(f"mednext bench: {error}", file=sys.stderr)
            return 1
        print(f"wrote section bench:{settings.key} of {args.output}")
    return 0
