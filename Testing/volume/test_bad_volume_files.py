"""CT files and `Volume` arguments that cannot be used are refused with InputError, silently and read-only.

Every fixture is a real file written by SimpleITK, nibabel or numpy into tmp_path, then cut short or
edited byte by byte. Each refusal is checked for the exception type, a message naming what is wrong,
nothing printed on stderr (no ITK/VNL/MetaIO/numpy warnings before the one error line) and an
unchanged input file (sha256).
"""

from __future__ import annotations

import gzip
import re
import warnings
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.limits import MAX_VOLUME_VOXELS
from DiffRegLogic.volume import HUToMu, Volume, downsample_cached
from DiffRegLogic.volume.io import read_ct_array, read_volume
from file_references import sha256, write_sitk

SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".mha"]
SHAPE = (6, 7, 8)  # K, J, I


def _hu(dtype=np.float32):
    return np.random.default_rng(3).uniform(-1000, 1500, SHAPE).astype(dtype)


def _write(path, array, spacing=(0.8, 0.9, 2.0)):
    return write_sitk(path, array, spacing)


_sha = sha256


def _refused(capfd, path, match, read=read_volume):
    """``read(path)`` raises InputError matching ``match``, prints nothing on stderr and leaves the file as it was."""
    before = _sha(path)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError, match=match) as info:
        warnings.simplefilter("always")
        read(path)
    assert type(info.value) is InputError
    assert capfd.readouterr().err == "" and not caught, caught
    assert _sha(path) == before
    return str(info.value)


def _edit(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    return path


# ---- values ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_refused_in_every_format(tmp_path, capfd, suffix, bad):
    hu = _hu()
    hu[2, 3, 4] = bad
    hu[5, 0, 1] = bad
    message = _refused(capfd, _write(tmp_path / f"ct{suffix}", hu), "2 NaN or infinite")
    assert "ct" + suffix in message


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_all_nan_nifti_is_not_read_as_water(tmp_path, capfd, suffix):
    # nifticlib turns NaN voxels into 0 (= water): the file itself must be looked at
    path = _write(tmp_path / f"ct{suffix}", np.full(SHAPE, np.nan, dtype=np.float32))
    _refused(capfd, path, f"{np.prod(SHAPE)} NaN or infinite", read_ct_array)


def test_nifti2_and_big_endian_nan_refused(tmp_path, capfd):
    hu = _hu().T.copy()  # nibabel: (i, j, k)
    hu[1, 2, 3] = np.nan
    nib.save(nib.Nifti2Image(hu, np.diag([0.8, 0.9, 2.0, 1.0])), tmp_path / "ct2.nii")
    _refused(capfd, tmp_path / "ct2.nii", "NaN or infinite|save it as NIfTI-1")  # this SimpleITK reads no NIfTI-2
    image = nib.Nifti1Image(hu.astype(">f8"), np.eye(4))
    nib.save(image, tmp_path / "big_endian.nii.gz")
    _refused(capfd, tmp_path / "big_endian.nii.gz", "1 NaN or infinite")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_values_beyond_float32_refused_before_the_cast(tmp_path, capfd, suffix):
    hu = _hu(np.float64)
    hu[0, 0, 0] = 1e300
    message = _refused(capfd, _write(tmp_path / f"ct{suffix}", hu), "float32")
    assert "1e+300" in message and "NaN" not in message


def test_nifti_scaling_overflow_or_infinite_refused(tmp_path, capfd):
    image = nib.Nifti1Image(_hu().T.copy(), np.eye(4))
    image.header["scl_slope"], image.header["scl_inter"] = 1e37, 0.0
    nib.save(image, tmp_path / "overflow.nii")
    _refused(capfd, tmp_path / "overflow.nii", "scl_slope")
    image.header["scl_slope"] = np.inf
    nib.save(image, tmp_path / "inf.nii")
    _refused(capfd, tmp_path / "inf.nii", "scl_slope")


# ---- truncated files -----------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_truncated_files_refused(tmp_path, capfd, suffix, fraction):
    path = _write(tmp_path / f"ct{suffix}", _hu())
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    message = _refused(capfd, path, "truncated|incomplete")
    assert "copy or export it again" in message


def test_truncated_mhd_raw_refused(tmp_path, capfd):
    path = _write(tmp_path / "ct.mhd", _hu())
    raw = tmp_path / "ct.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    _refused(capfd, path, r"incomplete: it holds 1000 of the \d+ bytes")


def test_truncated_gzip_nifti_header_refused(tmp_path, capfd):
    path = _write(tmp_path / "ct.nii.gz", _hu())
    path.write_bytes(path.read_bytes()[:40])
    _refused(capfd, path, "decompressed|truncated|could not read")


def test_truncated_or_missing_dicom_slice_refused(tmp_path, capfd):
    from test_volume_files import _write_dicom_series

    hu = np.random.default_rng(8).integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)
    for name, damage in (("cut", lambda f: f.write_bytes(f.read_bytes()[:len(f.read_bytes()) * 2 // 3])),
                         ("missing", lambda f: f.unlink())):
        folder = tmp_path / name
        _write_dicom_series(folder, hu, np.array([0.6, 0.9, 2.0]), np.zeros(3), np.eye(3))
        damage(sorted(folder.iterdir())[2])
        capfd.readouterr()
        with pytest.raises(InputError, match="cannot be read|missing or unevenly spaced"):
            read_volume(folder)
        assert capfd.readouterr().err == ""


# ---- geometry ------------------------------------------------------------------


def _nrrd_with(tmp_path, line: bytes):
    path = _write(tmp_path / "ct.nrrd", _hu(), spacing=(1.0, 1.0, 1.0))
    data = path.read_bytes()
    head, body = data.split(b"\n\n", 1)
    head = re.sub(rb"space directions: [^\n]*", line, head)
    head = head.replace(b"space: left-posterior-superior\n", b"").replace(b"\nspace origin: (0,0,0)", b"")
    path.write_bytes(head + b"\n\n" + body)
    return path


@pytest.mark.parametrize("spacings", [b"nan nan nan", b"1 0 1", b"1 1 -2", b"inf 1 1"])
def test_nrrd_bad_spacings_refused(tmp_path, capfd, spacings):
    path = _nrrd_with(tmp_path, b"spacings: " + spacings)
    _refused(capfd, path, "'spacings'")


@pytest.mark.parametrize("vector", [b"(nan,0,0)", b"(0,0,0)"])
def test_nrrd_bad_space_direction_refused(tmp_path, capfd, vector):
    path = _edit(_write(tmp_path / "ct.nrrd", _hu(), spacing=(1.0, 1.0, 1.0)), b"(1,0,0)", vector)
    _refused(capfd, path, "'space directions'")


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("spacing", [1e-6, 5000.0])
def test_spacing_outside_the_limits_refused(tmp_path, capfd, suffix, spacing):
    path = _write(tmp_path / f"ct{suffix}", _hu(), spacing=(spacing, 1.0, 1.0))
    _refused(capfd, path, r"spacing along axis 0 must be >= 0.0001 mm and <= 1000 mm")


@pytest.mark.parametrize("text", [b"nan 1 1", b"0 1 1", b"-1 1 1"])
def test_mha_bad_element_spacing_refused(tmp_path, capfd, text):
    path = _edit(_write(tmp_path / "ct.mha", _hu(), spacing=(1.0, 1.0, 1.0)), b"ElementSpacing = 1 1 1",
                 b"ElementSpacing = " + text)
    _refused(capfd, path, "'ElementSpacing'")


def test_mha_singular_or_nan_geometry_refused(tmp_path, capfd):
    path = _write(tmp_path / "ct.mha", _hu(), spacing=(1.0, 1.0, 1.0))
    original = path.read_bytes()
    _edit(path, b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1")
    _refused(capfd, path, "direction matrix is singular")
    path.write_bytes(original)
    _edit(path, b"Offset = 0 0 0", b"Offset = nan 0 0")
    _refused(capfd, path, "'Offset'")


@pytest.mark.parametrize("field", ["pixdim", "sform", "qform"])
def test_nifti_nan_geometry_refused(tmp_path, capfd, field):
    image = nib.Nifti1Image(_hu().T.copy(), np.diag([0.8, 0.9, 2.0, 1.0]))
    if field == "pixdim":
        image.header["pixdim"] = [1, np.nan, 0.9, 2.0, 1, 1, 1, 1]
    elif field == "sform":
        affine = np.diag([0.8, 0.9, 2.0, 1.0])
        affine[0, 3] = np.nan
        image.set_sform(affine, code=1)
    else:
        image.header["qform_code"], image.header["qoffset_x"] = 1, np.nan
    nib.save(image, tmp_path / "ct.nii.gz")
    _refused(capfd, tmp_path / "ct.nii.gz", field)


def test_nifti_singular_affine_refused(tmp_path, capfd):
    image = nib.Nifti1Image(_hu().T.copy(), None)
    image.header.set_sform(np.diag([0.8, 0.9, 0.0, 1.0]), code=1)  # the k axis has no length
    nib.save(image, tmp_path / "ct.nii")
    _refused(capfd, tmp_path / "ct.nii", "direction|orientation|pixdim")


def test_header_announcing_too_many_voxels_refused_before_reading(tmp_path, capfd):
    path = _write(tmp_path / "ct.mha", _hu())
    _edit(path, b"DimSize = 8 7 6", b"DimSize = 4096 4096 4096")
    _refused(capfd, path, f"more than the {MAX_VOLUME_VOXELS}")


def test_not_a_path_refused():
    with pytest.raises(InputError, match="path must be a file name"):
        read_volume(12)


# ---- valid files still read exactly -------------------------------------------


def test_valid_files_read_as_before(tmp_path, capfd):
    hu = _hu()
    hu[0, 0, 0] = 0.0  # a float CT with exact zeros: the NaN look-up in the file runs and finds none
    reference = None
    for suffix in SUFFIXES:
        values, affine = read_ct_array(_write(tmp_path / f"ct{suffix}", hu))
        np.testing.assert_array_equal(values, hu)
        reference = affine if reference is None else reference
        np.testing.assert_allclose(affine, reference, atol=1e-6)
    # nibabel's "no scaling" NaN scl_slope, a gzip of several members (pigz/bgzip style)
    image = nib.Nifti1Image(hu.T.copy(), np.diag([0.8, 0.9, 2.0, 1.0]))
    nib.save(image, tmp_path / "nib.nii")
    data = (tmp_path / "nib.nii").read_bytes()
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(data[:500]) + gzip.compress(data[500:]))
    for name in ("nib.nii", "members.nii.gz"):
        values, affine = read_ct_array(tmp_path / name)
        np.testing.assert_array_equal(values, hu)
    scaled = nib.Nifti1Image(np.rint(hu.T).astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    values, _ = read_ct_array(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(values, np.rint(hu).astype(np.int16) * 2.0 - 1024.0)
    assert capfd.readouterr().err == ""


# ---- Volume and HUToMu in the Python API -----------------------------------------


@pytest.mark.parametrize("affine, match", [
    ("eye", "volume affine must be an array of numbers"),
    ([[1, 0], [0, 1]], "finite 4x4 matrix"),
    (np.full((4, 4), np.nan), "finite 4x4 matrix"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "last row must be"),
    (np.diag([5000.0, 1, 1, 1]), "spacing along i .* outside"),
    ([[1, 0, 0], [0, 1]], "volume affine must be an array of numbers"),
])
def test_volume_bad_affine_refused(affine, match):
    with pytest.raises(InputError, match=match):
        Volume(torch.zeros(3, 3, 3), affine)
    with pytest.raises(InputError, match=match):
        Volume.from_hu(np.zeros((3, 3, 3)), affine)


@pytest.mark.parametrize("mu, match", [
    (np.zeros((3, 3, 3)), "must be a torch tensor"),
    (torch.zeros(0, 4, 4), "at least 2 voxels"),
    (torch.zeros(4, 4), "must be 3D"),
    (torch.full((3, 3, 3), float("nan")), "27 NaN or infinite"),
    (torch.zeros(3, 3, 3, dtype=torch.complex64), "floating point"),
    (torch.zeros(1).expand(2048, 1024, 1025), "more than the 2147483648"),  # no memory: an expanded view
])
def test_volume_bad_mu_refused(mu, match):
    with pytest.raises(InputError, match=match):
        Volume(mu, torch.eye(4, dtype=torch.float64))


def test_from_hu_bad_arguments_refused():
    with pytest.raises(InputError, match="CT \\(HU\\) must be an array of numbers"):
        Volume.from_hu("ct.nii", np.eye(4))
    with pytest.raises(InputError, match="more than the"):
        Volume.from_hu(torch.zeros(1, dtype=torch.int16).expand(2048, 1024, 1025), np.eye(4))
    with pytest.raises(InputError, match="hu_to_mu must be a HUToMu"):
        Volume.from_hu(np.zeros((3, 3, 3)), np.eye(4), hu_to_mu=0.02)
    with pytest.raises(InputError, match="dtype must be a floating torch dtype"):
        Volume.from_hu(np.zeros((3, 3, 3)), np.eye(4), dtype="float32")
    with pytest.raises(InputError, match="beyond float32"):
        Volume.from_hu(np.full((3, 3, 3), 1e300), np.eye(4))
    with pytest.raises(InputError, match="label volume must be an array of numbers"):
        Volume.from_hu(np.zeros((3, 3, 3)), np.eye(4), labels="labels.nii")
    with pytest.raises(InputError, match="label volume shape"):
        Volume.from_hu(np.zeros((3, 3, 3)), np.eye(4), labels=np.zeros((3, 3), dtype=np.int64))


def test_hu_to_mu_and_volume_methods_bad_arguments_refused():
    for kwargs, name in ((dict(mu_water="0.02"), "mu_water"), (dict(mu_water=float("inf")), "mu_water"),
                         (dict(bone_hu=float("nan")), "bone_hu"), (dict(mu_bone="x"), "mu_bone")):
        with pytest.raises(InputError, match=name):
            HUToMu(**kwargs)
    volume = Volume(torch.zeros(4, 4, 4), torch.eye(4, dtype=torch.float64), torch.zeros(4, 4, 4, dtype=torch.int64))
    for factor in (float("nan"), "2", (2, 2), 0.5):
        with pytest.raises(InputError, match="downsampling factor"):
            volume.downsample(factor)
        with pytest.raises(InputError, match="downsampling factor"):
            downsample_cached(volume, factor)
    with pytest.raises(InputError, match="keep_labels must be a list of label numbers"):
        volume.masked(3)
    with pytest.raises(InputError, match="needs a Volume"):
        downsample_cached("ct.nii", (2, 2, 2))
    assert volume.downsample(2).mu.shape == (2, 2, 2)  # a valid call still works


def test_dicom_series_folder_unchanged_after_refusal(tmp_path):
    from test_volume_files import _write_dicom_series

    folder = tmp_path / "series"
    _write_dicom_series(folder, np.zeros((4, 5, 6), dtype=np.int16), np.array([1.0, 1.0, 1.0]), np.zeros(3), np.eye(3))
    (folder / "extra").mkdir()
    shutil.copy(sorted(folder.glob("*.dcm"))[0], folder / "extra" / "x.dcm")
    before = {p.name: _sha(p) for p in folder.glob("*.dcm")}
    sorted(folder.glob("*.dcm"))[1].write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)  # a DICOM stub GDCM skips
    before[sorted(folder.glob("*.dcm"))[1].name] = _sha(sorted(folder.glob("*.dcm"))[1])
    with pytest.raises(InputError, match="cannot be read"):
        read_volume(folder)
    assert before == {p.name: _sha(p) for p in folder.glob("*.dcm")}


def test_a_complex_ct_is_refused(tmp_path):
    """Found by the fuzz suite: complex voxels were cast to their real part with only a numpy warning."""
    path = tmp_path / "complex.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4, 4), 100 + 1j, np.complex64)), str(path))
    with pytest.raises(InputError, match="holds complex numbers"):
        read_volume(path)
