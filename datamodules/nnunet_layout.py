"""nnU-Net v2 raw datasets: ``dataset.json``, one image file per input channel, and
``splits_final.json`` (Isensee et al., Nature Methods 2021; MIC-DKFZ/nnUNet,
``documentation/dataset_format.md``).

A dataset folder ``DatasetXXX_Name/`` holds ``dataset.json`` (``channel_names``, ``labels``,
``numTraining``, ``file_ending``), ``imagesTr/<case>_<XXXX><file_ending>`` (``XXXX`` the 4-digit
channel), ``labelsTr/<case><file_ending>`` and optionally ``imagesTs/`` (inference only in
nnU-Net). Here it is read into ``CaseFiles`` for the volume cache, with every layout problem
reported with the file it concerns; the ``nnunet`` DataModule and the datasets that accept their
nnU-Net-converted copies (Synapse, ACDC) read it, and ``mednext predict`` groups its inputs by
the same channel naming (``channel_of``).

Splits are nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``, one per
fold; without one, nnU-Net's own seeded 5-fold split of the sorted case ids (``crossval_splits``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from datamodules.errors import DataError, problem_report
from datamodules.preprocessing import is_junk
from datamodules.volume_cache import CaseFiles

DATASET_JSON = "dataset.json"
SPLITS_FILE = "splits_final.json"
#: The ``file_ending`` values read (NIfTI, through nibabel). nnU-Net's other readers (``.nrrd``,
#: ``.mha``, ``.png``, ``.tif``) have no counterpart here.
FILE_ENDINGS = (".nii.gz", ".nii")
#: nnU-Net v2 ``nnUNetTrainer.do_split`` → ``generate_crossval_split``: ``KFold(n_splits=5,
#: shuffle=True, random_state=12345)`` over the sorted case ids.
NNUNET_SPLIT_SEED = 12345
NNUNET_FOLDS = 5
#: Where nnU-Net keeps ``splits_final.json``: ``$nnUNet_preprocessed/DatasetXXX_Name/``.
PREPROCESSED_VARIABLE = "nnUNet_preprocessed"
LAYOUT = """\
  <root>/dataset.json      {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0,
                            "PZ": 1, "TZ": 2}, "numTraining": 32, "file_ending": ".nii.gz"}
  <root>/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz, ...   (one file per channel)
  <root>/labelsTr/<case>.nii.gz
  <root>/imagesTs/<case>_0000.nii.gz ...   (optional; labelsTs/<case>.nii.gz makes a test set)
  <root>/splits_final.json                 (optional; nnU-Net's folds)"""

_CHANNEL_FILE = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")
_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


@dataclass(frozen=True)
class NnUNetDataset:
    """What ``dataset.json`` says about a raw dataset folder.

    Attributes:
        root: the ``DatasetXXX_Name`` folder.
        channel_names: ``channel_names`` in channel order (they choose each channel's
            normalisation: ``datamodules.preprocessing.channel_scheme``).
        class_names: the ``labels`` names ordered by their value ``0..K-1``.
        file_ending: ``.nii.gz`` or ``.nii``.
        num_training: ``numTraining``.
        files: the optional ``dataset`` key: per case its ``images`` and ``label`` paths
            (relative to ``root``), instead of the ``imagesTr``/``labelsTr`` names.
    """

    root: Path
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    file_ending: str
    num_training: int
    files: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def json_path(self) -> Path:
        return self.root / DATASET_JSON

    def image_name(self, case_id: str, channel: int) -> str:
        """``<case>_<XXXX><file_ending>``: the file of one channel of a case."""
        return f"{case_id}_{channel:04d}{self.file_ending}"

    def label_name(self, case_id: str) -> str:
        return f"{case_id}{self.file_ending}"


# --- dataset.json -----------------------------------------------------------------------------


def read_dataset_json(root: Path) -> NnUNetDataset:
    """The ``dataset.json`` of the raw dataset folder ``root``, checked: every problem (a missing
    key, region-based or non-consecutive labels, an unsupported ``file_ending``) in one
    ``DataError`` naming the file."""
    path = root / DATASET_JSON
    if not path.is_file():
        where = "is not a folder" if not root.is_dir() else f"has no {DATASET_JSON}"
        raise DataError(
            f"nnU-Net dataset: {root} {where}; an nnU-Net v2 raw dataset folder "
            f"(DatasetXXX_Name) holds:\n{LAYOUT}\nDry run without one: data.source=synthetic "
            "(e.g. `mednext train nnunet_mednext_s data.source=synthetic`)."
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON: {error}") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(content).__name__}")
    if "channel_names" not in content and ("modality" in content or "training" in content):
        raise DataError(
            f"{path} is an nnU-Net v1 dataset.json (modality, training); convert the dataset "
            "with nnUNetv2_convert_old_nnUNet_dataset"
        )
    problems = [f"missing key {key!r}" for key in _REQUIRED_KEYS if key not in content]
    channel_names = _channel_names(content.get("channel_names", {}), problems)
    class_names = _class_names(content.get("labels", {}), problems)
    if "regions_class_order" in content:
        problems.append(
            "regions_class_order: region-based training is not supported (labels must be one "
            "integer each)"
        )
    ending = content.get("file_ending")
    if "file_ending" in content and ending not in FILE_ENDINGS:
        problems.append(
            f"file_ending {ending!r} is not supported: the suite reads NIfTI images "
            f"({', '.join(FILE_ENDINGS)}) only"
        )
    count = content.get("numTraining")
    if "numTraining" in content and (not _is_int(count) or count < 1):
        problems.append(f"numTraining must be a positive integer, not {count!r}")
    files = content.get("dataset")
    if files is not None and not _valid_file_table(files):
        problems.append('dataset must map each case to {"images": [...], "label": "..."}')
    if problems:
        raise DataError(problem_report(f"nnU-Net {path}", problems))
    return NnUNetDataset(root, channel_names, class_names, ending, count, files)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _channel_names(channels: Any, problems: list[str]) -> tuple[str, ...]:
    """``{"0": "T2", "1": "ADC"}`` in channel order; keys must be 0..C-1, values names."""
    if not isinstance(channels, dict) or not channels:
        problems.append(f'channel_names must map "0", "1", ... to names, not {channels!r}')
        return ()
    expected = [str(i) for i in range(len(channels))]
    if sorted(channels, key=lambda k: (len(k), k)) != expected:
        problems.append(
            f"channel_names keys must be {', '.join(expected)} (the channels _0000 ...), "
            f"not {', '.join(map(str, channels))}"
        )
        return ()
    names = tuple(channels[key] for key in expected)
    if not all(isinstance(name, str) and name for name in names):
        problems.append(f"channel_names values must be names, not {list(names)}")
        return ()
    return names


def _class_names(labels: Any, problems: list[str]) -> tuple[str, ...]:
    """The ``labels`` names ordered by value; values must be the integers 0..K-1."""
    if not isinstance(labels, dict) or len(labels) < 2:
        problems.append(f"labels must map at least background and one class to 0, 1, ...: {labels}")
        return ()
    regions = {name: value for name, value in labels.items() if isinstance(value, list | tuple)}
    if regions:
        shown = ", ".join(f"{name!r}: {list(value)}" for name, value in regions.items())
        problems.append(
            f"labels {shown} are regions: region-based training is not supported (labels must "
            "be one integer each)"
        )
        return ()
    if "ignore" in labels:
        problems.append(
            f"labels: the ignore label ({labels['ignore']}) of sparse annotations is not supported"
        )
        return ()
    values = list(labels.values())
    if not all(_is_int(v) for v in values):
        problems.append(f"labels values must be integers, not {values}")
        return ()
    if sorted(values) != list(range(len(values))):
        problems.append(
            f"labels values must be the consecutive integers 0..{len(values) - 1} with background "
            f"0, not {sorted(values)}"
        )
        return ()
    return tuple(sorted(labels, key=labels.__getitem__))


def _valid_file_table(files: Any) -> bool:
    return isinstance(files, dict) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("images"), list)
        and isinstance(entry.get("label"), str)
        for entry in files.values()
    )


# --- the cases ----------------------------------------------------------------------------------


def channel_of(name: str, file_endings: Sequence[str]) -> tuple[str, int, str] | None:
    """``(case, channel, ending)`` of a file named ``<case>_<XXXX><ending>`` with one of
    ``file_endings``; ``None`` for a name that is not. The channel is the last ``_XXXX``:
    ``case_0001_0000.nii.gz`` is channel 0 of ``case_0001``."""
    ending = next((e for e in file_endings if name.endswith(e)), None)
    if ending is None:
        return None
    match = _CHANNEL_FILE.fullmatch(name[: -len(ending)])
    return (match["case"], int(match["channel"]), ending) if match else None


def group_channels(
    files: Iterable[Path], file_endings: Sequence[str], channels: int
) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """Files named ``<case>_<XXXX><ending>`` grouped by case (channel → file), and a problem for
    every file not so named or of a channel beyond ``channels`` (each naming the file)."""
    found: dict[str, dict[int, Path]] = {}
    problems = []
    last = f"{channels - 1:04d}"
    for path in sorted(files):
        named = channel_of(path.name, file_endings)
        if named is None:
            problems.append(
                f"{path} is not named <case>_<XXXX>{file_endings[0]} (XXXX: the 4-digit channel, "
                f"0000 to {last})"
            )
        elif named[1] >= channels:
            problems.append(
                f"{path}: channel {named[1]}, but there are {channels} (0000 to {last})"
            )
        else:
            found.setdefault(named[0], {})[named[1]] = path
    return found, problems


def missing_channels(
    case: str, files: Mapping[int, Path], channels: int, channel_names: Sequence[str] = ()
) -> list[str]:
    """A problem for every one of the ``channels`` channels that ``files`` (channel → file, of
    one case) lacks, naming the file expected beside the case's other files (and the channel's
    name when ``channel_names`` are known)."""
    present = next(iter(files.values()))
    ending = channel_of(present.name, FILE_ENDINGS)[2]
    return [
        f"{case}: missing {present.parent / f'{case}_{channel:04d}{ending}'} (channel {channel}"
        + (f", {channel_names[channel]})" if channel_names else ")")
        for channel in range(channels)
        if channel not in files
    ]


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files (``.nii.gz``, ``.nii``) directly in ``folder``, junk (hidden files,
    AppleDouble ``._`` twins) left out, sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.name.endswith(FILE_ENDINGS) and not is_junk(p.name) and p.is_file()
    )


def training_cases(dataset: NnUNetDataset) -> tuple[list[CaseFiles], list[str]]:
    """The training cases, ``imagesTr`` grouped by case with their ``labelsTr`` labels (or the
    ``dataset`` key's lists), and every problem naming its file: a missing folder, a file not
    named by the channel rule or not ending in ``file_ending``, a missing channel or label, a
    label without images, a count other than ``numTraining``."""
    if dataset.files is not None:
        cases, problems = listed_cases(dataset)
        count = len(dataset.files)
    else:
        cases, problems, count = _labelled_part(dataset, "imagesTr", "labelsTr", test=False)
    if count != dataset.num_training:
        problems.append(
            f"{dataset.json_path}: numTraining is {dataset.num_training}, but there are {count} "
            "training cases"
        )
    return cases, problems


def labelled_test_cases(dataset: NnUNetDataset) -> tuple[list[CaseFiles], list[str]]:
    """The labelled test cases: every ``labelsTs/<case>`` with its channels in ``imagesTs`` (an
    image in ``imagesTs`` without a label is for inference only, as in nnU-Net). No cases when
    there is no ``labelsTs/``."""
    if not (dataset.root / "labelsTs").is_dir():
        return [], []
    cases, problems, _ = _labelled_part(dataset, "imagesTs", "labelsTs", test=True)
    return cases, problems


def _labelled_part(
    dataset: NnUNetDataset, images: str, labels: str, test: bool
) -> tuple[list[CaseFiles], list[str], int]:
    """The cases of ``images`` with their ``labels``, the problems, and the number of cases in
    ``images``. Training (``test`` false): every case of ``images`` needs a label and every
    label images; test: every label needs images."""
    root, ending = dataset.root, dataset.file_ending
    absent = [
        f"no {root / name}/ folder" for name in (images, labels) if not (root / name).is_dir()
    ]
    if absent:
        return [], absent, 0
    files = nifti_files(root / images)
    problems = [
        f"{p} does not end in {ending}, the file_ending of {dataset.json_path}"
        for p in files
        if not p.name.endswith(ending)
    ]
    count = len(dataset.channel_names)
    grouped, naming = group_channels(
        [p for p in files if p.name.endswith(ending)], (ending,), count
    )
    label_files = {
        p.name[: -len(ending)]: p for p in nifti_files(root / labels) if p.name.endswith(ending)
    }
    cases = []
    unmatched = sorted(label_files) if test else sorted(set(label_files) - set(grouped))
    problems += [
        f"{label_files[case]} has no images in {root / images}/ (expected "
        f"{dataset.image_name(case, 0)} ...)"
        for case in unmatched
        if case not in grouped
    ]
    for case in sorted(set(label_files) & set(grouped) if test else grouped):
        files = grouped[case]
        if len(files) < count:
            problems += missing_channels(case, files, count, dataset.channel_names)
        elif case not in label_files:
            problems.append(f"{case}: missing {root / labels / dataset.label_name(case)}")
        else:
            images_of_case = tuple(files[c] for c in range(count))
            cases.append(CaseFiles(case, images_of_case, label_files[case]))
    return cases, naming + problems, len(grouped)


def listed_cases(dataset: NnUNetDataset) -> tuple[list[CaseFiles], list[str]]:
    """The cases of ``dataset.json``'s ``dataset`` key (paths relative to the folder, with
    environment variables expanded, as nnU-Net reads them) and their problems: a wrong number of
    channels, a missing file."""
    cases, problems = [], []
    for case, entry in sorted(dataset.files.items()):
        images = tuple(_listed_path(dataset.root, p) for p in entry["images"])
        label = _listed_path(dataset.root, entry["label"])
        if len(images) != len(dataset.channel_names):
            problems.append(
                f"{case}: {len(images)} image(s) in {dataset.json_path}, "
                f"{len(dataset.channel_names)} channels in channel_names"
            )
            continue
        absent = [str(p) for p in (*images, label) if not p.is_file()]
        if absent:
            problems.append(f"{case}: missing {' and '.join(absent)}")
        else:
            cases.append(CaseFiles(case, images, label))
    return cases, problems


def _listed_path(root: Path, name: str) -> Path:
    path = Path(os.path.expandvars(name))
    return path if path.is_absolute() else root / path


def converted_cases(
    root: Path, title: str, channels: int, num_classes: int
) -> tuple[list[CaseFiles], list[str]]:
    """The training cases of an nnU-Net-converted copy of a dataset of the suite (Synapse,
    ACDC): ``training_cases`` of ``root``, after checking that its ``dataset.json`` has the
    dataset's ``channels`` and ``num_classes`` (one ``DataError`` naming the file otherwise).
    The case ids are nnU-Net's; the dataset maps them to its own."""
    dataset = read_dataset_json(root)
    problems = []
    if len(dataset.channel_names) != channels:
        problems.append(
            f"{len(dataset.channel_names)} channel(s) in channel_names; {title} has {channels}"
        )
    if len(dataset.class_names) != num_classes:
        problems.append(f"{len(dataset.class_names)} labels; {title} has {num_classes} classes")
    if problems:
        raise DataError(problem_report(f"{title}: nnU-Net copy {dataset.json_path}", problems))
    return training_cases(dataset)


# --- folds --------------------------------------------------------------------------------------


def crossval_splits(
    case_ids: Sequence[str], num_folds: int = NNUNET_FOLDS, seed: int = NNUNET_SPLIT_SEED
) -> list[dict[str, list[str]]]:
    """nnU-Net v2's split: ``KFold(num_folds, shuffle=True, random_state=seed)`` of the sorted
    case ids, as ``splits_final.json`` holds it (``[{"train": [...], "val": [...]}, ...]``,
    each list in sorted order). With nnU-Net's defaults (5, 12345) these are the folds nnU-Net
    itself would make for the same cases."""
    from sklearn.model_selection import KFold

    ids = sorted(case_ids)
    if not 2 <= num_folds <= len(ids):
        raise DataError(
            f"cannot split {len(ids)} training case(s) into {num_folds} folds (at least one "
            "validation case per fold)"
        )
    folds = KFold(n_splits=num_folds, shuffle=True, random_state=seed).split(ids)
    return [dict(train=[ids[i] for i in train], val=[ids[i] for i in val]) for train, val in folds]


def read_splits(path: Path, case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """The folds of a ``splits_final.json``, checked against the training cases ``case_ids``:
    a JSON list of ``{"train": [...], "val": [...]}`` naming only known cases (a problem in one
    ``DataError`` naming the file)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON: {error}") from error
    shape = 'a list of {"train": [...], "val": [...]}, one per fold'
    if not isinstance(content, list) or not content:
        raise DataError(f"{path}: expected {shape}")
    known, problems = set(case_ids), []
    for fold, entry in enumerate(content):
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(part), list) for part in ("train", "val"))
        ):
            problems.append(f"fold {fold} is not {{'train': [...], 'val': [...]}}")
            continue
        unknown = sorted({str(c) for c in entry["train"] + entry["val"]} - known)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            problems.append(f"fold {fold} names {len(unknown)} case(s) not in the dataset: {shown}")
        if not entry["val"]:
            problems.append(f"fold {fold} has no validation cases")
    if problems:
        raise DataError(problem_report(f"nnU-Net splits {path}", problems))
    return [dict(train=sorted(e["train"]), val=sorted(e["val"])) for e in content]


def splits_file_candidates(root: Path) -> list[Path]:
    """Where an existing ``splits_final.json`` of the dataset ``root`` is looked for, in order:
    beside ``dataset.json``, then nnU-Net's own place ``$nnUNet_preprocessed/<root name>/``."""
    candidates = [root / SPLITS_FILE]
    preprocessed = os.environ.get(PREPROCESSED_VARIABLE)
    if preprocessed:
        candidates.append(Path(preprocessed) / root.name / SPLITS_FILE)
    return candidates


# --- geometry -----------------------------------------------------------------------------------


def median_spacing(cases: Sequence[CaseFiles]) -> tuple[float, float, float]:
    """The median voxel size (mm) per voxel axis of the first channel of ``cases``, from the
    NIfTI headers alone (nnU-Net's ``3d_fullres`` target spacing is this median)."""
    if not cases:
        raise DataError("no training cases to take the median spacing of")
    sizes = []
    for case in cases:
        try:
            sizes.append(nib.load(str(case.images[0])).header.get_zooms()[:3])
        except Exception as error:  # nibabel raises several types for unreadable headers
            raise DataError(f"{case.case_id}: cannot read {case.images[0]}: {error}") from error
    return tuple(float(s) for s in np.median(np.asarray(sizes, dtype=float), axis=0))
