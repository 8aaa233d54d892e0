"""The leaderboard on a runs folder written by hand: collection at any depth, ordering, CSV,
Markdown, HTML (escaping, config links), plots, the Pareto front and the command line. The slow
test renders the page in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from mednext.cli import main
from mednext.leaderboard import collect, pareto_front, write_leaderboard
from mednext.tasks import HEADLINE

HOSTILE = '<script>alert("x")</script> & more'


def write_run(
    runs: Path,
    relative: str,
    *,
    status: str = "completed",
    dataset: str = "synapse",
    model: tuple[str, str] = ("mednext", "S"),
    params: int | None = 5_564_806,
    flops: int | None = 131_100_000_000,
    test: dict[str, Any] | None = None,
    val: dict[str, Any] | None = None,
    config: bool = True,
    **extra: Any,
) -> Path:
    run_dir = runs / relative
    run_dir.mkdir(parents=True)
    experiment, run_id = relative.rsplit("/", 1)
    results = {
        "experiment": experiment,
        "run_id": run_id,
        "status": status,
        "model": {"name": model[0], "variant": model[1]},
        "params": params,
        "flops": flops,
        "dataset": dataset,
        "metrics": {"val": val or {}, "test": test or {}},
        "epochs": 10,
        "wall_time_s": 120.5,
        "throughput": 3.25,
        "device": "cpu (x86_64, 2 cores)",
        "git_commit": "0123456789abcdef",
        "command": f"mednext train {experiment} trainer.max_epochs=10",
        **extra,
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    if config:
        (run_dir / "config.yaml").write_text(f"name: {experiment}\ndata:\n  name: {dataset}\n")
    return run_dir


def segmentation(dice: float | None, hd95: float | None) -> dict[str, Any]:
    return {
        "dice_mean": dice,
        "hd95_mean": hd95,
        "dice/spleen": dice,
        "hd95/spleen": hd95,
    }


def classification(acc: float, auroc: float | None) -> dict[str, Any]:
    return {
        "acc": acc,
        "balanced_acc": acc - 0.01,
        "f1_macro": acc - 0.02,
        "auroc": auroc,
        "specificity": 0.9,
    }


def write_runs(root: Path) -> Path:
    """Two segmentation datasets and a classification one, every status, a config-only run and
    a nested sweep."""
    write_run(
        root,
        "synapse_mednext_s/20260101-000000",
        test=segmentation(0.80, 12.0),
        val={"dice_mean": 0.78, "hd95_mean": 14.0},
    )
    write_run(
        root,
        "synapse_mednext_b/20260101-000001",
        model=("mednext", "B"),
        params=10_540_198,
        flops=170_500_000_000,
        test=segmentation(0.85, 9.5),
    )
    write_run(
        root,
        "synapse_mednext_l/20260101-000002",
        model=("mednext", "L"),
        params=61_793_158,
        flops=499_700_000_000,
        test=segmentation(0.83, 8.0),
    )
    write_run(
        root,
        "synapse_mednext_b_k5/20260101-000003",
        status="failed",
        model=("mednext", "B"),
        test={"dice_mean": None, "hd95_mean": None},
        error=f"RuntimeError: {HOSTILE}",
    )
    write_run(
        root,
        "synapse_mednext_s/20260101-000004",
        status="interrupted",
        test={},
        val={"dice_mean": 0.9},
    )
    # Died before its first record: a config.yaml and nothing else (W&B files aside).
    crashed = root / "synapse_cmunext/20260101-000005"
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text(
        "name: synapse_cmunext\nmodel:\n  name: cmunext\n  variant: base\ndata:\n  name: synapse\n"
    )
    (crashed / "wandb" / "run-1" / "files").mkdir(parents=True)
    (crashed / "wandb" / "run-1" / "files" / "config.yaml").write_text("wandb_version: 1\n")
    write_run(
        root,
        "sarscov2_mednext_lite_t/20260101-000006",
        dataset="sarscov2",
        model=("mednext_lite", "T"),
        params=4_329_484,
        flops=114_443_264,
        test=classification(0.90, None),  # a NaN AUROC, written as null
        val={"acc": 0.88},
        device=HOSTILE,
    )
    write_run(
        root,
        "sarscov2_mednext_lite_s/20260101-000007",
        dataset="sarscov2",
        model=("mednext_lite", "S"),
        params=10_970_000,
        flops=1_810_000_000,
        test=classification(0.95, 0.99),
    )
    write_run(
        root,
        "sarscov2_mednext_lite_b/20260101-000008",
        status="running",
        dataset="sarscov2",
        model=("mednext_lite", "B"),
        params=21_790_000,
        flops=3_640_000_000,
        config=False,
    )
    # A sweep: <sweep>/<point>/<run_id>, the sweep's own record beside its points.
    (root / "acdc_kernels").mkdir()
    (root / "acdc_kernels" / "sweep.json").write_text("{}")
    for point, (dice, params) in {"k3": (0.90, 5_000_000), "k5": (0.91, 6_000_000)}.items():
        write_run(
            root,
            f"acdc_kernels/{point}/20260101-00001{point[-1]}",
            dataset="acdc",
            params=params,
            flops=params * 20_000,
            test=segmentation(dice, 2.0),
        )
    return root


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return write_runs(tmp_path / "runs")


def by_run_id(rows) -> list[str]:
    return [row.run_id for row in rows]


def test_collect_finds_every_run_in_leaderboard_order(runs: Path) -> None:
    rows = collect(runs)
    assert [(r.dataset, r.task) for r in rows] == [
        ("acdc", "segmentation"),
        ("acdc", "segmentation"),
        ("sarscov2", "classification"),
        ("sarscov2", "classification"),
        ("sarscov2", "classification"),
        *[("synapse", "segmentation")] * 6,
    ]
    assert by_run_id(rows) == [
        "20260101-000015",  # k5 0.91
        "20260101-000013",  # k3 0.90
        "20260101-000007",  # lite S 0.95
        "20260101-000006",  # lite T 0.90
        "20260101-000008",  # running
        "20260101-000001",  # B 0.85
        "20260101-000002",  # L 0.83
        "20260101-000000",  # S 0.80
        "20260101-000004",  # interrupted
        "20260101-000003",  # failed
        "20260101-000005",  # config.yaml only
    ]
    assert [r.status for r in rows[5:]] == [
        "completed",
        "completed",
        "completed",
        "interrupted",
        "failed",
        "unknown",
    ]
    assert [r.rank for r in rows] == [1, 2, 1, 2, None, 1, 2, 3, None, None, None]
    sweep_point = rows[0]
    assert sweep_point.experiment == "acdc_kernels/k5"
    assert sweep_point.run_dir == runs / "acdc_kernels/k5/20260101-000015"
    crashed = rows[-1]
    assert (crashed.experiment, crashed.model, crashed.variant) == (
        "synapse_cmunext",
        "cmunext",
        "base",
    )
    # No metrics: its task comes from the other runs on synapse.
    assert crashed.task == "segmentation" and crashed.headline is None
    lite_t = rows[3]
    assert lite_t.test["auroc"] is None and lite_t.headline == pytest.approx(0.90)
    assert lite_t.gflops == pytest.approx(0.114443264)


def test_collect_reads_results_that_are_odd_without_crashing(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run_dir = write_run(root, "a/1", test={"dice_mean": "n/a", "hd95_mean": float("nan")})
    (write_run(root, "b/2") / "results.json").write_text("{truncated")
    (root / "c" / "3").mkdir(parents=True)
    (root / "c" / "3" / "results.json").write_text(json.dumps({"status": "exploded"}))
    rows = {row.run_dir.relative_to(root).as_posix(): row for row in collect(root)}
    assert rows["a/1"].test == {"dice_mean": None, "hd95_mean": None}
    assert rows["a/1"].run_dir == run_dir
    assert rows["b/2"].status == "unknown" and "unreadable results.json" in rows["b/2"].error
    assert rows["c/3"].status == "unknown" and rows["c/3"].experiment == "c"


def test_collect_of_a_missing_folder_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such runs directory"):
        collect(tmp_path / "nowhere")


def test_headline_metric_is_the_one_that_selects_best_ckpt() -> None:
    from mednext.tasks import MONITOR

    assert {task: keys[0] for task, keys in HEADLINE.items()} == MONITOR


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One leaderboard for the tests that only read it (plots take a few seconds)."""
    root = tmp_path_factory.mktemp("board")
    runs = write_runs(root / "runs")
    return runs, write_leaderboard(runs, root / "board")


@pytest.fixture
def written(board: tuple[Path, dict[str, Path]]) -> dict[str, Path]:
    return board[1]


def test_csv_has_one_row_per_run_and_every_metric(written: dict[str, Path]) -> None:
    with written["leaderboard.csv"].open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    assert header[:12] == [
        "dataset",
        "task",
        "rank",
        "experiment",
        "run_id",
        "status",
        "model",
        "variant",
        "params",
        "gflops",
        "train_memory_gib",
        "peak_memory_gib",
    ]
    assert header[12:18] == [
        f"test/{k}" for k in (*HEADLINE["segmentation"], *HEADLINE["classification"])
    ]
    assert {"test/dice/spleen", "test/hd95/spleen", "test/specificity"} <= set(header)
    assert {"val/dice_mean", "val/acc"} <= set(header) and "val/hd95_mean" not in header
    assert header[-9:] == [
        "epochs",
        "wall_time_s",
        "throughput",
        "device",
        "git_commit",
        "command",
        "config",
        "error",
        "run_dir",
    ]
    assert len(rows) == 11
    assert [r["run_id"] for r in rows][:3] == [
        "20260101-000015",
        "20260101-000013",
        "20260101-000007",
    ]
    b = next(r for r in rows if r["experiment"] == "synapse_mednext_b")
    assert (b["rank"], b["params"], b["gflops"]) == ("1", "10540198", "170.5")
    assert float(b["test/dice_mean"]) == pytest.approx(0.85) and b["test/acc"] == ""
    lite_t = next(r for r in rows if r["experiment"] == "sarscov2_mednext_lite_t")
    assert lite_t["test/auroc"] == "" and lite_t["val/acc"] == "0.88"
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["test/dice_mean"] == "" and failed["rank"] == "" and HOSTILE in failed["error"]
    assert b["run_dir"] == "synapse_mednext_b/20260101-000001"
    config = written["leaderboard.csv"].parent / b["config"]
    assert (
        config.resolve()
        == (written["leaderboard.csv"].parents[1] / "runs" / b["run_dir"] / "config.yaml").resolve()
    )


def test_markdown_has_a_table_per_dataset_and_task(written: dict[str, Path]) -> None:
    text = written["leaderboard.md"].read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == [
        "acdc — segmentation",
        "sarscov2 — classification",
        "synapse — segmentation",
    ]
    synapse = text.split("## synapse — segmentation")[1]
    runs_table = synapse.split("### Runs")[1]
    table = [line for line in runs_table.splitlines() if line.startswith("|")]
    assert table[0].startswith("| rank | experiment | run_id | status |")
    assert (
        "test/dice_mean" in table[0] and "test/hd95_mean" in table[0] and "test/acc" not in table[0]
    )
    assert len(table) == 2 + 6
    assert table[2].startswith("| 1 | synapse_mednext_b | 20260101-000001 | completed |")
    assert "**failed**" in synapse and "**unknown**" in synapse
    assert "(plots/synapse_segmentation_params.png)" in synapse
    for link in re.findall(r"\]\(([^)]+config\.yaml)\)", text):
        assert (written["leaderboard.md"].parent / unquote(link)).is_file(), link


def test_html_lists_every_run_escaped_with_working_config_links(
    board: tuple[Path, dict[str, Path]],
) -> None:
    runs, written = board
    page = written["index.html"].read_text()
    for row in collect(runs):
        assert f">{row.run_id}<" in page
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert page.count('<table class="runs">') == 3 and page.count("<script>") == 1
    assert page.count('<table class="runs configurations">') == 3
    assert 'class="badge status-failed"' in page and 'class="badge status-unknown"' in page
    assert str(runs.resolve()) in page and "Generated " in page
    links = re.findall(r'href="([^"#]+)"', page)
    assert len(links) == 10  # every run with a config.yaml
    for link in links:
        assert (written["index.html"].parent / unquote(link)).is_file(), link
    assert "http://" not in page and "https://" not in page  # nothing loaded from a network
    assert page.count('src="data:image/png;base64,') == 6


def test_plots_are_written_for_every_dataset_and_task(written: dict[str, Path]) -> None:
    plots = sorted(name for name in written if name.startswith("plots/"))
    assert plots == [
        f"plots/{group}_{axis}.png"
        for group in ("acdc_segmentation", "sarscov2_classification", "synapse_segmentation")
        for axis in ("flops", "params")
    ]
    for name in plots:
        image = np.asarray(Image.open(written[name]).convert("L"), dtype=float)
        assert image.shape == (440, 640) and image.std() > 10, name
    assert not list(written["index.html"].parent.rglob(".*.tmp-*"))


def test_rewriting_drops_plots_of_datasets_without_runs(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "board"
    write_leaderboard(runs, out)
    shutil.rmtree(runs / "acdc_kernels")
    written = write_leaderboard(runs, out)
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        name.removeprefix("plots/") for name in written if name.startswith("plots/")
    )
    assert not (out / "plots" / "acdc_segmentation_params.png").exists()


def test_an_empty_runs_folder_gives_an_empty_leaderboard(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    written = write_leaderboard(tmp_path / "runs", tmp_path / "board")
    assert "No runs under" in written["index.html"].read_text()
    assert written["leaderboard.csv"].read_text().startswith("dataset,task,rank,")


def test_a_dataset_without_any_metric_gets_a_table_and_no_plots(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "acdc_mednext_s/1", status="failed", dataset="acdc", params=None)
    written = write_leaderboard(tmp_path / "runs", tmp_path / "board")
    assert not [name for name in written if name.startswith("plots/")]
    assert "## acdc — unknown" in written["leaderboard.md"].read_text()
    assert "No plots: no run of this dataset has a test metric yet." in (
        written["index.html"].read_text()
    )


def test_pareto_front_on_hand_made_points() -> None:
    points = [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (2, 0.7), (5, 0.9), (0.5, 0.1)]
    # (3, 0.6) is beaten by (2, 0.7); (5, 0.9) by (4, 0.9); the two equal (2, 0.7) both stay.
    assert pareto_front(points) == [6, 0, 1, 4, 3]
    # HD95: lower is better.
    assert pareto_front([(1, 10.0), (2, 5.0), (3, 7.0), (4, 2.0)], higher_is_better=False) == [
        0,
        1,
        3,
    ]
    assert pareto_front([(1, 0.5)]) == [0]
    assert pareto_front([]) == []


def test_cli_writes_and_summarises(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "board"
    assert main(["leaderboard", str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("leaderboard.csv", "leaderboard.md", "index.html"):
        assert str(out / name) in printed
    assert "synapse_mednext_b" in printed and "dice_mean 0.8500" in printed


def test_cli_defaults_to_mednext_runs_and_leaderboard(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDNEXT_RUNS", str(runs))
    assert main(["leaderboard"]) == 0
    assert (tmp_path / "leaderboard" / "index.html").is_file()


def test_cli_missing_runs_folder_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["leaderboard", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mednext leaderboard: ") and error.count("\n") == 1
    assert "Traceback" not in error


def chromium() -> str | None:
    candidates = (os.environ.get("MEDNEXT_CHROMIUM"), "chromium", "chromium-browser")
    for name in (*candidates, "google-chrome", "chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


def run_chromium(browser: str, profile: Path, *arguments: str) -> str:
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # as root (containers, CI) Chromium refuses to start otherwise
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


@pytest.mark.slow
def test_page_renders_and_sorts_in_headless_chromium(
    written: dict[str, Path], tmp_path: Path
) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium: install chromium, or set MEDNEXT_CHROMIUM to a chromium binary")
    page = written["index.html"]
    screenshot = tmp_path / "index.png"
    run_chromium(
        browser,
        tmp_path / "profile",
        "--window-size=1280,1600",
        f"--screenshot={screenshot}",
        page.as_uri(),
    )
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20, "a blank page"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, "no plots or text drawn"
    # Sorting: click the params header of the synapse table (ascending, empty cells last).
    clicked = page.with_name("clicked.html")
    clicked.write_text(
        page.read_text().replace(
            "</body>",
            "<script>document.querySelector('#synapse_segmentation th[data-key=params]')"
            ".click()</script></body>",
        )
    )
    dom = run_chromium(browser, tmp_path / "profile", "--dump-dom", clicked.as_uri())
    synapse = dom.split('id="synapse_segmentation"')[1]
    order = re.findall(r">(20260101-\d+)<", synapse)
    assert order == [
        "20260101-000000",  # S 5.56 M (completed, then the interrupted run: same size)
        "20260101-000004",
        "20260101-000003",  # B k5 failed, 5.56 M by default
        "20260101-000001",  # B 10.5 M
        "20260101-000002",  # L 61.8 M
        "20260101-000005",  # no params: last
    ]
    assert 'aria-sort="ascending"' in synapse


def test_repeated_configurations_are_one_row_with_mean_std_and_ranked_by_validation(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    # Three folds of one configuration (val 0.70/0.80/0.90, test 0.60/0.62/0.64), two seeds of
    # another whose test is better but whose validation is worse, and a failed run of the first.
    for fold, (val, test) in enumerate([(0.70, 0.60), (0.80, 0.62), (0.90, 0.64)]):
        write_run(
            runs,
            f"synapse_mednext_s/2026010{fold}-000000",
            val={"dice_mean": val},
            test=segmentation(test, 5.0),
            group_key="aaaa",
            fold=fold,
            seed=0,
        )
    for seed, (val, test) in enumerate([(0.50, 0.90), (0.60, 0.92)]):
        write_run(
            runs,
            f"synapse_resenc_m/2026020{seed}-000000",
            model=("resenc", "M"),
            val={"dice_mean": val},
            test=segmentation(test, 4.0),
            group_key="bbbb",
            seed=seed,
        )
    write_run(runs, "synapse_mednext_s/20260109-000000", status="failed", group_key="aaaa")
    written = write_leaderboard(runs, tmp_path / "board")
    text = written["leaderboard.md"].read_text()
    configurations = text.split("### Configurations")[1].split("### Runs")[0]
    table = [line for line in configurations.splitlines() if line.startswith("|")]
    assert "val/dice_mean (mean ± std)" in table[0] and "test/dice_mean (mean ± std)" in table[0]
    first, second = table[2], table[3]
    # Ranked by the mean validation Dice (0.80 against 0.55), not by the better test Dice.
    assert first.startswith("| 1 | synapse_mednext_s | mednext | S |")
    assert "| 3 | 0 | 0, 1, 2 |" in first
    assert "0.8000 ± 0.1000 (n=3)" in first and "0.6200 ± 0.0200 (n=3)" in first
    assert second.startswith("| 2 | synapse_resenc_m | resenc | M |")
    assert "| 2 | 0, 1 |  |" in second and "0.9100 ± 0.0141 (n=2)" in second
    assert "ranked by the mean val dice_mean" in configurations
    page = written["index.html"].read_text()
    assert "0.8000 ± 0.1000 (n=3)" in page and "<h3>Configurations</h3>" in page


def test_configurations_without_validation_are_ranked_by_test(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "synapse_a/20260101-000000", test=segmentation(0.7, 5.0), group_key="a")
    write_run(runs, "synapse_b/20260101-000000", test=segmentation(0.8, 5.0), group_key="b")
    # A run recorded before group keys existed is a configuration of its own.
    write_run(runs, "synapse_c/20260101-000000", test=segmentation(0.75, 5.0))
    text = write_leaderboard(runs, tmp_path / "board")["leaderboard.md"].read_text()
    configurations = text.split("### Configurations")[1].split("### Runs")[0]
    rows = [line for line in configurations.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[1] for row in rows] == ["synapse_b", "synapse_c", "synapse_a"]
    assert "ranked by the mean test dice_mean (not every configuration has a validation" in text
