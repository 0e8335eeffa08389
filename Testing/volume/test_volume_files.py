"""Tests of DiffRegLogic.volume.io: CT files written (or read back) with SimpleITK directly, LPS -> RAS by hand.
"""

from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.volume import HUToMu
from DiffRegLogic.volume.io import read_ct_array, read_volume, write_volume

# --------------------------------------------------------------------------
from file_references import DT, LPS_TO_RAS, MU_WATER, axis_angle_matrix, ROT30, SPACING, ORIGIN, oblique_affine, hu_to_mu_reference, N, make_itk_image, itk_lps_matrix
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
    vol = read_volume(path)
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
    vol = read_volume(path)
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
    values, affine = read_ct_array(path)
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
    write_volume(path, hu, affine)
    # what SimpleITK sees in the file: the same grid in LPS
    img = sitk.ReadImage(str(path))
    lps = LPS_TO_RAS @ affine
    atol = 1e-4 if suffix.startswith(".nii") else 1e-9
    np.testing.assert_allclose(img.GetSpacing(), [0.5, 0.8, 1.6], atol=atol)
    np.testing.assert_allclose(img.GetOrigin(), lps[:3, 3], atol=atol)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), lps[:3, :3] / [0.5, 0.8, 1.6], atol=atol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), hu)
    vol = read_volume(path)
    np.testing.assert_allclose(N(vol.affine), affine, atol=atol)
    np.testing.assert_allclose(N(vol.mu), hu_to_mu_reference(hu), rtol=1e-6, atol=1e-9)


def test_read_volume_with_custom_hu_map_and_labels(tmp_path):
    hu = np.zeros((3, 4, 5), dtype=np.float32)
    hu[1] = 500.0
    labels = np.zeros((3, 4, 5), dtype=np.float32)
    labels[1, 2] = 2
    labels[2] = 7
    affine = oblique_affine()
    write_volume(tmp_path / "ct.nrrd", hu, affine)
    write_volume(tmp_path / "seg.nrrd", labels, affine)
    vol = read_volume(tmp_path / "ct.nrrd", hu_to_mu=HUToMu(mu_water=0.03), labels=tmp_path / "seg.nrrd")
    np.testing.assert_allclose(N(vol.mu), np.where(hu > 0, 0.045, 0.03), rtol=1e-6)
    assert vol.labels.dtype == torch.int64
    np.testing.assert_array_equal(N(vol.labels), labels.astype(np.int64))
    np.testing.assert_allclose(N(vol.masked([2]).mu), np.where(labels == 2, 0.045, 0.0), rtol=1e-6)
    # labels on another grid are refused
    write_volume(tmp_path / "seg_shifted.nrrd", labels, affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="not on the CT's voxel grid"):
        read_volume(tmp_path / "ct.nrrd", labels=tmp_path / "seg_shifted.nrrd")
    write_volume(tmp_path / "seg_small.nrrd", labels[:2], affine)
    with pytest.raises(InputError, match="not on the CT's voxel grid"):
        read_volume(tmp_path / "ct.nrrd", labels=tmp_path / "seg_small.nrrd")


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
    vol = read_volume(tmp_path / "series")
    np.testing.assert_allclose(N(vol.affine), LPS_TO_RAS @ itk_lps_matrix(spacing, origin, direction), atol=1e-6)
    np.testing.assert_allclose(N(vol.mu), hu_to_mu_reference(hu), rtol=1e-6, atol=1e-9)


def test_read_volume_empty_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path / "empty")


def test_read_volume_2d_image_raises(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(tmp_path / "xray.png")
    with pytest.raises(InputError, match="2D image; a CT must be a 3D volume"):
        read_volume(tmp_path / "xray.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), dtype=np.float32)), str(tmp_path / "xray.nrrd"))
    with pytest.raises(InputError, match="2D image; a CT must be a 3D volume"):
        read_volume(tmp_path / "xray.nrrd")


def test_read_volume_single_slice_raises(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 9), dtype=np.float32)), str(tmp_path / "one.nrrd"))
    with pytest.raises(InputError, match="at least 2 voxels"):
        read_volume(tmp_path / "one.nrrd")


def test_read_volume_vector_image_raises(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), dtype=np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 components per voxel"):
        read_volume(tmp_path / "rgb.nrrd")


def test_read_volume_missing_or_unreadable_file_raises(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "junk.nrrd").write_text("this is not an image")
    with pytest.raises(InputError, match="could not read CT"):
        read_volume(tmp_path / "junk.nrrd")
