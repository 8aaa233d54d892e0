"""``mednext bench``: the real benchmark path of each part at toy size, the Markdown sections, part
selection, CPU peak memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mednext.bench.harness import MIB, cpu_peak_bytes
from mednext.bench.parts import resolve_settings
from mednext.bench.parts.images import (
    IMAGE_PARTS,
    ImageNetwork,
    build_image_network,
    image_columns,
    image_complexity,
)
from mednext.bench.parts.mednext3d import (
    build_monai,
    build_ours,
    monai_arguments,
    monai_matches_official,
)
from mednext.cli import build_parser, main
from mednext.models import build_model
from mednext.models.complexity import measure_registered
from mednext.models.mednext import PRESETS

TOY = ["--size", "32", "--width", "4", "--steps", "1", "--warmup", "0", "--device", "cpu"]
TOY += ["--modes", "fp32"]
START, END = "<!-- bench:mednext:start -->", "<!-- bench:mednext:end -->"


def bench(output: Path, *options: str) -> int:
    return main(
        ["bench", "--part", "3d", "--variants", "S", *TOY, "--output", str(output), *options]
    )


def section(text: str, start: str = START, end: str = END) -> str:
    return text[text.index(start) : text.index(end)]


def table_row(text: str, preset: str) -> list[str]:
    rows = [line for line in section(text).splitlines() if line.startswith(f"| {preset} |")]
    assert len(rows) == 1, rows
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_bench_writes_a_new_file_with_intro_and_the_s_row(tmp_path: Path) -> None:
    output = tmp_path / "docs" / "bench.md"
    assert bench(output) == 0
    text = output.read_text()
    assert text.startswith("# Benchmarks")
    assert "`make bench`" in text
    assert "`mednext bench --quick`" in text
    assert text.count(START) == text.count(END) == 1
    cells = table_row(text, "S")
    assert cells[1] == "MedNeXt-S k3, width 4"
    assert cells[2] == "create_mednext('S') k3, width 4"
    assert cells[3] == "1×1×32³"
    assert float(cells[6]) > 0  # time ratio ours/MONAI
    assert float(cells[9]) == pytest.approx(1.0, abs=0.05)  # same network, same memory
    ours_params, monai_params = cells[10].split(" / ")
    assert ours_params == monai_params
    assert "torch " in text and "MONAI " in text
    assert "--variants S --size 32" in text
    assert not list(output.parent.glob(".*.tmp-*"))  # no temporary file of the atomic write


def test_rerun_replaces_the_section_and_keeps_everything_else(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    other = "<!-- bench:classifier:start -->\nclassifier numbers\n<!-- bench:classifier:end -->"
    output.write_text(f"# Benchmarks\n\nHand-written notes.\n\n{other}\n")
    assert bench(output) == 0
    first = output.read_text()
    assert bench(output) == 0
    second = output.read_text()
    assert second.count(START) == second.count(END) == 1
    assert second.startswith("# Benchmarks\n\nHand-written notes.\n\n" + other)
    assert second.index(other) < second.index(START)
    assert first.replace(section(first), "") == second.replace(section(second), "")


def test_quick_run_has_its_own_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    assert bench(output) == 0
    full = section(output.read_text())
    assert bench(output, "--quick") == 0
    text = output.read_text()
    assert section(text) == full
    quick = section(text, "<!-- bench:mednext-quick:start -->", "<!-- bench:mednext-quick:end -->")
    assert "`mednext bench --part 3d --quick --variants S" in quick


def test_no_write_prints_the_table_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "benchmarks.md"
    assert bench(output, "--no-write") == 0
    printed = capsys.readouterr().out
    assert "MedNeXt-S k3, width 4" in printed
    assert "create_mednext('S')" in printed
    assert not output.exists()


@pytest.mark.parametrize("size", ["16", "40"])
def test_sizes_the_network_cannot_take_are_refused(size: str) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--size", size, "--no-write"])


def test_cpu_peak_covers_a_known_allocation() -> None:
    size = 64 * MIB
    peak = cpu_peak_bytes(lambda: torch.empty(size, dtype=torch.uint8))
    assert size <= peak < size + MIB


def test_cpu_peak_is_the_high_water_mark_not_the_sum_of_allocations() -> None:
    def allocate_free_allocate() -> None:
        first = torch.ones(32 * MIB, dtype=torch.uint8)
        del first
        second = torch.ones(32 * MIB, dtype=torch.uint8)
        del second

    peak = cpu_peak_bytes(allocate_free_allocate)
    assert 32 * MIB <= peak < 33 * MIB


@pytest.mark.parametrize("variant", list(PRESETS))
def test_monai_networks_at_the_factory_width_are_create_mednext(variant: str) -> None:
    from monai.networks.nets import MedNeXt

    with torch.device("meta"):
        factory = build_monai(variant, kernel_size=3, width=32)
        rebuilt = MedNeXt(**monai_arguments(variant, kernel_size=3, width=32))
        ours = build_ours(variant, kernel_size=3, width=32, checkpointing=False)
    shapes = {key: value.shape for key, value in factory.state_dict().items()}
    assert shapes == {key: value.shape for key, value in rebuilt.state_dict().items()}
    # Only where MONAI's down blocks agree with the official ones are the networks the same size.
    same_size = sum(p.numel() for p in ours.parameters()) == sum(
        shape.numel() for shape in shapes.values()
    )
    assert same_size == monai_matches_official(variant) == (variant == "S")


def test_a_broken_section_is_reported_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "benchmarks.md"
    output.write_text(f"# Benchmarks\n\n{START}\nold numbers\n")
    assert bench(output) == 1
    assert f"{output}: section 'mednext'" in capsys.readouterr().err
    assert output.read_text() == f"# Benchmarks\n\n{START}\nold numbers\n"


# --- the 2D parts -----------------------------------------------------------------------------

TOY_2D = ["--image-size", "64", "--batch-size", "2", "--steps", "1", "--warmup", "0"]
TOY_2D += ["--device", "cpu"]


def markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


def bench_2d(output: Path, part: str, *options: str) -> int:
    return main(["bench", "--part", part, *TOY_2D, "--output", str(output), *options])


def image_table(text: str, key: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by network name) of section ``key``'s table."""
    lines = [line for line in section(text, *markers(key)).splitlines() if line.startswith("| ")]
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    return header, {row[0]: row for row in rows}


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_classifier_part_measures_every_network_against_resnet50(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    three_d = "<!-- bench:mednext:start -->\n3D numbers\n<!-- bench:mednext:end -->"
    stale = "<!-- bench:classifier:start -->\nold numbers\n<!-- bench:classifier:end -->"
    output.write_text(f"# Benchmarks\n\n{three_d}\n\n{stale}\n\nNotes after.\n")
    assert bench_2d(output, "classifier") == 0
    text = output.read_text()
    # The section is replaced in place; the other part's section and the notes are untouched,
    # and no other part ran.
    assert all(text.count(marker) == 1 for marker in markers("classifier"))
    assert "old numbers" not in text
    assert text.startswith(f"# Benchmarks\n\n{three_d}\n\n<!-- bench:classifier:start -->")
    assert text.endswith("<!-- bench:classifier:end -->\n\nNotes after.\n")
    assert "bench:seg2d" not in text and "quick" not in text
    header, rows = image_table(text, "classifier")
    assert header == list(image_columns(IMAGE_PARTS["classifier"]))
    reference = "ResNet-50 (MONAI) (reference)"
    assert list(rows) == [reference, "MedNeXt-Lite-T", "MedNeXt-Lite-S", "MedNeXt-Lite-B"]
    for cells in rows.values():
        assert len(cells) == len(header)
        assert cells[1] == "2×3×64²"
        assert all(number(cell) > 0 for cell in cells[2:])
    assert rows[reference][-4:] == ["1.00"] * 4  # the reference against itself
    for variant in "TSB":
        cells = rows[f"MedNeXt-Lite-{variant}"]
        with torch.device("meta"):
            model = build_model("mednext_lite", variant=variant, in_channels=3, num_classes=2)
        assert number(cells[2]) == sum(p.numel() for p in model.parameters())
        # Multiply-adds in the family's convention, as `mednext models` counts them.
        counted = measure_registered("mednext_lite", size=64, variant=variant)
        assert cells[3] == f"{counted.paper_flops / 1e9:.2f}"
        assert cells[4] == f"{counted.flops / 1e9:.2f}"
    assert (
        "`mednext bench --part classifier --image-size 64 --batch-size 2 --warmup 0 --steps 1 "
        f"--device cpu --output {output}`" in text
    )
    assert "against a random label per image" in text


def test_seg2d_part_measures_every_network_against_cmunext_base(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    assert bench_2d(output, "seg2d") == 0
    text = output.read_text()
    assert text.startswith("# Benchmarks")
    assert "`seg2d`" in text  # the introduction of a new file names the parts
    assert all(text.count(marker) == 1 for marker in markers("seg2d"))
    assert "bench:classifier" not in text and "bench:mednext" not in text
    header, rows = image_table(text, "seg2d")
    assert header == list(image_columns(IMAGE_PARTS["seg2d"]))
    assert header[-1] == "FLOPs ÷ CMUNeXt-base"
    reference = "CMUNeXt-base (reference)"
    assert list(rows) == [
        "CMUNeXt-S",
        reference,
        "CMUNeXt-L",
        "MedNeXt-Lite-T segmenter",
        "MedNeXt-Lite-S segmenter",
    ]
    for cells in rows.values():
        assert len(cells) == len(header)
        assert cells[1] == "2×1×64²"
        assert all(number(cell) > 0 for cell in cells[2:])
    assert rows[reference][-4:] == ["1.00"] * 4
    for name, family, variant in [
        ("CMUNeXt-L", "cmunext", "L"),
        ("MedNeXt-Lite-S segmenter", "mednext_lite_seg", "S"),
    ]:
        counted = measure_registered(family, 64, variant=variant, in_channels=1, num_classes=9)
        assert number(rows[name][2]) == counted.params
        assert rows[name][3] == f"{counted.paper_flops / 1e9:.2f}"
    assert "cross-entropy over the 9 classes against a random label map" in text


def test_quick_2d_run_measures_a_subset_in_its_own_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    full = "<!-- bench:classifier:start -->\nfull numbers\n<!-- bench:classifier:end -->"
    output.write_text(f"# Benchmarks\n\n{full}\n")
    assert bench_2d(output, "classifier", "--quick") == 0
    text = output.read_text()
    assert text.startswith(f"# Benchmarks\n\n{full}\n")
    _, rows = image_table(text, "classifier-quick")
    assert list(rows) == ["ResNet-50 (MONAI) (reference)", "MedNeXt-Lite-T"]
    assert "`mednext bench --part classifier --quick --image-size 64" in text


def parts(*argv: str) -> list[str]:
    args = build_parser().parse_args(["bench", "--device", "cpu", *argv])
    return [settings.key for settings in resolve_settings(args)]


def test_every_part_runs_by_default_and_parts_run_in_a_fixed_order() -> None:
    every = ["mednext", "loader", "preprocess", "predict", "classifier", "seg2d"]
    assert parts() == every
    assert parts("--quick") == [f"{key}-quick" for key in every]
    assert parts("--part", "seg2d", "--part", "3d", "--part", "seg2d") == ["mednext", "seg2d"]


def test_each_part_takes_its_own_defaults_unless_told() -> None:
    args = build_parser().parse_args(["bench", "--device", "cpu"])
    three_d, loader, _, predict, classifier, seg2d = resolve_settings(args)
    assert three_d.input_shape == (1, 1, 64, 64, 64)
    assert classifier.input_shape == (4, 3, 224, 224)
    assert seg2d.input_shape == (4, 1, 224, 224)
    assert loader.options == dict(warmup=2, steps=60, volume=(300, 260, 200), patch_size=128)
    assert predict.options == {"volume": (180, 150, 46), "window": 64}
    args = build_parser().parse_args(["bench", "--device", "cpu", "--batch-size", "2"])
    batched = [s for s in resolve_settings(args) if "--batch-size" in s.part.shared]
    assert [settings.batch_size for settings in batched] == [2, 2, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--part", "classifier", "--size", "64"], "--size applies to --part 3d, not selected"),
        (["--part", "seg2d", "--variants", "S"], "--variants applies to --part 3d"),
        (["--part", "3d", "--image-size", "64"], "--image-size applies to --part classifier or"),
    ],
)
def test_an_option_of_a_part_not_selected_is_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "benchmarks.md"
    assert main(["bench", *argv, "--output", str(output)]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("size", ["32", "100"])
def test_image_sizes_the_networks_cannot_take_are_refused(size: str) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--part", "classifier", "--image-size", size, "--no-write"])


def test_the_resnet50_reference_is_the_imagenet_layout() -> None:
    part = IMAGE_PARTS["classifier"]
    with torch.device("meta"):
        model = build_image_network(part.reference, in_channels=3, num_classes=2)
    # torchvision's resnet50: 25,557,032 parameters with its 1000-class head, 4.09 G multiply-adds
    # at 224² (the "GFLOPS" of its model card). MONAI's default stem would give 16.3 G.
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 - 2048 * 998 - 998
    macs, flops = image_complexity(part.reference, part, 224)
    assert f"{macs / 1e9:.2f}" == "4.09"
    assert macs == flops // 2
    assert ImageNetwork("resnet50").description == "ResNet-50 (MONAI)"
