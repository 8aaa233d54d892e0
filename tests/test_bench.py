"""``mednext bench``: the real benchmark path at toy size, the Markdown section, CPU peak memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mednext.bench import (
    MIB,
    build_monai,
    build_ours,
    cpu_peak_bytes,
    monai_arguments,
    monai_matches_official,
)
from mednext.cli import main
from mednext.models.mednext import PRESETS

TOY = ["--size", "32", "--width", "4", "--steps", "1", "--warmup", "0", "--device", "cpu"]
START, END = "<!-- bench:mednext:start -->", "<!-- bench:mednext:end -->"


def bench(output: Path, *options: str) -> int:
    return main(["bench", "--variants", "S", *TOY, "--output", str(output), *options])


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
    assert not list(output.parent.glob(".*.tmp"))


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
    assert "`mednext bench --quick --variants S" in quick


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
