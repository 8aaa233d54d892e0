"""Import (and export) of official checkpoints: key renames in one table per family, one place.

MedNeXt: the nnU-Net based official code (MIC-DKFZ/MedNeXt,
``nnunet_mednext/network_architecture/mednextv1/MedNextV1.py`` and ``blocks.py``) names its
modules ``stem``, ``enc_block_i``, ``down_i``, ``bottleneck``, ``up_i``, ``dec_block_i`` and
``out_i.conv_out`` (a ``ConvTransposeNd(C, K, 1)``), stores GRN parameters as ``grn_gamma`` /
``grn_beta`` on the block, and carries a one-element ``dummy_tensor`` used only by its reentrant
checkpointing. nnU-Net saves
``{"state_dict": ..., "optimizer_state_dict": ..., ...}``; DDP training adds a ``module.`` prefix.

CMUNeXt: the official code (FengheTan9/CMUNeXt, ``network/CMUNeXt.py``) names its modules
``stem``, ``encoder1..5``, ``Up2..5``, ``Up_conv2..5`` and ``Conv_1x1`` and indexes the layers
inside them by ``nn.Sequential`` position; its ``main.py`` saves the bare ``model.state_dict()``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mednext.files import atomic_write

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
            "pass the resulting dict to load_official_mednext or load_official_cmunext."
        ) from error


def _unwrap(checkpoint: Mapping[str, Any]) -> StateDict:
    wrapper = next((key for key in ("state_dict", "model") if key in checkpoint), None)
    state = checkpoint if wrapper is None else checkpoint[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            "expected a state dict (parameter name -> tensor) or a checkpoint with a 'state_dict' "
            f"or 'model' entry; got top-level keys {sorted(checkpoint)[:8]}"
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


# Official CMUNeXt module -> ours, one table for both directions. "{j}" is the block index inside
# an encoder stage; our index i of encoder/decoder is the resolution level 1/2**i (official
# encoder{i+1}, Up{i+2} and Up_conv{i+2}). Official layer indices are nn.Sequential positions:
# CMUNeXtBlock.block[j] = (Residual(dwconv, GELU, BN), conv1x1, GELU, BN, conv1x1, GELU, BN),
# conv_block.conv = (conv, BN, ReLU), up_conv.up = (Upsample, conv, BN, ReLU) and
# fusion_conv.conv = (conv, GELU, BN, conv1x1, GELU, BN, conv1x1, GELU, BN).
_CMUNEXT_MODULES: tuple[tuple[str, str], ...] = (
    ("stem.conv.0", "stem.conv"),
    ("stem.conv.1", "stem.norm"),
    *(
        (f"encoder{i + 1}.{official}", f"encoder.{i}.{ours}")
        for i in range(5)
        for official, ours in (
            ("block.{j}.0.fn.0", "blocks.{j}.dwconv"),
            ("block.{j}.0.fn.2", "blocks.{j}.norm"),
            ("block.{j}.1", "blocks.{j}.pwconv1"),
            ("block.{j}.3", "blocks.{j}.norm1"),
            ("block.{j}.4", "blocks.{j}.pwconv2"),
            ("block.{j}.6", "blocks.{j}.norm2"),
            ("up.conv.0", "proj.conv"),
            ("up.conv.1", "proj.norm"),
        )
    ),
    *(
        (official.format(i + 2), f"decoder.{i}.{ours}")
        for i in range(4)
        for official, ours in (
            ("Up{}.up.1", "up.conv"),
            ("Up{}.up.2", "up.norm"),
            ("Up_conv{}.conv.0", "fusion.conv"),
            ("Up_conv{}.conv.2", "fusion.norm"),
            ("Up_conv{}.conv.3", "fusion.pwconv1"),
            ("Up_conv{}.conv.5", "fusion.norm1"),
            ("Up_conv{}.conv.6", "fusion.pwconv2"),
            ("Up_conv{}.conv.8", "fusion.norm2"),
        )
    ),
    ("Conv_1x1", "head"),
)


def _module_pattern(template: str) -> re.Pattern[str]:
    """``encoder1.block.{j}.1`` -> a regex for its parameters and buffers, block index captured."""
    module = re.escape(template).replace(re.escape("{j}"), r"(?P<j>\d+)")
    return re.compile(rf"^{module}\.(?P<tensor>[a-z_]+)$")


_CMUNEXT_IMPORT = [(_module_pattern(official), ours) for official, ours in _CMUNEXT_MODULES]
_CMUNEXT_EXPORT = [(_module_pattern(ours), official) for official, ours in _CMUNEXT_MODULES]


def _rename_cmunext(
    state: Mapping[str, torch.Tensor], renames: list[tuple[re.Pattern[str], str]], names: str
) -> StateDict:
    renamed: StateDict = {}
    unknown = []
    for key, value in state.items():
        for pattern, target in renames:
            match = pattern.match(key)
            if match:
                module = target.format(j=match.groupdict().get("j"))
                renamed[f"{module}.{match['tensor']}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not {names} CMUNeXt parameter names: {unknown[:5]}")
    return renamed


def load_official_cmunext(source: str | os.PathLike[str] | Mapping[str, Any]) -> StateDict:
    """Convert an official CMUNeXt checkpoint into a state dict of
    ``mednext.models.cmunext.CMUNeXt``.

    ``source`` is a checkpoint path, a plain state dict (what the official ``main.py`` saves) or a
    checkpoint with a ``state_dict`` or ``model`` entry, optionally with DDP's ``module.`` prefix.
    The result loads with ``load_state_dict(strict=True)`` into the CMUNeXt that
    ``infer_cmunext_config`` describes, and that model computes exactly what the official one does.
    """
    checkpoint = source if isinstance(source, Mapping) else read_checkpoint(source)
    official = _unwrap(checkpoint)
    if "stem.conv.0.weight" not in official:
        raise ValueError(
            "not an official CMUNeXt state dict: no 'stem.conv.0.weight' (keys start with "
            f"{sorted(official)[:3]})"
        )
    return _rename_cmunext(official, _CMUNEXT_IMPORT, "official")


def export_official_cmunext(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """The inverse of ``load_official_cmunext``: our CMUNeXt state dict under the official names,
    loadable into the official ``CMUNeXt`` with ``strict=True``."""
    return _rename_cmunext(state_dict, _CMUNEXT_EXPORT, "this suite's")


def infer_cmunext_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``CMUNeXt`` constructor arguments that ``state_dict`` (our names) was saved from, all
    read off the tensor shapes."""

    def depth(level: int) -> int:
        prefix = f"encoder.{level}.blocks."
        return len(
            {key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)}
        )

    stem = state_dict["stem.conv.weight"]
    return {
        "in_channels": stem.shape[1],
        "num_classes": state_dict["head.weight"].shape[0],
        "dims": [state_dict[f"encoder.{i}.proj.conv.weight"].shape[0] for i in range(5)],
        "depths": [depth(i) for i in range(5)],
        "kernels": [state_dict[f"encoder.{i}.blocks.0.dwconv.weight"].shape[-1] for i in range(5)],
    }


def _save(obj: Any, path: Path) -> None:
    with atomic_write(path, "wb") as stream:
        torch.save(obj, stream)


def convert_command(fmt: str, source: str, destination: str) -> int:
    """``mednext convert official-mednext|official-cmunext IN OUT``."""
    # format -> (importer, config reader, registry name)
    converters = {
        "official-mednext": (load_official_mednext, infer_mednext_config, "mednext"),
        "official-cmunext": (load_official_cmunext, infer_cmunext_config, "cmunext"),
    }
    load, infer_config, model_name = converters[fmt]
    try:
        state = load(source)
    except (FileNotFoundError, ValueError) as error:
        print(f"mednext convert: {error}", file=sys.stderr)
        return 2
    _save(state, Path(destination))
    count = sum(v.numel() for v in state.values())
    print(f"wrote {destination}: {len(state)} tensors, {count:,} values")
    arguments = ", ".join(f"{k}={v!r}" for k, v in infer_config(state).items())
    print(f"load it into build_model({model_name!r}, {arguments})")
    return 0
