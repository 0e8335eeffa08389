"""Reading the intra-operative X-ray: formats, DICOM geometry and intensity conventions, crop, flips, bad input.

Every DICOM file here is built with pydicom from a known bone-bright truth
image and known tags, so each assertion compares against that truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from DiffRegLogic.errors import InputError
from references import DX, XA, write_dicom
from DiffRegLogic.geometry import Detector, backproject, clinical_to_pose, pixel_grid, project
from DiffRegLogic.xray.files import write_image
from DiffRegLogic.xray import (XRay, check_xray, crop_detector, crop_xray, detect_collimation, flip_detector,
                               read_xray)

I0 = 60000.0


def bone_truth(h: int = 40, w: int = 50) -> np.ndarray:
    """A bone-bright line-integral image: smooth soft tissue, a bright 'bone' bar, and an L = 0 window.

    Every border row and column varies (no collimation is detected), and the
    zero window holds 25 of 2000 pixels (> 0.1 %), so the 99.9th percentile of
    I0 * exp(-L) is exactly I0.
    """
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    soft = 0.6 + 0.25 * np.sin(r / 5.0) * np.cos(c / 7.0) + 0.002 * c + 0.003 * r
    bone = 1.2 * ((c > w // 3) & (c < w // 3 + 6))
    out = soft + bone
    out[5:10, 30:35] = 0.0
    return out


GEOMETRY = dict(DistanceSourceToDetector="1180.5", ImagerPixelSpacing=["0.308", "0.154"],
                DistanceSourceToPatient="785", PositionerPrimaryAngle="30", PositionerSecondaryAngle="20")


def corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1])


def rank_corr(a, b) -> float:
    """Spearman correlation: 1 for any increasing relation (the conventions differ by monotone maps)."""
    def ranks(x):
        return np.argsort(np.argsort(np.asarray(x).ravel(), kind="stable"), kind="stable")
    return corr(ranks(a), ranks(b))


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".nrrd", ".nii.gz", ".mha"])
def test_write_image_round_trip(tmp_path, suffix):
    image = torch.from_numpy(np.random.default_rng(1).normal(size=(12, 17)))
    detector = Detector(rows=12, cols=17, sdd=1000.0, pixel_spacing=(0.4, 0.7))
    path = tmp_path / f"drr{suffix}"
    write_image(path, image, detector)
    xray = read_xray(path)
    assert xray.image.dtype == torch.float64 and xray.image.shape == (12, 17)
    assert torch.equal(xray.image, image.float().double())
    assert xray.pixel_spacing == (None if suffix == ".npy" else pytest.approx((0.4, 0.7), abs=1e-6))
    assert xray.detector is None and xray.clinical is None and xray.mask is None
    assert xray.meta["intensity"] == "line_integral"


def test_single_slice_3d_file_along_any_axis(tmp_path):
    import SimpleITK as sitk

    plane = np.random.default_rng(2).random((6, 9)).astype(np.float32)
    img = sitk.GetImageFromArray(plane[:, None, :])  # (K=6, J=1, I=9): the slice axis is j
    img.SetSpacing((0.5, 3.0, 0.8))  # (i, j, k)
    sitk.WriteImage(img, str(tmp_path / "slab.nrrd"))
    xray = read_xray(tmp_path / "slab.nrrd")
    assert np.array_equal(xray.image.numpy(), plane)
    assert xray.pixel_spacing == (0.8, 0.5)  # rows run along k, columns along i


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_16_bit_grayscale_exact(tmp_path, suffix):
    values = (np.arange(20 * 30).reshape(20, 30) * 109 % 65536).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / f"x{suffix}")
    xray = read_xray(tmp_path / f"x{suffix}")
    assert xray.image.numpy().max() > 255
    assert np.array_equal(xray.image.numpy(), values.astype(np.float64))


def test_8_bit_png_and_rgb(tmp_path):
    gray = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(read_xray(tmp_path / "gray.png").image.numpy(), gray)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray_rgb.png")
    xray = read_xray(tmp_path / "gray_rgb.png")
    assert np.array_equal(xray.image.numpy(), gray)
    assert any("equal channels" in note for note in xray.meta["notes"])
    colour = np.stack([gray, gray[::-1], gray], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match="colour"):
        read_xray(tmp_path / "colour.png")


# --------------------------------------------------------------------------
# DICOM geometry
# --------------------------------------------------------------------------


@pytest.mark.parametrize("primary, secondary, distance", [(30.0, 20.0, 785.0), (-45.5, -25.25, 810.0),
                                                          (0.0, 0.0, 700.0), (12.75, -40.0, 760.5)])
def test_dicom_geometry_and_initial_pose(tmp_path, primary, secondary, distance):
    truth = bone_truth()
    tags = dict(GEOMETRY, PositionerPrimaryAngle=str(primary), PositionerSecondaryAngle=str(secondary),
                DistanceSourceToPatient=str(distance))
    xray = read_xray(write_dicom(tmp_path / "x.dcm", np.rint(1000 * truth + 100), **tags))
    assert xray.detector == Detector(rows=40, cols=50, sdd=1180.5, pixel_spacing=(0.308, 0.154))
    assert xray.pixel_spacing == (0.308, 0.154)
    assert xray.clinical == (primary, secondary, distance)
    iso = torch.tensor([12.0, -40.0, 25.0], dtype=torch.float64)
    pose = xray.initial_pose(iso)
    assert pose.shape == (4, 4) and pose.dtype == torch.float64
    assert torch.allclose(pose, clinical_to_pose(primary, secondary, distance, iso), atol=1e-9)
    # independent: the isocentre projects onto the image centre, and the source is `distance` from it
    uv = project(iso[None], pose, xray.detector)[0]
    assert torch.allclose(uv, torch.tensor([24.5, 19.5], dtype=torch.float64), atol=1e-9)
    source = -(pose[:3, :3].T @ pose[:3, 3])
    assert float((source - iso).norm()) == pytest.approx(distance, abs=1e-9)
    used = xray.meta["dicom_tags"]
    for keyword, number in [("DistanceSourceToDetector", "(0018,1110)"), ("DistanceSourceToPatient", "(0018,1111)"),
                            ("ImagerPixelSpacing", "(0018,1164)"), ("PositionerPrimaryAngle", "(0018,1510)"),
                            ("PositionerSecondaryAngle", "(0018,1511)")]:
        assert used[keyword]["tag"] == number
    assert "ImagerPixelSpacing" in xray.meta["pixel_spacing_source"]
    assert "centre" in xray.meta["principal_point"]


def test_dicom_without_angles_has_no_initial_pose(tmp_path):
    tags = {k: v for k, v in GEOMETRY.items() if not k.startswith("Positioner")}
    xray = read_xray(write_dicom(tmp_path / "x.dcm", np.rint(1000 * bone_truth()), **tags))
    assert xray.detector is not None and xray.clinical is None
    assert xray.meta["missing_tags"]["clinical"] == ["PositionerPrimaryAngle", "PositionerSecondaryAngle"]
    with pytest.raises(InputError, match=r"lacks the DICOM tags PositionerPrimaryAngle \(0018,1510\), "
                                         r"PositionerSecondaryAngle \(0018,1511\)"):
        xray.initial_pose((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="carries no C-arm angles"):
        XRay(image=torch.ones(2, 2), meta={"path": "a.png", "format": "png"}).initial_pose((0, 0, 0))


def test_pixel_spacing_fallbacks(tmp_path):
    base = {k: v for k, v in GEOMETRY.items() if k != "ImagerPixelSpacing"}
    pixels = np.rint(1000 * bone_truth())
    only = read_xray(write_dicom(tmp_path / "a.dcm", pixels, sop=DX, PixelSpacing=["0.2", "0.25"], **base))
    assert only.pixel_spacing == (0.2, 0.25) and only.detector.pixel_spacing == (0.2, 0.25)
    assert only.meta["pixel_spacing_source"].startswith("PixelSpacing (0028,0030)")
    assert "PixelSpacing" in only.meta["dicom_tags"] and "ImagerPixelSpacing" not in only.meta["dicom_tags"]
    # factor present but PixelSpacing not declared magnification-calibrated: recorded, not applied
    noted = read_xray(write_dicom(tmp_path / "b.dcm", pixels, sop=DX, PixelSpacing=["0.2", "0.25"],
                                  EstimatedRadiographicMagnificationFactor="1.5", **base))
    assert noted.pixel_spacing == (0.2, 0.25)
    assert any("not applied" in note for note in noted.meta["notes"])
    # GEOMETRY calibration: PixelSpacing = detector spacing / factor, so the factor is undone
    calibrated = read_xray(write_dicom(tmp_path / "c.dcm", pixels, sop=DX, PixelSpacing=["0.2", "0.25"],
                                       EstimatedRadiographicMagnificationFactor="1.5",
                                       PixelSpacingCalibrationType="GEOMETRY", **base))
    assert calibrated.pixel_spacing == pytest.approx((0.3, 0.375), abs=1e-12)
    none = read_xray(write_dicom(tmp_path / "d.dcm", pixels, **base))
    assert none.detector is None and none.pixel_spacing is None
    assert none.meta["missing_tags"]["detector"] == ["ImagerPixelSpacing"]


def test_dicom_without_suffix_is_read(tmp_path):
    path = write_dicom(tmp_path / "IM0001", np.rint(1000 * bone_truth()), **GEOMETRY)
    assert read_xray(path).detector.sdd == 1180.5


# --------------------------------------------------------------------------
# DICOM intensity conventions: always bone bright
# --------------------------------------------------------------------------


def _intensity(truth):
    return np.rint(I0 * np.exp(-truth))


def _log_dark(truth):
    return np.rint(5000 - 1000 * truth)


def _log_bright(truth):
    return np.rint(1000 * truth + 200)


CONVENTIONS = [
    # stored values, photometric, tags, applied convention
    (_intensity, "MONOCHROME2", dict(PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=1), "intensity"),
    (_intensity, "MONOCHROME2", dict(PixelIntensityRelationship="LIN"), "intensity"),  # XA: no sign tag
    (_intensity, "MONOCHROME1", dict(PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=1), "intensity"),
    (_log_bright, "MONOCHROME2", dict(PixelIntensityRelationship="LOG", PixelIntensityRelationshipSign=-1),
     "line_integral"),
    (_log_dark, "MONOCHROME1", dict(PixelIntensityRelationship="LOG", PixelIntensityRelationshipSign=1), "reflected"),
    (_log_dark, "MONOCHROME2", dict(PixelIntensityRelationship="LOG"), "reflected"),  # XA: no sign tag
    (_log_dark, "MONOCHROME1", {}, "reflected"),  # CR: display-inverted, bone stored low
    (_log_bright, "MONOCHROME2", {}, "line_integral"),  # CR for presentation, bone bright
    (lambda t: np.rint(60000 - I0 * np.exp(-t)), "MONOCHROME2",
     dict(PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=-1), "line_integral"),
]


@pytest.mark.parametrize("stored, photometric, tags, applied", CONVENTIONS)
def test_dicom_auto_convention_is_bone_bright(tmp_path, stored, photometric, tags, applied):
    truth = bone_truth()
    sop = DX if "PixelIntensityRelationshipSign" in tags else XA
    xray = read_xray(write_dicom(tmp_path / "x.dcm", stored(truth), sop=sop, photometric=photometric, **tags))
    assert xray.meta["intensity"] == applied
    assert rank_corr(xray.image, truth) > 0.99  # bone bright: increasing in the true line integral
    assert corr(xray.image, truth) > 0.9
    if "PixelIntensityRelationship" in tags:
        assert xray.meta["dicom_tags"]["PixelIntensityRelationship"]["tag"] == "(0028,1040)"


def test_lin_minus_log_is_exact(tmp_path):
    truth = bone_truth()
    stored = _intensity(truth)
    xray = read_xray(write_dicom(tmp_path / "x.dcm", stored, sop=DX, PixelIntensityRelationship="LIN",
                                 PixelIntensityRelationshipSign=1))
    assert xray.meta["i0"] == I0  # the L = 0 window is > 0.1 % of the pixels
    expected = -np.log(stored / I0)
    assert np.allclose(xray.image.numpy(), expected, atol=1e-12, rtol=0)
    assert np.allclose(xray.image.numpy(), truth, atol=2e-4)  # up to the uint16 rounding of I


def test_explicit_convention_overrides_tags_and_rescale_applies(tmp_path):
    stored = _log_dark(bone_truth())
    path = write_dicom(tmp_path / "x.dcm", stored, photometric="MONOCHROME1", RescaleSlope="2",
                       RescaleIntercept="-100", PixelIntensityRelationship="LOG")
    kept = read_xray(path, intensity="line_integral")
    assert np.array_equal(kept.image.numpy(), stored * 2 - 100)
    assert kept.meta["intensity"] == "line_integral" and "RescaleSlope" in kept.meta["dicom_tags"]
    auto = read_xray(path)
    assert np.allclose(auto.image.numpy(), auto.meta["reflect_reference"] - (stored * 2 - 100))


def test_multiframe_picks_frame(tmp_path):
    truth = bone_truth()
    frames = np.stack([np.rint(1000 * truth + 100 * k) for k in range(3)])
    frames[1] = frames[1, ::-1]
    path = write_dicom(tmp_path / "x.dcm", frames, **GEOMETRY)
    for k in range(3):
        xray = read_xray(path, frame=k, intensity="line_integral")
        assert np.array_equal(xray.image.numpy(), frames[k])
        assert xray.meta["frame"] == k and xray.meta["number_of_frames"] == 3
    with pytest.raises(InputError, match="3 frame"):
        read_xray(path, frame=3)


def test_per_frame_angles_and_moving_c_arm(tmp_path):
    frames = np.stack([np.rint(1000 * bone_truth() + k) for k in range(2)])
    groups = Sequence()
    for primary, secondary in [(10.0, -5.0), (35.5, 15.0)]:
        position = Dataset()
        position.PositionerPrimaryAngle, position.PositionerSecondaryAngle = primary, secondary
        item = Dataset()
        item.PositionerPositionSequence = Sequence([position])
        groups.append(item)
    tags = {k: v for k, v in GEOMETRY.items() if not k.startswith("Positioner")}
    path = write_dicom(tmp_path / "enhanced.dcm", frames, PerFrameFunctionalGroupsSequence=groups, **tags)
    xray = read_xray(path, frame=1)
    assert xray.clinical == (35.5, 15.0, 785.0)
    assert xray.meta["dicom_tags"]["PositionerPrimaryAngle"]["found_in"] == "per-frame functional group"
    moving = write_dicom(tmp_path / "rotational.dcm", frames, PositionerMotion="DYNAMIC",
                         PositionerPrimaryAngleIncrement=["0", "2.5"], PositionerSecondaryAngleIncrement=["0", "0"],
                         **GEOMETRY)
    xray = read_xray(moving, frame=1)
    assert xray.clinical is None
    with pytest.raises(InputError, match="C-arm moved"):
        xray.initial_pose((0, 0, 0))


def test_dicom_shutter_and_padding_mask(tmp_path):
    stored = np.rint(1000 * bone_truth() + 10)
    stored[0, :] = 0  # padding
    xray = read_xray(write_dicom(tmp_path / "x.dcm", stored, ShutterShape="RECTANGULAR",
                                 ShutterLeftVerticalEdge=3, ShutterRightVerticalEdge=45,
                                 ShutterUpperHorizontalEdge=1, ShutterLowerHorizontalEdge=38,
                                 PixelPaddingValue=0))
    expected = np.zeros((40, 50), dtype=bool)
    expected[0:38, 2:45] = True  # 1-based inclusive shutter edges
    expected[0, :] = False  # padding row (also a constant border)
    assert np.array_equal(xray.mask.numpy(), expected)


# --------------------------------------------------------------------------
# Crop, flips, collimation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("principal_point", [None, (21.7, 13.2)])
def test_crop_keeps_every_ray(principal_point):
    detector = Detector(rows=40, cols=50, sdd=1100.0, pixel_spacing=(0.3, 0.2), principal_point=principal_point)
    pose = clinical_to_pose(20.0, -10.0, 700.0, (5.0, -3.0, 40.0))
    top, bottom, left, right = 3, 5, 7, 2
    cropped = crop_detector(detector, top, bottom, left, right)
    assert cropped.shape == (32, 41)
    pixels = pixel_grid(cropped)
    source_c, target_c = backproject(pixels, pose, cropped)
    source_o, target_o = backproject(pixels + torch.tensor([left, top], dtype=torch.float64), pose, detector)
    assert torch.allclose(source_c, source_o, atol=1e-9)
    assert torch.allclose(target_c, target_o, atol=1e-9)


def test_crop_xray_image_detector_and_meta(tmp_path):
    truth = bone_truth()
    path = write_dicom(tmp_path / "x.dcm", np.rint(1000 * truth), **GEOMETRY)
    full = read_xray(path)
    once = crop_xray(full, 1, 2, 3, 4)
    assert np.array_equal(once.image.numpy(), full.image.numpy()[1:-2, 3:-4])
    assert once.detector.shape == (37, 43)
    assert once.detector.principal_point == pytest.approx((24.5 - 3, 19.5 - 1))
    twice = crop_xray(once, 1, 0, 0, 1)
    assert twice.meta["crop"] == (2, 2, 3, 5) and full.meta["crop"] == (0, 0, 0, 0)
    direct = read_xray(path, crop=(2, 2, 3, 5))
    assert torch.equal(direct.image, twice.image) and direct.detector == twice.detector
    with pytest.raises(InputError, match="leaves no pixels"):
        crop_xray(full, 20, 20, 0, 0)


def test_flips_move_pixels_and_principal_point(tmp_path):
    stored = np.rint(1000 * bone_truth())
    path = write_dicom(tmp_path / "x.dcm", stored, **GEOMETRY)
    xray = read_xray(path, flip_cols=True, flip_rows=True, crop=(1, 2, 3, 4), intensity="line_integral")
    assert np.array_equal(xray.image.numpy(), stored[::-1, ::-1][1:-2, 3:-4])
    assert xray.detector.principal_point == pytest.approx((24.5 - 3, 19.5 - 1))  # centre stays centre
    # an explicit principal point mirrors with the pixels: the ray of flipped column u is the mirror of column W-1-u
    detector = Detector(rows=20, cols=30, sdd=1000.0, pixel_spacing=(0.5, 0.4), principal_point=(10.3, 7.9))
    flipped = flip_detector(detector, cols=True)
    assert flipped.principal_point == pytest.approx((29 - 10.3, 7.9))
    pixels = pixel_grid(flipped)
    eye = torch.eye(4, dtype=torch.float64)
    _, target_f = backproject(pixels, eye, flipped)
    mirrored = torch.stack([29 - pixels[:, 0], pixels[:, 1]], -1)
    _, target_o = backproject(mirrored, eye, detector)
    assert torch.allclose(target_f[:, 0], -target_o[:, 0], atol=1e-12)
    assert torch.allclose(target_f[:, 1:], target_o[:, 1:], atol=1e-12)
    assert flip_detector(detector, rows=True).principal_point == pytest.approx((10.3, 19 - 7.9))


def test_collimation_detected_masked_and_cropped(tmp_path):
    base = np.random.default_rng(3).random((30, 40)) + 1.0
    padded = np.pad(base, ((3, 2), (0, 0)), constant_values=0.0)  # blank rows
    padded = np.pad(padded, ((0, 0), (4, 1)), constant_values=5.0)  # saturated columns (corners too)
    assert detect_collimation(padded) == (3, 2, 4, 1)
    assert detect_collimation(torch.from_numpy(base)) == (0, 0, 0, 0)
    np.save(tmp_path / "x.npy", padded)
    xray = read_xray(tmp_path / "x.npy")
    expected = np.zeros(padded.shape, dtype=bool)
    expected[3:33, 4:44] = True
    assert np.array_equal(xray.mask.numpy(), expected) and xray.image.shape == (35, 45)
    cropped = read_xray(tmp_path / "x.npy", crop="auto")
    assert np.array_equal(cropped.image.numpy(), base) and cropped.meta["crop"] == (3, 2, 4, 1)
    assert bool(cropped.mask.all())


def test_minus_log_of_intensity_image(tmp_path):
    truth = bone_truth()
    intensity = 1234.5 * np.exp(-truth)
    intensity[0, 0] = 0.0  # a dead pixel: clamped to 1e-6 * max before the logarithm
    np.save(tmp_path / "raw.npy", intensity)
    xray = read_xray(tmp_path / "raw.npy", intensity="intensity")
    assert xray.meta["i0"] == pytest.approx(1234.5, rel=1e-15)
    result = xray.image.numpy()
    assert np.allclose(result.ravel()[1:], truth.ravel()[1:], atol=1e-12)
    assert result[0, 0] == pytest.approx(math.log(1e6), rel=1e-12)
    assert read_xray(tmp_path / "raw.npy").meta["intensity"] == "line_integral"  # auto for .npy


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_xray(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="unknown file type"):
        read_xray(tmp_path / "notes.txt")
    stack = np.random.default_rng(4).random((3, 8, 9))
    np.save(tmp_path / "stack.npy", stack)
    with pytest.raises(InputError, match="more than one slice"):
        read_xray(tmp_path / "stack.npy")
    write_image(tmp_path / "stack.nrrd", stack)
    with pytest.raises(InputError, match="more than one slice"):
        read_xray(tmp_path / "stack.nrrd")
    np.save(tmp_path / "empty.npy", np.zeros((0, 5)))
    with pytest.raises(InputError, match="empty"):
        read_xray(tmp_path / "empty.npy")
    nan = np.random.default_rng(5).random((8, 9))
    nan[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(InputError, match="NaN"):
        read_xray(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", np.full((8, 9), 3.0))
    with pytest.raises(InputError, match="constant"):
        read_xray(tmp_path / "flat.npy")
    np.save(tmp_path / "ok.npy", stack[0])
    with pytest.raises(InputError, match="unknown intensity convention"):
        read_xray(tmp_path / "ok.npy", intensity="log")
    with pytest.raises(InputError, match="crop must be"):
        read_xray(tmp_path / "ok.npy", crop="collimator")
    with pytest.raises(InputError, match="four non-negative integers"):
        read_xray(tmp_path / "ok.npy", crop=(1, 2))
    with pytest.raises(InputError, match="frame=1"):
        read_xray(tmp_path / "ok.npy", frame=1)
    np.save(tmp_path / "negative.npy", -1.0 - stack[0])
    with pytest.raises(InputError, match="positive intensities"):
        read_xray(tmp_path / "negative.npy", intensity="intensity")


def test_check_xray():
    detector = Detector(rows=48, cols=64, sdd=1000.0)
    image = torch.rand(48, 64, dtype=torch.float64)
    check_xray(image, detector)  # fine
    with pytest.raises(InputError, match=r"40 x 64 pixels \(rows x cols\) but the detector is 48 x 64"):
        check_xray(image[:40], detector)
    with pytest.raises(InputError, match="2D"):
        check_xray(image[None], detector)
    with pytest.raises(InputError, match="constant"):
        check_xray(torch.full((48, 64), 2.0), detector)
    bad = image.clone()
    bad[3, 4] = float("nan")
    bad[5, 6] = float("inf")
    with pytest.raises(InputError, match="2 NaN or infinite"):
        check_xray(bad, detector)
