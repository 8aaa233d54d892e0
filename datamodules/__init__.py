"""The DataModules of the suite by registry name, and the dataset commands dispatched to them.

``build_datamodule(data, seed)`` turns an experiment's validated ``data:`` group into a
DataModule: ``datamodule_class(data["name"])`` gives the class, whose ``Config`` dataclass lists
every key the group accepts. ``write_dataset`` (``mednext data synthetic``) and
``prepare_dataset`` (``mednext data prepare``) call the dataset's own ``write_synthetic`` and
``prepare_release``.

Each dataset module is imported when its name is first looked up, so importing this package (and
``datamodules.errors`` or ``datamodules.preprocessing`` through it) loads neither torch nor
Lightning, and no dataset module ever imports this registry back.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamodules.errors import DataError, did_you_mean
from mednext.files import atomic_folder

if TYPE_CHECKING:
    from datamodules.base import SuiteDataModule

#: Registry name -> (module, class): ``VolumeDataModule`` subclasses for the 3D segmentation sets
#: (``nnunet``: any nnU-Net v2 raw dataset folder), ``SliceDataModule`` for their 2D releases,
#: ``ImageFolderDataModule`` for the classification sets.
_LOCATIONS: dict[str, tuple[str, str]] = {
    "synapse": ("datamodules.synapse", "SynapseVolumeDataModule"),
    "acdc": ("datamodules.acdc", "ACDCVolumeDataModule"),
    "synapse2d": ("datamodules.synapse", "SynapseSliceDataModule"),
    "acdc2d": ("datamodules.acdc", "ACDCSliceDataModule"),
    "brain_demo": ("datamodules.brain_demo", "BrainDemoDataModule"),
    "nnunet": ("datamodules.nnunet", "NnUNetDataModule"),
    "sarscov2": ("datamodules.sarscov2", "SarsCov2DataModule"),
    "msld": ("datamodules.msld", "MSLDDataModule"),
    "covidct": ("datamodules.covidct", "CovidCTDataModule"),
}


class _Registry(Mapping[str, type]):
    """Registry name -> DataModule class, each module imported on first look-up."""

    def __getitem__(self, name: str) -> type[SuiteDataModule]:
        module, class_name = _LOCATIONS[name]
        return getattr(importlib.import_module(module), class_name)

    def __iter__(self) -> Iterator[str]:
        return iter(_LOCATIONS)

    def __len__(self) -> int:
        return len(_LOCATIONS)


DATAMODULES: Mapping[str, type] = _Registry()


def datamodule_class(name: str) -> type[SuiteDataModule]:
    """The DataModule class registered as ``name``; ``KeyError`` listing the known names."""
    if name not in _LOCATIONS:
        raise KeyError(
            f"unknown dataset {name!r}{did_you_mean(name, list(_LOCATIONS))}; "
            f"known: {', '.join(sorted(_LOCATIONS))}"
        )
    return DATAMODULES[name]


def build_datamodule(data: Mapping[str, Any], seed: int = 0) -> SuiteDataModule:
    """The DataModule of an experiment's ``data:`` group (``name`` selects the dataset, the other
    keys are its ``Config`` fields) with the experiment's ``seed``."""
    cls = datamodule_class(data["name"])
    return cls(cls.Config(**data), seed=seed)


def write_dataset(
    name: str,
    root: str | Path,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    **options: Any,
) -> Path:
    """A synthetic copy of dataset ``name`` under ``root`` (``shape`` = voxels per case of a 3D
    or 2D-release set, the writer's default when ``None``; ``options`` go to the writer, e.g.
    ``per_class`` and ``version`` of the image sets); returns the folder to use as ``data.root``."""
    if name not in _LOCATIONS:
        raise DataError(
            f"no synthetic copy of {name!r}{did_you_mean(name, list(_LOCATIONS))}; available: "
            f"{', '.join(sorted(_LOCATIONS))}"
        )
    if shape is not None:
        options["shape"] = tuple(shape)
    root = Path(root)
    try:
        # Written under a temporary name and renamed into place: never half a copy at ``root``.
        with atomic_folder(root) as folder:
            DATAMODULES[name].write_synthetic(folder, seed=seed, **options)
    except FileExistsError as error:
        raise DataError(f"{error}; remove it or choose another folder") from error
    return root


def prepare_dataset(name: str, raw_root: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``mednext data prepare NAME RAW_ROOT OUT_DIR``: the 2D release of dataset ``name`` rebuilt
    from its raw 3D download; returns a summary of what was written."""
    cls = DATAMODULES[name] if name in _LOCATIONS else None
    if cls is None or not hasattr(cls, "prepare_release"):
        preparable = sorted(n for n, c in DATAMODULES.items() if hasattr(c, "prepare_release"))
        raise DataError(
            f"no 2D release to prepare for {name!r}; available: {', '.join(preparable)}"
        )
    return cls.prepare_release(Path(raw_root).expanduser(), Path(out_dir).expanduser())
