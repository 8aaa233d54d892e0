"""Import (and export) of official checkpoints: key renames in one table per family, one place.

MedNeXt: the nnU-Net based official code (MIC-DKFZ/MedNeXt,
``nnunet_mednext/network_architecture/mednextv1/MedNextV1.py`` and ``blocks.py``) names its
modules ``stem``, ``enc_block_i``, ``down_i``, ``bottleneck``, ``up_i``, ``dec_block_i`` and
``out_i.conv_out`` (a ``ConvTransposeNd(C, K, 1)``), stores GRN parameters as ``grn_gamma`` /
``grn_beta`` on the block, and carries a one-element ``dummy_tensor`` used only by its reentrant
checkpointing. nnU-Net saves
``{"state_dict": ..., "optimizer_state_dict": ..., ...}``; DDP training adds a ``module.`` prefix.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]

# Official name -> ours, one table for both directions: module prefixes (index = resolution
# level in both) and GRN parameter suffixes.
_MEDNEXT_PREFIXES: tuple[tuple[str, str], ...] = (
    *((f"enc_block_{i}.", f"encoder.{i}.") for i in range(4)),
    *((f"down_{i}.", f"down.{i}.") for i in range(4)),
    *((f"up_{i}.", f"up.{i}.") for i in range(4)),
    *((f"dec_block_{i}.", f"decoder.{i}.") for i in range(4)),
    *((f"out_{i}.conv_out.", f"heads.{i}.") for i in range(5)),
)
_MEDNEXT_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".grn_gamma", ".grn.gamma"),
    (".grn_beta", ".grn.beta"),
)
_OFFICIAL_ONLY = ("dummy_tensor",)
_HEAD_WEIGHT = re.compile(r"^heads\.\d\.weight$")


def _rename(key: str, to_official: bool = False) -> str:
    """An official MedNeXt key under our names, or (``to_official``) the reverse."""
    for official, ours in _MEDNEXT_PREFIXES:
        old, new = (ours, official) if to_official else (official, ours)
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    for official, ours in _MEDNEXT_SUFFIXES:
        old, new = (ours, official) if to_official else (official, ours)
        if key.endswith(old):
            key = key[: -len(old)] + new
    return key


def read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Load a checkpoint file without executing arbitrary pickled code.

    nnU-Net checkpoints hold, beside the tensors, training curves and "best" values as numpy
    scalars; those few numpy types are allowed explicitly, anything else is refused.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    multiarray = np._core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray, *{type(np.dtype(c)) for c in "?bhilqBHILQefdg"}]
    for function in (multiarray.scalar, multiarray._reconstruct):
        # Pickles written under numpy 1.x name the module numpy.core, under 2.x numpy._core.
        allowed += [function, (function, f"numpy.core.multiarray.{function.__name__}")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others by format
        raise ValueError(
            f"{path}: cannot be read as a checkpoint with weights_only=True ({error}). If it "
            "comes from a source you trust, load it with torch.load(..., weights_only=False) and "
            "pass the resulting dict to load_official_mednext."
        ) from error


def _unwrap(checkpoint: Mapping[str, Any]) -> StateDict:
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            "expected a state dict (parameter name -> tensor) or a checkpoint with a 'state_dict' "
            f"entry; got top-level keys {sorted(checkpoint)[:8]}"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_official_mednext(source: str | os.PathLike[str] | Mapping[str, Any]) -> StateDict:
    """Convert an official MedNeXt checkpoint into a state dict of ``mednext.models.MedNeXt``.

    ``source`` is a checkpoint path, an nnU-Net checkpoint dict (``state_dict`` entry) or a plain
    state dict, optionally with DDP's ``module.`` prefix. The result loads with
    ``load_state_dict(strict=True)`` into a MedNeXt built with the same configuration, and that
    model computes exactly what the official one does.
    """
    checkpoint = source if isinstance(source, Mapping) else read_checkpoint(source)
    official = _unwrap(checkpoint)
    if not any(key.startswith("enc_block_0.") for key in official):
        raise ValueError(
            "not an official MedNeXt state dict: no 'enc_block_0.*' parameters (keys start with "
            f"{sorted(official)[:3]})"
        )
    ours: StateDict = {}
    for key, value in official.items():
        if key in _OFFICIAL_ONLY:
            continue
        new_key = _rename(key)
        if _HEAD_WEIGHT.match(new_key):
            # ConvTranspose weight (C_in, C_out, 1...) -> Conv weight (C_out, C_in, 1...).
            value = value.transpose(0, 1).contiguous()
        ours[new_key] = value
    return ours


def export_official_mednext(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """The inverse of ``load_official_mednext``: our MedNeXt state dict under the official names,
    with heads as transposed-conv weights and the official ``dummy_tensor``."""
    official: StateDict = {"dummy_tensor": torch.ones(1)}
    for key, value in state_dict.items():
        if _HEAD_WEIGHT.match(key):
            value = value.transpose(0, 1).contiguous()
        official[_rename(key, to_official=True)] = value
    return official


def infer_mednext_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``MedNeXt`` constructor arguments that ``state_dict`` (our names) was saved from.

    Everything is read off the tensor shapes except ``do_res`` (inner residuals have no
    parameters), which every official configuration sets and is assumed here.
    """

    def blocks(prefix: str) -> int:
        return len(
            {key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)}
        )

    def ratio(prefix: str) -> int:
        weight = state_dict[prefix + "conv2.weight"]
        return weight.shape[0] // weight.shape[1]

    stem = state_dict["stem.weight"]
    stages = [f"encoder.{i}." for i in range(4)] + ["bottleneck."]
    stages += [f"decoder.{i}." for i in reversed(range(4))]
    return {
        "in_channels": stem.shape[1],
        "num_classes": state_dict["heads.0.weight"].shape[0],
        "width": stem.shape[0],
        "exp_r": [ratio(stage + "0.") for stage in stages],
        "block_counts": [blocks(stage) for stage in stages],
        "kernel_size": state_dict["encoder.0.0.conv1.weight"].shape[-1],
        "dec_kernel_size": state_dict["bottleneck.0.conv1.weight"].shape[-1],
        "deep_supervision": "heads.1.weight" in state_dict,
        "spatial_dims": stem.ndim - 2,
        "grn": any(".grn." in key for key in state_dict),
        "do_res_up_down": "down.0.res_conv.weight" in state_dict,
    }


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def convert_command(fmt: str, source: str, destination: str) -> int:
    """``mednext convert official-mednext IN OUT``."""
    converters = {"official-mednext": load_official_mednext}
    try:
        state = converters[fmt](source)
    except (FileNotFoundError, ValueError) as error:
        print(f"mednext convert: {error}", file=sys.stderr)
        return 2
    _atomic_save(state, Path(destination))
    count = sum(v.numel() for v in state.values())
    print(f"wrote {destination}: {len(state)} tensors, {count:,} values")
    arguments = ", ".join(f"{k}={v!r}" for k, v in infer_mednext_config(state).items())
    print(f"load it into build_model('mednext', {arguments})")
    return 0
