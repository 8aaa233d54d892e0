"""LightningDataModules for the datasets of the suite, by registry name.

``build_datamodule(data, seed)`` turns an experiment's validated ``data:`` group into a
DataModule: ``datamodule_class(data["name"])`` gives the class, whose ``Config`` dataclass lists
every key the group accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from datamodules.acdc import ACDCSliceDataModule, ACDCVolumeDataModule
from datamodules.base import did_you_mean
from datamodules.brain_demo import BrainDemoDataModule
from datamodules.image_folders import CovidCTDataModule, MSLDDataModule, SarsCov2DataModule
from datamodules.synapse import SynapseSliceDataModule, SynapseVolumeDataModule

#: Registry name -> DataModule class (``VolumeDataModule`` for the 3D segmentation sets,
#: ``SliceDataModule`` for their 2D releases, ``ImageFolderDataModule`` for the classification
#: sets).
DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "synapse": SynapseVolumeDataModule,
    "acdc": ACDCVolumeDataModule,
    "synapse2d": SynapseSliceDataModule,
    "acdc2d": ACDCSliceDataModule,
    "brain_demo": BrainDemoDataModule,
    "sarscov2": SarsCov2DataModule,
    "msld": MSLDDataModule,
    "covidct": CovidCTDataModule,
}


def datamodule_class(name: str) -> type[L.LightningDataModule]:
    """The DataModule class registered as ``name``; ``KeyError`` listing the known names."""
    if name not in DATAMODULES:
        raise KeyError(
            f"unknown dataset {name!r}{did_you_mean(name, list(DATAMODULES))}; "
            f"known: {', '.join(sorted(DATAMODULES))}"
        )
    return DATAMODULES[name]


def build_datamodule(data: Mapping[str, Any], seed: int = 0) -> L.LightningDataModule:
    """The DataModule of an experiment's ``data:`` group (``name`` selects the dataset, the other
    keys are its ``Config`` fields) with the experiment's ``seed``."""
    cls = datamodule_class(data["name"])
    return cls(cls.Config(**data), seed=seed)
