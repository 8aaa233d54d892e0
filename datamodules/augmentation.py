"""nnU-Net v2's training augmentation of 3D patches, drawn first and applied fast, on any device.

The distribution is nnU-Net v2's own (``nnUNetTrainer.get_training_transforms`` with
batchgeneratorsv2's transforms, MIC-DKFZ/nnUNet and MIC-DKFZ/batchgeneratorsV2), transform by
transform and in its order:

1. spatial: rotation (probability 0.2; ±30° about every axis, or for an anisotropic patch ±180°
   about its thin axis only, nnU-Net's "dummy 2D") and scaling (probability 0.2, one factor in
   0.7–1.4 for every axis, the thin axis kept), image trilinear with zero padding, labels by the
   arg-max of their trilinearly interpolated one-hot maps (batchgeneratorsv2's default);
2. Gaussian noise (probability 0.1, standard deviation uniform in 0–0.1: batchgeneratorsv2 calls
   the range ``noise_variance`` and uses it as the standard deviation);
3. Gaussian blur (probability 0.2, each channel with probability 0.5, σ uniform in 0.5–1 per
   axis, kernel truncated at 6σ, reflected borders);
4. multiplicative brightness (0.15) and contrast with preserved range (0.15), factors drawn by
   nnU-Net's ``BGContrast`` from 0.75–1.25 (half the time below 1, half above);
5. simulated low resolution (0.25, each channel 0.5; nearest-exact down to a factor in 0.5–1 of
   the side, trilinear back up; the thin axis kept);
6. gamma on the inverted image (0.1) and gamma (0.3), γ by ``BGContrast`` from 0.7–1.5, mean and
   standard deviation restored;
7. mirroring of each axis with probability 0.5.

Every random choice of one patch is made first, by ``draw`` from a numpy generator, as plain
numbers (``Draw``); ``augment_patch`` then applies them in float32 with torch, on the device the
tensors live on. The training loader (CPU workers, ``data.augment_on: cpu``) reads from the cached
volume only the box that the drawn transform needs (only the patch itself when no spatial
transform is drawn: no resampling at all); with ``data.augment_on: gpu`` the workers send the whole
region and the draw, and the same function runs on the GPU after the transfer, so both ways give
the same distribution (on the CPU device, the same patches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

# --- nnU-Net v2's parameters (nnUNetTrainer.get_training_transforms and
# configure_rotation_dummyDA_mirroring_and_inital_patch_size) -------------------------------------

P_ROTATION = 0.2
ROTATION_3D = math.pi / 6
ROTATION_IN_PLANE = math.pi
P_SCALING = 0.2
SCALING = (0.7, 1.4)
#: A patch whose longest side exceeds its shortest by this factor gets the "dummy 2D" augmentation.
ANISOTROPIC_PATCH = 3.0
#: ``get_patch_size``: the region read around the patch is sized for zooms down to this factor.
REGION_SCALE = 0.85
P_NOISE = 0.1
NOISE_STD = (0.0, 0.1)
P_BLUR = 0.2
P_BLUR_CHANNEL = 0.5
BLUR_SIGMA = (0.5, 1.0)
#: batchgeneratorsv2 ``blur_dimension``: kernels cover ±6σ (an odd number of taps).
BLUR_TRUNCATE = 6
P_BRIGHTNESS = 0.15
BRIGHTNESS = (0.75, 1.25)
P_CONTRAST = 0.15
CONTRAST = (0.75, 1.25)
P_LOW_RESOLUTION = 0.25
P_LOW_RESOLUTION_CHANNEL = 0.5
LOW_RESOLUTION = (0.5, 1.0)
P_GAMMA_INVERTED = 0.1
P_GAMMA = 0.3
GAMMA = (0.7, 1.5)
P_MIRROR = 0.5
#: Neither contrast nor gamma divides by less than this (batchgeneratorsv2's ``eps``).
EPS = 1e-7


def thin_axis(patch_size: Sequence[int]) -> int | None:
    """The axis of an anisotropic patch (longest side > ``ANISOTROPIC_PATCH`` × shortest) about
    which alone it is rotated, along which it is neither scaled nor blurred down; ``None`` for a
    patch that is augmented in 3D."""
    if max(patch_size) / min(patch_size) > ANISOTROPIC_PATCH:
        return int(np.argmin(patch_size))
    return None


def augmentation_region(patch_size: Sequence[int]) -> tuple[int, ...]:
    """The region read around a patch for the spatial transform (nnU-Net's ``get_patch_size``).

    Per axis, the largest extent of the patch box under a rotation about any single other axis
    within the allowed angle, divided by ``REGION_SCALE`` where the axis is scaled; rounded up so
    that region minus patch is even, which keeps the centre crop on whole voxels (nnU-Net rounds
    down and takes the odd region's centre half a voxel off: 205 instead of 206 for 128³).
    """
    thin = thin_axis(patch_size)
    rotate = [ROTATION_IN_PLANE if axis == thin else 0.0 for axis in range(3)]
    if thin is None:
        rotate = [ROTATION_3D] * 3
    patch = np.asarray(patch_size, dtype=float)
    extent = patch.copy()
    for axis, angle in enumerate(rotate):
        for i, j in ((a, b) for a in range(3) for b in range(3) if len({a, b, axis}) == 3):
            # max over φ in [0, angle] of the rotated box's extent P_i·cos φ + P_j·sin φ
            if math.atan2(patch[j], patch[i]) <= angle:
                extent[i] = max(extent[i], math.hypot(patch[i], patch[j]))
            else:
                extent[i] = max(extent[i], patch[i] * math.cos(angle) + patch[j] * math.sin(angle))
    scaled = [axis != thin for axis in range(3)]
    extent = np.where(scaled, extent / REGION_SCALE, extent)
    region = np.ceil(extent - 1e-9).astype(int)
    region += (region - patch.astype(int)) % 2
    return tuple(int(r) for r in region)


# --- drawing ------------------------------------------------------------------------------------


def _bg_contrast(rng: np.random.Generator, low: float, high: float) -> float:
    """nnU-Net's ``BGContrast``: half the time a factor below 1, else one at or above it."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def _rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """batchgeneratorsv2's ``create_affine_matrix_3d`` without the scaling: Rz·Ry·Rx, angle i
    about array axis i."""
    cx, cy, cz = (math.cos(a) for a in angles)
    sx, sy, sz = (math.sin(a) for a in angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Draw:
    """Every random choice of one augmented patch (``C`` channels); neutral values mean "not
    applied".

    Attributes:
        affine: ``(3, 3)`` map from patch offsets to region offsets (rotation · scaling, array
            axes), identity without a spatial transform (``spatial`` false).
        noise_std: standard deviation of the added noise, 0 for none; ``noise_seed`` seeds it.
        blur: ``(C, 3)`` σ per channel and axis, 0 for none.
        brightness, contrast: ``(C,)`` factors, 1 for none.
        low_resolution: ``(C, 3)`` downsampling factors, 1 for none.
        gamma_inverted, gamma: ``(C,)`` exponents, 0 for none.
        mirror: ``(3,)`` which axes are flipped.
    """

    spatial: bool
    affine: np.ndarray
    noise_std: float
    noise_seed: int
    blur: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    low_resolution: np.ndarray
    gamma_inverted: np.ndarray
    gamma: np.ndarray
    mirror: np.ndarray

    def as_tensors(self) -> dict[str, torch.Tensor]:
        """The draw as tensors, for a DataLoader to collate into a batch."""
        return {f.name: torch.as_tensor(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor], index: int) -> Draw:
        """Draw ``index`` of a collated batch of ``as_tensors``."""
        values = {name: batch[name][index].cpu().numpy() for name in batch}
        values["spatial"] = bool(values["spatial"])
        values["noise_std"] = float(values["noise_std"])
        values["noise_seed"] = int(values["noise_seed"])
        return cls(**values)


def draw(rng: np.random.Generator, channels: int, patch_size: Sequence[int]) -> Draw:
    """The random choices of one patch, in nnU-Net's order and with its probabilities."""
    thin = thin_axis(patch_size)
    do_rotation = rng.random() < P_ROTATION
    do_scaling = rng.random() < P_SCALING
    affine = np.eye(3)
    if do_rotation:
        if thin is None:
            angles = rng.uniform(-ROTATION_3D, ROTATION_3D, 3)
        else:
            angles = np.zeros(3)
            angles[thin] = rng.uniform(-ROTATION_IN_PLANE, ROTATION_IN_PLANE)
        affine = _rotation_matrix(angles)
    if do_scaling:
        scale = np.full(3, rng.uniform(*SCALING))
        if thin is not None:
            scale[thin] = 1.0
        affine = affine @ np.diag(scale)
    noise_std = float(rng.uniform(*NOISE_STD)) if rng.random() < P_NOISE else 0.0
    noise_seed = int(rng.integers(2**62))
    blur = np.zeros((channels, 3))
    if rng.random() < P_BLUR:
        for channel in range(channels):
            if rng.random() < P_BLUR_CHANNEL:
                blur[channel] = rng.uniform(*BLUR_SIGMA, 3)
    brightness, contrast = np.ones(channels), np.ones(channels)
    if rng.random() < P_BRIGHTNESS:
        brightness = np.array([_bg_contrast(rng, *BRIGHTNESS) for _ in range(channels)])
    if rng.random() < P_CONTRAST:
        contrast = np.array([_bg_contrast(rng, *CONTRAST) for _ in range(channels)])
    low_resolution = np.ones((channels, 3))
    if rng.random() < P_LOW_RESOLUTION:
        for channel in range(channels):
            if rng.random() < P_LOW_RESOLUTION_CHANNEL:
                low_resolution[channel] = rng.uniform(*LOW_RESOLUTION)
                if thin is not None:
                    low_resolution[channel, thin] = 1.0
    gammas = []
    for probability in (P_GAMMA_INVERTED, P_GAMMA):
        drawn = rng.random() < probability
        gammas.append(
            np.array([_bg_contrast(rng, *GAMMA) for _ in range(channels)])
            if drawn
            else np.zeros(channels)
        )
    return Draw(
        spatial=bool(do_rotation or do_scaling),
        affine=affine,
        noise_std=noise_std,
        noise_seed=noise_seed,
        blur=blur,
        brightness=brightness,
        contrast=contrast,
        low_resolution=low_resolution,
        gamma_inverted=gammas[0],
        gamma=gammas[1],
        mirror=rng.random(3) < P_MIRROR,
    )


# --- the spatial transform ----------------------------------------------------------------------


def patch_positions(
    affine: np.ndarray,
    patch_size: Sequence[int],
    region: Sequence[int],
    box_start: Sequence[int],
    device: torch.device,
) -> torch.Tensor:
    """Where every patch voxel samples the box: ``(3, *patch_size)`` float32 voxel-centre
    coordinates of a box that starts at ``box_start`` in the region, ``centre + affine · offset``
    with offsets from the patch centre. The identity puts the patch in the middle of the region,
    on whole voxels."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2 for n in patch_size]
    broadcast = (axes[0].view(-1, 1, 1), axes[1].view(1, -1, 1), axes[2].view(1, 1, -1))
    positions = torch.empty((3, *patch_size), dtype=torch.float32, device=device)
    for i in range(3):
        centre = float((region[i] - 1) / 2 - box_start[i])
        row = [float(v) for v in affine[i]]
        plane = broadcast[0] * row[0] + broadcast[1] * row[1] + centre
        torch.add(plane, broadcast[2] * row[2], out=positions[i])
    return positions


def sampled_box(
    draw: Draw, patch_size: Sequence[int], region: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(start, stop)`` of the part of the region that the draw's patch reads: the patch itself
    without a spatial transform, else the bounding box of the transformed patch (one voxel more
    for interpolation) clipped to the region (beyond it nnU-Net samples zeros)."""
    region = np.asarray(region)
    patch = np.asarray(patch_size)
    if not draw.spatial:
        start = (region - patch) // 2
        return start, start + patch
    half = (patch - 1) / 2
    corners = np.array(np.meshgrid(*([-1, 1],) * 3, indexing="ij")).reshape(3, -1) * half[:, None]
    reached = draw.affine @ corners + ((region - 1) / 2)[:, None]
    start = np.clip(np.floor(reached.min(axis=1)).astype(int), 0, region)
    stop = np.clip(np.floor(reached.max(axis=1)).astype(int) + 2, 0, region)
    return start, np.maximum(stop, start + 1)


def resample_image(image: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``image`` ``(C, *box)`` trilinearly at ``positions`` ``(3, *patch)`` (box voxel
    coordinates), zero outside: ``(C, *patch)``."""
    # grid_sample takes (x, y, z) = (last, middle, first) axis in [-1, 1], voxel edges at ±1.
    grid = torch.stack(
        [(2 * positions[axis] + 1) / image.shape[1 + axis] - 1 for axis in (2, 1, 0)], dim=-1
    )
    return F.grid_sample(image[None], grid[None], mode="bilinear", align_corners=False)[0]


def resample_labels(label: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Integer labels ``(*box)`` at ``positions`` ``(3, *patch)``, label 0 outside the box: the
    arg-max over labels of their trilinearly interpolated indicator maps, which is what
    batchgeneratorsv2 computes with one ``grid_sample`` per label, here as a weighted vote of the
    8 voxels around each position. A tie goes to the nearest voxel's label when it is among the
    tied ones, else to the smallest tied label (batchgeneratorsv2's ``seg_tiebreak='nearest'``;
    it compares scores rounded to float16, which makes near ties exact ties, here they stay
    apart).

    Where the 8 voxels share one label (almost everywhere) that label is the answer; only the
    positions at label borders are voted on."""
    # One voxel of label 0 around the box: positions up to a voxel outside still vote on real
    # voxels and the padding, further out they land on padding only.
    padded = F.pad(label[None, None].to(torch.uint8), (1, 1, 1, 1, 1, 1))[0, 0]
    first = padded[:-1, :-1, :-1]
    uniform = torch.ones(first.shape, dtype=torch.bool, device=label.device)
    x, y, z = first.shape
    for corner in range(1, 8):
        dx, dy, dz = (corner >> 2) & 1, (corner >> 1) & 1, corner & 1
        uniform &= first == padded[dx : dx + x, dy : dy + y, dz : dz + z]
    # The cell of each position: its lower corner, in padded coordinates (0 .. box). The flat
    # index is exact in float32 (below 2**24 for any box of a 3D patch) and converted once.
    cell = positions.floor().add_(1)
    sizes = torch.tensor(first.shape, dtype=cell.dtype, device=cell.device).view(3, 1, 1, 1)
    outside = ((cell < 0) | (cell >= sizes)).any(0)
    cell = torch.minimum(cell.clamp_(min=0), sizes - 1)
    index = ((cell[0] * y + cell[1]) * z + cell[2]).to(torch.int64)
    flat = index.view(-1)
    result = first.contiguous().view(-1).take(flat).view(index.shape)
    border = uniform.view(-1).take(flat).view(index.shape).logical_not_().logical_and_(~outside)
    where = border.view(-1).nonzero().squeeze(1)
    if len(where):
        corner = cell.view(3, -1)[:, where]
        fraction = positions.view(3, -1)[:, where].add_(1).sub_(corner)
        result.view(-1)[where] = _vote(padded, corner, fraction)
    result[outside] = 0
    return result.to(torch.int64)


def _vote(padded: torch.Tensor, corner: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """The weighted-vote label of ``N`` positions whose cell holds more than one label: ``corner``
    ``(3, N)`` the cells' lower corners in ``padded`` (float, whole numbers), ``fraction``
    ``(3, N)`` the positions' offsets from them."""
    _, y, z = padded.shape
    base = ((corner[0] * y + corner[1]) * z + corner[2]).to(torch.int64)
    flat = padded.contiguous().view(-1)
    near, far = 1 - fraction, fraction
    labels, weights = [], []
    for index in range(8):
        dx, dy, dz = (index >> 2) & 1, (index >> 1) & 1, index & 1
        labels.append(flat.take(base + (dx * y + dy) * z + dz))
        weights.append(
            (far[0] if dx else near[0]) * (far[1] if dy else near[1]) * (far[2] if dz else near[2])
        )
    labels_t, weights_t = torch.stack(labels, 1), torch.stack(weights, 1)
    same = labels_t[:, :, None] == labels_t[:, None, :]
    scores = (weights_t[:, None, :] * same).sum(-1)
    tied = scores == scores.max(1, keepdim=True).values
    lowest = torch.where(tied, labels_t, torch.iinfo(labels_t.dtype).max).min(1).values
    nearest = weights_t.argmax(1, keepdim=True)
    nearest_wins = tied.gather(1, nearest)[:, 0]
    return torch.where(nearest_wins, labels_t.gather(1, nearest)[:, 0], lowest)


# --- intensities --------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """batchgeneratorsv2's ``_build_kernel``: an odd number of taps close to ``6σ + 0.5``."""
    length = sigma * BLUR_TRUNCATE + 0.5
    rounded = round(length)
    if rounded % 2 == 0:
        rounded += 1 if length - rounded >= 0 else -1
    half = (rounded - 1) / 2
    x = torch.linspace(-half, half, rounded, device=device)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def blur(volume: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """``volume`` ``(*spatial)`` smoothed by a separable Gaussian of ``sigmas`` per axis with
    reflected borders (a sum of shifted copies: the kernels have at most 7 taps)."""
    for axis, sigma in enumerate(sigmas):
        kernel = _gaussian_kernel(float(sigma), volume.device)
        half = len(kernel) // 2
        if half == 0:
            continue
        pads = [0] * 6
        pads[2 * (2 - axis)] = pads[2 * (2 - axis) + 1] = half
        padded = F.pad(volume[None, None], pads, mode="reflect")[0, 0]
        length = volume.shape[axis]
        smoothed = padded.narrow(axis, 0, length) * kernel[0]
        for tap in range(1, len(kernel)):
            smoothed.add_(padded.narrow(axis, tap, length), alpha=float(kernel[tap]))
        volume = smoothed
    return volume


def _gamma(volume: torch.Tensor, gamma: float, invert: bool) -> None:
    """batchgeneratorsv2's ``GammaTransform`` on one channel, in place, statistics retained."""
    if invert:
        volume.neg_()
    mean, std = volume.mean(), volume.std()
    low, high = torch.aminmax(volume)
    span = high - low
    volume.sub_(low).div_(torch.clamp(span, min=EPS)).pow_(gamma).mul_(span).add_(low)
    volume.sub_(volume.mean()).mul_(std / torch.clamp(volume.std(), min=EPS)).add_(mean)
    if invert:
        volume.neg_()


def augment_intensities(image: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Noise, blur, brightness, contrast, low resolution and the two gammas of ``draw`` on a
    patch ``(C, *patch)`` float32, in nnU-Net's order (in place where possible)."""
    if draw.noise_std > 0:
        generator = torch.Generator(device=image.device).manual_seed(draw.noise_seed)
        noise = torch.randn(image.shape, generator=generator, device=image.device)
        image.add_(noise.mul_(draw.noise_std))
    for channel, sigmas in enumerate(draw.blur):
        if sigmas.any():
            image[channel] = blur(image[channel], sigmas)
    for channel, factor in enumerate(draw.brightness):
        if factor != 1:
            image[channel].mul_(float(factor))
    for channel, factor in enumerate(draw.contrast):
        if factor != 1:
            volume = image[channel]
            mean = volume.mean()
            low, high = torch.aminmax(volume)
            volume.sub_(mean).mul_(float(factor)).add_(mean).clamp_(low, high)
    for channel, factors in enumerate(draw.low_resolution):
        if (factors != 1).any():
            shape = image.shape[1:]
            small = [round(n * f) for n, f in zip(shape, factors, strict=True)]
            down = F.interpolate(image[channel][None, None], small, mode="nearest-exact")
            image[channel] = F.interpolate(down, shape, mode="trilinear")[0, 0]
    for gammas, invert in ((draw.gamma_inverted, True), (draw.gamma, False)):
        for channel, gamma in enumerate(gammas):
            if gamma > 0:
                _gamma(image[channel], float(gamma), invert)
    return image


def augment_patch(
    image: torch.Tensor,
    label: torch.Tensor,
    draw: Draw,
    patch_size: Sequence[int],
    region: Sequence[int],
    box_start: Sequence[int] = (0, 0, 0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented training patch: ``image`` float32 ``(C, *patch_size)`` and ``label`` int64
    ``(1, *patch_size)`` from ``image`` ``(C, *box)`` and ``label`` ``(*box)`` (any integer
    type), where the box is the part of the region (of shape ``region``, the patch in its middle)
    that starts at ``box_start``: the whole region, or ``sampled_box`` of the draw."""
    if draw.spatial:
        positions = patch_positions(draw.affine, patch_size, region, box_start, image.device)
        image = resample_image(image.to(torch.float32), positions)
        label = resample_labels(label, positions)
    else:
        offset = (np.asarray(region) - np.asarray(patch_size)) // 2 - np.asarray(box_start)
        window = tuple(slice(o, o + n) for o, n in zip(offset, patch_size, strict=True))
        image = image[(slice(None), *window)].to(torch.float32, copy=True)
        label = label[window].to(torch.int64)
    image = augment_intensities(image.contiguous(), draw)
    flipped = [axis for axis in range(3) if draw.mirror[axis]]
    if flipped:
        image = torch.flip(image, [axis + 1 for axis in flipped])
        label = torch.flip(label, flipped)
    return image.contiguous(), label[None].contiguous()
