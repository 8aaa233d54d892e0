"""MedNeXt: shapes, deep supervision, input checks, checkpointing, presets, UpKern, complexity."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mednext.cli import main
from mednext.models import build_model, list_models
from mednext.models.complexity import count_parameters, measure_registered
from mednext.models.mednext import MedNeXt, upkern

TINY = dict(width=4, exp_r=2, block_counts=(1,) * 9)


def tiny(spatial_dims: int = 3, **kwargs) -> MedNeXt:
    return MedNeXt(in_channels=2, num_classes=3, spatial_dims=spatial_dims, **{**TINY, **kwargs})


@pytest.mark.parametrize("spatial_dims, size", [(3, 32), (2, 32), (2, 64)])
def test_deep_supervision_list_in_training_tensor_in_eval(spatial_dims: int, size: int) -> None:
    model = tiny(spatial_dims, deep_supervision=True)
    x = torch.randn((2, 2) + (size,) * spatial_dims)
    outputs = model(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3) + (size // 2**level,) * spatial_dims for level in range(5)
    ]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3) + (size,) * spatial_dims
    torch.testing.assert_close(out, outputs[0].detach())


def test_without_deep_supervision_always_a_tensor_and_single_head() -> None:
    model = tiny(3, deep_supervision=False)
    assert len(model.heads) == 1
    x = torch.randn(1, 2, 16, 32, 48)
    assert model(x).shape == (1, 3, 16, 32, 48)
    assert model.eval()(x).shape == (1, 3, 16, 32, 48)


def test_non_cubic_anisotropic_2d_and_3d_inputs() -> None:
    assert tiny(2)(torch.randn(1, 2, 48, 16)).shape == (1, 3, 48, 16)
    assert tiny(3)(torch.randn(1, 2, 16, 32, 64)).shape == (1, 3, 16, 32, 64)


@pytest.mark.parametrize("shape", [(1, 2, 24, 32, 32), (1, 2, 32, 32, 40), (1, 2, 8, 8, 8)])
def test_spatial_size_not_divisible_by_16_is_a_clear_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="divisible by 16") as error:
        tiny(3)(torch.randn(shape))
    assert str(tuple(shape[2:])) in str(error.value)


def test_wrong_channels_or_rank_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="2 input channel"):
        tiny(3)(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="5-D input"):
        tiny(3)(torch.randn(1, 2, 16, 16))


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="block_counts needs 9 values"):
        MedNeXt(1, 2, block_counts=(2, 2, 2))
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        MedNeXt(1, 2, kernel_size=4)
    with pytest.raises(ValueError, match="unknown MedNeXt variant 'XL'"):
        build_model("mednext", variant="XL", in_channels=1, num_classes=2)


def test_checkpointed_gradients_equal_plain_gradients() -> None:
    torch.manual_seed(0)
    plain = tiny(3, deep_supervision=True, block_counts=(2,) * 9)
    checkpointed = tiny(3, deep_supervision=True, block_counts=(2,) * 9, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 2, 32, 32, 32)
    for model in (plain, checkpointed):
        loss = sum(out.square().mean() for out in model(x))
        loss.backward()
    assert not any(name.startswith("dummy") for name, _ in checkpointed.named_parameters())
    for (name, p), (_, q) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_a_single_voxel_bottleneck_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="single voxel"):
        tiny(3)(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="single voxel"):
        tiny(2).eval()(torch.randn(1, 2, 16, 16))


def test_checkpointing_works_on_input_without_grad_and_in_eval() -> None:
    model = tiny(3, checkpointing=True)
    x = torch.randn(1, 2, 16, 16, 32)
    model(x).mean().backward()
    assert model.stem.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3, 16, 16, 32)


# Official parameter counts (MIC-DKFZ/MedNeXt, in_channels=1, 14 classes, deep supervision), each
# including the official 1-parameter dummy_tensor that this implementation does not have.
OFFICIAL_PARAMS = {
    ("S", 3): 5_564_807,
    ("B", 3): 10_540_199,
    ("M", 3): 17_562_855,
    ("L", 3): 61_793_159,
    ("S", 5): 5_994_439,
    ("B", 5): 10_969_831,
    ("M", 5): 18_274_727,
    ("L", 5): 63_006_791,
}


@pytest.mark.parametrize("variant, kernel", list(OFFICIAL_PARAMS))
def test_preset_parameter_counts_equal_official(variant: str, kernel: int) -> None:
    with torch.device("meta"):
        model = build_model(
            "mednext",
            variant=variant,
            kernel_size=kernel,
            in_channels=1,
            num_classes=14,
            deep_supervision=True,
        )
    assert count_parameters(model) == OFFICIAL_PARAMS[(variant, kernel)] - 1


def test_preset_structure_down_blocks_take_the_ratio_of_the_stage_they_enter() -> None:
    with torch.device("meta"):
        model = build_model("mednext", variant="B", in_channels=1, num_classes=2)
    exp_r = (2, 3, 4, 4, 4, 4, 4, 3, 2)
    for level in range(4):
        width = 32 * 2**level
        assert model.encoder[level][0].conv2.out_channels == exp_r[level] * width
        assert model.down[level].conv2.out_channels == exp_r[level + 1] * width
        assert model.up[level].conv2.out_channels == exp_r[8 - level] * 2 * width
    assert not model.checkpointing
    with torch.device("meta"):
        assert build_model("mednext", variant="m", in_channels=1, num_classes=2).checkpointing


def test_explicit_form_equals_preset() -> None:
    with torch.device("meta"):
        preset = build_model("mednext", variant="B", kernel_size=5, in_channels=1, num_classes=14)
        explicit = build_model(
            "mednext",
            in_channels=1,
            num_classes=14,
            width=32,
            exp_r=[2, 3, 4, 4, 4, 4, 4, 3, 2],
            block_counts=[2] * 9,
            kernel_size=5,
            spatial_dims=3,
        )
    assert {k: v.shape for k, v in preset.state_dict().items()} == {
        k: v.shape for k, v in explicit.state_dict().items()
    }
    assert "mednext" in list_models()


def test_separate_decoder_kernel() -> None:
    model = tiny(3, kernel_size=3, dec_kernel_size=5)
    assert model.encoder[0][0].conv1.kernel_size == (3, 3, 3)
    assert model.down[3].conv1.kernel_size == (3, 3, 3)
    assert model.bottleneck[0].conv1.kernel_size == (5, 5, 5)
    assert model.up[0].conv1.kernel_size == (5, 5, 5)
    assert model(torch.randn(1, 2, 16, 32, 16)).shape == (1, 3, 16, 32, 16)


def test_grn_starts_as_identity_and_is_trainable() -> None:
    torch.manual_seed(0)
    with_grn = tiny(3, grn=True)
    without = tiny(3, grn=False)
    missing = without.load_state_dict(with_grn.state_dict(), strict=False)
    assert missing.unexpected_keys and all(".grn." in k for k in missing.unexpected_keys)
    x = torch.randn(1, 2, 16, 16, 32)
    torch.testing.assert_close(with_grn(x), without(x))
    with_grn(x).mean().backward()
    assert with_grn.encoder[0][0].grn.gamma.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_upkern_resizes_depthwise_kernels_and_copies_the_rest(spatial_dims: int) -> None:
    torch.manual_seed(0)
    small = tiny(spatial_dims, kernel_size=3, deep_supervision=True)
    for p in small.parameters():  # a "trained" network: no tensor left at its initial value
        p.data.normal_()
    large = upkern(small, tiny(spatial_dims, kernel_size=5, deep_supervision=True))
    mode = "trilinear" if spatial_dims == 3 else "bilinear"
    small_state, large_state = small.state_dict(), large.state_dict()
    assert small_state.keys() == large_state.keys()
    resized = [k for k in small_state if small_state[k].shape != large_state[k].shape]
    # Every depthwise conv1 of blocks, down and up blocks, and nothing else, changes size.
    assert sorted(resized) == sorted(
        k for k in small_state if k.endswith("conv1.weight") and not k.startswith("stem")
    )
    assert any(k.startswith("up.") for k in resized) and any(k.startswith("down.") for k in resized)
    for key, value in small_state.items():
        if key in resized:
            expected = F.interpolate(
                value, size=(5,) * spatial_dims, mode=mode, align_corners=False
            )
            torch.testing.assert_close(large_state[key], expected, rtol=0, atol=0)
        else:
            torch.testing.assert_close(large_state[key], value, rtol=0, atol=0)


def test_upkern_keeps_a_constant_kernel_constant_and_mismatched_heads_only_when_asked() -> None:
    small = tiny(3, kernel_size=3)
    small.encoder[0][0].conv1.weight.data.fill_(0.25)
    large = tiny(3, kernel_size=5)
    large.heads = torch.nn.ModuleList([torch.nn.Conv3d(4, 7, 1)])
    head_before = large.heads[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"heads.0.weight: \(3, 4, 1, 1, 1\) -> \(7, 4, 1, 1, 1\)"):
        upkern(small.state_dict(), large)
    upkern(small.state_dict(), large, strict=False)
    torch.testing.assert_close(
        large.encoder[0][0].conv1.weight, torch.full((4, 1, 5, 5, 5), 0.25), rtol=0, atol=1e-7
    )
    torch.testing.assert_close(large.heads[0].weight, head_before, rtol=0, atol=0)


def test_upkern_refuses_a_state_dict_with_foreign_names() -> None:
    with pytest.raises(ValueError, match="load_official_mednext"):
        upkern({"enc_block_0.0.conv1.weight": torch.zeros(4, 1, 3, 3, 3)}, tiny(3, kernel_size=5))


# Published complexity at 1×1×128³ (Roy et al. 2023, Table 1; fvcore convention), S/B/M/L.
PUBLISHED_GFLOPS = {
    3: {"S": 131.1, "B": 170.5, "M": 248.5, "L": 499.7},
    5: {"S": 169.3, "B": 208.8, "M": 308.6, "L": 564.0},
}


@pytest.mark.parametrize("kernel", [3, 5])
def test_paper_flops_match_the_published_figures(kernel: int) -> None:
    for variant, published in PUBLISHED_GFLOPS[kernel].items():
        complexity = measure_registered("mednext", variant=variant, kernel_size=kernel)
        assert complexity.input_shape == (1, 1, 128, 128, 128)
        assert abs(complexity.paper_flops / 1e9 - published) < 1.0, variant
        # FlopCounterMode counts 2 per multiply-add: roughly twice the paper's multiply-adds.
        assert 1.9 < complexity.flops / complexity.paper_flops < 2.0


def test_models_command_prints_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--family", "mednext", "--size", "64"]) == 0
    table = capsys.readouterr().out
    for label in ("S k3", "B k3", "M k3", "L k3", "S k5", "L k5"):
        assert label in table
    assert "5,564,806" in table and "1×64³" in table
    assert main(["models", "--family", "mednext", "--json"]) == 0
    rows = {row["preset"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["B k5"]["params"] == OFFICIAL_PARAMS[("B", 5)] - 1
    assert rows["B k5"]["input_shape"] == [1, 1, 128, 128, 128]
    assert abs(rows["L k3"]["paper_g"] - 499.7) < 1.0
