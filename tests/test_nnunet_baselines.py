"""nnU-Net's baseline networks (``unet``, ``resenc``) against dynamic-network-architectures built
directly with the numbers nnU-Net v2's planners write into a plans file, the topology rule
against hand-derived and nnU-Net-quoted cases, the model contract, the planners' patch and batch
choices behind the presets and experiments, and one toy training run through ``mednext train``.

The expected values are re-statements of nnU-Net v2 (``default_experiment_planner.py``,
``residual_unets/residual_encoder_unet_planners.py``, ``network_topology.py``), not outputs of
``mednext.models.nnunet_baselines``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from mednext.cli import main
from mednext.config import ConfigError, compose
from mednext.model_table import model_rows
from mednext.models import build_model
from mednext.models.complexity import count_parameters, measure
from mednext.models.nnunet_baselines import (
    RESENC_PRESETS,
    UNET_PRESETS,
    NNUNetResEncUNet,
    nnunet_topology,
    plan_3d_fullres,
)
from mednext.tasks.base import build_network
from mednext.tasks.segmentation import SegmentationTask

# nnU-Net v2's 3d_fullres architecture for a 128³ patch at 1 mm (the planners' arch_kwargs).
SIX_STAGES = dict(
    n_stages=6,
    features_per_stage=(32, 64, 128, 256, 320, 320),
    conv_op=nn.Conv3d,
    kernel_sizes=[[3, 3, 3]] * 6,
    strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
    conv_bias=True,
    norm_op=nn.InstanceNorm3d,
    norm_op_kwargs={"eps": 1e-5, "affine": True},
    dropout_op=None,
    dropout_op_kwargs=None,
    nonlin=nn.LeakyReLU,
    nonlin_kwargs={"inplace": True},
    deep_supervision=True,
)
# ExperimentPlanner: UNet_blocks_per_stage_encoder/decoder; ResEncUNetPlanner: the same.
PLAIN = dict(n_conv_per_stage=(2,) * 6, n_conv_per_stage_decoder=(2,) * 5)
RESENC = dict(n_blocks_per_stage=(1, 3, 4, 6, 6, 6), n_conv_per_stage_decoder=(1,) * 5)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize(
    ("name", "variant", "reference", "blocks"),
    [
        ("unet", "3d_fullres", PlainConvUNet, PLAIN),
        ("resenc", "M", ResidualEncoderUNet, RESENC),
        ("resenc", "L", ResidualEncoderUNet, RESENC),
    ],
)
def test_presets_are_dynamic_network_architectures_as_nnunet_plans_them(
    name: str, variant: str, reference: type[nn.Module], blocks: dict
) -> None:
    with torch.device("meta"):
        ours = build_model(name, variant=variant, in_channels=1, num_classes=14)
        direct = reference(input_channels=1, num_classes=14, **SIX_STAGES, **blocks)
    assert count_parameters(ours) == count_parameters(direct)
    assert _shapes(ours) == _shapes(direct)


def test_every_module_is_the_package_s_own_and_nnunet_checkpoints_load() -> None:
    small = dict(SIX_STAGES, n_stages=4, features_per_stage=(4, 8, 16, 16))
    small.update(kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3)
    torch.manual_seed(0)
    direct = ResidualEncoderUNet(
        input_channels=1,
        num_classes=3,
        n_blocks_per_stage=(1, 3, 4, 6),
        n_conv_per_stage_decoder=(1,) * 3,
        **small,
    )
    ours = build_model(
        "resenc", in_channels=1, num_classes=3, width=4, max_features=16, patch_size=[32, 32, 32]
    )
    ours.load_state_dict(direct.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32, 32)
    direct.eval()
    ours.eval()
    direct.decoder.deep_supervision = False
    with torch.no_grad():
        torch.testing.assert_close(ours(x), direct(x), rtol=0, atol=0)


def test_topology_follows_nnunet_planning() -> None:
    # residual_encoder_unet_planners.py (__main__): 128³ at 1 mm is 6 stages, strides 1,2,2,2,2,2.
    iso = nnunet_topology((128, 128, 128), (1.0, 1.0, 1.0))
    assert iso.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert iso.kernel_sizes == ((3, 3, 3),) * 6
    # An axis halves while it keeps 2 x 4 voxels: 256 -> 4 is 6 halvings, 7 stages (the 2D
    # network of the same file), 512 one more.
    assert nnunet_topology((256, 256), (1.0, 1.0)).strides == ((1, 1),) + ((2, 2),) * 6
    assert nnunet_topology((512, 512), (1.0, 1.0)).n_stages == 8
    # ACDC's grid, worked by hand from get_pool_and_conv_props: the 5 mm axis is 3.2x the finest,
    # so only the in-plane axes pool (kernel 1 on z); then all three (3.125/3.125/5 are within 2x);
    # again at 6.25/6.25/10 (z has 8 voxels, still 2 x 4); z (4 voxels) stops, in-plane pools twice
    # more (20 -> 10 -> 5) and 5 < 8 ends it.
    acdc = nnunet_topology((160, 160, 16), (1.5625, 1.5625, 5.0))
    assert acdc.strides == ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 2, 1))
    assert acdc.kernel_sizes == ((3, 3, 1),) + ((3, 3, 3),) * 5
    assert acdc.divisor == (32, 32, 4)


def test_planner_estimate_is_the_one_nnunet_quotes() -> None:
    # residual_encoder_unet_planners.py (__main__): "-> 558319104" for this 3D network at 128³,
    # "-> 129793792" for the 7-stage 2D one (planned here for 256²) at 512².
    with torch.device("meta"):
        net3d = build_model("resenc", variant="M", in_channels=1, num_classes=3)
        net2d = build_model(
            "resenc", in_channels=1, num_classes=3, spatial_dims=2, patch_size=[256, 256]
        )
    assert net3d.compute_conv_feature_map_size((128, 128, 128)) == 558_319_104
    assert net2d.compute_conv_feature_map_size((512, 512)) == 129_793_792
    assert list(net2d.encoder.output_channels) == [32, 64, 128, 256, 512, 512, 512]


def test_presets_and_experiments_are_the_planners_choices() -> None:
    plans = {}

    def plan(preset: str, spacing: tuple, median: tuple, classes: int):
        key = (preset, spacing, median, classes)
        if key not in plans:
            plans[key] = plan_3d_fullres(preset, spacing, median, 1, classes)
        return plans[key]

    presets = {"3d_fullres": UNET_PRESETS["3d_fullres"], **RESENC_PRESETS}
    for preset, arguments in presets.items():
        reference = plan(preset, (1.0, 1.0, 1.0), (256, 256, 256), 14)
        assert reference.patch_size == arguments["patch_size"], preset
        assert reference.batch_size == 2, preset
    # experiment: planner, classes (background included)
    experiments = {
        "synapse_unet": ("3d_fullres", 14),
        "synapse_resenc_m": ("M", 14),
        "synapse_resenc_l": ("L", 14),
        "acdc_unet": ("3d_fullres", 4),
        "acdc_resenc_m": ("M", 4),
        "acdc_resenc_l": ("L", 4),
    }
    for experiment, (preset, classes) in experiments.items():
        config = compose(experiment)
        data = config.data
        # Synapse: the reference dataset's plan; ACDC: the suite's patch as the image to cover.
        median = (256, 256, 256) if experiment.startswith("synapse") else tuple(data.patch_size)
        chosen = plan(preset, tuple(data.spacing), median, classes)
        assert list(chosen.patch_size) == list(data.patch_size), experiment
        assert chosen.batch_size == data.batch_size, experiment
        assert config.model.patch_size == data.patch_size
        assert config.model.spacing == data.spacing
        assert config.model.variant == preset


def test_the_model_contract() -> None:
    net = build_model("unet", in_channels=2, num_classes=3, width=4, patch_size=[32, 32, 16])
    x = torch.randn(1, 2, 32, 32, 16)
    outputs = net(x)
    # At 1 mm the 16-voxel axis halves with the others until it has 4 voxels.
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 16), (16, 16, 8), (8, 8, 4)]
    net.eval()
    assert net(x).shape == (1, 3, 32, 32, 16)
    net.train()
    assert isinstance(net(x), list)
    no_ds = build_model(
        "unet",
        in_channels=2,
        num_classes=3,
        width=4,
        patch_size=[32, 32, 16],
        deep_supervision=False,
    )
    assert no_ds(x).shape == (1, 3, 32, 32, 16)
    with pytest.raises(ValueError, match=r"multiple of \(8, 8, 4\)"):
        net(torch.randn(1, 2, 32, 30, 16))
    with pytest.raises(ValueError, match="2 channel"):
        net(torch.randn(1, 1, 32, 32, 16))
    with pytest.raises(ValueError, match="single voxel"):
        net(torch.randn(1, 2, 8, 8, 4))
    assert build_model("resenc", variant="l", in_channels=1, num_classes=2).patch_size == (
        192,
        192,
        192,
    )
    with pytest.raises(ValueError, match="choose one of M, L, XL"):
        build_model("resenc", variant="XXL", in_channels=1, num_classes=2)


def test_the_table_measures_each_preset_at_its_planned_patch() -> None:
    rows = {row.preset: row for row in model_rows(["resenc", "unet"])}
    assert rows["3d_fullres"].input_shape == (1, 1, 128, 128, 128)
    assert rows["M"].input_shape == (1, 1, 128, 128, 128)
    assert rows["L"].input_shape == (1, 1, 192, 192, 192)
    assert rows["XL"].input_shape == (1, 1, 256, 224, 224)
    # One network rule: M, L and XL differ only in the patch, so in cost, not in parameters.
    assert rows["M"].params == rows["L"].params == rows["XL"].params
    assert rows["M"].train_memory < rows["L"].train_memory < rows["XL"].train_memory


def test_paper_convention_counts_instance_norms_as_fvcore_does() -> None:
    with torch.device("meta"):
        unet = build_model("unet", variant="3d_fullres", in_channels=1, num_classes=14)
    counted = measure(unet, (1, 1, 128, 128, 128))
    widths, sides = (32, 64, 128, 256, 320, 320), (128, 64, 32, 16, 8, 4)
    per_level = [c * s**3 for c, s in zip(widths, sides, strict=True)]
    # Two convolutions, each followed by an affine InstanceNorm, in each of the 6 encoder stages
    # and in each of the 5 decoder stages (levels 4 ... 0); fvcore charges 5 per element.
    norm_elements = 2 * sum(per_level) + 2 * sum(per_level[:5])
    assert counted.paper_flops == counted.flops // 2 + 5 * norm_elements


def test_the_configuration_names_the_networks_options() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'model\.n_conv_per_stagee'"):
        compose("synapse_resenc_m", ["model.n_conv_per_stagee=2"])
    with pytest.raises(ConfigError, match="resenc networks do not implement it"):
        build_network({"name": "resenc", "variant": "M", "channels_last": True}, 1, 2)


def test_train_a_resenc_baseline_end_to_end(tmp_path: Path, toy_runs) -> None:
    toy = toy_runs.overrides(
        "volumes",
        tmp_path / "runs",
        tmp_path / "cache",
        "model.n_blocks_per_stage=[1,1,1,1]",
        "trainer.max_epochs=1",
    )
    assert main(["train", "synapse_resenc_m", *toy]) == 0
    run = toy_runs.only_run(tmp_path / "runs", "synapse_resenc_m")
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["model"] == {"name": "resenc", "variant": "M"}
    config = yaml.safe_load((run / "config.yaml").read_text())
    # The network was planned for the toy patch and spacing (32x32x16 at 2x2x4 mm): by hand, z
    # (2x the finest) waits one stage, then all axes halve until 4 voxels.
    assert config["model"]["patch_size"] == [32, 32, 16]
    assert config["optim"]["name"] == "sgd" and config["optim"]["momentum"] == 0.99
    task = SegmentationTask.load_from_checkpoint(
        run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert isinstance(task.net, NNUNetResEncUNet)
    assert task.net.topology.strides == ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2))
    assert results["params"] == count_parameters(task.net)
    assert 0 <= results["metrics"]["test"]["dice_mean"] <= 1
