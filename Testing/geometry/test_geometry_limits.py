"""The detector and the pose refuse values outside `DiffRegLogic.limits` with an InputError naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DiffRegLogic import InputError
from DiffRegLogic.geometry import Detector, check_pose, clinical_to_pose
from DiffRegLogic.limits import MAX_DETECTOR_SIDE, MAX_TRANSLATION_MM

GOOD = dict(rows=10, cols=12, sdd=1000.0, pixel_spacing=(0.5, 0.5))


def detector(**changes) -> Detector:
    return Detector(**{**GOOD, **changes})


@pytest.mark.parametrize("field, value", [
    ("rows", 100_000), ("cols", 100_000), ("rows", MAX_DETECTOR_SIDE + 1), ("rows", 0), ("cols", -3),
    ("rows", 2.5), ("cols", True), ("rows", "10"), ("rows", None), ("rows", float("nan")),
    ("rows", 10**400), ("cols", -10**400), pytest.param("rows", 10**5000, id="rows-10**5000"),  # integers beyond float range: no OverflowError
])
def test_detector_size_outside_the_limits_is_refused(field, value):
    with pytest.raises(InputError, match=field):
        detector(**{field: value})


def test_detector_with_too_many_pixels_is_refused():
    with pytest.raises(InputError, match="rows x cols"):
        Detector(8192, 8193, 1000.0, (0.1, 0.1))


@pytest.mark.parametrize("value", [1e308, 0.5, 0.0, -1000.0, float("nan"), float("inf"), 10**400, pytest.param(10**5000, id="10**5000"), "1000",
                                   None, torch.tensor([1000.0, 1.0])])
def test_sdd_outside_the_limits_is_refused(value):
    with pytest.raises(InputError, match="sdd"):
        detector(sdd=value)


@pytest.mark.parametrize("value", [(6.7e16, 6.7e16), (0.0, 1.0), (1.0, 1e-5), (1.0, float("nan")), (1.0, -10**400),
                                   1.0, (1.0,), (1.0, 1.0, 1.0), "ab", np.ones((2, 2)), torch.ones(3)])
def test_pixel_spacing_outside_the_limits_is_refused(value):
    with pytest.raises(InputError, match="pixel_spacing"):
        detector(pixel_spacing=value)


@pytest.mark.parametrize("value", [(2952.0, 1.1e6), (-2e6, 0.0), (float("inf"), 0.0), (0.0, float("nan")), "ab",
                                   (1.0,), (10**400, 0)])
def test_principal_point_outside_the_limits_is_refused(value):
    with pytest.raises(InputError, match="principal_point"):
        detector(principal_point=value)


def test_the_fuzzed_geometry_is_refused():
    """The geometry that made the fused renderer loop: pixel spacing 6.7e16 mm, principal point (2952, 10363)."""
    with pytest.raises(InputError, match="pixel_spacing"):
        Detector(7, 6, 1000.0, (6.7e16, 6.7e16), (2952.0, 10363.0))


def test_valid_detectors_are_kept_as_given():
    spacing = torch.tensor([0.5, 0.4], dtype=torch.float64, requires_grad=True)
    det = Detector(np.int64(10), 12.0, torch.tensor(1000.0, requires_grad=True), spacing, np.array([4.5, 5.0]))
    assert (det.rows, det.cols) == (10, 12) and isinstance(det.cols, int)
    assert det.pixel_spacing is spacing and det.sdd.requires_grad
    assert Detector(MAX_DETECTOR_SIDE, 1, 1.0, (1e-4, 100.0), (-1e6, 1e6)).shape == (MAX_DETECTOR_SIDE, 1)


@pytest.mark.parametrize("factor", [0, -2.0, 0.5, float("nan"), float("inf"), "2", None, 10**400])
def test_downsample_refuses_bad_factors(factor):
    with pytest.raises(InputError, match="factor"):
        detector().downsample(factor)


def test_downsample_to_a_few_pixels_keeps_the_extent():
    """A pyramid level of a large panel may have pixels beyond the input bound of 100 mm (same extent)."""
    det = Detector(3000, 2000, 1020.0, (0.2, 0.2), (999.5, 1499.5))
    coarse = det.downsample(1000.0)
    assert coarse.shape == (3, 2)
    assert coarse.pixel_spacing == pytest.approx((200.0, 200.0))
    assert coarse.rows * coarse.pixel_spacing[0] == pytest.approx(det.rows * det.pixel_spacing[0])
    assert det.downsample(10**6).shape == (1, 1)


# ---- poses ----------------------------------------------------------------


def rigid_pose() -> torch.Tensor:
    return clinical_to_pose(12.0, -7.0, 600.0, (3.0, -4.0, 5.0))


@pytest.mark.parametrize("shift", [1e300, 2 * MAX_TRANSLATION_MM, -1.5e308])
def test_pose_translated_too_far_is_refused(shift):
    pose = rigid_pose()
    pose[1, 3] = shift
    with pytest.raises(InputError, match="translation"):
        check_pose(pose)


@pytest.mark.parametrize("bad", ["abc", None, {"a": 1}, object(), [[1.0, 2.0], [3.0]], np.full((4, 4), "x"),
                                 [[10**30] * 4] * 4, torch.eye(4, dtype=torch.complex64), torch.eye(4, dtype=torch.bool),
                                 np.eye(4, dtype=complex), torch.eye(3), np.zeros((2, 3, 4, 4))])
def test_pose_that_is_not_a_matrix_of_numbers_is_refused(bad):
    with pytest.raises(InputError, match="pose"):
        check_pose(bad)


def test_rigid_pose_stored_in_half_precision_passes_the_check():
    """A rigid float64 pose rounded to float16 is off by |R^T R - I| ~ 5e-4 > 1e-4: held to float16's rounding."""
    pose = rigid_pose()
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert check_pose(pose.to(dtype)).dtype == dtype
    scaled = pose.clone()
    scaled[:3, :3] *= 1.05
    with pytest.raises(InputError, match="not rigid"):
        check_pose(scaled.half())
    with pytest.raises(InputError, match="not rigid"):
        check_pose(pose.clone().mul_(torch.tensor([[1.0005] * 4] * 3 + [[1.0] * 4], dtype=torch.float64)))


def test_check_pose_accepts_lists_arrays_and_integers_without_changing_them():
    pose = rigid_pose()
    array = pose.numpy().astype(">f8")  # big-endian, as read from some files
    before = array.copy()
    assert torch.equal(check_pose(array)[0], pose)
    assert np.array_equal(array, before)
    assert torch.equal(check_pose(pose.tolist())[0], pose)
    assert check_pose(np.eye(4, dtype=np.int32)).dtype == torch.float64
    grad = pose.clone().requires_grad_(True)
    assert check_pose(grad).requires_grad
