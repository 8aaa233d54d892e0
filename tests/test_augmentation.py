"""The training augmentation of 3D patches (``datamodules.augmentation``): nnU-Net v2's
distribution, the fast paths computing what the plain ones compute, the GPU path equal to the
workers' on the same device, and each transform against batchgeneratorsv2's own code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import augmentation as aug
from datamodules.patches import CachedCase, PatchDataset, augment_batch

PATCH = (16, 16, 16)


def blobs(shape: tuple[int, ...], labels: int, seed: int) -> np.ndarray:
    """A label volume of overlapping ellipsoids: realistic borders, several labels meeting."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij", sparse=True)
    volume = np.zeros(shape, np.uint8)
    for label in range(1, labels):
        centre, radii = rng.uniform(0.2, 0.8, 3), rng.uniform(0.1, 0.35, 3)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
        volume[inside] = label
    return volume


def spatial_draw(seed: int, patch: tuple[int, ...] = PATCH) -> aug.Draw:
    rng = np.random.default_rng(seed)
    while not (drawn := aug.draw(rng, 1, patch)).spatial:
        pass
    return drawn


def plain(drawn: aug.Draw, **changes: object) -> aug.Draw:
    """``drawn`` with no intensity transform and no mirroring (or ``changes``)."""
    neutral = dict(
        noise_std=0.0,
        blur=np.zeros_like(drawn.blur),
        brightness=np.ones_like(drawn.brightness),
        contrast=np.ones_like(drawn.contrast),
        low_resolution=np.ones_like(drawn.low_resolution),
        gamma_inverted=np.zeros_like(drawn.gamma_inverted),
        gamma=np.zeros_like(drawn.gamma),
        mirror=np.zeros(3, bool),
    )
    return dataclasses.replace(drawn, **{**neutral, **changes})


def reference_labels(label: np.ndarray, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per label, its indicator map trilinearly at ``positions`` (outside: label 0), as
    batchgeneratorsv2 computes it: the scores and their arg-max."""
    margin = 4
    padded = np.pad(label, margin)
    scores = []
    for value in range(int(label.max()) + 1):
        indicator = torch.from_numpy((padded == value).astype(np.float32))[None]
        scores.append(aug.resample_image(indicator, positions + margin)[0])
    stacked = torch.stack(scores)
    return stacked, stacked.argmax(0)


@pytest.mark.parametrize("seed", range(4))
def test_labels_are_the_arg_max_of_the_interpolated_one_hot_maps(seed: int) -> None:
    label = blobs((22, 20, 18), labels=5, seed=seed)
    region = label.shape
    drawn = spatial_draw(seed)
    positions = aug.patch_positions(drawn.affine, PATCH, region, (0, 0, 0), torch.device("cpu"))
    ours = aug.resample_labels(torch.from_numpy(label), positions)
    scores, expected = reference_labels(label, positions)
    top2 = scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4  # exact ties are settled by the nearest voxel instead
    assert clear.float().mean() > 0.99
    assert torch.equal(ours[clear], expected[clear])
    assert ours.dtype == torch.int64 and set(ours.unique().tolist()) <= set(range(5))


def test_a_tie_goes_to_the_nearest_voxels_label() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    label[2:] = 3
    # Exactly between the two planes: label 0 and 3 score 1/2 each; the nearest voxel (rounded
    # down by argmax of equal weights, the lower one) has label 0.
    positions = torch.tensor([1.5, 1.0, 1.0]).view(3, 1, 1, 1)
    assert aug.resample_labels(torch.from_numpy(label), positions).item() == 0
    positions = torch.tensor([1.6, 1.0, 1.0]).view(3, 1, 1, 1)
    assert aug.resample_labels(torch.from_numpy(label), positions).item() == 3


@pytest.mark.parametrize("seed", range(3))
def test_reading_only_the_sampled_box_gives_what_the_whole_region_gives(seed: int) -> None:
    region = aug.augmentation_region(PATCH)
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.normal(size=(2, *region)).astype(np.float32))
    label = torch.from_numpy(blobs(region, labels=4, seed=seed))
    drawn = spatial_draw(seed + 10)
    whole = aug.augment_patch(image.clone(), label, drawn, PATCH, region)
    start, stop = aug.sampled_box(drawn, PATCH, region)
    assert (stop - start < np.asarray(region)).any() or (start == 0).all()
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    part = aug.augment_patch(
        image[(slice(None), *box)].clone(), label[box], drawn, PATCH, region, start
    )
    torch.testing.assert_close(part[0], whole[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(part[1], whole[1])


def test_without_a_spatial_transform_the_patch_is_cut_out_exactly() -> None:
    region = aug.augmentation_region(PATCH)
    image = torch.randn(1, *region)
    label = torch.randint(0, 3, region, dtype=torch.uint8)
    drawn = plain(aug.draw(np.random.default_rng(0), 1, PATCH), spatial=False, affine=np.eye(3))
    patch, patch_label = aug.augment_patch(image, label, drawn, PATCH, region)
    start = [(r - p) // 2 for r, p in zip(region, PATCH, strict=True)]
    window = tuple(slice(s, s + p) for s, p in zip(start, PATCH, strict=True))
    assert torch.equal(patch, image[(slice(None), *window)])
    assert torch.equal(patch_label[0], label[window].long())
    # An identity affine through the resampling path lands on the same voxels.
    resampled = aug.augment_patch(
        image, label, dataclasses.replace(drawn, spatial=True), PATCH, region
    )
    torch.testing.assert_close(resampled[0], patch)
    assert torch.equal(resampled[1], patch_label)


@pytest.fixture(scope="module")
def cached_case(tmp_path_factory: pytest.TempPathFactory) -> CachedCase:
    folder = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)
    shape = (40, 36, 30)
    np.save(folder / "image.npy", rng.normal(size=(2, *shape)).astype(np.float32))
    np.save(folder / "label.npy", blobs(shape, labels=4, seed=0))
    return CachedCase("case", folder / "image.npy", folder / "label.npy", shape)


def test_the_gpu_path_on_the_cpu_device_equals_the_workers_path(cached_case: CachedCase) -> None:
    def dataset(here: bool) -> PatchDataset:
        patches = PatchDataset([cached_case], PATCH, 12, 0.0, augment=True, augment_here=here)
        patches.set_random_state(7)
        return patches

    workers = [dataset(True)[i] for i in range(12)]
    regions = [dataset(False)[i] for i in range(12)]
    batch = torch.utils.data.default_collate(regions)
    assert batch["image"].shape[2:] == aug.augmentation_region(PATCH)
    after_transfer = augment_batch(batch, PATCH)
    images = torch.stack([item["image"] for item in workers])
    labels = torch.stack([item["label"] for item in workers])
    torch.testing.assert_close(after_transfer["image"], images, rtol=1e-4, atol=1e-4)
    assert torch.equal(after_transfer["label"], labels)
    assert images.dtype == torch.float32 and labels.shape == (12, 1, *PATCH)


def test_the_draws_follow_nnunet_v2s_probabilities_and_ranges() -> None:
    rng = np.random.default_rng(1)
    draws = [aug.draw(rng, 1, PATCH) for _ in range(4000)]

    def share(test) -> float:
        return float(np.mean([bool(test(d)) for d in draws]))

    def near(value: float, p: float) -> bool:
        return abs(value - p) < 4 * np.sqrt(p * (1 - p) / len(draws))

    assert near(share(lambda d: d.spatial), 1 - 0.8 * 0.8)
    assert near(share(lambda d: d.noise_std > 0), 0.1)
    assert near(share(lambda d: d.blur.any()), 0.2 * 0.5)
    assert near(share(lambda d: d.brightness[0] != 1), 0.15)
    assert near(share(lambda d: d.contrast[0] != 1), 0.15)
    assert near(share(lambda d: (d.low_resolution != 1).any()), 0.25 * 0.5)
    assert near(share(lambda d: d.gamma_inverted[0] > 0), 0.1)
    assert near(share(lambda d: d.gamma[0] > 0), 0.3)
    assert near(share(lambda d: d.mirror[0]), 0.5)
    stds = [d.noise_std for d in draws if d.noise_std > 0]
    assert min(stds) > 0 and max(stds) <= 0.1
    # BGContrast: half of the factors below 1 (0.75-1), half above (1-1.25).
    factors = np.array([d.brightness[0] for d in draws if d.brightness[0] != 1])
    assert (
        near(float(np.mean(factors < 1)), 0.5) and factors.min() >= 0.75 and factors.max() <= 1.25
    )
    gammas = np.array([d.gamma[0] for d in draws if d.gamma[0] > 0])
    assert gammas.min() >= 0.7 and gammas.max() <= 1.5 and near(float(np.mean(gammas < 1)), 0.5)
    for d in draws:
        # One scale factor for every axis: the affine's columns have one length.
        lengths = np.linalg.norm(d.affine, axis=0)
        assert np.allclose(lengths, lengths[0]) and 0.7 <= lengths[0] <= 1.4
        sigmas = d.blur[d.blur > 0]
        assert ((sigmas >= 0.5) & (sigmas <= 1)).all()


def test_an_anisotropic_patch_is_augmented_in_plane() -> None:
    patch = (32, 32, 8)
    assert aug.thin_axis(patch) == 2 and aug.thin_axis(PATCH) is None
    rng = np.random.default_rng(2)
    for _ in range(500):
        d = aug.draw(rng, 1, patch)
        assert np.allclose(d.affine[2], [0, 0, 1]) and np.allclose(d.affine[:, 2], [0, 0, 1])
        assert (d.low_resolution[:, 2] == 1).all()
    region = aug.augmentation_region(patch)
    assert region[2] == 8 and region[0] > 32 * np.sqrt(2) / aug.REGION_SCALE - 1


# --- against nnU-Net's own transforms (batchgeneratorsv2, part of the dev and bench extras) ----


@pytest.fixture(scope="module")
def bgv2() -> object:
    return pytest.importorskip(
        "batchgeneratorsv2", reason="batchgeneratorsv2 (nnU-Net v2's augmentation) not installed"
    )


def test_resampling_matches_batchgeneratorsv2s_spatial_transform(bgv2: object) -> None:
    from batchgeneratorsv2.transforms.spatial.spatial import (
        SpatialTransform,
        _convert_my_grid_to_grid_sample_grid,
        _create_centered_identity_grid2,
    )

    region = aug.augmentation_region(PATCH)
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, *region)).astype(np.float32))
    label = torch.from_numpy(blobs(region, labels=6, seed=3))
    for seed in range(4):
        drawn = plain(spatial_draw(seed))
        transform = SpatialTransform(PATCH, 0, random_crop=False)
        grid = _create_centered_identity_grid2(PATCH) @ torch.from_numpy(drawn.affine.T).float()
        params = dict(grid=_convert_my_grid_to_grid_sample_grid(grid, region))
        theirs_image = transform._apply_to_image(image, **params)
        theirs_label = transform._apply_to_segmentation(label[None].to(torch.int16), **params)
        ours_image, ours_label = aug.augment_patch(image, label, drawn, PATCH, region)
        torch.testing.assert_close(ours_image, theirs_image, rtol=1e-4, atol=1e-4)
        agreement = (ours_label == theirs_label.long()).float().mean().item()
        assert agreement > 0.998, agreement  # near ties are exact ties in their float16 scores


def test_each_intensity_transform_matches_batchgeneratorsv2(bgv2: object) -> None:
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform

    image = torch.from_numpy(np.random.default_rng(4).normal(size=(1, *PATCH)).astype(np.float32))
    drawn = plain(aug.draw(np.random.default_rng(0), 1, PATCH))
    one = torch.tensor([0])

    def ours(**changes: object) -> torch.Tensor:
        return aug.augment_intensities(image.clone(), plain(drawn, **changes))

    blurred = GaussianBlurTransform()._apply_to_image(
        image.clone(), apply_to_channel=torch.tensor([True]), sigmas=[[0.6, 0.8, 1.0]]
    )
    torch.testing.assert_close(ours(blur=np.array([[0.6, 0.8, 1.0]])), blurred)
    brighter = MultiplicativeBrightnessTransform((1, 1), False)._apply_to_image(
        image.clone(), apply_to_channel=one, multipliers=torch.tensor([1.2])
    )
    torch.testing.assert_close(ours(brightness=np.array([1.2])), brighter)
    contrasted = ContrastTransform((1, 1), True, False)._apply_to_image(
        image.clone(), apply_to_channel=one, multipliers=torch.tensor([0.8])
    )
    torch.testing.assert_close(ours(contrast=np.array([0.8])), contrasted)
    coarse = SimulateLowResolutionTransform(0.5, False, True, None)._apply_to_image(
        image.clone(), apply_to_channel=one, scales=torch.tensor([[0.6, 0.6, 0.6]])
    )
    torch.testing.assert_close(ours(low_resolution=np.array([[0.6, 0.6, 0.6]])), coarse)
    for invert, key in ((True, "gamma_inverted"), (False, "gamma")):
        gamma = GammaTransform(1, 1, False, 1, 1)._apply_to_image(
            image.clone(),
            apply_to_channel=one,
            retain_stats=torch.tensor([True]),
            invert_image=torch.tensor([invert]),
            gamma=torch.tensor([1.3]),
        )
        torch.testing.assert_close(ours(**{key: np.array([1.3])}), gamma, rtol=1e-4, atol=1e-4)


def test_cached_volumes_are_opened_once_per_worker(cached_case: CachedCase) -> None:
    patches = PatchDataset([cached_case], PATCH, 4, 0.0, augment=True)
    for i in range(4):
        patches[i]
    assert set(patches._volumes) == {cached_case.image, cached_case.label}
    assert F.one_hot(patches[0]["label"][0], 4).shape == (*PATCH, 4)
