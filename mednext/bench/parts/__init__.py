"""The parts of ``mednext bench`` and the settings one invocation measures them with.

Each part is one ``BenchPart`` (``base``): the ``3d`` MedNeXt-vs-MONAI part (``mednext3d``, its
modes in ``modes``), the training patches against nnU-Net v2 (``loader``), the cache build
(``preprocess``), sliding-window inference against MONAI (``predict``) and the two 2D parts
``classifier`` and ``seg2d`` (``images``). A new part is one more implementation,
registered in ``BENCH_PARTS`` and named in ``mednext.bench.PARTS``, the torch-free list the
options offer.
"""

from __future__ import annotations

import argparse

import torch

from mednext.bench import PARTS
from mednext.bench.parts.base import BenchPart, BenchSettings, option_dest
from mednext.bench.parts.images import IMAGE_PARTS
from mednext.bench.parts.loader import LOADER_VS_NNUNET
from mednext.bench.parts.mednext3d import MEDNEXT_VS_MONAI
from mednext.bench.parts.predict import PREDICT_VS_MONAI
from mednext.bench.parts.preprocess import PREPROCESS_PARALLEL

#: Every part by its ``--part`` name.
BENCH_PARTS: dict[str, BenchPart] = {
    part.name: part
    for part in (
        MEDNEXT_VS_MONAI,
        LOADER_VS_NNUNET,
        PREPROCESS_PARALLEL,
        PREDICT_VS_MONAI,
        *IMAGE_PARTS.values(),
    )
}


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available to this torch build")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def selected_parts(args: argparse.Namespace) -> tuple[BenchPart, ...]:
    """The parts to run, in the order of ``PARTS``; an option of a part not selected is an
    error rather than silently ignored."""
    parts = tuple(BENCH_PARTS[name] for name in PARTS if args.part is None or name in args.part)
    owners: dict[str, list[str]] = {}
    for part in BENCH_PARTS.values():
        for option in (*part.shared, *part.options):
            owners.setdefault(option, []).append(part.name)
    for option, names in owners.items():
        given = getattr(args, option_dest(option)) is not None
        if given and not any(part.name in names for part in parts):
            raise ValueError(f"{option} applies to --part {' or '.join(names)}, not selected")
    return parts


def resolve_settings(args: argparse.Namespace) -> list[BenchSettings]:
    """The settings of every selected part: options given on the command line, else the defaults
    of the part, the mode and the device."""
    device = _device(args.device)
    mode = "quick" if args.quick else "full"
    plans = []
    for part in selected_parts(args):
        defaults = part.defaults[mode, device.type]
        names = [option_dest(option) for option in (*part.shared, *part.options)]
        given = {name: getattr(args, name) for name in names}
        chosen = {name: defaults[name] if value is None else value for name, value in given.items()}
        settings = BenchSettings(part=part, device=device, quick=args.quick, options=chosen)
        part.check(settings)
        plans.append(settings)
    return plans
