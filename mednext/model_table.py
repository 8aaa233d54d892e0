"""``mednext models``: parameters, FLOPs and training activation memory of every registered
preset."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mednext.models import get_family, list_models
from mednext.models.complexity import measure_registered


@dataclass(frozen=True)
class ModelRow:
    model: str
    preset: str
    input_shape: tuple[int, ...]
    params: int
    gflops: float
    paper_g: float
    paper_convention: str
    # Bytes of activations a training forward pass keeps for the backward pass (batch 1, float32).
    train_memory: int


def model_rows(families: Sequence[str] | None = None, size: int | None = None) -> list[ModelRow]:
    """One row per catalog entry of each family (all registered families when None)."""
    rows = []
    for name in families or list_models():
        family = get_family(name)
        for label, arguments in family.catalog.items():
            complexity = measure_registered(name, size=size, memory=True, **arguments)
            rows.append(
                ModelRow(
                    model=name,
                    preset=label,
                    input_shape=complexity.input_shape,
                    params=complexity.params,
                    gflops=complexity.flops / 1e9,
                    paper_g=complexity.paper_flops / 1e9,
                    paper_convention=complexity.paper_convention,
                    train_memory=complexity.train_memory,
                )
            )
    return rows


def _shape_label(input_shape: Sequence[int]) -> str:
    """``(1, 1, 128, 128, 128)`` -> ``1×128³``: channels, then the spatial size."""
    channels, *spatial = input_shape[1:]
    if len(set(spatial)) == 1:
        return f"{channels}×{spatial[0]}{'²³'[len(spatial) - 2]}"
    return "×".join(map(str, input_shape[1:]))


def print_model_table(
    families: Sequence[str] | None = None, size: int | None = None, as_json: bool = False
) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = model_rows(families, size)
    if as_json:
        print(json.dumps([asdict(row) for row in rows], indent=1))
        return
    table = Table(
        title="Registered models (counted on the meta device)",
        caption="GFLOPs: torch FlopCounterMode, 2 per multiply-add. Paper G: the publishing "
        "paper's convention (fvcore: multiply-adds + 5 per affine-norm element; thop: its "
        "per-module MAC rules). Train GiB: activations one training forward pass keeps for the "
        "backward pass, batch 1, float32, measured on the meta device (no parameters, gradients "
        "or optimiser state).",
    )
    columns = (
        "model",
        "preset",
        "input",
        "params",
        "GFLOPs",
        "paper G",
        "convention",
        "train\nGiB",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "preset") else "right")
    for row in rows:
        table.add_row(
            row.model,
            row.preset,
            _shape_label(row.input_shape),
            f"{row.params:,}",
            f"{row.gflops:,.2f}",
            f"{row.paper_g:,.2f}",
            row.paper_convention,
            f"{row.train_memory / 2**30:,.2f}",
        )
    Console().print(table)
