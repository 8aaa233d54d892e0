"""Inference with a trained checkpoint.

- segmentation: NIfTI in, NIfTI label map out on the input's own grid; a model of several input
  channels reads one file per channel in nnU-Net's naming (``<case>_0000.nii.gz``,
  ``<case>_0001.nii.gz``, ...) and writes ``<case>.nii.gz``;
- classification: images (or folders of them) in, one CSV of per-class probabilities out.

The checkpoint carries everything the preprocessing needs (segmentation: target spacing,
intensity normalisation; classification: input size and normalisation, class names) and which
task it was trained for, so ``mednext predict CKPT INPUT... --out DIR`` needs neither the
experiment file nor the dataset.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from datamodules.errors import DataError, problem_report
from datamodules.nnunet_layout import FILE_ENDINGS, channel_of, group_channels, missing_channels
from datamodules.preprocessing import (
    eval_transform,
    list_images,
    preprocess_image,
    read_checked_image,
    restore_labels,
    subfolders,
    volume_to_slices,
)
from mednext.files import atomic_path
from mednext.progress import progress_bar
from mednext.tasks import TASKS

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def expand_inputs(
    inputs: Sequence[Path], in_folder: Callable[[Path], list[Path]], what: str
) -> list[Path]:
    """Files as given, folders replaced by ``in_folder(folder)``; one ``FileNotFoundError``
    naming every missing input, or saying that there is no ``what`` at all."""
    files: list[Path] = []
    missing = []
    for path in inputs:
        if path.is_dir():
            files += in_folder(path)
        elif path.is_file():
            files.append(path)
        else:
            missing.append(str(path))
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    if not files:
        raise FileNotFoundError(f"no {what} in {', '.join(map(str, inputs))}")
    return files


def nifti_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to the NIfTI files inside (sorted)."""
    return expand_inputs(
        inputs,
        lambda folder: sorted(p for p in folder.iterdir() if p.is_file() and _is_nifti(p)),
        "NIfTI files (.nii, .nii.gz)",
    )


def output_name(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return f"{name}.nii.gz"


@dataclass(frozen=True)
class VolumeInput:
    """One case to segment: its image files (one per input channel, in channel order) and the
    name of the label map written for it."""

    files: tuple[Path, ...]
    output: str


def volume_inputs(inputs: Sequence[Path], channels: int) -> list[VolumeInput]:
    """The cases of the NIfTI ``inputs`` (files, or folders of them) for a model of
    ``channels`` input channels.

    One channel: every file is a case, written as its own name (``case.nii.gz``), except that a
    file in nnU-Net naming ``<case>_0000.nii.gz`` is written as ``<case>.nii.gz``. Several
    channels: files in nnU-Net naming ``<case>_<XXXX>.nii.gz`` grouped by case and folder, every
    case needing each channel ``0000`` to ``C-1``, written as ``<case>.nii.gz``, as nnU-Net's
    predictor does. Every naming problem (a file not so named, a missing channel, two inputs
    written to one name) in one ``DataError`` naming the files."""
    files = nifti_inputs(inputs)
    problems: list[str] = []
    if channels == 1:
        cases = []
        for path in files:
            named = channel_of(path.name, FILE_ENDINGS)
            output = f"{named[0]}.nii.gz" if named and named[1] == 0 else output_name(path)
            cases.append(VolumeInput((path,), output))
    else:
        cases = []
        for folder in sorted({path.parent for path in files}):
            grouped, naming = group_channels(
                [p for p in files if p.parent == folder], FILE_ENDINGS, channels
            )
            problems += naming
            for case, channel_files in sorted(grouped.items()):
                if len(channel_files) < channels:
                    problems += missing_channels(case, channel_files, channels)
                else:
                    ordered = tuple(channel_files[c] for c in range(channels))
                    cases.append(VolumeInput(ordered, f"{case}.nii.gz"))
    writers: dict[str, list[Path]] = {}
    for case in cases:
        writers.setdefault(case.output, []).append(case.files[0])
    problems += [
        f"{len(sources)} inputs would be written to {name}: {', '.join(map(str, sources))}"
        for name, sources in writers.items()
        if len(sources) > 1
    ]
    if problems:
        naming = "<case>" if channels == 1 else f"<case>_0000 ... <case>_{channels - 1:04d}"
        title = f"inputs of a model of {channels} input channel(s) ({naming}.nii.gz per case)"
        raise DataError(problem_report(title, problems))
    return cases


def _device(name: str) -> torch.device:
    """``--device``: ``auto``, ``cpu`` or ``cuda[:N]``; a ``ValueError`` for a device this
    machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU here (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: use auto, cpu or cuda[:N]")
    return device


def checkpoint_task_kind(checkpoint: Path) -> str:
    """``segmentation`` or ``classification``: what the suite checkpoint was trained for."""
    from mednext.tasks.base import TASK_KEY

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "state_dict" not in state or "hyper_parameters" not in state:
        raise ValueError(f"{checkpoint}: not a checkpoint written by `mednext train`")
    # Checkpoints written before the task record were all segmentation checkpoints.
    return state.get(TASK_KEY, "segmentation")


def load_task(checkpoint: Path, device: torch.device, kind: str = "segmentation"):
    """The task of a suite checkpoint (the LightningModule of its ``kind``), in eval mode on
    ``device``."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    task_class = TASKS[kind].load()
    task = task_class.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    if not task.preprocessing:
        raise ValueError(
            f"{checkpoint}: no preprocessing record (spacing, normalisation); it was not written "
            "by `mednext train`"
        )
    notice = task.prepare_network(device)
    if notice:
        print(notice, file=sys.stderr)
    return task.eval().to(device)


@torch.no_grad()
def segment_volume(task, images: Sequence[nib.Nifti1Image], device: torch.device) -> np.ndarray:
    """Integer labels on the voxel grid of ``images`` (one per input channel, all on one grid;
    the result has the shape of their spatial axes).

    A 2D network (TransUNet protocol) segments the axial slices ``volume[:, :, k]`` of its one
    channel one by one, with the release's intensity scaling, each zoomed to the model size and
    back; a 3D network runs sliding-window inference on the preprocessed volume."""
    if task.hparams.protocol == "transunet":
        slices = volume_to_slices(
            np.asarray(images[0].dataobj, dtype=np.float32), task.preprocessing["intensity"]
        )
        labels = task.predict_slices(torch.from_numpy(slices)).numpy()
        return np.ascontiguousarray(np.transpose(labels, (1, 2, 0)))
    array, geometry = preprocess_image(images, **task.preprocessing)
    x = torch.from_numpy(np.ascontiguousarray(array))[None].to(device)
    labels = task.predict_probabilities(x).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    return restore_labels(labels, geometry)


def predict_command(paths: Sequence[Path], out_dir: Path, args: argparse.Namespace) -> int:
    """``mednext predict MODEL... INPUT... --out DIR``: label maps (segmentation) or a CSV of
    class probabilities (classification), written atomically into ``out_dir``. Several models
    (checkpoints or run folders: the folds of a cross-validation, other networks of the dataset)
    are an ensemble: their class probabilities are averaged before the argmax."""
    from mednext.ensemble import combine, member_checkpoint, split_models_and_inputs

    models, inputs = split_models_and_inputs(paths)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: a file, not a folder")
    device = _device(args.device)
    checkpoints = []
    for model in models:
        checkpoint, notice = member_checkpoint(model)
        if notice:
            print(notice, file=sys.stderr)
        checkpoints.append(checkpoint)
    kinds = [checkpoint_task_kind(checkpoint) for checkpoint in checkpoints]
    for kind, checkpoint in zip(kinds[1:], checkpoints[1:], strict=True):
        if kind != kinds[0]:
            raise ValueError(f"{checkpoint}: a {kind} model, {checkpoints[0]} a {kinds[0]} one")
    kind = kinds[0]
    task = combine([load_task(c, device, kind) for c in checkpoints], checkpoints)
    if len(checkpoints) > 1:
        print(f"ensemble of {len(checkpoints)} models: probabilities averaged", file=sys.stderr)
    if kind == "classification":
        return classify_images(task, image_inputs(inputs), out_dir, device, args.batch_size)
    mirror = True if args.mirror_tta else (False if args.fast else None)
    return segment_volumes(task, inputs, out_dir, device, mirror)


def segment_volumes(
    task, inputs: Sequence[Path], out_dir: Path, device: torch.device, mirror_tta: bool | None
) -> int:
    """Segment every case of the NIfTI inputs (``volume_inputs``: one file per input channel)
    into ``out_dir``; ``mirror_tta`` overrides the run's ``eval.mirror_tta`` unless None."""
    if mirror_tta is not None:
        task.hparams.evaluation["mirror_tta"] = mirror_tta
    cases = volume_inputs(inputs, task.hparams.in_channels)
    out_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(transient=True) as progress:
        for case in progress.track(cases, description="segmenting"):
            images = [read_nifti(path) for path in case.files]
            labels = segment_volume(task, images, device)
            header = images[0].header.copy()
            header.set_data_dtype(np.uint8)
            header["scl_slope"], header["scl_inter"] = 1, 0
            result = nib.Nifti1Image(labels.astype(np.uint8), images[0].affine, header)
            destination = out_dir / case.output
            with atomic_path(destination) as temporary:
                nib.save(result, temporary)
            print(f"{', '.join(map(str, case.files))} -> {destination}")
    return 0


def read_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI image at ``path``, its voxels read once and checked; ``ValueError`` naming the
    file when it cannot be read (not a NIfTI, truncated), is not one 3D volume, or holds NaN or
    infinite voxels (cubic resampling would spread them into a silently wrong segmentation;
    training refuses them too)."""
    try:
        image = nib.load(path)
        # Cached by nibabel: the preprocessing's get_fdata(dtype=float32) reads no file again.
        data = image.get_fdata(dtype=np.float32)
    except Exception as error:  # nibabel, gzip and zlib raise several types for broken files
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
    if data.ndim != 3:
        raise ValueError(
            f"{path}: a {data.ndim}D image of shape {tuple(data.shape)}; a 3D model takes one 3D "
            "volume per file (one file per input channel, nnU-Net's _0000 naming)"
        )
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise ValueError(
            f"{path}: {bad} voxel(s) are NaN or infinite; replace them (e.g. with the background "
            "intensity) before predicting"
        )
    return image


# --- classification ------------------------------------------------------------------------

#: The CSV ``mednext predict`` writes for a classifier.
PREDICTIONS_CSV = "predictions.csv"


def image_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Image files as given, folders expanded to every image below them (any depth, junk such
    as ``.DS_Store`` and ``Thumbs.db`` left out), in order."""
    return expand_inputs(
        inputs,
        lambda folder: [
            image for sub in subfolders(folder, depth=64) for image in list_images(sub)
        ],
        "images",
    )


@torch.no_grad()
def classify_images(
    task, files: Sequence[Path], out_dir: Path, device: torch.device, batch_size: int = 32
) -> int:
    """Class probabilities of every image into ``out_dir/predictions.csv`` (columns ``path``,
    ``prediction``, ``p_<class>``...). Unreadable images are left out of the CSV and listed,
    all together, in the ``DataError`` raised after it is written."""
    from mednext.tasks.base import write_rows_csv

    names = list(task.preprocessing["class_names"])
    rows, problems = [], []
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([tensor for _, tensor in batch]).to(device)
        probabilities = torch.softmax(task(x).float(), dim=1).cpu()
        for (path, _), p in zip(batch, probabilities.tolist(), strict=True):
            best = max(range(len(names)), key=p.__getitem__)
            rows.append(
                {
                    "path": str(path),
                    "prediction": names[best],
                    **{f"p_{name}": value for name, value in zip(names, p, strict=True)},
                }
            )
        batch.clear()

    transform = eval_transform(**task.preprocessing)
    with progress_bar(transient=True) as progress:
        for path in progress.track(files, description="classifying"):
            try:
                image = read_checked_image(path)
            except DataError as problem:
                problems.append(f"  {path}: {problem}")
                continue
            batch.append((path, transform(image=image)["image"]))
            if len(batch) == batch_size:
                flush()
        flush()
    destination = out_dir / PREDICTIONS_CSV
    if rows:
        write_rows_csv(rows, destination, ["path", "prediction", *(f"p_{n}" for n in names)])
        print(f"{len(rows)} images -> {destination}")
    if problems:
        raise DataError(
            f"{len(problems)} of {len(files)} images could not be read"
            + (f" (the other {len(rows)} are in {destination})" if rows else "")
            + ":\n"
            + "\n".join(problems)
        )
    return 0
