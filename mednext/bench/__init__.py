"""``mednext bench``: speed and peak memory of the suite's networks against references measured
in the same run.

- ``cli``: the command's options, built without importing torch, and ``run``.
- ``parts``: one ``BenchPart`` per ``--part``, and the settings of a run.
- ``harness``: timed steps, peak memory, the progress display.
- ``report``: the Rich tables and the Markdown sections.

This module holds only what the options need, so it stays free of torch too."""

from pathlib import Path

DESCRIPTION = (
    "What the suite does against a reference measured in the same process: a MedNeXt training "
    "step in every fast mode vs MONAI's MedNeXt (--part 3d), the training data pipeline vs "
    "nnU-Net v2's batchgeneratorsv2 pipeline (--part loader), building a dataset's cache "
    "sequentially vs in parallel (--part preprocess), sliding-window inference with mirroring vs "
    "MONAI's sliding_window_inference looping over the flips (--part predict), the MedNeXt-Lite "
    "classifiers vs MONAI's ResNet-50 (--part classifier), CMUNeXt and the MedNeXt-Lite "
    "segmenters vs CMUNeXt-base (--part seg2d). A full run rewrites each part's marked section "
    "of docs/benchmarks.md and its entry of docs/bench.json; --quick only prints its tables "
    "unless --output is given."
)
#: The parts, in the order they run.
PARTS = ("3d", "loader", "preprocess", "predict", "classifier", "seg2d")
DEFAULT_OUTPUT = Path("docs/benchmarks.md")
#: The figures of every part's last run, beside the Markdown file.
JSON_NAME = "bench.json"
DEFAULT_KERNEL_SIZE = 3
#: MONAI's ``create_mednext`` fixes ``init_filters`` to this width.
MONAI_FACTORY_WIDTH = 32
#: The training-step modes of the 3D part: ``+``-joined features, ``fp32`` alone the plain step.
MODE_FEATURES = (
    "channels-last",
    "compile",
    "bf16",
    "fp16",
    "checkpoint-block",
    "checkpoint-stage",
)
PLAIN_MODE = "fp32"
