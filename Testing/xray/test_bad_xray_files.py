"""X-ray files and arguments that cannot be used are refused with InputError, silently and read-only.

Fixtures are real files (SimpleITK, nibabel, numpy, Pillow, pydicom) written into tmp_path, then cut
short or edited. Each refusal is checked for the exception type, a message naming what is wrong,
nothing printed on stderr and an unchanged input file (sha256).
"""

from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.xray import XRay, check_xray, crop_xray, detect_collimation, flip_detector
from DiffRegLogic.xray.readers import read_xray, xray_from_array
from references import DX, write_dicom
from file_references import sha256, write_sitk

SITK = [".nii", ".nii.gz", ".nrrd", ".mha"]


def _image(dtype=np.float32):
    return np.random.default_rng(5).uniform(0.0, 4.0, (30, 40)).astype(dtype)


def _sitk_file(path, array, spacing=(0.3, 0.3)):
    return write_sitk(path, array, spacing)


_sha = sha256


def _refused(capfd, path, match, **kwargs):
    before = _sha(path)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError, match=match) as info:
        warnings.simplefilter("always")
        read_xray(path, **kwargs)
    assert type(info.value) is InputError
    assert capfd.readouterr().err == "" and not caught, caught
    assert _sha(path) == before
    return str(info.value)


def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


# ---- values --------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SITK + [".npy", ".tif"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_pixels_refused_in_every_format(tmp_path, capfd, suffix, bad):
    image = _image()
    image[3, 4] = bad
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, image)
    elif suffix == ".tif":
        Image.fromarray(image).save(path)
    else:
        _sitk_file(path, image)
    _refused(capfd, path, "1 NaN or infinite")


@pytest.mark.parametrize("suffix", [".npy", ".nrrd", ".nii", ".mha"])
def test_values_beyond_float32_named_as_such(tmp_path, capfd, suffix):
    image = _image(np.float64) * 1e300
    path = tmp_path / f"x{suffix}"
    np.save(path, image) if suffix == ".npy" else _sitk_file(path, image)
    message = _refused(capfd, path, r"beyond float32's range \(~3.4e38\)")
    assert "NaN" not in message


def test_dicom_rescale_beyond_float32_or_nan_refused(tmp_path, capfd):
    pixels = np.random.default_rng(0).integers(0, 4000, (32, 40))
    _refused(capfd, write_dicom(tmp_path / "a.dcm", pixels, RescaleSlope="1e308", RescaleIntercept="0"),
             "RescaleSlope .* beyond float32")
    with pytest.warns(UserWarning, match="Invalid value for VR DS"):  # pydicom, writing the fixture
        nan_slope = write_dicom(tmp_path / "b.dcm", pixels, RescaleSlope="nan")
    _refused(capfd, nan_slope, "RescaleSlope .* not a finite")
    _refused(capfd, write_dicom(tmp_path / "c.dcm", pixels, sop=DX, DistanceSourceToDetector="1e9",
                                ImagerPixelSpacing=["0.2", "0.2"]), "DistanceSourceToDetector")
    _refused(capfd, write_dicom(tmp_path / "d.dcm", pixels, sop=DX, DistanceSourceToDetector="1000",
                                ImagerPixelSpacing=["0.2", "500"]), "ImagerPixelSpacing")


# ---- truncated files ------------------------------------------------------------


@pytest.mark.parametrize("suffix", SITK + [".npy", ".png", ".tif"])
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_truncated_files_refused(tmp_path, capfd, suffix, fraction):
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, _image())
    elif suffix in (".png", ".tif"):
        Image.fromarray((_image() * 60).astype(np.uint8)).save(path)
    else:
        _sitk_file(path, _image())
    message = _refused(capfd, _cut(path, fraction), "truncated|incomplete")
    assert "again" in message


def test_truncated_dicom_refused(tmp_path, capfd):
    path = write_dicom(tmp_path / "x.dcm", np.random.default_rng(0).integers(0, 4000, (32, 40)))
    message = _refused(capfd, _cut(path, 0.6), "pixel data is incomplete")
    assert "decoder" not in message


def test_header_announcing_a_huge_image_refused_before_decoding(tmp_path, capfd):
    Image.new("L", (20000, 2)).save(tmp_path / "wide.png")
    _refused(capfd, tmp_path / "wide.png", "larger than DiffReg reads")
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes().replace(b"(4, 4)", b"(9000, 9)", 1))
    _refused(capfd, path, "truncated")


# ---- geometry ---------------------------------------------------------------------


def test_nrrd_nan_spacings_refused(tmp_path, capfd):
    path = _sitk_file(tmp_path / "x.nrrd", _image(), spacing=(1.0, 1.0))
    head, body = path.read_bytes().split(b"\n\n", 1)
    head = re.sub(rb"space directions: [^\n]*", b"spacings: nan nan", head)
    head = re.sub(rb"\nspace origin: [^\n]*|\nspace: [^\n]*", b"", head)
    path.write_bytes(head + b"\n\n" + body)
    _refused(capfd, path, "'spacings'")


@pytest.mark.parametrize("suffix", SITK)
def test_pixel_spacing_outside_the_limits_refused(tmp_path, capfd, suffix):
    path = _sitk_file(tmp_path / f"x{suffix}", _image(), spacing=(0.3, 500.0))
    _refused(capfd, path, r"pixel spacing of the rows must be >= 0.0001 mm and <= 100 mm")


def test_nifti_nan_affine_and_mha_singular_direction_refused(tmp_path, capfd):
    image = nib.Nifti1Image(_image().T.copy(), np.eye(4))
    affine = np.eye(4)
    affine[1, 3] = np.nan
    image.set_sform(affine, code=1)
    nib.save(image, tmp_path / "x.nii")
    _refused(capfd, tmp_path / "x.nii", "sform")
    path = _sitk_file(tmp_path / "x.mha", _image(), spacing=(1.0, 1.0))
    path.write_bytes(path.read_bytes().replace(b"TransformMatrix = 1 0 0 1", b"TransformMatrix = 1 0 1 0", 1))
    _refused(capfd, path, "direction matrix is singular")


# ---- arrays and the XRay type in the Python API ------------------------------------


def test_xray_from_array_bad_input_refused():
    with pytest.raises(InputError, match="path must be a file name"):
        read_xray(None)
    with pytest.raises(InputError, match="2D image"):
        xray_from_array([[1.0, 2.0], [3.0]])
    with pytest.raises(InputError, match="2D image"):
        xray_from_array("x.png")
    with pytest.raises(InputError, match="beyond float32"):
        xray_from_array(_image(np.float64) * 1e300)
    with pytest.raises(InputError, match="pixel_spacing must be"):
        xray_from_array(_image(), pixel_spacing=5)
    with pytest.raises(InputError, match=r"pixel_spacing \(row\)"):
        xray_from_array(_image(), pixel_spacing=(float("nan"), 0.3))
    assert xray_from_array(_image(), pixel_spacing=np.array([0.2, 0.3])).pixel_spacing == (0.2, 0.3)


def test_xray_type_and_checks_refuse_bad_fields():
    image = torch.as_tensor(_image(np.float64))
    for kwargs, match in ((dict(image=_image()), "torch tensor"), (dict(image=image[0]), "2D"),
                          (dict(image=image, mask=torch.ones(3, 3, dtype=torch.bool)), "mask"),
                          (dict(image=image, pixel_spacing=(0.0, 0.3)), "pixel_spacing"),
                          (dict(image=image, clinical=(0.0, float("nan"), 800.0)), "clinical secondary"),
                          (dict(image=image, detector="flat panel"), "detector")):
        with pytest.raises(InputError, match=match):
            XRay(**kwargs)
    detector = Detector(rows=30, cols=40, sdd=1000.0)
    with pytest.raises(InputError, match="beyond float32"):
        check_xray(image * 1e300, detector)
    with pytest.raises(InputError, match="real numbers"):
        check_xray(torch.zeros(30, 40, dtype=torch.complex64), detector)
    with pytest.raises(InputError, match="real numbers"):
        detect_collimation("image")
    with pytest.raises(InputError, match="tol"):
        detect_collimation(image, tol=float("nan"))
    with pytest.raises(InputError, match="needs an XRay"):
        crop_xray(image, 1, 1, 1, 1)
    with pytest.raises(InputError, match="needs a Detector"):
        flip_detector(None, rows=True)
