"""Classification end to end at toy size: `mednext train` on the synthetic layouts of the three
classification datasets through the real code path (config → DataModule → Lightning → run
directory), metrics checked against scikit-learn on the written predictions, then `mednext test`
and `mednext predict`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mednext.cli import main
from mednext.tasks.optim import lr_factor

METRIC_KEYS = {
    "acc",
    "balanced_acc",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "specificity",
    "auroc",
}


@pytest.fixture(scope="module")
def sarscov2_run(tmp_path_factory: pytest.TempPathFactory, toy_runs) -> Path:
    base = tmp_path_factory.mktemp("sarscov2")
    assert (
        main(
            [
                "train",
                "sarscov2_mednext_lite_t",
                *toy_runs.overrides("image_folders", base / "runs", base / "cache"),
            ]
        )
        == 0
    )
    return toy_runs.only_run(base / "runs", "sarscov2_mednext_lite_t")


def test_train_writes_the_run_directory_with_every_classification_metric(
    sarscov2_run: Path,
    toy_runs,
) -> None:
    for name in ("config.yaml", "split.json", "metrics.csv", "results.json"):
        assert (sarscov2_run / name).is_file(), name
    assert (sarscov2_run / "checkpoints" / "best.ckpt").is_file()
    assert (sarscov2_run / "checkpoints" / "last.ckpt").is_file()
    for figure in ("test_confusion_matrix.png", "test_roc.png", "val_confusion_matrix.png"):
        assert (sarscov2_run / "predictions" / figure).is_file(), figure
    results = json.loads((sarscov2_run / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 2
    assert results["model"] == {"name": "mednext_lite", "variant": "T"}
    assert results["dataset"] == "sarscov2"
    assert results["params"] > 0 and results["flops"] > 0 and results["throughput"] > 0
    for stage in ("val", "test"):
        assert set(results["metrics"][stage]) == METRIC_KEYS
        assert all(0 <= v <= 1 for v in results["metrics"][stage].values())
    logged = toy_runs.read_csv(sarscov2_run / "metrics.csv")
    assert any(row.get("val/acc") for row in logged) and any(
        row.get("train/loss_epoch") for row in logged
    )


def test_test_metrics_agree_with_scikit_learn_on_the_written_predictions(
    sarscov2_run: Path,
    toy_runs,
) -> None:
    results = json.loads((sarscov2_run / "results.json").read_text())["metrics"]["test"]
    rows = toy_runs.read_csv(sarscov2_run / "predictions" / "test_predictions.csv")
    names = [key.removeprefix("p_") for key in rows[0] if key.startswith("p_")]
    split = json.loads((sarscov2_run / "split.json").read_text())
    assert sorted(row["path"] for row in rows) == sorted(
        item["path"] for item in split["split"]["test"]
    )
    truth = np.array([names.index(row["label"]) for row in rows])
    predicted = np.array([names.index(row["prediction"]) for row in rows])
    scores = np.array([[float(row[f"p_{n}"]) for n in names] for row in rows])
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    confusion = skm.confusion_matrix(truth, predicted, labels=range(len(names)))
    negatives = confusion.sum() - confusion.sum(0) - confusion.sum(1) + np.diag(confusion)
    specificity = np.mean(negatives / (negatives + confusion.sum(0) - np.diag(confusion)))
    auroc = (
        skm.roc_auc_score(truth, scores[:, 1])
        if len(names) == 2
        else skm.roc_auc_score(truth, scores, multi_class="ovr", average="macro")
    )
    expected = {
        "acc": skm.accuracy_score(truth, predicted),
        "balanced_acc": skm.balanced_accuracy_score(truth, predicted),
        "precision_macro": skm.precision_score(truth, predicted, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(truth, predicted, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(truth, predicted, average="macro", zero_division=0),
        "specificity": specificity,
        "auroc": auroc,
    }
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-5), key


def test_mednext_test_reproduces_the_recorded_test_metrics(
    sarscov2_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = json.loads((sarscov2_run / "results.json").read_text())["metrics"]["test"]
    assert main(["test", str(sarscov2_run)]) == 0
    assert "test accuracy:" in capsys.readouterr().out
    again = json.loads((sarscov2_run / "results.json").read_text())
    assert again["status"] == "completed"
    for key, value in recorded.items():
        assert again["metrics"]["test"][key] == pytest.approx(value, abs=1e-6), key


def test_predict_writes_probabilities_and_names_unreadable_images(
    sarscov2_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], toy_runs
) -> None:
    split = json.loads((sarscov2_run / "split.json").read_text())
    root = Path(split["root"])
    folder = tmp_path / "images"
    shutil.copytree(root, folder)
    # Every image of the split (the junk of the synthetic copy, like __MACOSX/._*, is not one).
    images = [folder / item["path"] for part in split["split"].values() for item in part]
    assert list(folder.rglob("._*")) and list(folder.rglob(".DS_Store"))
    (folder / "notes.txt").write_text("not an image")
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    checkpoint = sarscov2_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "1 of" in error and "broken.png" in error and "Traceback" not in error
    rows = toy_runs.read_csv(out / "predictions.csv")
    assert sorted(row["path"] for row in rows) == sorted(map(str, images))
    names = [key.removeprefix("p_") for key in rows[0] if key.startswith("p_")]
    assert set(names) == {"COVID", "non-COVID"}
    for row in rows:
        probabilities = [float(row[f"p_{n}"]) for n in names]
        assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-5)
        assert row["prediction"] == names[int(np.argmax(probabilities))]
    # The CSV agrees with the test loader's predictions for the test images.
    tested = {
        row["path"]: row
        for row in toy_runs.read_csv(sarscov2_run / "predictions" / "test_predictions.csv")
    }
    by_name = {Path(row["path"]).relative_to(folder).as_posix(): row for row in rows}
    for path, row in tested.items():
        for name in names:
            assert float(by_name[path][f"p_{name}"]) == pytest.approx(
                float(row[f"p_{name}"]), abs=1e-4
            )


@pytest.mark.parametrize(
    "experiment, per_class",
    # covidct: enough synthetic patients that a patient-level split has every class everywhere.
    [("msld_mednext_lite_t", 12), ("covidct_mednext_lite_t", 40)],
)
def test_the_other_datasets_train_and_test(
    experiment: str, per_class: int, tmp_path: Path, toy_runs
) -> None:
    root = tmp_path / "runs"
    extra = ["trainer.max_epochs=1", f"data.synthetic_per_class={per_class}"]
    assert (
        main(
            [
                "train",
                experiment,
                *toy_runs.overrides("image_folders", root, tmp_path / "cache", *extra),
            ]
        )
        == 0
    )
    results = json.loads((toy_runs.only_run(root, experiment) / "results.json").read_text())
    assert results["status"] == "completed"
    assert set(results["metrics"]["test"]) == METRIC_KEYS


def test_warmup_then_cosine_schedule() -> None:
    factor = lr_factor("cosine", total=100, warmup=10, floor=0.01)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(100) == pytest.approx(0.01)
    assert lr_factor("poly", total=10, power=1.0)(5) == pytest.approx(0.5)


def test_label_smoothing_reaches_the_loss() -> None:
    from mednext.tasks.classification import ClassificationTask

    task = ClassificationTask(
        model={"name": "mednext_lite", "width": 8, "depths": [1, 1, 1, 1]},
        in_channels=3,
        num_classes=2,
        class_names=["a", "b"],
        optim={},
        loss={"label_smoothing": 0.2},
    )
    logits = torch.tensor([[10.0, -10.0]])
    # With smoothing 0.2 the target is (0.9, 0.1): a confident right answer still costs ~2.
    assert task.criterion(logits, torch.tensor([0])).item() == pytest.approx(0.1 * 20, rel=1e-3)


def test_an_image_size_the_network_cannot_take_fails_before_any_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toy_runs
) -> None:
    root = tmp_path / "runs"
    arguments = toy_runs.overrides("image_folders", root, tmp_path / "cache", "data.image_size=100")
    assert main(["train", "sarscov2_mednext_lite_t", *arguments]) == 2
    error = capsys.readouterr().err
    assert "data.image_size=100" in error and "multiples of 32" in error
    assert "Traceback" not in error and not root.exists()
