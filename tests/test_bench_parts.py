"""``mednext bench`` parts beyond the networks, at toy size on their real paths: the training
patches against nnU-Net v2's own pipeline, the cache build sequential and parallel, inference
with mirroring against MONAI's loop; the training-step modes of the 3D part; ``bench.json``
beside the Markdown; quick runs that leave the tracked docs alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mednext.bench.parts.modes import PLAIN, Mode, parse_mode
from mednext.cli import main


def bench_json(output: Path) -> dict:
    return json.loads((output.parent / "bench.json").read_text())


def table_rows(text: str, key: str) -> list[list[str]]:
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    body = text[text.index(start) : text.index(end)]
    lines = [line for line in body.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_loader_part_measures_nnunets_own_pipeline_beside_ours(tmp_path: Path) -> None:
    pytest.importorskip("batchgeneratorsv2", reason="nnU-Net v2's pipeline (the bench extra)")
    output = tmp_path / "benchmarks.md"
    argv = ["bench", "--part", "loader", "--volume", "48,40,36", "--patch-size", "32"]
    assert main([*argv, "--warmup", "1", "--steps", "3", "--output", str(output)]) == 0
    rows = {row[0]: row for row in table_rows(output.read_text(), "loader")}
    assert set(rows) == {
        "nnU-Net v2 (batchgeneratorsv2)",
        "ours (PatchDataset)",
        "nnU-Net v2, segmentation resampled nearest (not its default)",
    }
    assert rows["nnU-Net v2 (batchgeneratorsv2)"][-1] == "1.00"
    entry = bench_json(output)["loader"]
    assert entry["ratio_vs_nnunet"] == pytest.approx(
        entry["ours"]["mean_s"] / entry["nnunet"]["mean_s"]
    )
    assert entry["patch_size"] == [32, 32, 32] and entry["patches"] == 3
    assert entry["versions"]["batchgeneratorsv2"]
    assert (
        "--part loader --volume 48,40,36 --patch-size 32 --warmup 1 --steps 3" in (entry["command"])
    )


def test_loader_part_refuses_a_patch_larger_than_the_volume(tmp_path: Path, capsys) -> None:
    argv = ["bench", "--part", "loader", "--volume", "24,24,24", "--patch-size", "32"]
    assert main([*argv, "--output", str(tmp_path / "b.md")]) == 2
    assert "--patch-size 32 is larger than the --volume (24, 24, 24)" in capsys.readouterr().err


def test_preprocess_part_builds_the_cache_sequentially_and_in_parallel(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    argv = ["bench", "--part", "preprocess", "--case-shape", "20,20,10", "--workers", "2"]
    assert main([*argv, "--output", str(output)]) == 0
    rows = {row[0]: row for row in table_rows(output.read_text(), "preprocess")}
    assert rows["sequential"][1:3] == ["1", "30"]
    assert rows["parallel"][1:3] == ["2", "30"]
    entry = bench_json(output)["preprocess"]
    assert entry["speedup"] == pytest.approx(
        entry["sequential"]["seconds"] / entry["parallel"]["seconds"]
    )
    assert entry["parallel"]["cases_per_min"] > 0


def test_predict_part_compares_with_monais_loop_and_the_labels(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    argv = ["bench", "--part", "predict", "--quick", "--volume", "40,36,24", "--window", "32"]
    assert main([*argv, "--output", str(output)]) == 0
    rows = table_rows(output.read_text(), "predict-quick")
    assert [row[0] for row in rows] == [
        "MONAI sliding_window_inference, per-flip loop",
        "ours (predict_probabilities, channels-last)",
    ]
    # 2 × 2 × 1 windows of 32³, 8 flips each.
    assert rows[0][3] == rows[1][3] == "32"
    entry = bench_json(output)["predict-quick"]
    assert entry["labels_equal_fraction"] > 0.999
    assert entry["max_probability_difference"] < 1e-3


def test_bench_json_keeps_the_entries_of_other_parts(tmp_path: Path, capsys) -> None:
    output = tmp_path / "benchmarks.md"
    (tmp_path / "bench.json").write_text(json.dumps({"classifier": {"kept": True}}))
    toy = ["--size", "32", "--width", "4", "--warmup", "0", "--steps", "1", "--device", "cpu"]
    argv = ["bench", "--part", "3d", "--variants", "S", "--modes", "fp32", *toy]
    assert main([*argv, "--output", str(output)]) == 0
    entries = bench_json(output)
    assert entries["classifier"] == {"kept": True}
    (row,) = entries["mednext"]["rows"]
    assert row["mode"] == "fp32" and row["time_ratio_vs_monai_fp32"] > 0
    assert entries["mednext"]["versions"]["torch"] and entries["mednext"]["machine"]
    (tmp_path / "bench.json").write_text("{not json")
    assert main([*argv, "--output", str(output)]) == 1
    assert "bench.json: not valid JSON" in capsys.readouterr().err


def test_a_quick_run_writes_nothing_unless_told(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    toy = ["--width", "4", "--warmup", "0", "--steps", "1", "--device", "cpu"]
    assert main(["bench", "--part", "3d", "--quick", "--variants", "S", *toy]) == 0
    assert "quick run: tables only" in capsys.readouterr().out
    assert not (tmp_path / "docs").exists()


def test_3d_modes_are_measured_against_monai_in_the_same_mode(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    toy = ["--size", "32", "--width", "4", "--warmup", "0", "--steps", "1", "--device", "cpu"]
    modes = "channels-last,checkpoint-stage,channels-last+checkpoint-block"
    argv = ["bench", "--part", "3d", "--variants", "S", "--modes", modes, *toy]
    assert main([*argv, "--output", str(output)]) == 0
    rows = table_rows(output.read_text(), "mednext")
    ours = [row[1] for row in rows]
    assert ours == [
        "MedNeXt-S k3, width 4",
        "MedNeXt-S k3, width 4 + channels-last",
        "MedNeXt-S k3, width 4 + checkpoint-stage",
        "MedNeXt-S k3, width 4 + channels-last+checkpoint-block",
    ]
    # MONAI has no checkpointing: those rows compare with MONAI in the mode without it.
    assert [row[2] for row in rows] == [
        "create_mednext('S') k3, width 4",
        "create_mednext('S') k3, width 4 + channels-last",
        "create_mednext('S') k3, width 4",
        "create_mednext('S') k3, width 4 + channels-last",
    ]
    for row in rows:
        assert row[5] == rows[0][5] or "channels-last" in row[2]
    entry = bench_json(output)["mednext"]
    assert [r["monai_mode"] for r in entry["rows"]] == [
        "fp32",
        "channels-last",
        "fp32",
        "channels-last",
    ]


def test_modes_parse_and_name_themselves() -> None:
    assert parse_mode("fp32") == PLAIN
    mode = parse_mode("checkpoint-stage+channels-last+bf16")
    assert mode == Mode(channels_last=True, autocast="bf16", checkpointing="stage")
    assert mode.name == "channels-last+bf16+checkpoint-stage"
    assert mode.without_checkpointing.name == "channels-last+bf16"
    for bad in ("fast", "compile+compile", "bf16+fp16", "checkpoint-block+checkpoint-stage"):
        with pytest.raises(ValueError, match=re.escape(f"mode {bad!r}")):
            parse_mode(bad)


def test_fp16_mode_on_the_cpu_is_refused(tmp_path: Path, capsys) -> None:
    argv = ["bench", "--part", "3d", "--modes", "fp16", "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "b.md")]) == 2
    assert "--modes fp16: fp16 mixed precision needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "b.md").exists()


def test_an_unknown_mode_is_an_argument_error(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--part", "3d", "--modes", "channels-last+fast", "--no-write"])
    assert "mode 'channels-last+fast': features are fp32 alone" in capsys.readouterr().err


def test_compile_mode_without_a_compiler_is_refused(tmp_path: Path, capsys) -> None:
    from torch._inductor import config

    argv = ["bench", "--part", "3d", "--modes", "compile", "--device", "cpu"]
    with config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        assert main([*argv, "--output", str(tmp_path / "b.md")]) == 2
    assert "--modes compile: no C++ compiler (no-such-c++-compiler)" in capsys.readouterr().err
