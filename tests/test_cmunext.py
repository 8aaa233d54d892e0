"""CMUNeXt: exact structure (parameter counts), shapes, input checks, official import, complexity.

The official code (FengheTan9/CMUNeXt ``network/CMUNeXt.py``) cannot be installed here. Its
state-dict layout is ``official_state_shapes`` below and its forward pass is ``official_forward``,
both written from a reading of the official code with ``torch.nn.functional`` directly on official
key names, independently of ``mednext.models.cmunext``. The enumeration is tied to the official
code by its parameter counts, which must equal the published ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mednext.cli import main
from mednext.models import build_model
from mednext.models.cmunext import PRESETS, CMUNeXt
from mednext.models.complexity import count_parameters, measure, measure_registered
from mednext.models.official import (
    export_official_cmunext,
    infer_cmunext_config,
    load_official_cmunext,
)

# Official parameter counts, 3 input channels, 1 / 9 classes (docs/models.md).
OFFICIAL_PARAMS = {
    ("S", 1): 417_505,
    ("S", 9): 417_577,
    ("base", 1): 3_149_185,
    ("base", 9): 3_149_321,
    ("L", 1): 8_286_721,
    ("L", 9): 8_286_985,
}

# A small configuration that exercises every index: depth 2 somewhere, every kernel different.
SMALL = dict(
    in_channels=2,
    num_classes=3,
    dims=(4, 6, 8, 10, 12),
    depths=(1, 2, 1, 2, 1),
    kernels=(3, 5, 3, 7, 5),
)


def official_state_shapes(
    in_channels: int, num_classes: int, dims, depths, kernels
) -> list[tuple[str, list[int]]]:
    """Keys and shapes of the official ``CMUNeXt(...).state_dict()``, in registration order."""
    entries: list[tuple[str, list[int]]] = []

    def conv(name: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
        entries.extend([(f"{name}.weight", [cout, cin // groups, k, k]), (f"{name}.bias", [cout])])

    def bn(name: str, c: int) -> None:
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            entries.append((f"{name}.{tensor}", [c]))
        entries.append((f"{name}.num_batches_tracked", []))

    conv("stem.conv.0", in_channels, dims[0], 3)
    bn("stem.conv.1", dims[0])
    for n in range(1, 6):  # encoder{n} = CMUNeXtBlock(dims[n-2] or dims[0], dims[n-1])
        c, out, k = dims[max(n - 2, 0)], dims[n - 1], kernels[n - 1]
        for j in range(depths[n - 1]):
            p = f"encoder{n}.block.{j}"
            conv(f"{p}.0.fn.0", c, c, k, groups=c)
            bn(f"{p}.0.fn.2", c)
            conv(f"{p}.1", c, 4 * c, 1)
            bn(f"{p}.3", 4 * c)
            conv(f"{p}.4", 4 * c, c, 1)
            bn(f"{p}.6", c)
        conv(f"encoder{n}.up.conv.0", c, out, 3)
        bn(f"encoder{n}.up.conv.1", out)
    for n in (5, 4, 3, 2):  # Up{n}: dims[n-1] -> dims[n-2]; Up_conv{n}: fusion_conv(2c, c)
        c = dims[n - 2]
        conv(f"Up{n}.up.1", dims[n - 1], c, 3)
        bn(f"Up{n}.up.2", c)
        conv(f"Up_conv{n}.conv.0", 2 * c, 2 * c, 3, groups=2)
        bn(f"Up_conv{n}.conv.2", 2 * c)
        conv(f"Up_conv{n}.conv.3", 2 * c, 4 * c, 1)
        bn(f"Up_conv{n}.conv.5", 4 * c)
        conv(f"Up_conv{n}.conv.6", 4 * c, c, 1)
        bn(f"Up_conv{n}.conv.8", c)
    conv("Conv_1x1", dims[0], num_classes, 1)
    return entries


def random_official_state(**config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in official_state_shapes(**config):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        elif name.endswith(("running_mean", "bias")):
            state[name] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BatchNorm weight
            state[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=generator) / fan_in**0.5
    return state


def official_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor, training: bool
) -> torch.Tensor:
    """Official ``CMUNeXt.forward`` on official key names (BatchNorm with batch statistics when
    ``training``, running statistics otherwise; the reference never updates ``state``)."""

    def conv(name: str, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
        weight = state[f"{name}.weight"]
        return F.conv2d(
            x, weight, state[f"{name}.bias"], padding=weight.shape[-1] // 2, groups=groups
        )

    def bn(name: str, x: torch.Tensor) -> torch.Tensor:
        mean, var = state[f"{name}.running_mean"].clone(), state[f"{name}.running_var"].clone()
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        return F.batch_norm(x, mean, var, weight, bias, training=training)

    def conv_block(conv_name: str, bn_name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(bn(bn_name, conv(conv_name, x)))

    x = conv_block("stem.conv.0", "stem.conv.1", x)
    skips = []
    for n in range(1, 6):
        if n > 1:
            x = F.max_pool2d(x, 2, 2)
        j = 0
        while f"encoder{n}.block.{j}.1.weight" in state:
            p = f"encoder{n}.block.{j}"
            x = x + bn(f"{p}.0.fn.2", F.gelu(conv(f"{p}.0.fn.0", x, groups=x.shape[1])))
            x = bn(f"{p}.3", F.gelu(conv(f"{p}.1", x)))
            x = bn(f"{p}.6", F.gelu(conv(f"{p}.4", x)))
            j += 1
        x = conv_block(f"encoder{n}.up.conv.0", f"encoder{n}.up.conv.1", x)
        skips.append(x)
    x = skips.pop()
    for n in (5, 4, 3, 2):
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        up = conv_block(f"Up{n}.up.1", f"Up{n}.up.2", up)
        x = torch.cat((skips.pop(), up), dim=1)
        x = bn(f"Up_conv{n}.conv.2", F.gelu(conv(f"Up_conv{n}.conv.0", x, groups=2)))
        x = bn(f"Up_conv{n}.conv.5", F.gelu(conv(f"Up_conv{n}.conv.3", x)))
        x = bn(f"Up_conv{n}.conv.8", F.gelu(conv(f"Up_conv{n}.conv.6", x)))
    return conv("Conv_1x1", x)


@pytest.mark.parametrize("variant, num_classes", list(OFFICIAL_PARAMS))
def test_preset_parameter_counts_equal_official(variant: str, num_classes: int) -> None:
    with torch.device("meta"):
        model = build_model("cmunext", variant=variant, in_channels=3, num_classes=num_classes)
    assert count_parameters(model) == OFFICIAL_PARAMS[(variant, num_classes)]
    assert model.head.out_channels == num_classes


@pytest.mark.parametrize("variant, num_classes", list(OFFICIAL_PARAMS))
def test_official_key_enumeration_has_the_official_counts(variant: str, num_classes: int) -> None:
    shapes = official_state_shapes(3, num_classes, **PRESETS[variant])
    params = sum(
        torch.Size(shape).numel()
        for name, shape in shapes
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == OFFICIAL_PARAMS[(variant, num_classes)]


def test_presets_and_explicit_arguments() -> None:
    with torch.device("meta"):
        default = CMUNeXt()
        base = build_model("cmunext", variant="BASE")
        small = build_model("cmunext", variant="s", kernels=(3, 3, 7, 7, 7))
    assert {k: v.shape for k, v in default.state_dict().items()} == {
        k: v.shape for k, v in base.state_dict().items()
    }
    assert (default.in_channels, default.num_classes, default.spatial_dims) == (3, 1, 2)
    assert small.encoder[4].blocks[0].dwconv.kernel_size == (7, 7)
    assert small.encoder[4].proj.conv.out_channels == 128
    with torch.device("meta"):
        large = build_model("cmunext", variant="l")
    assert [len(stage.blocks) for stage in large.encoder] == [1, 1, 1, 6, 3]
    # A stage's blocks run at the previous level's width, its conv3×3 changes to its own.
    assert large.encoder[3].blocks[0].pwconv1.out_channels == 4 * 128
    assert large.encoder[3].proj.conv.out_channels == 256


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="dims needs 5 values"):
        CMUNeXt(dims=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="kernels must be odd"):
        CMUNeXt(kernels=(3, 3, 7, 7, 8))
    with pytest.raises(ValueError, match="depths values must be >= 1"):
        CMUNeXt(depths=(1, 1, 0, 1, 1))
    with pytest.raises(ValueError, match="unknown CMUNeXt variant 'XL'; choose one of S, base, L"):
        build_model("cmunext", variant="XL")


@pytest.mark.parametrize(
    "config, shape",
    [
        (dict(variant="S", in_channels=1, num_classes=4), (2, 1, 64, 48)),
        (dict(variant="base", in_channels=3, num_classes=9), (1, 3, 32, 96)),
        (dict(**SMALL), (2, 2, 16, 32)),
        (dict(variant="S", in_channels=4, num_classes=1), (2, 4, 16, 16)),
    ],
)
def test_logits_have_the_input_size_in_train_and_eval(config: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    model = build_model("cmunext", **config)
    x = torch.randn(shape)
    out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (shape[0], config["num_classes"], *shape[2:])
    out.mean().backward()
    assert model.stem.conv.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x).shape == out.shape


@pytest.mark.parametrize("size", [(100, 100), (64, 40), (8, 8)])
def test_spatial_size_not_divisible_by_16_is_a_clear_error(size: tuple[int, int]) -> None:
    model = CMUNeXt(**SMALL)
    with pytest.raises(ValueError, match="divisible by 16") as error:
        model(torch.randn(1, 2, *size))
    assert str(size) in str(error.value)


def test_wrong_channels_or_rank_is_a_clear_error() -> None:
    model = CMUNeXt(**SMALL)
    with pytest.raises(ValueError, match="2 input channel"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="4-D input"):
        model(torch.randn(1, 2, 32, 32, 32))


def test_import_consumes_every_official_key() -> None:
    official = random_official_state(**SMALL)
    ours = load_official_cmunext(official)
    assert len(ours) == len(official)
    result = CMUNeXt(**SMALL).load_state_dict(ours, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert infer_cmunext_config(ours) == {
        "in_channels": 2,
        "num_classes": 3,
        "dims": [4, 6, 8, 10, 12],
        "depths": [1, 2, 1, 2, 1],
        "kernels": [3, 5, 3, 7, 5],
    }


@pytest.mark.parametrize("variant", list(PRESETS))
def test_export_reproduces_the_official_key_list_and_shapes(variant: str) -> None:
    with torch.device("meta"):
        model = build_model("cmunext", variant=variant, in_channels=3, num_classes=9)
    exported = export_official_cmunext(model.state_dict())
    assert {k: list(v.shape) for k, v in exported.items()} == dict(
        official_state_shapes(3, 9, **PRESETS[variant])
    )


@pytest.mark.parametrize("training", [False, True])
def test_imported_model_computes_what_the_official_forward_computes(training: bool) -> None:
    official = random_official_state(**SMALL)
    model = CMUNeXt(**SMALL)
    model.load_state_dict(load_official_cmunext(official))
    model.train(training)
    x = torch.randn(2, 2, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official_forward(official, x, training)
        torch.testing.assert_close(model(x), expected)


def test_export_then_import_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    source = build_model("cmunext", variant="S", in_channels=1, num_classes=2)
    for name, tensor in source.state_dict().items():
        if tensor.is_floating_point():
            tensor.copy_(
                torch.rand_like(tensor) + 0.5
                if "running_var" in name
                else 0.3 * torch.randn_like(tensor)
            )
    official = export_official_cmunext(source.state_dict())
    assert (
        "encoder5.block.0.0.fn.0.weight" in official and "Up_conv2.conv.8.running_var" in official
    )
    imported = load_official_cmunext({"model": {f"module.{k}": v for k, v in official.items()}})
    target = CMUNeXt(**infer_cmunext_config(imported))
    target.load_state_dict(imported, strict=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for mode in (False, True):
            torch.testing.assert_close(source.train(mode)(x), target.train(mode)(x), rtol=0, atol=0)


def test_foreign_state_dicts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"no 'stem\.conv\.0\.weight'"):
        load_official_cmunext(CMUNeXt(**SMALL).state_dict())
    official = random_official_state(**SMALL)
    official["encoder6.up.conv.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"not official CMUNeXt parameter names: \['encoder6"):
        load_official_cmunext(official)
    with pytest.raises(ValueError, match="not this suite's CMUNeXt parameter names"):
        export_official_cmunext(official)


def test_convert_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    official = random_official_state(**SMALL)
    source = tmp_path / "CMUNeXt_model_busi_train.pth"
    # What the official main.py writes after DataParallel training: a bare, prefixed state dict.
    torch.save({f"module.{k}": v for k, v in official.items()}, source)
    destination = tmp_path / "converted" / "cmunext.pt"
    assert main(["convert", "official-cmunext", str(source), str(destination)]) == 0
    printed = capsys.readouterr().out
    assert str(destination) in printed
    assert (
        "build_model('cmunext', in_channels=2, num_classes=3, dims=[4, 6, 8, 10, 12], "
        "depths=[1, 2, 1, 2, 1], kernels=[3, 5, 3, 7, 5])" in printed
    )
    state = torch.load(destination, weights_only=True)
    model = build_model("cmunext", **infer_cmunext_config(state))
    model.load_state_dict(state, strict=True)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), official_forward(official, x, training=False))
    assert main(["convert", "official-cmunext", str(destination), str(tmp_path / "x.pt")]) == 2
    assert "no 'stem.conv.0.weight'" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


# thop MACs at 3×256² as thop 0.1.1 (PyPI 0.1.1.post2209072238) profiles the official model,
# checked once against thop itself; published (Tang et al. 2023): 7.41 G for base.
THOP_MACS = {"S": 1_090_109_440, "base": 7_417_733_120, "L": 17_183_211_520}


@pytest.mark.parametrize("variant", list(THOP_MACS))
def test_paper_macs_follow_thop_and_match_the_published_figure(variant: str) -> None:
    complexity = measure_registered("cmunext", variant=variant)
    assert complexity.input_shape == (1, 3, 256, 256)
    assert complexity.paper_convention == "thop"
    assert complexity.params == OFFICIAL_PARAMS[(variant, 1)]
    assert complexity.paper_flops == THOP_MACS[variant]
    if variant == "base":
        assert abs(complexity.paper_flops / 1e9 - 7.41) < 0.01
        # FlopCounterMode: 2 per multiply-add of the convolutions only (7,230,627,840 MACs);
        # thop adds 4 per BatchNorm input element and 11 per bilinear output element.
        assert complexity.flops == 14_461_255_680
        assert complexity.paper_flops == complexity.flops // 2 + 4 * 32_718_848 + 11 * 5_111_808


def test_thop_rules_on_a_hand_computed_model() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # 4·8·8 outputs × 2 inputs × 9 = 4,608
        nn.BatchNorm2d(4),  # 256 inputs × 4 (affine) = 1,024
        nn.ReLU(),  # 0
        nn.Upsample(scale_factor=2, mode="bilinear"),  # 4·16·16 outputs × 11 = 11,264
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # 1,024 outputs × 2 × 9 = 18,432
        nn.GELU(),  # no thop rule: 0
        nn.AdaptiveAvgPool2d(1),  # (256 + 1) × 4 = 1,028
        nn.Flatten(),
        nn.Linear(4, 5),  # 4 × 5 = 20
    )
    complexity = measure(model, (1, 2, 8, 8), paper_convention="thop")
    assert complexity.paper_flops == 4_608 + 1_024 + 11_264 + 18_432 + 1_028 + 20


def test_models_command_lists_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--family", "cmunext", "--json"]) == 0
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["S", "base", "L"]
    assert rows["base"]["params"] == 3_149_185
    assert rows["base"]["input_shape"] == [1, 3, 256, 256]
    assert rows["base"]["paper_convention"] == "thop"
    assert abs(rows["base"]["paper_g"] - 7.41) < 0.01
    assert main(["models", "--family", "cmunext", "--size", "128"]) == 0
    table = capsys.readouterr().out
    assert "8,286,721" in table and "3×128²" in table
