"""Import of official MedNeXt checkpoints.

The official code cannot be installed here. Its state-dict layout for one small configuration is
the checked-in fixture ``fixtures/official_mednext_keys.json`` (names, shapes and order, read off
MIC-DKFZ/MedNeXt ``MedNextV1.py`` and ``blocks.py``), and ``official_forward`` below is the
official ``MedNeXt.forward`` re-expressed with ``torch.nn.functional`` directly on official key
names, independently of the suite's modules. The import must consume the fixture's keys exactly and
reproduce ``official_forward``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mednext.cli import main
from mednext.models import build_model
from mednext.models.mednext import PRESETS, MedNeXt
from mednext.models.official import (
    export_official_mednext,
    infer_mednext_config,
    load_official_mednext,
)

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "official_mednext_keys.json").read_text()
)
OFFICIAL_CONFIG = FIXTURE["official_config"]


def ours_for_fixture() -> MedNeXt:
    return MedNeXt(
        in_channels=OFFICIAL_CONFIG["in_channels"],
        num_classes=OFFICIAL_CONFIG["n_classes"],
        width=OFFICIAL_CONFIG["n_channels"],
        exp_r=OFFICIAL_CONFIG["exp_r"],
        block_counts=OFFICIAL_CONFIG["block_counts"],
        kernel_size=OFFICIAL_CONFIG["kernel_size"],
        deep_supervision=OFFICIAL_CONFIG["deep_supervision"],
    )


def random_official_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in FIXTURE["state_dict"]:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        state[name] = torch.randn(shape, generator=generator) / fan_in**0.5
    return state


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Official MedNeXt.forward (no checkpointing, deep supervision, 3D) on official names."""
    k = OFFICIAL_CONFIG["kernel_size"]
    counts = OFFICIAL_CONFIG["block_counts"]

    def block(prefix: str, x: torch.Tensor, kind: str | None) -> torch.Tensor:
        dw = (state[prefix + "conv1.weight"], state[prefix + "conv1.bias"])
        if kind == "up":
            y = F.conv_transpose3d(x, *dw, stride=2, padding=k // 2, groups=x.shape[1])
        else:
            y = F.conv3d(x, *dw, stride=1 if kind is None else 2, padding=k // 2, groups=x.shape[1])
        y = F.group_norm(y, y.shape[1], state[prefix + "norm.weight"], state[prefix + "norm.bias"])
        y = F.gelu(F.conv3d(y, state[prefix + "conv2.weight"], state[prefix + "conv2.bias"]))
        y = F.conv3d(y, state[prefix + "conv3.weight"], state[prefix + "conv3.bias"])
        res = (state[prefix + "res_conv.weight"], state[prefix + "res_conv.bias"]) if kind else None
        if kind is None:
            return x + y
        if kind == "down":
            return y + F.conv3d(x, *res, stride=2)
        pad = (1, 0, 1, 0, 1, 0)
        return F.pad(y, pad) + F.pad(F.conv_transpose3d(x, *res, stride=2), pad)

    def out(i: int, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose3d(
            x, state[f"out_{i}.conv_out.weight"], state[f"out_{i}.conv_out.bias"]
        )

    x = F.conv3d(x, state["stem.weight"], state["stem.bias"])
    skips = []
    for i in range(4):
        for j in range(counts[i]):
            x = block(f"enc_block_{i}.{j}.", x, None)
        skips.append(x)
        x = block(f"down_{i}.", x, "down")
    for j in range(counts[4]):
        x = block(f"bottleneck.{j}.", x, None)
    ds = {4: out(4, x)}
    for i in (3, 2, 1, 0):
        x = skips[i] + block(f"up_{i}.", x, "up")
        for j in range(counts[8 - i]):
            x = block(f"dec_block_{i}.{j}.", x, None)
        if i > 0:
            ds[i] = out(i, x)
    return [out(0, x), ds[1], ds[2], ds[3], ds[4]]


def test_import_consumes_every_official_key_of_the_fixture() -> None:
    official = random_official_state()
    ours = load_official_mednext(official)
    result = ours_for_fixture().load_state_dict(ours, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(ours) == len(FIXTURE["state_dict"]) - 1  # all but dummy_tensor


def test_export_reproduces_the_official_key_list_and_shapes() -> None:
    exported = export_official_mednext(ours_for_fixture().state_dict())
    assert {k: list(v.shape) for k, v in exported.items()} == {
        name: shape for name, shape in FIXTURE["state_dict"]
    }


def test_imported_model_computes_what_the_official_forward_computes() -> None:
    official = random_official_state()
    model = ours_for_fixture()
    model.load_state_dict(load_official_mednext(official))
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official_forward(official, x)
        outputs = model.train()(x)
        evaluated = model.eval()(x)
    assert len(outputs) == len(expected) == 5
    for ours, reference in zip(outputs, expected, strict=True):
        torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(evaluated, expected[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spatial_dims=3, grn=True, kernel_size=5, deep_supervision=True),
        dict(spatial_dims=2, grn=False, kernel_size=3, dec_kernel_size=5, deep_supervision=False),
        dict(spatial_dims=3, do_res_up_down=False, deep_supervision=True),
    ],
)
def test_export_then_import_gives_identical_outputs(kwargs: dict) -> None:
    torch.manual_seed(0)
    source = MedNeXt(
        2, 3, width=4, exp_r=(2, 3, 4, 4, 4, 4, 4, 3, 2), block_counts=(1, 2) * 4 + (1,), **kwargs
    )
    for p in source.parameters():
        p.data.normal_(0, 0.2)  # GRN gamma/beta start at zero: make them matter
    official = export_official_mednext(source.state_dict())
    assert "dummy_tensor" in official
    assert not any(k.startswith(("encoder", "decoder", "heads")) for k in official)
    if kwargs.get("grn"):
        assert "enc_block_0.0.grn_gamma" in official and "up_2.grn_beta" in official
    imported = load_official_mednext(official)
    target = MedNeXt(**infer_mednext_config(imported))
    target.load_state_dict(imported, strict=True)
    x = torch.randn((1, 2) + (32,) * kwargs["spatial_dims"])
    for mode in ("train", "eval"):
        getattr(source, mode)()
        getattr(target, mode)()
        with torch.no_grad():
            a, b = source(x), target(x)
        for ours, theirs in zip(
            a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True
        ):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("variant", list(PRESETS))
def test_inferred_config_rebuilds_every_preset(variant: str) -> None:
    with torch.device("meta"):
        model = build_model(
            "mednext",
            variant=variant,
            kernel_size=5,
            in_channels=4,
            num_classes=9,
            deep_supervision=True,
        )
    config = infer_mednext_config(model.state_dict())
    with torch.device("meta"):
        rebuilt = MedNeXt(**config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert config["block_counts"] == list(PRESETS[variant]["block_counts"])


def nnunet_checkpoint(official: dict[str, torch.Tensor]) -> dict:
    # What nnU-Net v1 saves after DDP training: tensors under "module." plus numpy bookkeeping.
    return {
        "epoch": 1000,
        "state_dict": {f"module.{k}": v for k, v in official.items()},
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "amp_grad_scaler": {"scale": 65536.0},
        "plot_stuff": ([0.9, 0.8], [0.7], [np.float64(0.5)], [np.float32(0.6)]),
        "best_stuff": (998, np.float64(0.12), np.float64(0.85), np.array([0.1, 0.2])),
    }


def test_convert_command_reads_an_nnunet_checkpoint(tmp_path: Path, capsys) -> None:
    official = random_official_state()
    source = tmp_path / "model_final_checkpoint.model"
    torch.save(nnunet_checkpoint(official), source)
    destination = tmp_path / "converted" / "mednext.pt"
    assert main(["convert", "official-mednext", str(source), str(destination)]) == 0
    printed = capsys.readouterr().out
    assert str(destination) in printed and "num_classes=3" in printed
    state = torch.load(destination, weights_only=True)
    model = ours_for_fixture()
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), official_forward(official, x)[0])


def test_refuses_pickled_code_and_foreign_state_dicts(tmp_path: Path, capsys) -> None:
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "callback": print}, unsafe)
    assert main(["convert", "official-mednext", str(unsafe), str(tmp_path / "x.pt")]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert (
        main(["convert", "official-mednext", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")])
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'enc_block_0"):
        load_official_mednext({"encoder.0.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="expected a state dict"):
        load_official_mednext({"state_dict": {"a": 1}})
    assert not (tmp_path / "x.pt").exists()
