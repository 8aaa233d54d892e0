"""Inference with a trained checkpoint: NIfTI in, NIfTI label map out on the input's own grid.

The checkpoint carries everything the preprocessing needs (target spacing, intensity
normalisation, modality), so ``mednext predict CKPT INPUT... --out DIR`` needs neither the
experiment file nor the dataset.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to the NIfTI files inside (sorted)."""
    files: list[Path] = []
    missing = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(str(path))
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    if not files:
        raise FileNotFoundError(f"no NIfTI files (.nii, .nii.gz) in {', '.join(map(str, inputs))}")
    return files


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


def load_task(checkpoint: Path, device: torch.device):
    from mednext.tasks.segmentation import SegmentationTask

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    task = SegmentationTask.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    if not task.preprocessing:
        raise ValueError(
            f"{checkpoint}: no preprocessing record (spacing, normalisation); it was not written "
            "by `mednext train`"
        )
    return task.eval().to(device)


@torch.no_grad()
def segment_volume(task, image: nib.Nifti1Image, device: torch.device) -> np.ndarray:
    """Integer labels on ``image``'s own voxel grid (same shape as the image's spatial axes)."""
    from datamodules.volumes import preprocess_image, restore_labels

    array, geometry = preprocess_image(image, **task.preprocessing)
    x = torch.from_numpy(np.ascontiguousarray(array))[None].to(device)
    labels = task.predict_probabilities(x).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
    return restore_labels(labels, geometry)


def predict_command(
    checkpoint: Path, inputs: Sequence[Path], out_dir: Path, args: argparse.Namespace
) -> int:
    """``mednext predict``: one label map per input, written atomically into ``out_dir``."""
    from rich.progress import track

    device = _device(args.device)
    task = load_task(checkpoint, device)
    if args.mirror_tta:
        task.hparams.evaluation["mirror_tta"] = True
    files = nifti_inputs(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in track(files, description="segmenting", transient=True):
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
        partial = destination.with_name(".partial." + destination.name)
        nib.save(result, partial)
        os.replace(partial, destination)
        print(f"{path} -> {destination}")
    return 0
