"""The options of ``mednext bench``, built without importing torch (every ``mednext`` call builds
them), and ``run``, which imports the measuring code (``parts``, ``report``) when the command
runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mednext.bench import (
    DEFAULT_KERNEL_SIZE,
    DEFAULT_OUTPUT,
    JSON_NAME,
    MONAI_FACTORY_WIDTH,
    PARTS,
)


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


def _mode_list(text: str) -> tuple[object, ...]:
    from mednext.bench.parts.modes import parse_mode

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no mode given; e.g. fp32,channels-last")
    try:
        return tuple(dict.fromkeys(parse_mode(name) for name in names))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _shape(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 8:
        raise argparse.ArgumentTypeError(f"three sizes of at least 8, e.g. 300,260,200; got {text}")
    return sizes


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
        help="run only this part (repeatable; default: all): 3d = MedNeXt vs MONAI in every "
        "training mode, loader = training patches vs nnU-Net v2, preprocess = cache build "
        "sequential vs parallel, predict = inference with mirroring vs MONAI, classifier = "
        "MedNeXt-Lite vs ResNet-50, seg2d = CMUNeXt and MedNeXt-Lite segmenters",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small subset of each part (3d: presets S and B at 32³ in three modes; loader: "
        "64³ patches; predict: a 64×64×32 volume; 2D: the reference and the smallest "
        "MedNeXt-Lite at batch 2), printed only: it writes Markdown sections (and bench.json "
        "entries) of its own only with --output",
    )
    parser.add_argument(
        "--variants",
        type=_variant_list,
        default=None,
        help="3d: comma-separated presets, e.g. S,B (default: all; --quick: S,B)",
    )
    parser.add_argument(
        "--modes",
        type=_mode_list,
        default=None,
        help="3d: comma-separated training-step modes, each fp32 or features joined by +: "
        "channels-last, compile, bf16, fp16, checkpoint-block, checkpoint-stage (e.g. "
        "fp32,channels-last+compile; default: all single paths and useful combinations for S "
        "and B, the layout and checkpointing ones for M and L; --quick: fp32, channels-last, "
        "checkpoint-block)",
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
        "--volume",
        type=_shape,
        default=None,
        help="loader: the case's shape (default 300,260,200; --quick 160,140,100); predict: "
        "the volume's shape (default 180,150,46 on CPU, 360,300,90 on CUDA; --quick 64,64,32)",
    )
    parser.add_argument(
        "--patch-size",
        type=_positive,
        default=None,
        help="loader: side of the cubic training patch (default 128; --quick 64)",
    )
    parser.add_argument(
        "--window",
        type=_positive,
        default=None,
        help="predict: side of the sliding window, a multiple of 16 (default 64 on CPU, 128 on "
        "CUDA; --quick 32 on CPU)",
    )
    parser.add_argument(
        "--case-shape",
        type=_shape,
        default=None,
        help="preprocess: shape of the synthetic CT cases (default 256,256,48; --quick 96,96,24)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="preprocess: processes of the parallel build (default: one per usable CPU core)",
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
        help="untimed warm-up steps per network, loader: patches per pipeline (default: 1 on "
        "CPU, loader 2; 3 (3d) or 5 on CUDA; --quick: 1)",
    )
    parser.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="timed steps per network, median reported; loader: patches per pipeline (default: "
        "3 on CPU, 5 for the classifiers, loader 60; 10 (3d) or 20 on CUDA; --quick: 3, loader "
        "10)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"Markdown file whose bench sections are rewritten, {JSON_NAME} beside it (default: "
        f"{DEFAULT_OUTPUT}; --quick: none unless given)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only")


def output_file(args: argparse.Namespace) -> Path | None:
    """Where the run writes: ``--output``, else the tracked ``docs/benchmarks.md`` for a full
    run; nothing for ``--no-write`` or a quick run without ``--output``."""
    if args.no_write:
        return None
    if args.output is not None:
        return args.output
    return None if args.quick else DEFAULT_OUTPUT


def run(args: argparse.Namespace) -> int:
    """``mednext bench``: measure each selected part, print its table, write its Markdown
    section and its ``bench.json`` entry."""
    from mednext.bench.parts import resolve_settings
    from mednext.bench.report import (
        json_path,
        print_table,
        rich_table,
        run_part,
        write_json,
        write_section,
    )

    try:
        plans = resolve_settings(args)
    except ValueError as error:
        print(f"mednext bench: {error}", file=sys.stderr)
        return 2
    output = output_file(args)
    for settings in plans:
        measured = run_part(settings, output)
        print_table(rich_table(settings, measured.result.rows))
        for note in measured.result.notes:
            print(note)
        print(f"bench:{settings.key}: {measured.wall_s:,.0f} s")
        if output is None:
            continue
        try:
            write_section(output, settings.key, measured.markdown())
            write_json(json_path(output), settings.key, measured.record())
        except ValueError as error:
            print(f"mednext bench: {error}", file=sys.stderr)
            return 1
        print(f"wrote section bench:{settings.key} of {output} and its {JSON_NAME} entry")
    if output is None and args.quick and not args.no_write:
        print(f"quick run: tables only (--output FILE writes them, {JSON_NAME} beside it)")
    return 0
