"""The panel's second X-ray and its detected intensity convention, against real MRML (the slicer-core wheel).

Independent truths: the known poses the simulated X-rays were rendered at
(the second view's relation to the first is the C-arm motion between their
angles), and the convention the test stored the X-ray in.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import torch

from DiffRegLogic import evaluation, mrml
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector, clinical_to_pose
from DiffRegLogic.registration import perturb_pose

from test_mrml import COLS, DISTANCE, ROWS, SDD, SPACING, base_setup, ct_node, scene, snapshot, xray_node  # noqa: F401

PRIMARY, SECONDARY = 20.0, -10.0
SECOND_PRIMARY = 110.0  # a biplane-like second view, 90 degrees from the first


def _two_views(scene):
    ct, _ = ct_node(scene)
    volume = mrml.volume_from_node(ct)
    first = clinical_to_pose(PRIMARY, SECONDARY, DISTANCE, volume.center)
    second = clinical_to_pose(SECOND_PRIMARY, SECONDARY, DISTANCE, volume.center)
    detector = Detector(ROWS, COLS, SDD, (SPACING, SPACING))
    # the CT moved from where the C-arm angles say: both views see the same rigid motion
    motion = torch.tensor([[0.05, -0.04, 0.03, 6.0, -5.0, 12.0]], dtype=torch.float64)
    truth1 = perturb_pose(first, motion, volume.center)[0]
    truth2 = second @ torch.linalg.inv(first) @ truth1
    with torch.no_grad():
        images = render(volume, detector, torch.stack([truth1, truth2]))
    xr1 = xray_node(scene, images[0].numpy())
    xr2 = xray_node(scene, images[1].numpy(), name="X-ray 2")
    return ct, xr1, xr2, volume, truth1, truth2


def test_second_xray_registers_one_pose_to_both_views(scene):
    ct, xr1, xr2, volume, truth1, truth2 = _two_views(scene)
    before = [snapshot(n) for n in (ct, xr1, xr2)]
    setup = base_setup(ct, xr1, primaryAngle=PRIMARY, secondaryAngle=SECONDARY, secondXrayVolume=xr2,
                       secondAnglesFromXray=False, secondPrimaryAngle=SECOND_PRIMARY, secondSecondaryAngle=SECONDARY)
    done = mrml.run_registration(scene, setup)
    points = evaluation.target_points(volume, 500)
    start = clinical_to_pose(PRIMARY, SECONDARY, DISTANCE, volume.center)
    assert float(evaluation.mtre(start, truth1, points)) > 10
    assert float(evaluation.mtre(done.result.pose, truth1, points)) < 1.0
    assert done.result.view_poses.shape == (2, 4, 4)
    assert float(evaluation.mtre(done.result.view_poses[1], truth2, points)) < 1.0
    assert "views: " in done.message
    estimate = mrml.pose_from_transform(setup.outputTransform, setup.transformMeaning, ct)
    np.testing.assert_allclose(estimate.numpy(), done.result.pose.numpy(), atol=1e-9)
    for node, (array, matrix, parent) in zip((ct, xr1, xr2), before):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
        np.testing.assert_array_equal(mrml.ijk_to_ras(node), matrix)


def test_second_xray_without_angles_is_refused_before_any_output(scene):
    ct, xr1, xr2, volume, truth1, truth2 = _two_views(scene)
    setup = base_setup(ct, xr1, primaryAngle=PRIMARY, secondaryAngle=SECONDARY, secondXrayVolume=xr2)
    with pytest.raises(InputError, match="no DICOM C-arm angles.*untick"):
        mrml.run_registration(scene, setup)
    assert setup.outputTransform is None and setup.outputDrr is None


def test_second_xray_as_output_is_refused(scene):
    ct, xr1, xr2, volume, truth1, truth2 = _two_views(scene)
    setup = base_setup(ct, xr1, secondXrayVolume=xr2, outputDrr=xr2)
    with pytest.raises(InputError, match="second X-ray"):
        mrml.run_registration(scene, setup)


@pytest.mark.parametrize("stored, expected", [("raw", "intensity"), ("inverted log", "inverted"),
                                              ("log", "line_integral")])
def test_unstated_convention_is_detected_and_reported(scene, stored, expected):
    ct, xr1, xr2, volume, truth1, truth2 = _two_views(scene)
    drr = slicer.util.arrayFromVolume(xr1)[0].astype(np.float64)
    image = {"raw": np.exp(-drr), "inverted log": drr.max() - drr, "log": drr}[stored]
    node = xray_node(scene, image, name=f"stored {stored}")
    setup = base_setup(ct, node, primaryAngle=PRIMARY, secondaryAngle=SECONDARY)
    inputs = mrml.read_inputs(setup)
    assert inputs.xray.meta["intensity_detected"] == expected
    # the converted image is the line integral again, up to the conversion's affine freedom
    converted = inputs.xray.image.numpy().ravel()
    assert np.corrcoef(converted, drr.ravel())[0, 1] > 0.999
    done = mrml.run_registration(scene, setup)
    assert f"X-ray detected as {expected.replace('_', ' ')}" in done.message
    # a stated convention is taken as stated: nothing detected
    setup.xrayIntensity = "line_integral"
    assert "intensity_detected" not in mrml.read_inputs(setup).xray.meta


def test_the_first_xray_as_second_view_is_refused(scene):
    ct, xr1, xr2, volume, truth1, truth2 = _two_views(scene)
    setup = base_setup(ct, xr1, secondXrayVolume=xr1, secondAnglesFromXray=False)
    with pytest.raises(InputError, match="second X-ray .* is the input X-ray itself"):
        mrml.run_registration(scene, setup)
    assert setup.outputTransform is None


def test_a_transform_start_without_dicom_angles_cannot_relate_the_views(scene):
    ct, xr1, xr2, volume, truth1, truth2 = _two_views(scene)
    start = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "start")
    mrml.set_transform_matrix(start, mrml.transform_from_pose(truth1, "C-arm in patient", ct))
    setup = base_setup(ct, xr1, initialPoseMode="transform", initialTransform=start, secondXrayVolume=xr2,
                       secondAnglesFromXray=False, secondPrimaryAngle=SECOND_PRIMARY)
    with pytest.raises(InputError, match="first X-ray's DICOM C-arm angles"):
        mrml.run_registration(scene, setup)
