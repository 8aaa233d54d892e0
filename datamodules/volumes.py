"""3D volumes: the DataModule of the 3D sets (raw NIfTI as downloaded → cache → patches and whole
cases), following nnU-Net v2 (Isensee et al., Nature Methods 2021; MIC-DKFZ/nnUNet).

Validation and the preprocessing cache are ``datamodules.volume_cache``; the training patches and
their augmentation ``datamodules.patches`` and ``datamodules.augmentation``; what prediction
repeats ``datamodules.preprocessing``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import DataLoader

from datamodules.base import DataConfig, SuiteDataModule, size_problems
from datamodules.errors import DataError
from datamodules.patches import CachedCase, CaseDataset, PatchDataset, augment_batch
from datamodules.preprocessing import CT_PERCENTILES, IMAGE_ORDER, channel_scheme
from datamodules.volume_cache import (
    CACHE_FORMAT,
    CaseFiles,
    build_cache,
    cache_is_current,
    cache_key,
    input_records,
    manifest_inputs,
    manifest_normalization,
    preprocess_workers,
    read_manifest,
)

log = logging.getLogger(__name__)


# --- the DataModule ---------------------------------------------------------------------------


@dataclass
class VolumeConfig(DataConfig):
    """Keys of the ``data:`` group shared by the 3D datasets (each dataset sets its defaults;
    the common keys are ``DataConfig``'s).

    Attributes:
        batch_size: training patches per batch (validation and test: one whole case).
        patch_size: training patch and sliding-window size, each a multiple of 16.
        spacing: target voxel size in mm. Both in the working axis order: RAS (x, y, z), or the
            voxel axes for a dataset that does not reorient (ACDC).
        iterations_per_epoch: training batches per epoch (nnU-Net: 250).
        foreground_oversample: probability that a training patch is centred on foreground
            (nnU-Net: 0.33).
        augment: nnU-Net v2's augmentation of training patches (``datamodules.augmentation``).
        preprocess_workers: processes that validate and preprocess cases in parallel (``None``:
            one per CPU core, at most the number of cases; 1: in this process).
        augment_on: where it runs: ``cpu`` in the loader workers, or ``gpu``: the workers crop
            the regions and draw the random choices, the transforms run on the training device
            after the batch is transferred (the same distribution).
        synthetic_shape: voxels per synthetic case (``source=synthetic``).
    """

    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    iterations_per_epoch: int = 250
    foreground_oversample: float = 0.33
    augment_on: str = "cpu"
    preprocess_workers: int | None = None
    synthetic_shape: list[int] = field(default_factory=lambda: [48, 48, 24])


class VolumeDataModule(SuiteDataModule):
    """A 3D segmentation dataset: raw NIfTI as downloaded → cache → patches and whole cases.

    Subclasses set the dataset constants and implement ``find_cases`` (the raw layout),
    ``make_split`` (the official split and the folds) and ``write_synthetic``. Attributes
    available right after construction: ``channel_names`` and ``in_channels``, ``num_classes``,
    ``class_names`` (index 0 ``background``), ``spacing``, ``patch_size``. After ``setup``:
    ``split`` (``train``/``val``/``test`` case ids) and ``normalization``.
    """

    Config: ClassVar[type[VolumeConfig]] = VolumeConfig
    task = "segmentation"
    evaluation = "volume"
    spatial_dims = 3
    INPUT_SIZE_KEY = "patch_size"
    #: The input channels by nnU-Net's ``channel_names`` convention, which also chooses each
    #: channel's normalisation (``channel_scheme``): ``CT`` dataset-wide CT normalisation, ``MR``
    #: (or any name without a scheme of its own) per-case z-score.
    channel_names: tuple[str, ...]
    #: Reorient to the closest RAS axes before resampling; off keeps the voxel axes (for stacks
    #: whose slice axis must stay the third axis whatever their obliquity).
    reorient: ClassVar[bool] = True

    def __init__(self, config: VolumeConfig | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.spacing = self.target_spacing()
        self.patch_size = tuple(int(p) for p in self.config.patch_size)
        self.input_size = self.patch_size
        self._manifest: dict[str, Any] | None = None
        self._cases: dict[str, CachedCase] = {}

    def config_problems(self) -> list[str]:
        config, problems = self.config, super().config_problems()
        if len(config.patch_size) != 3 or any(p <= 0 or p % 16 for p in config.patch_size):
            problems.append(
                f"patch_size must be 3 positive multiples of 16 (MedNeXt halves it four times), "
                f"not {list(config.patch_size)}"
            )
        if config.spacing is not None and (
            len(config.spacing) != 3 or any(s <= 0 for s in config.spacing)
        ):
            problems.append(f"spacing must be 3 positive sizes in mm, not {list(config.spacing)}")
        if config.iterations_per_epoch < 1:
            problems.append(
                f"iterations_per_epoch must be at least 1, not {config.iterations_per_epoch}"
            )
        if not 0 <= config.foreground_oversample <= 1:
            problems.append(
                f"foreground_oversample must be in [0, 1], not {config.foreground_oversample}"
            )
        if config.preprocess_workers is not None and config.preprocess_workers < 1:
            problems.append(
                f"preprocess_workers must be at least 1 (or null: one per core), not "
                f"{config.preprocess_workers}"
            )
        if config.augment_on not in ("cpu", "gpu"):
            problems.append(f"augment_on must be 'cpu' or 'gpu', not {config.augment_on!r}")
        return problems + size_problems(synthetic_shape=config.synthetic_shape)

    # -- dataset specific --

    def target_spacing(self) -> tuple[float, float, float]:
        """The voxel size of the model grid, mm: ``data.spacing`` (a dataset may derive it from
        its files when that is null)."""
        return tuple(float(s) for s in self.config.spacing)

    def find_cases(self, root: Path) -> tuple[list[CaseFiles], list[str]]:
        """The raw cases under ``root`` and the problems finding them (a missing image or
        label, an unreadable Info.cfg). Raises ``DataError`` when the dataset is not there."""
        raise NotImplementedError

    def make_split(self, case_ids: Sequence[str]) -> dict[str, list[str]]:
        """``{"train", "val", "test"}`` case ids from the config (``fold``, ``split_seed``)."""
        raise NotImplementedError

    def is_test_case(self, case_id: str) -> bool:
        """Whether ``case_id`` is a test case of every split (the CT normalisation statistics
        come from all other cases, so the cache does not depend on the fold)."""
        raise NotImplementedError

    # -- declared --

    @property
    def in_channels(self) -> int:
        """One network input channel per entry of ``channel_names``."""
        return len(self.channel_names)

    @property
    def schemes(self) -> tuple[str, ...]:
        """The normalisation scheme of each channel (``channel_scheme`` of its name)."""
        return tuple(channel_scheme(name) for name in self.channel_names)

    def synthetic_options(self) -> dict[str, Any]:
        return dict(shape=tuple(self.config.synthetic_shape))

    @property
    def normalization(self) -> list[dict[str, Any]]:
        """The intensity normalisation of the cache, one record per channel (JSON-serialisable),
        for ``preprocess_image`` at prediction time: ``ct`` ``{"scheme": "ct", "clip", "mean",
        "std"}`` from that channel's foreground in the non-test training cases, per-case schemes
        ``{"scheme": "zscore"}`` (or ``none``, ``minmax``, ``rgb``)."""
        if self._manifest is None:
            raise RuntimeError(f"{self.title}: call prepare_data() and setup() first")
        return manifest_normalization(self._manifest)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The keyword arguments of ``preprocess_image`` that reproduce the cache (``spacing``,
        ``normalization`` with one record per channel, ``reorient``; JSON-serialisable):
        ``preprocess_image(channel_files, **dm.preprocessing)``."""
        return dict(
            spacing=list(self.spacing), normalization=self.normalization, reorient=self.reorient
        )

    # -- the cache --

    def preprocessing_parameters(self) -> dict[str, Any]:
        """Everything the cached cases depend on besides the input files. ``modality`` is the
        channel names joined by ``+``: for one channel the key and value that caches had before
        multi-channel inputs, so those caches stay valid."""
        return dict(
            format=CACHE_FORMAT,
            dataset=self.config.name,
            root=str(self.root.resolve()),
            spacing=list(self.spacing),
            reorient=self.reorient,
            modality="+".join(self.channel_names),
            image_order=IMAGE_ORDER,
            ct_percentiles=list(CT_PERCENTILES) if "ct" in self.schemes else None,
        )

    @property
    def cache_path(self) -> Path:
        """The folder of the preprocessed cases: one per parameter set, so experiments at
        different spacings keep their own caches."""
        parameters = self.preprocessing_parameters()
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        return self.cache_dir / "preprocessed" / f"{spacing}mm-{cache_key(parameters)}"

    # -- Lightning hooks --

    def prepare_dataset(self) -> None:
        """Validate the raw dataset and preprocess it into ``cache_path`` unless an identical
        cache is already there."""
        cases, problems = self.find_cases(self.root)
        parameters = self.preprocessing_parameters()
        folder = self.cache_path
        if not problems and cache_is_current(folder, parameters, input_records(cases)):
            log.info("%s: using the preprocessed cache %s", self.title, folder)
            return
        build_cache(
            folder,
            parameters,
            cases,
            problems,
            title=f"{self.title} at {self.root}",
            schemes=self.schemes,
            statistics={c.case_id for c in cases if not self.is_test_case(c.case_id)},
            spacing=self.spacing,
            reorient=self.reorient,
            num_classes=self.num_classes,
            workers=preprocess_workers(self.config.preprocess_workers, len(cases)),
        )

    def setup(self, stage: str | None = None) -> None:
        """Read the cache's manifest and make the split and the cases of each part (once; later
        stages reuse it)."""
        if self._manifest is not None:
            return
        folder = self.cache_path
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("parameters") != self.preprocessing_parameters():
            raise DataError(
                f"{self.title}: no preprocessed cache at {folder}; call prepare_data() first "
                "(the Trainer does)"
            )
        self._manifest = manifest
        self.split = self.make_split(sorted(manifest["cases"]))
        locations = set(self.split["train"])
        self._cases = {
            case_id: self._cached_case(folder, case_id, with_locations=case_id in locations)
            for case_ids in self.split.values()
            for case_id in case_ids
        }

    def split_record(self) -> dict[str, Any]:
        """The spacing, the cache, the split and every case's raw files (``images``: one per
        channel)."""
        files = {
            entry["case_id"]: dict(
                images=[image["path"] for image in entry["images"]], label=entry["label"]["path"]
            )
            for entry in manifest_inputs(self._manifest)
        }
        return dict(
            spacing=list(self.spacing),
            cache=str(self.cache_path),
            split=self.split,
            files={c: files[c] for ids in self.split.values() for c in ids},
        )

    def train_dataloader(self) -> DataLoader:
        """Random augmented patches: ``image`` (B, C, *patch_size) float32, ``label``
        (B, 1, *patch_size) int64; ``iterations_per_epoch`` batches per epoch."""
        dataset = PatchDataset(
            [self._cases[c] for c in self.split["train"]],
            self.patch_size,
            length=self.config.iterations_per_epoch * self.config.batch_size,
            foreground_oversample=self.config.foreground_oversample,
            augment=self.config.augment,
            augment_here=self.config.augment_on == "cpu",
        )
        return self.training_loader(dataset, shuffle=False, drop_last=True)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on: gpu``, the augmentation of a training batch, on its device."""
        if isinstance(batch, dict) and "augmentation" in batch:
            return augment_batch(batch, self.patch_size)
        return batch

    def val_dataloader(self) -> DataLoader:
        """Whole validation cases, batch size 1: ``image`` (1, C, X, Y, Z), ``label``
        (1, 1, X, Y, Z), ``case_id`` [str]."""
        return self._case_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Whole test cases, as ``val_dataloader``."""
        return self._case_loader("test")

    # -- internals --

    def _case_loader(self, part: str) -> DataLoader:
        return self.evaluation_loader(CaseDataset([self._cases[c] for c in self.split[part]]), 1)

    def _cached_case(self, folder: Path, case_id: str, with_locations: bool) -> CachedCase:
        entry = self._manifest["cases"][case_id]
        locations: dict[int, np.ndarray] = {}
        if with_locations:
            with np.load(folder / entry["locations"]) as stored:
                locations = {int(c): stored[c] for c in stored.files}
        return CachedCase(
            case_id=case_id,
            image=folder / entry["image"],
            label=folder / entry["label"],
            shape=tuple(entry["shape"]),
            locations=locations,
        )
