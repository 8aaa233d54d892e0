"""The ``predict`` part of ``mednext bench``: one CT-sized volume segmented by MedNeXt-S with
mirror test-time augmentation, the suite's sliding-window inference against MONAI's
``sliding_window_inference`` looping over the flips, on the same network and weights in the
same run.

Ours is ``SegmentationTask.predict_probabilities``, what validation, ``mednext test`` and
``mednext predict`` run, with ``model.channels_last=true``: the flips of a window batched on CUDA
(one at a time on the CPU, where that is faster), fp16 autocast on CUDA. The reference is the
way a MONAI user mirrors: ``sliding_window_inference`` with a predictor that runs the network on
each flip in turn and averages the softmax, the network in its default layout. A full run also
times MONAI's loop on our channels-last network, which shows how much of the difference is the
layout. Both use Gaussian blending, overlap 0.5 and one window per forward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from mednext.bench import harness
from mednext.bench.parts.base import SEED, BenchPart, BenchSettings, PartResult
from mednext.bench.parts.mednext3d import REFERENCE

_VARIANT = "S"
_OVERLAP = 0.5
_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # On this suite's 2-core CPU machines one MedNeXt-S forward pass at 128³ takes about 8 s,
    # so a CT volume at 128³ windows would take over half an hour per pipeline: the CPU run
    # halves every side (volume and window).
    ("full", "cpu"): dict(volume=(180, 150, 46), window=64),
    ("full", "cuda"): dict(volume=(360, 300, 90), window=128),
    ("quick", "cpu"): dict(volume=(64, 64, 32), window=32),
    ("quick", "cuda"): dict(volume=(180, 150, 46), window=64),
}
_COLUMNS = ("Pipeline", "Volume", "Window", "Forward passes", "Seconds", "Time ÷ MONAI loop")
_MONAI = "MONAI sliding_window_inference, per-flip loop"
_MONAI_CL = "MONAI sliding_window_inference, per-flip loop, our channels-last network"
_OURS = "ours (predict_probabilities, channels-last)"


def _task(window: int, channels_last: bool) -> Any:
    from mednext.tasks.segmentation import SegmentationTask

    return SegmentationTask(
        model={
            "name": "mednext",
            "variant": _VARIANT,
            "deep_supervision": REFERENCE["deep_supervision"],
            "channels_last": channels_last,
        },
        in_channels=REFERENCE["in_channels"],
        num_classes=REFERENCE["num_classes"],
        patch_size=[window] * 3,
        spacing=[1.0, 1.0, 1.0],
        class_names=[f"class{k}" for k in range(REFERENCE["num_classes"])],
        optim={},
        loss={},
        evaluation={
            "sw_overlap": _OVERLAP,
            "sw_batch_size": 1,
            "mirror_tta": True,
            "mirror_batch": None,
            "autocast": True,
        },
        log_images=False,
    )


def monai_loop(net: nn.Module, image: torch.Tensor, window: int) -> torch.Tensor:
    """MONAI's sliding window with a predictor that averages the softmax over the 8 flips of
    every window, one forward pass per flip."""
    from monai.inferers import sliding_window_inference

    from mednext.tasks.segmentation import mirror_flips

    def predictor(x: torch.Tensor) -> torch.Tensor:
        total = None
        for flip in mirror_flips(3, True):
            logits = net(torch.flip(x, flip) if flip else x)
            probabilities = torch.softmax(logits.float(), dim=1)
            probabilities = torch.flip(probabilities, flip) if flip else probabilities
            total = probabilities if total is None else total + probabilities
        return total / 8

    return sliding_window_inference(
        image, (window,) * 3, 1, predictor, overlap=_OVERLAP, mode="gaussian"
    )


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def window_count(volume: tuple[int, ...], window: int) -> int:
    """Windows of MONAI's grid over ``volume``: per axis one where the volume is no larger than
    the window (it is padded), else one every ``window * (1 - overlap)`` voxels and one at the
    end."""
    step = int(window * (1 - _OVERLAP))
    count = 1
    for size in volume:
        count *= 1 if size <= window else math.ceil((size - window) / step) + 1
    return count


class PredictVsMonai(BenchPart):
    """Sliding-window inference with mirroring. Its own options: ``volume`` (the CT volume's
    shape at the model spacing) and ``window`` (cube side)."""

    name = "predict"
    section = "predict"
    title = "Sliding-window inference with mirroring vs MONAI's loop"
    heading = "Inference with mirror test-time augmentation vs MONAI"
    options = ("--volume", "--window")
    shared = ()
    defaults: ClassVar[Mapping[tuple[str, str], Mapping[str, Any]]] = _DEFAULTS
    text_columns = 3
    notes = (
        "Same network, same weights (MedNeXt-S k3, 14 classes, seeded random initialisation), "
        "same windows and Gaussian weights: the suite changes how each window is computed, not "
        "what. Labels are compared voxel by voxel; with untrained weights many voxels are close "
        "to a tie between classes, so float32 rounding in another order can flip a handful.",
    )

    def pipelines(self, settings: BenchSettings) -> tuple[str, ...]:
        return (_MONAI, _OURS) if settings.quick else (_MONAI, _OURS, _MONAI_CL)

    def columns(self) -> tuple[str, ...]:
        return _COLUMNS

    def input_shape(self, settings: BenchSettings) -> tuple[int, ...]:
        return (1, REFERENCE["in_channels"], *settings.options["volume"])

    def command_options(self, settings: BenchSettings) -> list[str]:
        volume = ",".join(str(n) for n in settings.options["volume"])
        return ["--volume", volume, "--window", str(settings.options["window"])]

    def step_count(self, settings: BenchSettings) -> int:
        return 2 * len(self.pipelines(settings))

    def check(self, settings: BenchSettings) -> None:
        from mednext.models.mednext import DOWNSAMPLING_FACTOR

        window = settings.options["window"]
        if window % DOWNSAMPLING_FACTOR or window < 2 * DOWNSAMPLING_FACTOR:
            raise ValueError(
                f"--window must be a multiple of {DOWNSAMPLING_FACTOR} of at least "
                f"{2 * DOWNSAMPLING_FACTOR}, got {window}"
            )

    def measure(self, settings: BenchSettings, label: harness.ProgressLabel) -> PartResult:
        advance = label("sliding-window inference")
        window, device = settings.options["window"], settings.device
        torch.manual_seed(SEED)
        ours = _task(window, channels_last=True).to(device).eval()
        plain = _task(window, channels_last=False).to(device).eval()
        plain.net.load_state_dict(ours.net.state_dict())
        generator = torch.Generator().manual_seed(SEED)
        image = torch.randn(self.input_shape(settings), generator=generator).to(device)
        runs = {
            _MONAI: lambda: monai_loop(plain.net, image, window),
            _OURS: lambda: ours.predict_probabilities(image),
            _MONAI_CL: lambda: monai_loop(ours.net, image, window),
        }
        runs = {name: runs[name] for name in self.pipelines(settings)}
        warm = torch.randn((1, 1, window, window, window), generator=generator).to(device)
        seconds, labels, probabilities = {}, {}, {}
        with torch.inference_mode():
            for name in runs:
                # One window's forward pass, so that no pipeline pays the first-call costs.
                (plain if name == _MONAI else ours).net(warm)
                advance()
            for name, run in runs.items():
                seconds[name], out = _timed(run, device)
                probabilities[name] = out.float()
                labels[name] = out.argmax(dim=1)
                advance()
        reference = seconds[_MONAI]
        forwards = 8 * window_count(settings.options["volume"], window)
        volume = "×".join(str(n) for n in settings.options["volume"])
        rows = [
            [name, volume, f"{window}³", str(forwards), f"{s:,.1f}", f"{s / reference:.2f}"]
            for name, s in seconds.items()
        ]
        equal = (labels[_OURS] == labels[_MONAI]).float().mean().item()
        largest = (probabilities[_OURS] - probabilities[_MONAI]).abs().max().item()
        return PartResult(
            rows=rows,
            figures={
                "volume": list(settings.options["volume"]),
                "window": window,
                "forward_passes": forwards,
                "seconds": seconds,
                "time_ratio_vs_monai": seconds[_OURS] / reference,
                "labels_equal_fraction": equal,
                "max_probability_difference": largest,
            },
            notes=(
                f"Ours: {seconds[_OURS] / reference:.2f}× the time of MONAI's loop; labels equal "
                f"in {equal:.6%} of the voxels, probabilities within {largest:.1e}.",
            ),
        )

    def method(self, settings: BenchSettings) -> str:
        return (
            "A random volume of the given shape (standing for a CT at the model's 1 mm "
            f"spacing) segmented by MedNeXt-{_VARIANT} k3 in eval mode: windows of "
            f"{settings.options['window']}³, overlap {_OVERLAP}, Gaussian blending, each window "
            "and its 7 mirrored copies (8 forward passes), softmax averaged. Wall time of each "
            "whole volume, after one untimed window, under `torch.inference_mode()`, on "
            f"{settings.device.type}."
        )


PREDICT_VS_MONAI = PredictVsMonai()
