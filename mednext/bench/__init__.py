"""``mednext bench``: speed and peak memory of the suite's networks against references measured
in the same run.

- ``cli``: the command's options, built without importing torch, and ``run``.
- ``parts``: one ``BenchPart`` per ``--part``, and the settings of a run.
- ``harness``: timed steps, peak memory, the progress display.
- ``report``: the Rich tables and the Markdown sections.

This module holds only what the options need, so it stays free of torch too."""

from pathlib import Path

DESCRIPTION = (
    "Training and inference speed, and peak memory of one training step, against a reference "
    "measured in the same process: our 3D MedNeXt vs MONAI's MedNeXt (--part 3d), the "
    "MedNeXt-Lite classifiers vs MONAI's ResNet-50 at 224² (--part classifier), CMUNeXt and the "
    "MedNeXt-Lite segmenters vs CMUNeXt-base at 224² (--part seg2d). Each part rewrites its own "
    "marked section of docs/benchmarks.md (--quick: sections of their own)."
)
#: The parts, in the order they run.
PARTS = ("3d", "classifier", "seg2d")
DEFAULT_OUTPUT = Path("docs/benchmarks.md")
DEFAULT_KERNEL_SIZE = 3
#: MONAI's ``create_mednext`` fixes ``init_filters`` to this width.
MONAI_FACTORY_WIDTH = 32
