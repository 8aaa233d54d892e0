"""LightningDataModules for the datasets of the suite, by registry name.

``build_datamodule(data, seed)`` turns an experiment's validated ``data:`` group into a
DataModule: ``datamodule_class(data["name"])`` gives the class, whose ``Config`` dataclass lists
every key the group accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamodules.acdc import ACDCVolumeDataModule
from datamodules.base import did_you_mean
from datamodules.brain_demo import BrainDemoDataModule
from datamodules.synapse import SynapseVolumeDataModule
from datamodules.volumes import VolumeDataModule

#: Registry name -> DataModule class.
DATAMODULES: dict[str, type[VolumeDataModule]] = {
    "synapse": SynapseVolumeDataModule,
    "acdc": ACDCVolumeDataModule,
    "brain_demo": BrainDemoDataModule,
}


def datamodule_class(name: str) -> type[VolumeDataModule]:
    """The DataModule class registered as ``name``; ``KeyError`` listing the known names."""
    if name not in DATAMODULES:
        raise KeyError(
            f"unknown dataset {name!r}{did_you_mean(name, list(DATAMODULES))}; "
            f"known: {', '.join(sorted(DATAMODULES))}"
        )
    return DATAMODULES[name]


def build_datamodule(data: Mapping[str, Any], seed: int = 0) -> VolumeDataModule:
    """The DataModule of an experiment's ``data:`` group (``name`` selects the dataset, the other
    keys are its ``Config`` fields) with the experiment's ``seed``."""
    cls = datamodule_class(data["name"])
    return cls(cls.Config(**data), seed=seed)
