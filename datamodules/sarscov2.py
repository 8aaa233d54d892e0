"""SARS-COV2-CT-Scan (Soares et al. 2020, Kaggle plameneduardo/sarscov2-ctscan-dataset):
``COVID/*.png`` and ``non-COVID/*.png``, read by the class-folder mechanism."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import synthetic
from datamodules.base import dataset_root
from datamodules.image_folders import ImageFolderConfig, ImageFolderDataModule

#: The class folders of the download and their accepted names (``folder_key``).
SARSCOV2_FOLDERS = {"non-COVID": ("noncovid",), "COVID": ("covid",)}


class SarsCov2DataModule(ImageFolderDataModule):
    """SARS-COV2-CT-Scan (Soares et al. 2020): 1,252 COVID and 1,230 non-COVID CT slices from
    São Paulo, PNG of varying size, no patient ids: a stratified seeded 80/10/10 split by image
    (or ``fold=k``)."""

    @dataclass
    class Config(ImageFolderConfig):
        """The ``data:`` keys for ``name: sarscov2`` (see ``ImageFolderConfig``)."""

        name: str = "sarscov2"
        root: str = field(default_factory=lambda: dataset_root("SARS-COV2-CT-Scan"))

    title = "SARS-COV2-CT-Scan"
    #: Negative first, so that label 1 is the finding (binary metrics' positive class).
    CLASS_NAMES = ("non-COVID", "COVID")
    FOLDERS = SARSCOV2_FOLDERS
    DOWNLOAD = "https://www.kaggle.com/datasets/plameneduardo/sarscov2-ctscan-dataset"
    LAYOUT = """\
  <root>/COVID/Covid (1).png ... Covid (1252).png
  <root>/non-COVID/Non-Covid (1).png ... Non-Covid (1230).png"""
    EXAMPLE_EXPERIMENT = "sarscov2_mednext_lite_t"

    @classmethod
    def write_synthetic(cls, root: Path, seed: int = 0, **options: Any) -> Path:
        return write_sarscov2(root, seed=seed, **options)


def write_sarscov2(root: str | Path, seed: int = 0, per_class: int = 12) -> Path:
    """A fake SARS-COV2-CT-Scan under ``root``: ``COVID/Covid (N).png`` and
    ``non-COVID/Non-Covid (N).png``, ``per_class`` each. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = [root / "non-COVID", root / "COVID"]
    for label, (folder, prefix) in enumerate(zip(folders, ("Non-Covid", "Covid"), strict=True)):
        for index in range(per_class):
            image = synthetic.class_image(rng, label, 2, color=False)
            synthetic.save_scan(image, folder / f"{prefix} ({index + 1}).png", index)
    synthetic.write_junk(root, folders)
    return root
