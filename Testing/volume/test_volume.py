"""Tests of DiffRegLogic.volume: Volume, HU -> mu, downsampling and its cache.

Expected values are independent of the code under test: affines are built by
hand in numpy and the HU -> mu map is written out from its definition.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.volume import HUToMu, Volume

# --------------------------------------------------------------------------
from file_references import DT, MU_WATER, ROT30, SPACING, ORIGIN, oblique_affine, hu_to_mu_reference, N
# Volume basics
# --------------------------------------------------------------------------


def test_volume_shape_spacing_center_and_index_mapping():
    rng = np.random.default_rng(1)
    mu = torch.as_tensor(rng.uniform(0, 0.05, size=(4, 5, 6)), dtype=torch.float32)  # (K, J, I)
    aff = oblique_affine()
    vol = Volume(mu, torch.as_tensor(aff))
    assert vol.shape_ijk == (6, 5, 4)
    assert vol.affine.dtype == torch.float64
    np.testing.assert_allclose(N(vol.spacing), SPACING, atol=1e-12)
    # centre = affine @ ((nI - 1)/2, (nJ - 1)/2, (nK - 1)/2)
    np.testing.assert_allclose(N(vol.center), ROT30 @ (SPACING * [2.5, 2.0, 1.5]) + ORIGIN, atol=1e-12)
    ijk = rng.uniform(-1, 7, size=(3, 10, 3))
    ras = N(vol.index_to_world(torch.as_tensor(ijk, dtype=DT)))
    np.testing.assert_allclose(ras, ijk @ (ROT30 * SPACING).T + ORIGIN, atol=1e-12)
    np.testing.assert_allclose(N(vol.world_to_index(torch.as_tensor(ras, dtype=DT))), ijk, atol=1e-11)
    # explicit voxel: index (i=2, j=3, k=1) -> origin + 2 s_i d_i + 3 s_j d_j + 1 s_k d_k
    expected = ORIGIN + 2 * 0.7 * ROT30[:, 0] + 3 * 1.1 * ROT30[:, 1] + 1 * 2.5 * ROT30[:, 2]
    np.testing.assert_allclose(N(vol.index_to_world(torch.tensor([2.0, 3.0, 1.0], dtype=DT))), expected, atol=1e-12)


def test_volume_with_flipped_axes():
    aff = np.diag([-1.0, 2.0, -3.0, 1.0])
    vol = Volume(torch.zeros(3, 3, 3), torch.as_tensor(aff))
    np.testing.assert_allclose(N(vol.spacing), [1, 2, 3])
    np.testing.assert_allclose(N(vol.index_to_world(torch.tensor([1.0, 1.0, 1.0], dtype=DT))), [-1, 2, -3])


def test_hu_to_mu_default_points():
    f = HUToMu()
    hu = torch.tensor([-3000.0, -1024.0, -1000.0, -500.0, 0.0, 500.0, 1000.0, 2000.0], dtype=DT)
    mu = N(f(hu))
    np.testing.assert_allclose(mu, [0, 0, 0, MU_WATER / 2, MU_WATER, 1.5 * MU_WATER, 2 * MU_WATER, 3 * MU_WATER], atol=1e-15)
    assert (mu >= 0).all()


def test_hu_to_mu_configured_bone_point():
    f = HUToMu(mu_water=0.02, bone_hu=1500.0, mu_bone=0.06)
    hu = torch.tensor([-1500.0, -1000.0, -250.0, 0.0, 750.0, 1500.0, 3000.0], dtype=DT)
    np.testing.assert_allclose(N(f(hu)), [0.0, 0.0, 0.015, 0.02, 0.04, 0.06, 0.10], atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mu_water=0.0), "mu_water must be positive"),
        (dict(mu_water=-0.01), "mu_water must be positive"),
        (dict(bone_hu=0.0), "bone_hu must be above water"),
        (dict(mu_water=0.02, mu_bone=0.01), "must exceed mu_water"),
    ],
)
def test_hu_to_mu_bad_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        HUToMu(**kwargs)


def test_volume_from_hu():
    rng = np.random.default_rng(2)
    hu = rng.uniform(-1500, 2500, size=(3, 4, 5))
    vol = Volume.from_hu(hu, oblique_affine())
    assert vol.mu.dtype == torch.float32 and vol.mu.shape == (3, 4, 5)
    np.testing.assert_allclose(N(vol.mu), hu_to_mu_reference(hu), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(N(vol.affine), oblique_affine(), atol=0)
    vol64 = Volume.from_hu(torch.as_tensor(hu), torch.as_tensor(oblique_affine()), HUToMu(mu_water=0.03), dtype=DT)
    assert vol64.mu.dtype == DT
    np.testing.assert_allclose(N(vol64.mu), hu_to_mu_reference(hu, 0.03), rtol=1e-13)


# --------------------------------------------------------------------------
# Downsampling and masking
# --------------------------------------------------------------------------


def _box_corners(shape_ijk):
    ni, nj, nk = shape_ijk
    return np.array([[a, b, c] for a in (-0.5, ni - 0.5) for b in (-0.5, nj - 0.5) for c in (-0.5, nk - 0.5)])


@pytest.mark.parametrize(
    "shape_kji, factor",
    [
        ((8, 6, 10), 2),
        ((9, 6, 12), (2, 3, 3)),  # per axis (i, j, k)
        ((7, 11, 13), 2),  # not divisible: extent still kept
        ((10, 10, 10), 3.3),
    ],
)
def test_volume_downsample_keeps_world_box(shape_kji, factor):
    rng = np.random.default_rng(3)
    vol = Volume(torch.as_tensor(rng.uniform(0, 1, size=shape_kji), dtype=DT), torch.as_tensor(oblique_affine()))
    small = vol.downsample(factor)
    factors = (factor,) * 3 if np.isscalar(factor) else factor
    assert small.shape_ijk == tuple(max(2, round(n / f)) for n, f in zip(vol.shape_ijk, factors))
    before = N(vol.index_to_world(torch.as_tensor(_box_corners(vol.shape_ijk), dtype=DT)))
    after = N(small.index_to_world(torch.as_tensor(_box_corners(small.shape_ijk), dtype=DT)))
    np.testing.assert_allclose(after, before, atol=1e-9)
    # spacing grows by old / new voxel count; direction unchanged
    ratio = np.array(vol.shape_ijk) / np.array(small.shape_ijk)
    np.testing.assert_allclose(N(small.spacing), SPACING * ratio, rtol=1e-12)
    np.testing.assert_allclose(N(small.affine[:3, :3]) / N(small.spacing), ROT30, atol=1e-12)
    np.testing.assert_allclose(N(small.center), N(vol.center), atol=1e-9)


def test_volume_downsample_block_means():
    rng = np.random.default_rng(4)
    mu = rng.uniform(0, 1, size=(6, 8, 10))  # (K, J, I)
    vol = Volume(torch.as_tensor(mu), torch.as_tensor(oblique_affine()))
    small = vol.downsample((2, 2, 3))  # i by 2, j by 2, k by 3
    expected = mu.reshape(2, 3, 4, 2, 5, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(N(small.mu), expected, atol=1e-14)
    assert abs(float(small.mu.mean()) - mu.mean()) < 1e-14
    # the first new voxel centre sits at the centre of the first old block: old index (0.5, 0.5, 1)
    np.testing.assert_allclose(
        N(small.index_to_world(torch.zeros(3, dtype=DT))),
        N(vol.index_to_world(torch.tensor([0.5, 0.5, 1.0], dtype=DT))),
        atol=1e-12,
    )


def test_volume_downsample_bad_factor():
    vol = Volume(torch.zeros(4, 4, 4), torch.eye(4, dtype=DT))
    with pytest.raises(InputError, match=">= 1"):
        vol.downsample(0.5)
    with pytest.raises(InputError, match=">= 1"):
        vol.downsample((1, 2))


def test_volume_downsample_labels_nearest_to_new_centres():
    ni = 9
    labels = torch.arange(ni).repeat(3, 3, 1)  # label = column index i, shape (K=3, J=3, I=9)
    vol = Volume(torch.ones(3, 3, ni, dtype=DT), torch.eye(4, dtype=DT), labels)
    small = vol.downsample((3, 1, 1))
    # new voxel i' has its centre at old index 3 i' + 1
    np.testing.assert_array_equal(N(small.labels[0, 0]), [1, 4, 7])


def test_volume_downsample_labels_shape_and_dtype():
    labels = torch.arange(8).repeat(4, 4, 1)
    vol = Volume(torch.ones(4, 4, 8, dtype=DT), torch.eye(4, dtype=DT), labels)
    small = vol.downsample(2)
    assert small.labels.shape == small.mu.shape == (2, 2, 4)
    assert small.labels.dtype == labels.dtype
    # each new label is one of the two old labels of its block
    for i_new, value in enumerate(N(small.labels[0, 0])):
        assert value in (2 * i_new, 2 * i_new + 1)


def test_volume_masked():
    rng = np.random.default_rng(5)
    mu = rng.uniform(0.01, 0.05, size=(4, 5, 6))
    labels = rng.integers(0, 4, size=(4, 5, 6))
    vol = Volume(torch.as_tensor(mu), torch.as_tensor(oblique_affine()), torch.as_tensor(labels))
    masked = vol.masked([1, 3])
    keep = np.isin(labels, [1, 3])
    np.testing.assert_array_equal(N(masked.mu), np.where(keep, mu, 0.0))
    np.testing.assert_array_equal(N(masked.affine), oblique_affine())
    assert 0 < keep.sum() < keep.size
    # the input is untouched
    np.testing.assert_array_equal(N(vol.mu), mu)


def test_volume_masked_errors():
    vol = Volume(torch.ones(3, 3, 3, dtype=DT), torch.eye(4, dtype=DT))
    with pytest.raises(InputError, match="no label map"):
        vol.masked([1])
    vol = Volume(torch.ones(3, 3, 3, dtype=DT), torch.eye(4, dtype=DT), torch.zeros(3, 3, 3, dtype=torch.int64))
    with pytest.raises(InputError, match="no voxel carries"):
        vol.masked([5])
    with pytest.raises(InputError, match="label volume shape"):
        Volume(torch.ones(3, 3, 3, dtype=DT), torch.eye(4, dtype=DT), torch.zeros(3, 3, 4, dtype=torch.int64))


# --------------------------------------------------------------------------
# Volume bad input
# --------------------------------------------------------------------------


def test_volume_2d_array_raises():
    with pytest.raises(InputError, match="must be 3D.*2D image is an X-ray"):
        Volume(torch.zeros(5, 5), torch.eye(4, dtype=DT))
    with pytest.raises(InputError, match="must be 3D.*2D image is an X-ray"):
        Volume.from_hu(np.zeros((5, 5)), np.eye(4))
    with pytest.raises(InputError, match="must be 3D"):
        Volume(torch.zeros(2, 3, 3, 3), torch.eye(4, dtype=DT))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_volume_non_finite_raises(bad):
    hu = np.zeros((3, 4, 5))
    hu[1, 2, 3] = bad
    hu[0, 0, 0] = bad
    with pytest.raises(InputError, match="2 NaN or infinite voxels"):
        Volume.from_hu(hu, np.eye(4))
    with pytest.raises(InputError, match="2 NaN or infinite voxels"):
        Volume(torch.as_tensor(hu), torch.eye(4, dtype=DT))


def test_volume_singular_affine_raises():
    aff = oblique_affine()
    aff[:3, 2] = 0.0  # zero spacing along k
    with pytest.raises(InputError, match="singular"):
        Volume(torch.zeros(3, 3, 3), torch.as_tensor(aff))
    aff = oblique_affine()
    aff[:3, 1] = 2 * aff[:3, 0]  # two parallel axes
    with pytest.raises(InputError, match="singular"):
        Volume.from_hu(np.zeros((3, 3, 3)), aff)


def test_volume_bad_affine_shape_or_values():
    with pytest.raises(InputError, match="finite 4x4"):
        Volume(torch.zeros(3, 3, 3), torch.eye(3, dtype=DT))
    aff = np.eye(4)
    aff[0, 3] = np.nan
    with pytest.raises(InputError, match="finite 4x4"):
        Volume(torch.zeros(3, 3, 3), torch.as_tensor(aff))


@pytest.mark.parametrize("shape", [(1, 4, 4), (4, 1, 4), (4, 4, 1)])
def test_volume_dimension_of_size_one_raises(shape):
    with pytest.raises(InputError, match="at least 2 voxels along every axis"):
        Volume(torch.zeros(shape), torch.eye(4, dtype=DT))
    with pytest.raises(InputError, match="at least 2 voxels along every axis"):
        Volume.from_hu(np.zeros(shape), np.eye(4))


def test_volume_integer_data_raises():
    with pytest.raises(InputError, match="floating point"):
        Volume(torch.zeros(3, 3, 3, dtype=torch.int16), torch.eye(4, dtype=DT))


def test_downsample_cache_reuses_and_invalidates():
    from DiffRegLogic.volume import downsample_cached

    mu = torch.rand((8, 10, 12), dtype=torch.float64)
    volume = Volume(mu, torch.eye(4, dtype=torch.float64))
    first = downsample_cached(volume, (2.0, 2.0, 2.0))
    assert downsample_cached(Volume(mu, volume.affine), (2.0, 2.0, 2.0)) is first  # same CT, new wrapper
    torch.testing.assert_close(first.mu, volume.downsample(2.0).mu, rtol=0, atol=0)
    assert downsample_cached(volume, (1.0, 1.0, 1.0)) is volume
    shifted = torch.eye(4, dtype=torch.float64)
    shifted[:3, 3] = 5.0
    assert downsample_cached(Volume(mu, shifted), (2.0, 2.0, 2.0)) is not first  # another affine
    mu.mul_(2.0)  # modified in place: recomputed, not served stale
    again = downsample_cached(volume, (2.0, 2.0, 2.0))
    torch.testing.assert_close(again.mu, 2.0 * first.mu)
