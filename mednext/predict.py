"""Inference with a trained checkpoint.

- segmentation: NIfTI in, NIfTI label map out on the input's own grid;
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
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from datamodules.errors import DataError
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
def segment_volume(task, image: nib.Nifti1Image, device: torch.device) -> np.ndarray:
    """Integer labels on ``image``'s own voxel grid (same shape as the image's spatial axes).

    A 2D network (TransUNet protocol) segments the axial slices ``volume[:, :, k]`` one by one,
    with the release's intensity scaling, each zoomed to the model size and back; a 3D network
    runs sliding-window inference on the preprocessed volume."""
    if task.hparams.protocol == "transunet":
        slices = volume_to_slices(
            np.asarray(image.dataobj, dtype=np.float32), task.preprocessing["intensity"]
        )
        labels = task.predict_slices(torch.from_numpy(slices)).numpy()
        return np.ascontiguousarray(np.transpose(labels, (1, 2, 0)))
    array, geometry = preprocess_image(image, **task.preprocessing)
    x = torch.from_numpy(np.ascontiguousarray(array))[None].to(device)
    labels = task.predict_probabilities(x).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    return restore_labels(labels, geometry)


def predict_command(
    checkpoint: Path, inputs: Sequence[Path], out_dir: Path, args: argparse.Namespace
) -> int:
    """``mednext predict``: label maps (segmentation) or a CSV of class probabilities
    (classification), written atomically into ``out_dir``."""
    device = _device(args.device)
    kind = checkpoint_task_kind(checkpoint)
    task = load_task(checkpoint, device, kind)
    if kind == "classification":
        return classify_images(task, image_inputs(inputs), out_dir, device, args.batch_size)
    mirror = True if args.mirror_tta else (False if args.fast else None)
    return segment_volumes(task, inputs, out_dir, device, mirror)


def segment_volumes(
    task, inputs: Sequence[Path], out_dir: Path, device: torch.device, mirror_tta: bool | None
) -> int:
    """Segment every NIfTI input into ``out_dir``; ``mirror_tta`` overrides the run's
    ``eval.mirror_tta`` unless None."""
    if mirror_tta is not None:
        task.hparams.evaluation["mirror_tta"] = mirror_tta
    files = nifti_inputs(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(transient=True) as progress:
        for path in progress.track(files, description="segmenting"):
            try:
                image = nib.load(path)
            except Exception as error:  # nibabel raises several types for unreadable files
                raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
            labels = segment_volume(task, image, device)
            header = image.header.copy()
            header.set_data_dtype(np.uint8)
            header["scl_slope"], header["scl_inter"] = 1, 0
            result = nib.Nifti1Image(labels.astype(np.uint8), image.affine, header)
            destination = out_dir / output_name(path)
            with atomic_path(destination) as temporary:
                nib.save(result, temporary)
            print(f"{path} -> {destination}")
    return 0


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
