"""Tests of DiffRegLogic.volume and DiffRegLogic.io.

Expected values are independent of the code under test: affines are built by
hand in numpy, files are written (or read back) with SimpleITK directly, and
the HU -> mu map is written out from its definition.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffRegLogic import io
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.volume import HUToMu, Volume

DT = torch.float64
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MU_WATER = 0.0206  # the documented default


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def axis_angle_matrix(axis, angle_deg):
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


ROT30 = axis_angle_matrix([1.0, 2.0, 3.0], 30.0)  # an oblique direction matrix
SPACING = np.array([0.7, 1.1, 2.5])  # anisotropic (i, j, k)
ORIGIN = np.array([-12.5, 30.0, 7.25])


def oblique_affine(rot=ROT30, spacing=SPACING, origin=ORIGIN):
    a = np.eye(4)
    a[:3, :3] = rot * spacing[None, :]
    a[:3, 3] = origin
    return a


def hu_to_mu_reference(hu, mu_water=MU_WATER):
    """Default map written from its definition: mu = mu_water (1 + HU / 1000), never negative."""
    return np.maximum(0.0, mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0))


def N(x):
    return x.detach().cpu().numpy()


def make_itk_image(array_kji, spacing, origin, direction_lps):
    img = sitk.GetImageFromArray(array_kji)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in np.asarray(direction_lps).reshape(-1)])
    return img


def itk_lps_matrix(spacing, origin, direction_lps):
    """ITK's index -> LPS physical matrix, by hand: [D diag(spacing) | origin]."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction_lps).reshape(3, 3) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# io: reading CT files written by SimpleITK directly
# --------------------------------------------------------------------------

SHAPE_KJI = (7, 6, 5)  # K slices, J rows, I columns
BRIGHT_IJK = (3, 1, 5)  # ITK index (i, j, k)


def _bright_array():
    arr = np.full(SHAPE_KJI, -1000.0, dtype=np.float32)
    i, j, k = BRIGHT_IJK
    arr[k, j, i] = 1000.0
    return arr


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_read_volume_oblique_lps_file(tmp_path, suffix):
    path = tmp_path / f"ct{suffix}"
    direction = ROT30  # ITK direction (LPS), oblique
    sitk.WriteImage(make_itk_image(_bright_array(), SPACING, ORIGIN, direction), str(path))
    vol = io.read_volume(path)
    expected = LPS_TO_RAS @ itk_lps_matrix(SPACING, ORIGIN, direction)
    # NIfTI stores geometry in float32
    atol = 1e-4 if suffix.startswith(".nii") else 1e-9
    np.testing.assert_allclose(N(vol.affine), expected, atol=atol)
    assert vol.mu.shape == SHAPE_KJI
    i, j, k = BRIGHT_IJK
    mu = N(vol.mu)
    assert abs(mu[k, j, i] - 2 * MU_WATER) < 1e-7  # 1000 HU
    mu[k, j, i] = 0
    assert np.abs(mu).max() == 0.0  # everything else is air
    # the bright voxel's world position is ITK's physical point, LPS -> RAS
    itk_point = np.array(sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint(BRIGHT_IJK))
    world = N(vol.index_to_world(torch.tensor(BRIGHT_IJK, dtype=DT)))
    np.testing.assert_allclose(world, itk_point * [-1, -1, 1], atol=atol)
    # and the ITK point of the original (unrounded) geometry
    np.testing.assert_allclose(world, (expected @ np.r_[BRIGHT_IJK, 1.0])[:3], atol=atol)


def test_read_volume_nifti_agrees_with_nibabel(tmp_path):
    import nibabel as nib
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_itk_image(_bright_array(), SPACING, ORIGIN, ROT30), str(path))
    vol = io.read_volume(path)
    img = nib.load(str(path))
    # nibabel gives the voxel (i, j, k) -> RAS affine straight from the NIfTI header
    np.testing.assert_allclose(N(vol.affine), img.affine, atol=1e-4)
    data = np.asarray(img.dataobj)  # indexed [i, j, k]
    i, j, k = BRIGHT_IJK
    assert data[i, j, k] == 1000.0
    assert (data == 1000.0).sum() == 1


def test_read_ct_array_values_and_dtype(tmp_path):
    rng = np.random.default_rng(6)
    arr = rng.integers(-1024, 3000, size=(4, 5, 6)).astype(np.int16)
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(make_itk_image(arr, [1, 1, 1], [0, 0, 0], np.eye(3)), str(path))
    values, affine = io.read_ct_array(path)
    assert values.dtype == np.float32 and values.shape == (4, 5, 6)
    np.testing.assert_array_equal(values, arr.astype(np.float32))
    np.testing.assert_allclose(affine, np.diag([-1.0, -1.0, 1.0, 1.0]), atol=0)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_write_volume_read_volume_roundtrip(tmp_path, suffix):
    rng = np.random.default_rng(7)
    hu = rng.uniform(-1200, 2000, size=(4, 5, 6)).astype(np.float32)
    # an oblique RAS affine with a flipped axis is still a proper grid
    affine = oblique_affine(axis_angle_matrix([0.3, -1.0, 0.5], 55.0), np.array([0.5, 0.8, 1.6]), np.array([100.0, -50.0, 20.0]))
    path = tmp_path / f"ct{suffix}"
    io.write_volume(path, hu, affine)
    # what SimpleITK sees in the file: the same grid in LPS
    img = sitk.ReadImage(str(path))
    lps = LPS_TO_RAS @ affine
    atol = 1e-4 if suffix.startswith(".nii") else 1e-9
    np.testing.assert_allclose(img.GetSpacing(), [0.5, 0.8, 1.6], atol=atol)
    np.testing.assert_allclose(img.GetOrigin(), lps[:3, 3], atol=atol)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), lps[:3, :3] / [0.5, 0.8, 1.6], atol=atol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), hu)
    vol = io.read_volume(path)
    np.testing.assert_allclose(N(vol.affine), affine, atol=atol)
    np.testing.assert_allclose(N(vol.mu), hu_to_mu_reference(hu), rtol=1e-6, atol=1e-9)


def test_read_volume_with_custom_hu_map_and_labels(tmp_path):
    hu = np.zeros((3, 4, 5), dtype=np.float32)
    hu[1] = 500.0
    labels = np.zeros((3, 4, 5), dtype=np.float32)
    labels[1, 2] = 2
    labels[2] = 7
    affine = oblique_affine()
    io.write_volume(tmp_path / "ct.nrrd", hu, affine)
    io.write_volume(tmp_path / "seg.nrrd", labels, affine)
    vol = io.read_volume(tmp_path / "ct.nrrd", hu_to_mu=HUToMu(mu_water=0.03), labels=tmp_path / "seg.nrrd")
    np.testing.assert_allclose(N(vol.mu), np.where(hu > 0, 0.045, 0.03), rtol=1e-6)
    assert vol.labels.dtype == torch.int64
    np.testing.assert_array_equal(N(vol.labels), labels.astype(np.int64))
    np.testing.assert_allclose(N(vol.masked([2]).mu), np.where(labels == 2, 0.045, 0.0), rtol=1e-6)
    # labels on another grid are refused
    io.write_volume(tmp_path / "seg_shifted.nrrd", labels, affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="not on the CT's voxel grid"):
        io.read_volume(tmp_path / "ct.nrrd", labels=tmp_path / "seg_shifted.nrrd")
    io.write_volume(tmp_path / "seg_small.nrrd", labels[:2], affine)
    with pytest.raises(InputError, match="not on the CT's voxel grid"):
        io.read_volume(tmp_path / "ct.nrrd", labels=tmp_path / "seg_small.nrrd")


def _write_dicom_series(folder, hu_kji, spacing, origin, direction):
    """One file per slice with the tags GDCM needs to rebuild the 3D geometry (LPS)."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study, series = "1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2"
    direction = np.asarray(direction).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in np.r_[direction[:, 0], direction[:, 1]])
    for k in range(hu_kji.shape[0]):
        sl = sitk.GetImageFromArray(hu_kji[k])
        sl.SetSpacing([float(spacing[0]), float(spacing[1])])
        position = np.asarray(origin) + k * spacing[2] * direction[:, 2]
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT image storage
            "0008|0018": f"{series}.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{spacing[1]:.10f}\\{spacing[0]:.10f}",  # row spacing \ column spacing
            "0018|0050": f"{spacing[2]:.10f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        # file names in the reverse of the slice order: the reader must sort by position
        writer.SetFileName(str(folder / f"slice{hu_kji.shape[0] - k:03d}.dcm"))
        writer.Execute(sl)


def test_read_volume_dicom_series(tmp_path):
    rng = np.random.default_rng(8)
    hu = rng.integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)
    direction = axis_angle_matrix([0.0, 0.0, 1.0], 20.0)  # an oblique in-plane orientation
    spacing = np.array([0.6, 0.9, 2.0])
    origin = np.array([-30.0, 40.0, -100.0])
    _write_dicom_series(tmp_path / "series", hu, spacing, origin, direction)
    vol = io.read_volume(tmp_path / "series")
    np.testing.assert_allclose(N(vol.affine), LPS_TO_RAS @ itk_lps_matrix(spacing, origin, direction), atol=1e-6)
    np.testing.assert_allclose(N(vol.mu), hu_to_mu_reference(hu), rtol=1e-6, atol=1e-9)


def test_read_volume_empty_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        io.read_volume(tmp_path / "empty")


def test_read_volume_2d_image_raises(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(tmp_path / "xray.png")
    with pytest.raises(InputError, match="2D image; a CT must be a 3D volume"):
        io.read_volume(tmp_path / "xray.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), dtype=np.float32)), str(tmp_path / "xray.nrrd"))
    with pytest.raises(InputError, match="2D image; a CT must be a 3D volume"):
        io.read_volume(tmp_path / "xray.nrrd")


def test_read_volume_single_slice_raises(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 9), dtype=np.float32)), str(tmp_path / "one.nrrd"))
    with pytest.raises(InputError, match="at least 2 voxels"):
        io.read_volume(tmp_path / "one.nrrd")


def test_read_volume_vector_image_raises(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), dtype=np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 components per voxel"):
        io.read_volume(tmp_path / "rgb.nrrd")


def test_read_volume_missing_or_unreadable_file_raises(tmp_path):
    with pytest.raises(InputError, match="not found"):
        io.read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "junk.nrrd").write_text("this is not an image")
    with pytest.raises(InputError, match="could not read CT"):
        io.read_volume(tmp_path / "junk.nrrd")


# --------------------------------------------------------------------------
# io: DRR images
# --------------------------------------------------------------------------


def test_write_image_npy(tmp_path):
    rng = np.random.default_rng(9)
    img = rng.uniform(0, 5, size=(6, 9))
    io.write_image(tmp_path / "drr.npy", torch.as_tensor(img, dtype=DT))
    back = np.load(tmp_path / "drr.npy")
    assert back.dtype == np.float32 and back.shape == (6, 9)
    np.testing.assert_array_equal(back, img.astype(np.float32))
    # a batch of one is stored as (H, W)
    io.write_image(tmp_path / "one.npy", img[None])
    assert np.load(tmp_path / "one.npy").shape == (6, 9)
    # a batch stays (B, H, W)
    io.write_image(tmp_path / "batch.npy", np.stack([img, 2 * img]))
    np.testing.assert_array_equal(np.load(tmp_path / "batch.npy")[1], (2 * img).astype(np.float32))


def test_write_image_png(tmp_path):
    from PIL import Image

    img = np.zeros((10, 12))
    img[:, 6:] = 3.0  # two levels: the window maps them to 0 and 255
    io.write_image(tmp_path / "sub" / "drr.png", img)
    back = np.asarray(Image.open(tmp_path / "sub" / "drr.png"))
    assert back.dtype == np.uint8 and back.shape == (10, 12)
    np.testing.assert_array_equal(back, np.where(img > 0, 255, 0))
    # ramp: monotone, full range
    ramp = np.tile(np.linspace(0, 1, 201), (3, 1))
    io.write_image(tmp_path / "ramp.png", ramp)
    back = np.asarray(Image.open(tmp_path / "ramp.png")).astype(int)
    assert back.min() == 0 and back.max() == 255 and (np.diff(back, axis=1) >= 0).all()
    # a batch is tiled side by side
    io.write_image(tmp_path / "batch.png", np.stack([img, img]))
    assert np.asarray(Image.open(tmp_path / "batch.png")).shape == (10, 24)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_write_image_stores_pixel_spacing(tmp_path, suffix):
    rng = np.random.default_rng(10)
    img = rng.uniform(0, 5, size=(7, 11))
    det = Detector(rows=7, cols=11, sdd=1000.0, pixel_spacing=(0.4, 0.25))  # (row, column)
    path = tmp_path / f"drr{suffix}"
    io.write_image(path, torch.as_tensor(img), det)
    back = sitk.ReadImage(str(path))
    assert back.GetSize() == (11, 7)  # ITK (x = column, y = row)
    np.testing.assert_allclose(back.GetSpacing(), (0.25, 0.4), rtol=1e-6)  # (column, row)
    arr = sitk.GetArrayFromImage(back)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, img.astype(np.float32))


def test_write_image_batch_spacing(tmp_path):
    det = Detector(rows=4, cols=5, sdd=1000.0, pixel_spacing=(0.3, 0.7))
    io.write_image(tmp_path / "batch.mha", np.zeros((3, 4, 5)), det)
    back = sitk.ReadImage(str(tmp_path / "batch.mha"))
    assert back.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(back.GetSpacing(), (0.7, 0.3, 1.0), rtol=1e-12)


def test_write_image_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown output type"):
        io.write_image(tmp_path / "drr.jpg", np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\)"):
        io.write_image(tmp_path / "drr.npy", np.zeros(5))
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, H, W\)"):
        io.write_image(tmp_path / "drr.npy", np.zeros((2, 2, 3, 3)))


# --------------------------------------------------------------------------
# io: geometry and pose JSON
# --------------------------------------------------------------------------

GEOMETRY = {"source_to_detector_mm": 1020.0, "rows": 256, "cols": 320, "pixel_spacing_mm": [0.4, 0.3]}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_read_geometry_minimal_defaults(tmp_path):
    det = io.read_geometry(_write(tmp_path, "geom.json", GEOMETRY))
    assert det == Detector(rows=256, cols=320, sdd=1020.0, pixel_spacing=(0.4, 0.3))
    assert det.principal_point is None
    k = det.intrinsics().numpy()
    np.testing.assert_allclose(k, [[1020 / 0.3, 0, 159.5], [0, 1020 / 0.4, 127.5], [0, 0, 1]], rtol=1e-14)
    # a single number is an isotropic spacing
    det = io.detector_from_dict({**GEOMETRY, "pixel_spacing_mm": 0.5})
    assert det.pixel_spacing == (0.5, 0.5)


@pytest.mark.parametrize("pp", [None, (100.25, 140.5)])
def test_geometry_json_roundtrip(tmp_path, pp):
    det = Detector(rows=200, cols=150, sdd=987.5, pixel_spacing=(0.31, 0.29), principal_point=pp)
    data = io.detector_to_dict(det)
    assert data["pixel_spacing_mm"] == [0.31, 0.29]
    assert ("principal_point_px" in data) == (pp is not None)
    path = tmp_path / "geom.json"
    io.write_json(path, data)
    back = io.read_geometry(path)
    assert back == det
    np.testing.assert_array_equal(back.intrinsics().numpy(), det.intrinsics().numpy())
    assert io.detector_from_dict(json.loads(json.dumps(data))) == det


@pytest.mark.parametrize("key", io.GEOMETRY_KEYS)
def test_geometry_missing_key_raises(tmp_path, key):
    data = {k: v for k, v in GEOMETRY.items() if k != key}
    with pytest.raises(InputError, match=f"missing '{key}'"):
        io.read_geometry(_write(tmp_path, "geom.json", data))


@pytest.mark.parametrize(
    "key, value",
    [
        ("rows", "256"),
        ("rows", 256.0),
        ("cols", [320]),
        ("pixel_spacing_mm", "0.4"),
        ("pixel_spacing_mm", [0.4, 0.3, 0.2]),
        ("principal_point_px", [1.0]),
        ("principal_point_px", "centre"),
    ],
)
def test_geometry_wrong_type_raises_naming_key(key, value):
    with pytest.raises(InputError, match=key):
        io.detector_from_dict({**GEOMETRY, key: value})


@pytest.mark.parametrize(
    "key, value",
    [("source_to_detector_mm", "far"), ("source_to_detector_mm", [1000.0]), ("pixel_spacing_mm", ["a", 0.3]),
     ("principal_point_px", [None, 3.0])],
)
def test_geometry_non_numeric_value_names_key(key, value):
    with pytest.raises(InputError, match=key):
        io.detector_from_dict({**GEOMETRY, key: value})


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("source_to_detector_mm", -1000.0, "source_to_detector_mm"),
        ("source_to_detector_mm", 0.0, "source_to_detector_mm"),
        ("rows", -256, "rows"),
        ("cols", 0, "cols"),
        ("pixel_spacing_mm", [0.4, -0.3], "pixel_spacing_mm"),
        ("pixel_spacing_mm", -0.3, "pixel_spacing_mm"),
    ],
)
def test_geometry_negative_values_raise(tmp_path, key, value, match):
    with pytest.raises(InputError, match=match):
        io.read_geometry(_write(tmp_path, "geom.json", {**GEOMETRY, key: value}))


@pytest.mark.parametrize("key, value", [("source_to_detector_mm", -1000.0), ("pixel_spacing_mm", [0.4, -0.3])])
def test_geometry_negative_values_name_key_and_file(tmp_path, key, value):
    path = _write(tmp_path, "geom.json", {**GEOMETRY, key: value})
    with pytest.raises(InputError, match=f"geom.json.*{key}|{key}.*geom.json"):
        io.read_geometry(path)


def test_geometry_file_errors(tmp_path):
    with pytest.raises(InputError, match="geometry file not found"):
        io.read_geometry(tmp_path / "none.json")
    with pytest.raises(InputError, match="not valid JSON"):
        io.read_geometry(_write(tmp_path, "bad.json", "{rows: 3"))
    with pytest.raises(InputError, match="must hold a JSON object, got list"):
        io.read_geometry(_write(tmp_path, "list.json", [1, 2]))


def _rigid_pose():
    c, s = math.cos(0.4), math.sin(0.4)
    return np.array([[c, -s, 0, 10.0], [s, c, 0, -20.0], [0, 0, 1, 700.0], [0, 0, 0, 1]])


def test_pose_json_roundtrip(tmp_path):
    pose = torch.as_tensor(_rigid_pose() @ np.block([[np.eye(3)[[1, 2, 0]], np.zeros((3, 1))], [np.zeros((1, 3)), 1]]))
    path = tmp_path / "out" / "pose.json"
    io.write_json(path, io.pose_to_dict(pose))
    raw = json.loads(path.read_text())
    np.testing.assert_array_equal(np.array(raw["camera_from_world"]), pose.numpy())
    back = io.read_pose(path)
    assert back.shape == (4, 4) and back.dtype == DT
    np.testing.assert_array_equal(back.numpy(), pose.numpy())
    # a (1, 4, 4) float32 pose is stored as a plain 4x4
    assert np.array(io.pose_to_dict(pose[None].float())["camera_from_world"]).shape == (4, 4)


@pytest.mark.parametrize(
    "matrix, match",
    [
        ((np.diag([2.0, 2.0, 2.0, 1.0]) @ _rigid_pose()).tolist(), "not rigid"),
        ((_rigid_pose() + np.diag([0, 0, 0, 1.0])).tolist(), "last row"),
        ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], "4x4"),
        ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, "x"]], "4x4 array of numbers"),
        ([[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "4x4 array of numbers"),
    ],
)
def test_pose_json_bad_matrix_raises(tmp_path, matrix, match):
    path = _write(tmp_path, "pose.json", {"camera_from_world": matrix})
    with pytest.raises(InputError, match=match):
        io.read_pose(path)


def test_pose_json_missing_key_and_file(tmp_path):
    with pytest.raises(InputError, match="missing 'camera_from_world'"):
        io.read_pose(_write(tmp_path, "pose.json", {"pose": np.eye(4).tolist()}))
    with pytest.raises(InputError, match="pose file not found"):
        io.read_pose(tmp_path / "absent.json")


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
