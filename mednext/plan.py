"""``mednext plan``: a dataset's fingerprint and the target spacing, patch size and batch size of
a network for a GPU-memory target, as nnU-Net v2's experiment planner does for its 3D
full-resolution configuration, but sized by the network's own measured activation memory.

- **Fingerprint** (nnU-Net's ``DatasetFingerprintExtractor``): every training case read once, its
  voxel spacing and shape in the axis order the suite works in, and per input channel the
  intensity statistics of up to 10,000 foreground voxels per case (mean, median, std, min, max,
  0.5 and 99.5 percentiles).
- **Target spacing** (``determine_fullres_target_spacing``): the median spacing; for anisotropic
  data (the coarsest axis more than 3× the finest and its median size in voxels less than a third
  of the others') the coarse axis takes the 10th percentile of its spacings instead, but not
  finer than the other axes.
- **Patch size** (``get_plans_for_configuration``): nnU-Net's initial patch (256³ voxels, shaped by
  the spacing, no larger than the median image), then the axis with the largest patch-to-image
  ratio shrinks by 16 voxels (MedNeXt's divisibility) until one training sample fits the memory
  target with the batch size nnU-Net starts from (2).
- **Memory** is measured, not fitted: ``mednext.models.complexity.training_memory`` runs the
  network's training forward pass on the meta device at the candidate patch and sums what autograd
  keeps for the backward pass (float32); one real float32 training step on the CPU at 64³ gives
  the ratio of the step's peak to that figure (the backward pass's transient gradients and, with
  gradient checkpointing, the recomputed blocks: about 1.1 for MedNeXt-S, more for the
  checkpointed M and L), which scales it. Weights, gradients and the optimiser's state (AdamW:
  16 bytes per parameter, SGD with momentum: 12) are added. Activations are counted in float32
  whatever ``trainer.precision`` says: 16-bit autocast keeps some tensors (the normalisations'
  inputs) in float32 and no GPU was at hand to measure by how much it saves, so a plan is
  conservative for mixed precision (MedNeXt-L k3 at 128³, batch 2: 16.1 GiB planned, 17.3 GB
  measured by nnU-Net Revisited with fp16 mixed precision).
- **Batch size**: as many samples as the memory target allows, at least 2, at most what covers 5 %
  of the dataset's voxels in one batch (nnU-Net's ``max_dataset_covered``).

The plan file is YAML: ``data:`` holds ``spacing``, ``patch_size`` and ``batch_size``; an experiment
given ``data.plan=FILE`` takes them (the command line still wins), and refuses a plan made for
another network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: nnU-Net v2: the anisotropy threshold of the target spacing.
ANISOTROPY_THRESHOLD = 3.0
#: nnU-Net v2: foreground voxels sampled per case for the intensity statistics.
FOREGROUND_SAMPLES = 10_000
#: nnU-Net v2: one batch covers at most this share of the dataset's voxels.
MAX_DATASET_COVERED = 0.05
#: nnU-Net v2: the batch size a configuration starts from (and never goes below).
MIN_BATCH_SIZE = 2
#: Every patch axis is a multiple of this (MedNeXt halves it four times).
DIVISOR = 16
#: Bytes per parameter of the weights, gradients and optimiser state.
STATIC_BYTES_PER_PARAMETER = {"adamw": 16, "adam": 16, "sgd": 12}
GIB = 1024**3


@dataclass
class Fingerprint:
    """What ``mednext plan`` reads from a dataset: per training case its spacing and shape
    (working axis order), and per channel its foreground intensity statistics."""

    case_ids: list[str]
    spacings: np.ndarray  # (cases, 3) mm
    shapes: np.ndarray  # (cases, 3) voxels
    intensities: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return dict(
            cases=len(self.case_ids),
            median_spacing=[round(float(s), 4) for s in np.median(self.spacings, axis=0)],
            median_shape=[int(s) for s in np.median(self.shapes, axis=0)],
            spacing_range=[
                [round(float(lo), 4), round(float(hi), 4)]
                for lo, hi in zip(self.spacings.min(0), self.spacings.max(0), strict=True)
            ],
            intensities=self.intensities,
        )


def _statistics(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return dict.fromkeys(
            ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5"), None
        )
    low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
    return dict(
        mean=float(values.mean()),
        median=float(median),
        std=float(values.std()),
        min=float(values.min()),
        max=float(values.max()),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
    )


def read_fingerprint(cases: Sequence[Any], reorient: bool, seed: int = 1234) -> Fingerprint:
    """The fingerprint of ``cases`` (``datamodules.volume_cache.CaseFiles``: images per
    channel and a label), each read once with a progress bar; with ``reorient`` in the closest
    RAS axis order, as the suite's preprocessing works."""
    import nibabel as nib

    from mednext.progress import progress_bar

    spacings, shapes = [], []
    samples: list[list[np.ndarray]] = []
    with progress_bar(transient=True) as progress:
        for case in progress.track(list(cases), description="reading the dataset"):
            label_image = nib.load(str(case.label))
            if reorient:
                label_image = nib.as_closest_canonical(label_image)
            label = np.asanyarray(label_image.dataobj)
            spacings.append([float(z) for z in label_image.header.get_zooms()[:3]])
            shapes.append(list(label.shape[:3]))
            foreground = np.flatnonzero(label > 0)
            rng = np.random.default_rng([seed, len(spacings)])
            if foreground.size > FOREGROUND_SAMPLES:
                foreground = rng.choice(foreground, FOREGROUND_SAMPLES, replace=False)
            for channel, path in enumerate(case.images):
                image = nib.load(str(path))
                if reorient:
                    image = nib.as_closest_canonical(image)
                data = np.asarray(image.dataobj, dtype=np.float32).reshape(-1)
                if len(samples) <= channel:
                    samples.append([])
                samples[channel].append(data[foreground])
    return Fingerprint(
        case_ids=[case.case_id for case in cases],
        spacings=np.asarray(spacings, dtype=float),
        shapes=np.asarray(shapes, dtype=float),
        intensities=[_statistics(np.concatenate(channel)) for channel in samples],
    )


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """nnU-Net v2's full-resolution target spacing of cases with ``spacings`` and ``shapes``
    (module docstring)."""
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [axis for axis in range(len(target)) if axis != worst]
    anisotropic_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    anisotropic_voxels = target_size[worst] * ANISOTROPY_THRESHOLD < min(target_size[others])
    if anisotropic_spacing and anisotropic_voxels:
        coarse = float(np.percentile(spacings[:, worst], 10))
        if coarse < max(target[others]):
            coarse = max(max(target[others]), coarse) + 1e-5
        target[worst] = coarse
    return [round(float(s), 5) for s in target]


def median_shape_at(
    spacing: Sequence[float], spacings: np.ndarray, shapes: np.ndarray
) -> list[int]:
    """The median image size in voxels once resampled to ``spacing``."""
    resampled = shapes * spacings / np.asarray(spacing, dtype=float)
    return [int(np.round(s)) for s in np.median(resampled, axis=0)]


def initial_patch(spacing: Sequence[float], median_shape: Sequence[int]) -> list[int]:
    """nnU-Net v2's starting patch: 256³ voxels shaped like the physical extent of equal
    millimetres per axis, no larger than the median image, each axis rounded up to a multiple of
    ``DIVISOR``."""
    inverse = 1 / np.asarray(spacing, dtype=float)
    patch = inverse * (256**3 / np.prod(inverse)) ** (1 / 3)
    patch = np.minimum(np.round(patch), np.asarray(median_shape))
    return [max(DIVISOR, int(math.ceil(p / DIVISOR) * DIVISOR)) for p in patch]


@dataclass(frozen=True)
class MemoryModel:
    """The training memory of one network: the activation bytes it saves for the backward pass
    per sample at a patch size (``activation``, measured on the meta device, float32), the ratio
    of a real training step's peak to them (``peak_factor``: the backward pass's transient
    gradients and, with gradient checkpointing, the recomputed blocks), and the bytes of its
    weights, gradients and optimiser state."""

    activation: Any  # callable(patch) -> bytes per sample, float32
    static_bytes: int
    peak_factor: float = 1.0

    def total(self, patch: Sequence[int], batch: int) -> float:
        return self.activation(patch) * self.peak_factor * batch + self.static_bytes


#: The patch of the real CPU training step that measures ``MemoryModel.peak_factor``.
REFERENCE_PATCH = (64, 64, 64)


def peak_factor(net: Any, in_channels: int, activation: Any) -> float:
    """A real float32 training step of ``net`` (on the CPU, at ``REFERENCE_PATCH``, batch 1):
    its peak memory above the weights and input, less the weight gradients, divided by the
    activation bytes the meta measurement gives for the same input. At least 1."""
    import torch

    from mednext.bench.harness import step_peak_bytes
    from mednext.models.complexity import count_parameters

    def loss(outputs: Any) -> torch.Tensor:
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return sum(output.float().square().mean() for output in outputs)

    net.train()
    x = torch.randn(1, in_channels, *REFERENCE_PATCH)
    peak = step_peak_bytes(net, x, loss) - 4 * count_parameters(net)
    return max(1.0, peak / activation(REFERENCE_PATCH))


def network_memory_model(
    model: Mapping[str, Any], in_channels: int, num_classes: int, optimiser: str
) -> MemoryModel:
    """The memory model of the ``model`` group's network: activations measured on the meta
    device at any patch, their peak factor from one real CPU step at ``REFERENCE_PATCH``."""
    import torch

    from mednext.models import build_model
    from mednext.models.complexity import count_parameters, training_memory
    from mednext.models.runtime import split_run_options

    arguments, _ = split_run_options(model)
    name = arguments.pop("name")
    torch.manual_seed(0)
    net = build_model(name, in_channels=in_channels, num_classes=num_classes, **arguments)
    cache: dict[tuple[int, ...], int] = {}

    def activation(patch: Sequence[int]) -> int:
        key = tuple(int(p) for p in patch)
        if key not in cache:
            cache[key] = training_memory(net, (1, in_channels, *key))
        return cache[key]

    per_parameter = STATIC_BYTES_PER_PARAMETER.get(optimiser, 16)
    return MemoryModel(
        activation=activation,
        static_bytes=count_parameters(net) * per_parameter,
        peak_factor=peak_factor(net, in_channels, activation),
    )


def plan_patch_and_batch(
    memory: MemoryModel,
    budget_bytes: float,
    spacing: Sequence[float],
    median_shape: Sequence[int],
    dataset_voxels: float,
) -> tuple[list[int], int]:
    """The largest nnU-Net-style patch for which ``MIN_BATCH_SIZE`` samples fit
    ``budget_bytes``, and the batch size that fills the budget (capped by
    ``MAX_DATASET_COVERED``). ``ValueError`` when not even the smallest patch fits."""
    patch = initial_patch(spacing, median_shape)
    need = memory.total(patch, MIN_BATCH_SIZE)
    while need > budget_bytes:
        ratios = [
            p / max(s, 1) if p > DIVISOR else -1.0 for p, s in zip(patch, median_shape, strict=True)
        ]
        axis = int(np.argmax(ratios))
        smaller = list(patch)
        smaller[axis] -= DIVISOR
        try:
            need_smaller = memory.total(smaller, MIN_BATCH_SIZE) if ratios[axis] > 0 else None
        except ValueError:  # a patch the network refuses (MedNeXt: a one-voxel bottleneck)
            need_smaller = None
        if need_smaller is None:
            raise ValueError(
                f"even a {'x'.join(map(str, patch))} patch at batch {MIN_BATCH_SIZE} needs "
                f"{need / GIB:.2f} GiB, more than the {budget_bytes / GIB:.2f} GiB target"
            )
        patch, need = smaller, need_smaller
    per_sample = memory.total(patch, 1) - memory.static_bytes
    fits = int((budget_bytes - memory.static_bytes) // per_sample)
    covered = int(MAX_DATASET_COVERED * dataset_voxels // np.prod(patch))
    batch = max(MIN_BATCH_SIZE, min(fits, covered))
    return patch, batch


def make_plan(
    fingerprint: Fingerprint,
    memory: MemoryModel,
    gpu_memory_gb: float,
    configured: Mapping[str, Any],
) -> dict[str, Any]:
    """The plan (as written to the plan file) for ``gpu_memory_gb``; ``configured`` holds the
    experiment's own ``patch_size`` and ``batch_size``, whose memory is reported beside."""
    spacing = target_spacing(fingerprint.spacings, fingerprint.shapes)
    median = median_shape_at(spacing, fingerprint.spacings, fingerprint.shapes)
    voxels = float(
        np.sum(np.prod(fingerprint.shapes * fingerprint.spacings / np.asarray(spacing), axis=1))
    )
    # The target in GiB, as torch.cuda.max_memory_allocated would report it.
    budget = gpu_memory_gb * GIB
    patch, batch = plan_patch_and_batch(memory, budget, spacing, median, voxels)
    own_patch = [int(p) for p in configured["patch_size"]]
    own_batch = int(configured["batch_size"])
    return dict(
        data=dict(spacing=spacing, patch_size=patch, batch_size=batch),
        estimate=dict(
            gpu_memory_gb=gpu_memory_gb,
            planned_gib=round(memory.total(patch, batch) / GIB, 2),
            activations_per_sample_gib=round(
                (memory.total(patch, 1) - memory.static_bytes) / GIB, 3
            ),
            weights_gradients_optimiser_gib=round(memory.static_bytes / GIB, 3),
            peak_over_saved_activations=round(memory.peak_factor, 3),
            experiment_configuration=dict(
                patch_size=own_patch,
                batch_size=own_batch,
                gib=round(memory.total(own_patch, own_batch) / GIB, 2),
            ),
        ),
        median_shape_at_target_spacing=median,
        fingerprint=fingerprint.as_dict(),
    )


def _experiment_and_overrides(
    dataset: str, experiment: str | None, overrides: Sequence[str]
) -> tuple[str, list[str]]:
    """A dataset folder is read through ``experiment`` (default ``nnunet_mednext_s``) with
    ``data.root`` set to it; anything else names an experiment (whose data is planned)."""
    if Path(dataset).is_dir():
        return experiment or "nnunet_mednext_s", [f"data.root={dataset}", *overrides]
    if experiment is not None:
        raise ValueError(f"--experiment is for a dataset folder; {dataset!r} is not a folder")
    return dataset, list(overrides)


def default_plan_path(config: Mapping[str, Any], root: Path, gpu_memory_gb: float) -> Path:
    """``plans/<dataset folder>_<experiment>_<GB>gb.yaml`` in the working directory (a synthetic
    copy: ``<dataset>-synthetic``)."""
    data = config["data"]
    dataset = f"{data['name']}-synthetic" if data.get("source") == "synthetic" else root.name
    return Path("plans") / f"{dataset}_{config['name']}_{gpu_memory_gb:g}gb.yaml"


def plan_command(args: Any, console: Any) -> int:
    """``mednext plan DATASET [key=value ...]``: fingerprint, plan, plan file, summary."""
    import shlex

    from omegaconf import OmegaConf

    from datamodules import build_datamodule
    from datamodules.errors import DataError, problem_report
    from mednext.config import as_dict, compose
    from mednext.files import write_text

    if args.gpu_memory <= 0:
        raise ValueError(f"--gpu-memory must be a positive number of GB, not {args.gpu_memory}")
    experiment, overrides = _experiment_and_overrides(args.dataset, args.experiment, args.overrides)
    config = as_dict(compose(experiment, overrides))
    datamodule = build_datamodule(dict(config["data"]), seed=config["seed"])
    if not hasattr(datamodule, "find_cases"):
        raise ValueError(
            f"{experiment}: planning is for 3D volume datasets; {config['data']['name']} is not one"
        )
    if config["data"].get("source") == "synthetic":
        datamodule.write_synthetic_copy()
    cases, problems = datamodule.find_cases(datamodule.root)
    if problems:
        raise DataError(problem_report(f"{datamodule.title} at {datamodule.root}", problems))
    training = [case for case in cases if not datamodule.is_test_case(case.case_id)]
    fingerprint = read_fingerprint(training, datamodule.reorient)
    precision = str(config["trainer"].get("precision", "32-true"))
    memory = network_memory_model(
        config["model"], datamodule.in_channels, datamodule.num_classes, config["optim"]["name"]
    )
    plan = make_plan(fingerprint, memory, args.gpu_memory, config["data"])
    model = {k: v for k, v in config["model"].items() if k in ("name", "variant", "kernel_size")}
    record = dict(
        dataset=dict(name=config["data"]["name"], root=str(datamodule.root)),
        experiment=config["name"],
        model=model,
        precision=precision,
        command=shlex.join(["mednext", "plan", args.dataset, *args.overrides]),
        **plan,
    )
    out = (
        Path(args.out) if args.out else default_plan_path(config, datamodule.root, args.gpu_memory)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, OmegaConf.to_yaml(OmegaConf.create(record)))
    data, estimate = plan["data"], plan["estimate"]
    own = estimate["experiment_configuration"]
    print(f"{len(training)} training cases of {datamodule.root}")
    print(
        f"plan for {model.get('name')} {model.get('variant') or ''} at {args.gpu_memory:g} GiB "
        f"(activations counted in float32): spacing {data['spacing']} mm, "
        f"patch {data['patch_size']}, batch {data['batch_size']} (~{estimate['planned_gib']} GiB)"
    )
    verdict = "fits" if own["gib"] <= args.gpu_memory else "exceeds"
    print(
        f"the experiment's own patch {own['patch_size']}, batch {own['batch_size']}: "
        f"~{own['gib']} GiB ({verdict} the target)"
    )
    print(f"plan file: {out}  (use it with data.plan={out})")
    return 0
