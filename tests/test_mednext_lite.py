"""MedNeXt-Lite: parameter counts from the design's formulas, module properties, shapes, presets."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mednext.models import build_model, get_family
from mednext.models.complexity import measure
from mednext.models.layers import DropPath
from mednext.models.mednext_lite import (
    PRESETS,
    LinearAttentionFFN,
    MedNeXtLite,
    MedNeXtLiteBlock,
    MedNeXtLiteUNet,
    SpatialEncodingModule,
)

TINY = dict(width=8, depths=(1, 1, 1, 1))


def conv(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> int:
    """Parameters of a 2D convolution with bias."""
    return c_out * (c_in // groups) * k + c_out


def block_parameters(c: int, r: int = 2, f: int = 4, k: int = 5, strips=(7, 11, 21)) -> int:
    """One block counted from the design brief (docs/models.md), not from the module code."""
    norms_and_scales = 3 * 2 * c + 3 * c
    laffn = conv(c, 1 + 2 * r * c) + conv(r * c, c)
    # W_u, W_a, W (value) and the output projection, the k×k and strip depthwise convs.
    sem = 4 * conv(c, c) + conv(c, c, k * k, c) + sum(2 * conv(c, c, s, c) for s in strips)
    sdffn = conv(c, f * c) + conv(f * c, f * c, 9, f * c) + conv(f * c, c)
    return norms_and_scales + laffn + sem + sdffn


def classifier_parameters(width: int, depths, num_classes: int, in_channels: int = 3) -> int:
    dims = [width * 2**i for i in range(4)]
    stem = conv(in_channels, width // 2, 9) + 2 * (width // 2) + conv(width // 2, width, 9)
    stem += 2 * width
    down = sum(conv(dims[i], dims[i + 1], 9) + 2 * dims[i + 1] for i in range(3))
    blocks = sum(d * block_parameters(c) for d, c in zip(depths, dims, strict=True))
    head = 2 * dims[3] + dims[3] * num_classes + num_classes
    return stem + down + blocks + head


@pytest.mark.parametrize("variant", ["T", "S", "B"])
@pytest.mark.parametrize("num_classes", [2, 3, 6])
def test_classifier_parameters_follow_the_design(variant: str, num_classes: int) -> None:
    with torch.device("meta"):
        model = build_model("mednext_lite", variant=variant, num_classes=num_classes)
    count = sum(p.numel() for p in model.parameters())
    assert count == classifier_parameters(num_classes=num_classes, **PRESETS[variant])


# The design brief (docs/models.md): a prototype of this design, 2-class classifier at 224²
# (params in M, MACs in G).
PROTOTYPE = {"T": (4.3, 0.70), "S": (11.0, 1.8), "B": (22.0, 3.6)}


@pytest.mark.parametrize("variant", ["T", "S", "B"])
def test_presets_reproduce_the_prototype_figures_and_stay_below_convnext_t(variant: str) -> None:
    with torch.device("meta"):
        model = build_model("mednext_lite", variant=variant, num_classes=2)
    convention = get_family("mednext_lite").paper_convention
    complexity = measure(model.eval(), (1, 3, 224, 224), convention)
    params, macs = PROTOTYPE[variant]
    assert complexity.params / 1e6 == pytest.approx(params, rel=0.03)
    assert complexity.paper_flops / 1e9 == pytest.approx(macs, rel=0.03)
    # ConvNeXt-T (Liu et al. 2022): 28 M parameters, 4.5 G MACs at 224².
    assert complexity.params < 28e6 and complexity.paper_flops < 4.5e9


def test_classifier_shapes_and_any_input_multiple_of_32() -> None:
    model = MedNeXtLite(in_channels=3, num_classes=5, **TINY)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 5)
    assert MedNeXtLite(in_channels=1, num_classes=2, **TINY)(torch.randn(2, 1, 64, 64)).shape == (
        2,
        2,
    )


@pytest.mark.parametrize("shape", [(1, 3, 48, 64), (1, 3, 224, 100), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_inputs_are_clear_errors(shape) -> None:
    model = MedNeXtLite(in_channels=3, num_classes=2, **TINY)
    with pytest.raises(ValueError, match="MedNeXt-Lite"):
        model(torch.randn(shape))


def test_segmenter_shapes_and_deep_supervision() -> None:
    model = MedNeXtLiteUNet(in_channels=1, num_classes=4, deep_supervision=True, **TINY)
    x = torch.randn(2, 1, 64, 96)
    outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 64, 96), (2, 4, 8, 12), (2, 4, 4, 6)]
    model.eval()
    with torch.no_grad():
        single = model(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 4, 64, 96)
    plain = MedNeXtLiteUNet(in_channels=1, num_classes=4, **TINY)
    assert isinstance(plain(x), torch.Tensor)


def test_segmenter_decoder_blocks_work_at_twice_the_skip_width() -> None:
    model = build_model("mednext_lite_seg", variant="T", in_channels=1, num_classes=9)
    widths = [block.branches[0][0].num_features for block in model.decoder]
    assert widths == [256, 128, 64]
    assert model.head.in_channels == 64


def test_laffn_is_permutation_equivariant_with_a_global_context() -> None:
    # Only 1×1 convolutions and one global (softmax-weighted) sum: shuffling the positions of the
    # input shuffles the output the same way, and every position sees every other one.
    torch.manual_seed(0)
    module = LinearAttentionFFN(8).eval()
    x = torch.randn(1, 8, 6, 6)
    permutation = torch.randperm(36)
    shuffled = x.flatten(2)[..., permutation].view_as(x)
    expected = module(x).flatten(2)[..., permutation].view_as(x)
    torch.testing.assert_close(module(shuffled), expected)
    x.requires_grad_(True)
    module(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()


def test_laffn_cost_is_linear_in_the_number_of_positions() -> None:
    module = LinearAttentionFFN(16)

    def flops(size: int) -> int:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(torch.randn(1, 16, size, size))
        return counter.get_total_flops()

    assert flops(32) == 4 * flops(16)


def test_sem_receptive_field_is_the_5x5_plus_the_longest_strip() -> None:
    # DW5×5 then 21-long strips: 2 + 10 = 12 pixels each way, no further.
    torch.manual_seed(0)
    module = SpatialEncodingModule(4)
    x = torch.randn(1, 4, 41, 41, requires_grad=True)
    module(x)[0, :, 20, 20].sum().backward()
    reach = x.grad[0].abs().sum(0)
    assert reach[20, 20 + 12] > 0 and reach[20 + 12, 20] > 0 and reach[20 + 12, 20 + 12] > 0
    assert reach[20, 20 + 13] == 0 and reach[20 + 13, 20] == 0


def test_fresh_block_is_close_to_identity_thanks_to_layer_scale() -> None:
    block = MedNeXtLiteBlock(16).eval()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), x, atol=1e-3, rtol=0)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    drop = DropPath(0.25)
    x = torch.ones(4000, 3, 2, 2)
    y = drop(x)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="drop-path rate"):
        DropPath(1.0)


def test_drop_path_rate_grows_linearly_over_blocks() -> None:
    model = MedNeXtLite(num_classes=2, width=8, depths=(1, 1, 0, 2), drop_path_rate=0.3)
    rates = [
        block.branches[0][-1].rate for stage in model.encoder.stages for block in stage.children()
    ]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_presets_are_case_insensitive_and_unknown_ones_listed() -> None:
    assert isinstance(build_model("mednext_lite", variant="t", num_classes=2), MedNeXtLite)
    with pytest.raises(ValueError, match="T, S, B"):
        build_model("mednext_lite", variant="XL", num_classes=2)
    with pytest.raises(ValueError, match="T, S"):
        build_model("mednext_lite_seg", variant="B", num_classes=2)


def test_classifier_learns_a_separable_toy_problem() -> None:
    torch.manual_seed(0)
    model = MedNeXtLite(in_channels=3, num_classes=2, **TINY)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 2
    x[y == 1, :, :16] += 2.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() == 1.0
