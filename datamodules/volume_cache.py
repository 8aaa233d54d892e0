"""The preprocessing cache of the 3D volumes: validating raw cases, preprocessing them once (in
parallel) and the manifest that says when the cache can be trusted.

1. Validate every raw case (readable, 3D, every input channel and the label on one voxel grid,
   label values in range) and report every problem in one ``DataError``.
2. Preprocess once (``datamodules.preprocessing``): reorient, normalise each channel by its scheme
   (``ct``: clip to the 0.5/99.5 percentiles of the training cases' foreground intensities of
   that channel, then z-score with their foreground mean and std; ``zscore``: per-case z-score;
   the other schemes of ``NORMALIZATIONS``), resample to the target spacing, store ``.npy``
   (image float32 (C, X, Y, Z), label uint8 (X, Y, Z)) for memory-mapped patch reads, plus per
   class a sample of foreground voxel positions for oversampling (nnU-Net's
   ``class_locations``).
   Cases are checked and preprocessed by a pool of processes (``data.preprocess_workers``); each
   case draws its random samples from a seed of its own, so any number of workers writes the same
   cache.

A manifest beside the cached cases records the preprocessing parameters and every input file
(path, size, modification time); the cache is reused while both are unchanged and rebuilt
otherwise. The manifest is written last and removed first, every file is written to a temporary
name and renamed into place: an interrupted build is never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from datamodules.base import label_value_problem
from datamodules.errors import DataError, problem_report
from datamodules.preprocessing import (
    VolumeGeometry,
    channel_normalizations,
    ct_normalization,
    grid_difference,
    orient_labels,
    preprocess_image,
)
from mednext.files import atomic_write, write_json
from mednext.progress import progress_bar

log = logging.getLogger(__name__)

#: Version of the cache layout and of the preprocessing code's meaning; a new value rebuilds.
CACHE_FORMAT = 2
MANIFEST = "manifest.json"

#: nnU-Net v2 fingerprint (``collect_foreground_intensities``): voxels sampled per case.
FOREGROUND_SAMPLES_PER_CASE = 10_000
#: nnU-Net v2 ``DefaultPreprocessor._sample_foreground_locations``: positions kept per class, at
#: least this many (or all) and at least this share of the class's voxels.
CLASS_LOCATION_SAMPLES = 10_000
CLASS_LOCATION_COVERAGE = 0.01
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseFiles:
    """One raw case: its id, its image files (one per input channel, in channel order) and its
    label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path


def check_case(
    case: CaseFiles, num_classes: int, schemes: Sequence[str] = ()
) -> tuple[list[str], tuple[np.ndarray, np.ndarray] | None]:
    """Problems with one raw case, and when there are none its ``(image, label)`` arrays on the
    files' own grid (image float32 ``(C, X, Y, Z)``, label ``(X, Y, Z)``), for the foreground
    statistics.

    Checks: every file readable and 3D, every channel finite, the channels and the label on one
    voxel grid (shape, and affine within ``AFFINE_TOLERANCE``), integer label values in
    ``0..num_classes-1``; channels of the ``rgb`` scheme (``schemes``, per channel) within
    0..255. Every problem names its file.
    """
    problems: list[str] = []
    loaded: dict[Path, tuple[Any, np.ndarray]] = {}
    for role, path in [*(("image", p) for p in case.images), ("label", case.label)]:
        try:
            img = nib.load(str(path))
            data = (
                img.get_fdata(dtype=np.float32) if role == "image" else np.asanyarray(img.dataobj)
            )
        except _READ_ERRORS as error:
            problems.append(f"{case.case_id}: cannot read {path}: {error}")
            continue
        if data.ndim != 3:
            problems.append(f"{case.case_id}: {path} is {data.ndim}D {data.shape}; expected 3D")
            continue
        loaded[path] = img, data
    if len(loaded) < len(case.images) + 1:
        return problems, None
    first = case.images[0]
    reference = loaded[first][0]
    for path in case.images[1:]:
        difference = grid_difference(reference, loaded[path][0])
        if difference:
            problems.append(
                f"{case.case_id}: {path.name} is not on the grid of {first.name}: {difference}"
            )
    label_img, label = loaded[case.label]
    if label.shape != reference.shape:
        problems.append(
            f"{case.case_id}: image shape {reference.shape} != label shape {label.shape} "
            f"({first.name}, {case.label.name})"
        )
    elif grid_difference(reference, label_img):
        difference = np.abs(reference.affine - label_img.affine).max()
        problems.append(
            f"{case.case_id}: image and label affines differ (largest difference {difference:.4g}; "
            f"{first.name}, {case.label.name})"
        )
    eight_bit = {channel for channel, scheme in enumerate(schemes) if scheme == "rgb"}
    for channel, path in enumerate(case.images):
        data = loaded[path][1]
        if not np.isfinite(data).all():
            problems.append(f"{case.case_id}: {path} contains NaN or infinite values")
        elif channel in eight_bit and (data.min() < 0 or data.max() > 255):
            problems.append(
                f"{case.case_id}: {path} has values {data.min():g}..{data.max():g}; its channel "
                "is rgb_to_0_1 (8-bit values, 0..255)"
            )
    label_problem = label_value_problem(label, num_classes)
    if label_problem:
        problems.append(f"{case.case_id}: {case.label} has {label_problem}")
    if problems:
        return problems, None
    return problems, (np.stack([loaded[p][1] for p in case.images]), label)


def foreground_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to ``FOREGROUND_SAMPLES_PER_CASE`` intensities of one channel ``(X, Y, Z)`` at the
    voxels with ``label > 0``."""
    values = image[label > 0]
    if len(values) > FOREGROUND_SAMPLES_PER_CASE:
        values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return values


# --- preprocessing cache ----------------------------------------------------------------------


def file_record(path: Path) -> dict[str, Any]:
    """What identifies an input file's content for the cache: absolute path, size, mtime (ns)."""
    stat = path.stat()
    return dict(path=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def input_records(cases: Sequence[CaseFiles]) -> list[dict[str, Any]]:
    return [
        dict(
            case_id=c.case_id,
            images=[file_record(path) for path in c.images],
            label=file_record(c.label),
        )
        for c in cases
    ]


def manifest_inputs(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The input records of a manifest, one ``images`` list per case. Manifests written before
    multi-channel inputs hold one ``image`` record per case: read as a one-channel list, so
    their caches stay valid."""
    inputs = []
    for entry in manifest.get("inputs", []):
        entry = dict(entry)
        if "image" in entry:
            entry = dict(case_id=entry["case_id"], images=[entry["image"]], label=entry["label"])
        inputs.append(entry)
    return inputs


def manifest_normalization(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-channel normalisation records of a manifest (``channel_normalizations``: a
    single record of an older manifest is one channel)."""
    return [dict(record) for record in channel_normalizations(manifest["normalization"])]


def class_locations(
    label: np.ndarray, num_classes: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per present foreground class (key ``str(c)``), a sample of its voxel positions, int32
    ``(N, 3)``: ``min(count, max(CLASS_LOCATION_SAMPLES, ceil(CLASS_LOCATION_COVERAGE*count)))``
    positions drawn without replacement, as nnU-Net stores for foreground oversampling."""
    flat = np.flatnonzero(label)
    values = label.ravel()[flat]
    locations: dict[str, np.ndarray] = {}
    for c in range(1, num_classes):
        positions = flat[values == c]
        if len(positions) == 0:
            continue
        keep = min(
            len(positions),
            max(CLASS_LOCATION_SAMPLES, math.ceil(CLASS_LOCATION_COVERAGE * len(positions))),
        )
        if keep < len(positions):
            positions = np.sort(rng.choice(positions, keep, replace=False))
        locations[str(c)] = np.stack(np.unravel_index(positions, label.shape), 1).astype(np.int32)
    return locations


def preprocess_case(
    case: CaseFiles,
    spacing: Sequence[float],
    normalization: Sequence[Mapping[str, Any]],
    reorient: bool,
    num_classes: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], VolumeGeometry]:
    """One raw case on the model grid: image float32 (C, X, Y, Z), label uint8 (X, Y, Z), the
    class locations of the label and the geometry of the raw image (its first channel)."""
    image, geometry = preprocess_image(case.images, spacing, normalization, reorient)
    label = orient_labels(np.asanyarray(nib.load(str(case.label)).dataobj), geometry)
    return image, label, class_locations(label, num_classes, rng), geometry


def cache_key(parameters: Mapping[str, Any]) -> str:
    """A short stable hash of the preprocessing parameters (the cache folder's name ends in it)."""
    text = json.dumps(parameters, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a cache folder; ``None`` when missing or unreadable (no usable cache)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cache_is_current(
    folder: Path, parameters: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether ``folder`` holds a complete cache of exactly these parameters and input files."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    if manifest.get("parameters") != parameters or manifest_inputs(manifest) != list(inputs):
        return False
    return all(
        (folder / name).is_file()
        for entry in manifest["cases"].values()
        for name in (entry["image"], entry["label"], entry["locations"])
    )


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as ``.npy`` at ``path`` (readable with ``np.load(mmap_mode="r")``), atomically."""
    with atomic_write(path, "wb") as stream:
        np.save(stream, array)


def preprocess_workers(configured: int | None, cases: int) -> int:
    """How many processes preprocess ``cases`` cases: ``data.preprocess_workers``, else one per
    CPU core this process may use (its affinity, as SLURM and containers set it), never more than
    the cases."""
    if configured is None:
        available = getattr(os, "sched_getaffinity", None)
        configured = len(available(0)) if available else (os.cpu_count() or 1)
    return max(1, min(configured, cases))


def run_jobs(
    job: Callable[..., Any],
    arguments: Sequence[tuple[Any, ...]],
    workers: int,
    progress: Any,
    description: str,
) -> list[Any]:
    """``job(*a)`` for every ``a`` of ``arguments``, results in order; in a pool of ``workers``
    processes when more than one, the progress bar advancing as each finishes. On any error
    (Ctrl-C included) the jobs not started are cancelled and the running ones waited for, so no
    file is left half-written, then the error is raised."""
    if workers == 1:
        return [job(*a) for a in progress.track(arguments, description=description)]
    task = progress.add_task(description, total=len(arguments))
    pool = ProcessPoolExecutor(workers)
    try:
        futures = [pool.submit(job, *a) for a in arguments]
        for future in as_completed(futures):
            future.result()
            progress.advance(task)
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_job(
    case: CaseFiles, num_classes: int, schemes: Sequence[str], sample_foreground: bool
) -> tuple[list[str], list[np.ndarray | None] | None]:
    """``check_case`` in a worker, with the foreground intensities of every ``ct`` channel of a
    statistics case (``None`` for the other channels; seeded by the case id: the same sample
    whatever process draws it)."""
    problems, arrays = check_case(case, num_classes, schemes)
    if arrays is None or not sample_foreground:
        return problems, None
    image, label = arrays
    rng = np.random.default_rng(_case_seed(case))
    return problems, [
        foreground_sample(channel, label, rng) if scheme == "ct" else None
        for channel, scheme in zip(image, schemes, strict=True)
    ]


def _preprocess_job(
    case: CaseFiles,
    folder: Path,
    spacing: Sequence[float],
    normalization: Sequence[Mapping[str, Any]],
    reorient: bool,
    num_classes: int,
) -> dict[str, Any]:
    """One case preprocessed into ``folder`` (each file written atomically); its manifest entry."""
    rng = np.random.default_rng(_case_seed(case))
    image, label, locations, geometry = preprocess_case(
        case, spacing, normalization, reorient, num_classes, rng
    )
    names = {part: f"{case.case_id}_{part}" for part in ("image", "label", "locations")}
    save_npy(folder / f"{names['image']}.npy", image)
    save_npy(folder / f"{names['label']}.npy", label)
    with atomic_write(folder / f"{names['locations']}.npz", "wb") as stream:
        np.savez(stream, **locations)
    return dict(
        image=f"{names['image']}.npy",
        label=f"{names['label']}.npy",
        locations=f"{names['locations']}.npz",
        shape=list(label.shape),
        classes=sorted(int(c) for c in locations),
        source_shape=list(geometry.shape),
        source_spacing=list(geometry.oriented_spacing),
    )


def _case_seed(case: CaseFiles) -> list[int]:
    """A seed of the case's own: its samples do not depend on the order cases are processed in."""
    return [0, zlib.crc32(case.case_id.encode())]


def build_cache(
    folder: Path,
    parameters: dict[str, Any],
    cases: Sequence[CaseFiles],
    problems: Sequence[str],
    *,
    title: str,
    schemes: Sequence[str],
    statistics: set[str],
    spacing: Sequence[float],
    reorient: bool,
    num_classes: int,
    workers: int,
) -> None:
    """Validate ``cases`` (every problem, with the discovery's ``problems``, in one
    ``DataError``), then preprocess them into ``folder`` and write its manifest last. Each
    channel is normalised by its scheme (``schemes``, one per channel); a ``ct`` channel with the
    foreground intensities of that channel in the ``statistics`` cases."""
    started = time.perf_counter()
    with progress_bar() as progress:
        checked = run_jobs(
            _check_job,
            [(c, num_classes, schemes, "ct" in schemes and c.case_id in statistics) for c in cases],
            workers,
            progress,
            f"{title}: checking",
        )
        problems = [*problems, *(p for case_problems, _ in checked for p in case_problems)]
        if problems:
            raise DataError(problem_report(title, problems))
        samples = [sample for _, sample in checked if sample is not None]
        normalization = [
            ct_normalization(np.concatenate([sample[channel] for sample in samples]))
            if scheme == "ct"
            else dict(scheme=scheme)
            for channel, scheme in enumerate(schemes)
        ]
        # The manifest goes first so that nothing in a half-rebuilt folder is ever trusted.
        (folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        settings = (folder, spacing, normalization, reorient, num_classes)
        written = run_jobs(
            _preprocess_job,
            [(case, *settings) for case in cases],
            workers,
            progress,
            f"{title}: preprocessing",
        )
    seconds = time.perf_counter() - started
    write_json(
        folder / MANIFEST,
        dict(
            parameters=parameters,
            inputs=input_records(cases),
            normalization=normalization,
            cases={case.case_id: entry for case, entry in zip(cases, written, strict=True)},
            seconds=round(seconds, 2),
        ),
    )
    log.info(
        "%s: preprocessed %d cases into %s in %.1f s (%d worker(s))",
        title,
        len(cases),
        folder,
        seconds,
        workers,
    )
