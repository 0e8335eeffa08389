"""Bad nodes and numbers in the Slicer bridge: the panel's message, inputs untouched, no output created or changed.

Real MRML (the slicer-core wheel). Every refusal is checked through the
panel's two actions (`render_preview`, `run_registration`) and `read_inputs`:
an `InputError` whose message names the node or the panel field, the input
nodes unchanged (voxels and their modified time, IJK-to-RAS, spacing,
origin, parent, transform matrix) and no node added to the scene.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
import torch
import vtk

from DiffRegLogic import limits, mrml
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector, clinical_to_pose
from DiffRegLogic.mrml import nodes, settings
from DiffRegLogic.volume.phantoms import chest_phantom_hu

ROOT = Path(__file__).resolve().parents[2]
SDD, DISTANCE, ROWS, COLS, PIXEL = 1000.0, 600.0, 30, 32, 16.0


# --------------------------------------------------------------------------
# Scene, nodes and the "nothing changed" check
# --------------------------------------------------------------------------


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)


def _volume(scene, array, affine, name):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=np.float32))
    mrml.set_ijk_to_ras(node, affine)
    return node


@pytest.fixture(scope="module")
def phantom():
    """CT voxels (HU) and IJK->RAS, the X-ray (a DRR of it at a known pose) and that pose; computed once."""
    hu, grid = chest_phantom_hu(shape_ijk=(24, 21, 18), spacing=(12.0, 12.0, 14.0))
    scene = slicer.vtkMRMLScene()
    volume = mrml.volume_from_node(_volume(scene, hu.numpy(), grid.numpy(), "CT"))
    truth = clinical_to_pose(20.0, -10.0, DISTANCE, volume.center)
    with torch.no_grad():
        image = render(volume, Detector(ROWS, COLS, SDD, (PIXEL, PIXEL)), truth)[0].numpy()
    scene.Clear(1)
    return hu.numpy().astype(np.float32), grid.numpy(), image, truth


@pytest.fixture
def case(scene, phantom):
    """CT node, X-ray node and a setup that runs (from a start off the truth)."""
    hu, grid, image, truth = phantom
    ct = _volume(scene, hu, grid, "CT")
    xray = _volume(scene, image[None], np.diag([-PIXEL, -PIXEL, 1.0, 1.0]), "X-ray")
    setup = settings.Setup(inputVolume=ct, xrayVolume=xray, sdd=SDD, primaryAngle=23.0, secondaryAngle=-8.0,
                           sourceToIsocenter=DISTANCE, levels="2 1", iterations=4, device="cpu")
    return types.SimpleNamespace(ct=ct, xray=xray, setup=setup, truth=truth)


def _matrix(getter) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return mrml.array_from_vtk_matrix(matrix)


def _snapshot(node):
    """Everything of an input node DiffReg could change (voxels only when they are allocated and small)."""
    if node is None or not hasattr(node, "IsA"):
        return node
    state = {"parent": node.GetTransformNodeID()}  # (the node's own MTime moves when MRML refreshes a NaN parent)
    if node.IsA("vtkMRMLVolumeNode"):
        image = node.GetImageData()
        state.update(spacing=node.GetSpacing(), origin=node.GetOrigin(), ijk=mrml.ijk_to_ras(node))
        if image is not None:
            scalars = image.GetPointData().GetScalars()
            state.update(image_mtime=image.GetMTime(), dims=image.GetDimensions())
            if scalars is not None and 0 < scalars.GetNumberOfTuples() == np.prod(image.GetDimensions()) < 10**7:
                tuples = [scalars.GetTuple(n) for n in range(scalars.GetNumberOfTuples())]
                state["voxels"] = np.array(tuples)  # (not arrayFromVolume: it cannot reshape several components)
    if node.IsA("vtkMRMLTransformNode"):
        state["matrix"] = _matrix(node.GetMatrixTransformToParent)
    return state


def _same_state(a, b) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a is b
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray):
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif key in ("spacing", "origin"):
            if not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True):
                return False
        elif x != y:
            return False
    return True


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def refused(scene, setup, match: str, actions=("read", "render", "register")) -> str:
    """Each action raises InputError matching ``match``; inputs, outputs and the scene stay as they were."""
    watched = [setup.inputVolume, setup.xrayVolume, setup.initialTransform, setup.outputTransform, setup.outputDrr]
    before = [_snapshot(n) for n in watched]
    ids, fields = _node_ids(scene), (setup.outputTransform, setup.outputDrr)
    calls = {"read": lambda: mrml.read_inputs(setup), "render": lambda: mrml.render_preview(scene, setup),
             "register": lambda: mrml.run_registration(scene, setup)}
    message = ""
    for action in actions:
        with pytest.raises(InputError, match=match) as error:
            calls[action]()
        message = str(error.value)
        for node, state in zip(watched, before):
            assert _same_state(_snapshot(node), state), f"{action} changed {node!r}"
        assert _node_ids(scene) == ids, f"{action} added nodes"
        assert (setup.outputTransform, setup.outputDrr) == fields
    return message


# --------------------------------------------------------------------------
# 1. Bad CT and X-ray nodes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, 0.0, -12.0, 1e-6, 5000.0])
def test_ct_spacing(scene, case, value):
    case.ct.SetSpacing(value, 12.0, 14.0)
    message = refused(scene, case.setup, r"spacing of CT 'CT' along I \(columns\)")
    assert "Volumes module" in message


@pytest.mark.parametrize("value", [np.nan, -np.inf, 0.0, -16.0, 1e3])
def test_xray_spacing(scene, case, value):
    case.xray.SetSpacing(16.0, value, 1.0)
    refused(scene, case.setup, r"spacing of X-ray 'X-ray' along J \(rows\)")
    with pytest.raises(InputError, match="spacing of X-ray"):  # the panel's auto-fill says the same
        mrml.fill_geometry(settings.Setup(xrayVolume=case.xray), overwrite=True)


@pytest.mark.parametrize("which", ["ct", "xray"])
@pytest.mark.parametrize("directions, match", [
    (np.zeros((3, 3)), "is singular"),
    (np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), "is singular"),  # two parallel axes
    (np.full((3, 3), np.nan), "NaN or infinite"),
    (np.diag([1.0, np.inf, 1.0]), "NaN or infinite"),
])
def test_direction_matrix(scene, case, which, directions, match):
    node = getattr(case, which)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, directions[r, c])
    node.SetIJKToRASDirectionMatrix(matrix)
    what = "CT" if which == "ct" else "X-ray"
    refused(scene, case.setup, rf"IJK-to-RAS matrix \(origin and directions\) of {what} .*{match}")


def test_origin_not_finite_or_far(scene, case):
    case.ct.SetOrigin(np.nan, 0.0, 0.0)
    refused(scene, case.setup, r"IJK-to-RAS matrix \(origin and directions\) of CT 'CT' has NaN")
    case.ct.SetOrigin(1e9, 0.0, 0.0)
    refused(scene, case.setup, "from the world origin")


@pytest.mark.parametrize("matrix, match", [
    (np.full((4, 4), np.nan), "transform 'parent' above CT 'CT' has NaN"),
    (np.diag([1.0, 0.0, 1.0, 1.0]), "transform 'parent' above CT 'CT' is singular"),
    (np.diag([1e-9, 1e-9, 1e-9, 1.0]), "its transform scales it"),
    (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.01, 1]]), "'parent' above CT 'CT' is not affine"),
])
def test_ct_parent_transform(scene, case, matrix, match):
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
    mrml.set_transform_matrix(parent, matrix)
    case.ct.SetAndObserveTransformNodeID(parent.GetID())
    refused(scene, case.setup, match)


def _image_node(scene, name, dims, scalars=None, components=1):
    """A volume node whose image data has ``dims`` and, optionally, ``scalars`` tuples (nothing allocated otherwise)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(*dims)
    if scalars is not None:
        array = vtk.vtkFloatArray()
        array.SetNumberOfComponents(components)
        array.SetNumberOfTuples(scalars)
        array.Fill(1.0)
        image.GetPointData().SetScalars(array)
    node.SetAndObserveImageData(image)
    return node


@pytest.mark.parametrize("role", ["inputVolume", "xrayVolume"])
def test_empty_and_damaged_images(scene, case, role):
    setup = case.setup
    setattr(setup, role, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image"))
    refused(scene, setup, "'no image' has no voxels")
    setattr(setup, role, _image_node(scene, "zero", (0, 10, 1), scalars=0))
    refused(scene, setup, r"'zero' is empty \(dimensions 0 x 10 x 1\)")
    dims = (20, 20, 20) if role == "inputVolume" else (20, 20, 1)
    setattr(setup, role, _image_node(scene, "no scalars", dims))
    refused(scene, setup, "'no scalars' has no voxels")
    setattr(setup, role, _image_node(scene, "short", dims, scalars=10))
    refused(scene, setup, "'short' claims 20 x 20 x .* voxels but holds 10 values")
    setattr(setup, role, _image_node(scene, "rgb", dims, scalars=int(np.prod(dims)), components=3))
    refused(scene, setup, "'rgb' has 3 components")


def test_2d_ct(scene, case):
    case.setup.inputVolume = _volume(scene, np.random.default_rng(0).random((1, 20, 20)), np.eye(4), "flat")
    refused(scene, case.setup, "'flat' has shape 20 x 20 x 1 voxels: a single slice is an image, not a CT")


def _never_read(monkeypatch, prefix: str) -> None:
    """Fail the test when the voxels of a node named ``prefix...`` are read (any node: prefix "")."""
    real = nodes.voxels_of

    def voxels_of(node, *args, **kwargs):
        if node.GetName().startswith(prefix):
            pytest.fail(f"the voxels of '{node.GetName()}' were read")
        return real(node, *args, **kwargs)

    monkeypatch.setattr(nodes, "voxels_of", voxels_of)


@pytest.mark.parametrize("dims", [(100_000, 100_000, 1), (limits.MAX_DETECTOR_SIDE + 1, 2, 1), (8193, 8193, 1)])
def test_huge_xray_is_refused_from_its_dimensions(scene, case, monkeypatch, dims):
    """No scalars are allocated (40 GB for the first); the check reads the dimensions only."""
    _never_read(monkeypatch, "huge")
    for scalars in (None, 10):
        case.setup.xrayVolume = _image_node(scene, f"huge {scalars}", dims, scalars)
        message = refused(scene, case.setup, f"'huge {scalars}' is {dims[0]} x {dims[1]} pixels")
        assert str(limits.MAX_DETECTOR_SIDE) in message and str(limits.MAX_DETECTOR_PIXELS) in message


def test_huge_ct_is_refused_from_its_dimensions(scene, case, monkeypatch):
    _never_read(monkeypatch, "huge")
    case.setup.inputVolume = _image_node(scene, "huge CT", (2048, 2048, 1024))
    refused(scene, case.setup, "'huge CT' has 2048 x 2048 x 1024 .* voxels, more than DiffReg takes")


def test_multi_slice_xray(scene, case):
    case.setup.xrayVolume = _volume(scene, np.random.default_rng(0).random((3, 20, 20)), np.eye(4), "stack")
    refused(scene, case.setup, "'stack' has 3 slices")


@pytest.mark.parametrize("role", ["ct", "xray"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(scene, case, role, value):
    node = getattr(case, role)
    array = slicer.util.arrayFromVolume(node).copy()
    array.flat[5] = value
    bad = _volume(scene, array, mrml.ijk_to_ras(node), f"bad {role}")
    setattr(case.setup, "inputVolume" if role == "ct" else "xrayVolume", bad)
    what = "CT" if role == "ct" else "X-ray"
    refused(scene, case.setup, f"{what} 'bad {role}' has 1 NaN or infinite voxel")


def test_not_a_volume_node(scene, case):
    case.setup.inputVolume = scene.AddNewNodeByClass("vtkMRMLModelNode", "model")
    refused(scene, case.setup, r"'model' \(vtkMRMLModelNode\) is not a scalar volume")
    case.setup.inputVolume = "CT"
    refused(scene, case.setup, r"'CT' \(str\) is not a scalar volume")


# --------------------------------------------------------------------------
# 2. Outputs that are inputs
# --------------------------------------------------------------------------


def _start_transform(scene, case, name="start"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    mrml.set_transform_matrix(node, mrml.transform_from_pose(case.truth, settings.CARM_IN_PATIENT, case.ct))
    return node


def test_outputs_equal_to_inputs_are_refused_before_any_work(scene, case, monkeypatch):
    _never_read(monkeypatch, "")
    setup = case.setup
    start = _start_transform(scene, case)
    setup.initialPoseMode, setup.initialTransform = settings.POSE_FROM_TRANSFORM, start
    setup.outputTransform = start
    refused(scene, setup, r"output transform \(Results > Output transform\) 'start' is also an input "
                          r"\(the initial transform\)")
    setup.outputTransform = None
    for node, role in ((case.ct, "the input CT"), (case.xray, "the input X-ray")):
        setup.outputDrr = node
        refused(scene, setup, rf"output DRR \(Results > Output DRR\) '{node.GetName()}' is also an input \({role}\)")
    setup.outputDrr = None
    setup.outputTransform = case.ct
    refused(scene, setup, "output transform .* 'CT' is not a linear transform")
    setup.outputTransform, setup.outputDrr = None, start
    refused(scene, setup, "output DRR .* 'start' is not a scalar volume")


def test_an_output_transform_that_moves_an_input_is_refused(scene, case):
    setup = case.setup
    above = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "above")
    case.ct.SetAndObserveTransformNodeID(above.GetID())
    setup.outputTransform = above  # "C-arm in patient": the CT must not move
    refused(scene, setup, "'above' is a parent transform of the input CT 'CT': writing it would move that input")
    case.ct.SetAndObserveTransformNodeID(None)
    start = _start_transform(scene, case)
    start.SetAndObserveTransformNodeID(above.GetID())
    setup.initialPoseMode, setup.initialTransform = settings.POSE_FROM_TRANSFORM, start
    refused(scene, setup, "'above' is a parent transform of the initial transform 'start'")


def test_an_unused_initial_transform_may_be_the_output(scene, case):
    """Starting from C-arm angles, the (disabled) initial transform selector holds no input."""
    setup = case.setup
    start = _start_transform(scene, case)
    setup.initialTransform = setup.outputTransform = start
    outputs = mrml.render_preview(scene, setup)
    assert outputs.transform is start


def test_an_output_drr_whose_outputs_are_inputs_is_refused(scene, case):
    """The DRR node of an earlier run references its X-ray copy; picked as the input X-ray, it must not be written."""
    setup = case.setup
    outputs = mrml.render_preview(scene, setup)
    setup.xrayVolume = outputs.xray_copy
    message = refused(scene, setup, f"output DRR .* writes its '{mrml.ROLE_XRAY_COPY}' output into "
                                    f"'{outputs.xray_copy.GetName()}', which is the input X-ray")
    assert "Create new" in message


# --------------------------------------------------------------------------
# 3. The panel's numbers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, match", [
    ("sdd", -5.0, r"Geometry > Source-detector distance \(sdd\) must be >= 1 mm"),
    ("sdd", np.nan, r"\(sdd\) must be a finite number"),
    ("sdd", 1e9, r"\(sdd\) must be >= 1 mm and <= 100000 mm, got 1000000000.0 mm; enter it, or 0 to take it from"),
    ("sdd", 0.5, r"\(sdd\) must be >= 1"),
    ("sdd", "1000", r"\(sdd\) must be a number"),
    ("pixelSpacingRow", np.nan, r"Pixel spacing \(row\) \(pixelSpacingRow\) must be a finite number"),
    ("pixelSpacingRow", -1.0, r"\(pixelSpacingRow\) must be >= 0.0001 mm"),
    ("pixelSpacingColumn", 1e5, r"\(pixelSpacingColumn\) must be .*<= 100 mm"),
    ("pixelSpacingColumn", 1e-9, r"\(pixelSpacingColumn\) must be >= 0.0001"),
    ("principalPointColumn", np.inf, r"Principal point \(column\) \(principalPointColumn\) must be a finite"),
    ("principalPointRow", 1e9, r"\(principalPointRow\) must be >= -1e\+06 px"),
    ("sourceToIsocenter", np.nan, r"Initial pose > Source-isocentre distance \(sourceToIsocenter\) must be a finite"),
    ("sourceToIsocenter", -3.0, r"\(sourceToIsocenter\) must be >= 1 mm"),
    ("sourceToIsocenter", 1e30, r"\(sourceToIsocenter\) must be .*<= 100000 mm"),
    ("primaryAngle", np.nan, r"Primary angle \(LAO\+/RAO-\) \(primaryAngle\) must be a finite number"),
    ("secondaryAngle", np.inf, r"\(secondaryAngle\) must be a finite number"),
    ("primaryAngle", 1e300, r"\(primaryAngle\) must be >= -360 deg and <= 360 deg"),
    ("iterations", 0, r"Options > Iterations per level \(iterations\) must be >= 1"),
    ("starts", 10**6, r"Random starts \(starts\) must be >= 1 and <= 1000"),
    ("maxMemoryMb", np.nan, r"Memory budget \(maxMemoryMb\) must be a finite number"),
    ("levels", "inf", r"levels 'inf': give downsampling factors >= 1.* under Options > Levels \(levels\)"),
])
def test_panel_numbers(scene, case, field, value, match):
    setattr(case.setup, field, value)
    case.setup.principalPointAtCenter = not field.startswith("principalPoint")
    refused(scene, case.setup, match)


def test_zero_means_from_the_xray_and_set_numbers_win(scene, case):
    geo = mrml.geometry_from_xray(case.xray)
    detector = mrml.detector_from_setup(settings.Setup(sdd=SDD), geo)
    assert tuple(detector.pixel_spacing) == (PIXEL, PIXEL) and (detector.rows, detector.cols) == (ROWS, COLS)
    with pytest.raises(InputError, match=r"enter it \(mm\) under Geometry > Source-detector distance \(sdd\)"):
        mrml.detector_from_setup(settings.Setup(), geo)


def test_dicom_values_out_of_limits(scene, case, tmp_path):
    from references import write_dicom

    image = np.random.default_rng(1).integers(100, 4000, (ROWS, COLS)).astype(np.uint16)
    path = write_dicom(tmp_path / "xa.dcm", image, ImagerPixelSpacing=[0.3, 0.3], DistanceSourceToDetector=1100.0,
                       DistanceSourceToPatient=700.0, PositionerPrimaryAngle=30.0, PositionerSecondaryAngle=-5.0)
    node = _volume(scene, image[None].astype(np.float32), np.diag([-0.3, -0.3, 1.0, 1.0]), "dicom")
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3")
    geo = mrml.geometry_from_xray(node, lambda uid: str(path))
    geo.sdd = 1e9  # as a file with an absurd tag would state it
    with pytest.raises(InputError, match=r"source-to-detector distance .* of the X-ray's DICOM file .*xa.dcm must be "
                                         r".*; enter the right value under Geometry > Source-detector distance"):
        mrml.detector_from_setup(settings.Setup(), geo)
    assert float(mrml.detector_from_setup(settings.Setup(sdd=SDD), geo).sdd) == SDD  # the panel's number wins


# --------------------------------------------------------------------------
# Initial transforms
# --------------------------------------------------------------------------


@pytest.mark.parametrize("matrix, match", [
    (np.zeros((4, 4)), "initial transform 'start' .* is singular"),
    (np.full((4, 4), np.nan), "initial transform 'start' .* has NaN or infinite entries"),
    (np.diag([2.0, 2.0, 2.0, 1.0]), "initial transform 'start' is not rigid"),
])
def test_bad_initial_transform(scene, case, matrix, match):
    start = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "start")
    mrml.set_transform_matrix(start, matrix)
    case.setup.initialPoseMode, case.setup.initialTransform = settings.POSE_FROM_TRANSFORM, start
    refused(scene, case.setup, match)


def test_initial_transform_of_the_wrong_kind(scene, case):
    case.setup.initialPoseMode, case.setup.initialTransform = settings.POSE_FROM_TRANSFORM, case.ct
    refused(scene, case.setup, "initial transform 'CT' is not a transform node")


# --------------------------------------------------------------------------
# Failures after the checks: the outputs are as before
# --------------------------------------------------------------------------


def _fail_at(iteration):
    def progress(info, text):
        if info.total_iterations == iteration:
            raise RuntimeError("simulated failure")
    return progress


def test_a_failed_first_run_leaves_no_output_nodes(scene, case):
    ids = _node_ids(scene)
    with pytest.raises(RuntimeError, match="simulated failure"):
        mrml.run_registration(scene, case.setup, progress=_fail_at(1), live_every=1)
    assert _node_ids(scene) == ids
    assert case.setup.outputTransform is None and case.setup.outputDrr is None


def test_a_failed_run_gives_existing_outputs_their_content_back(scene, case):
    setup = case.setup
    outputs = mrml.render_preview(scene, setup)
    watched = (outputs.transform, outputs.drr, outputs.xray_copy, outputs.model, outputs.overlay)
    before = [_snapshot(n) for n in watched]
    drr, poly = slicer.util.arrayFromVolume(outputs.drr).copy(), outputs.model.GetPolyData()
    ids = _node_ids(scene)
    setup.transformMeaning = settings.PATIENT_IN_CARM  # the parents of the detector nodes change, then change back
    with pytest.raises(RuntimeError, match="simulated failure"):
        mrml.run_registration(scene, setup, progress=_fail_at(3), live_every=1)
    assert _node_ids(scene) == ids
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(outputs.drr), drr)
    assert outputs.model.GetPolyData() is poly
    for node, state in zip(watched, before):
        now = _snapshot(node)
        for key in ("parent", "voxels", "ijk", "matrix"):
            if key in state:
                assert _same_state({key: now[key]}, {key: state[key]}), (node.GetName(), key)


def test_a_transform_above_the_ct_is_written_against_the_ct_placement_read_at_the_start(scene, case):
    """'patient in C-arm' with the CT under the output transform (the documented use): live writes never compound."""
    setup = case.setup
    out = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "out")
    start = np.eye(4)
    start[:3, 3] = (5.0, -3.0, 2.0)
    mrml.set_transform_matrix(out, start)
    case.ct.SetAndObserveTransformNodeID(out.GetID())
    setup.transformMeaning, setup.outputTransform = settings.PATIENT_IN_CARM, out
    done = mrml.run_registration(scene, setup, live_every=1)
    np.testing.assert_allclose(mrml.transform_matrix(out), done.result.pose.numpy() @ start, atol=1e-9)


# --------------------------------------------------------------------------
# 4. The panel (DiffReg.py, loaded as Slicer loads it) shows the message, no traceback
# --------------------------------------------------------------------------


class _Widget:
    """Any attribute of a Qt widget: set freely, read as another stand-in."""

    def __getattr__(self, name):
        value = _Widget()
        object.__setattr__(self, name, value)
        return value

    def connect(self, *args):
        pass

    def setValue(self, *args):
        pass


@pytest.fixture
def panel(monkeypatch, scene):
    path = ROOT / "Testing" / "slicer" / "test_slicer_module.py"
    spec = importlib.util.spec_from_file_location("_diffreg_slicer_checks", path)
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    for name, stand_in in helpers._slicer_application_stand_ins().items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("DiffReg", ROOT / "DiffReg" / "DiffReg.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "DiffReg", module)
    spec.loader.exec_module(module)
    # the application parts tryWithErrorDisplay and errorDisplay use
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(Qt=types.SimpleNamespace(WaitCursor=3)))
    cursor = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
        setOverrideCursor=lambda c: cursor.append(c), restoreOverrideCursor=lambda: cursor.pop(),
        testingEnabled=lambda: False, processEvents=lambda: None), raising=False)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append((text, kw)))
    monkeypatch.setattr(module, "ensureDependencies", lambda path: None)
    widget = module.DiffRegWidget()
    widget.resourcePath = lambda name: name
    widget.ui, widget.logic = _Widget(), module.DiffRegLogic()
    widget._parameterNode = widget.logic.getParameterNode()
    return types.SimpleNamespace(module=module, widget=widget, shown=shown, cursor=cursor)


def test_panel_shows_bad_input_as_its_message(scene, case, panel, caplog):
    node = panel.widget._parameterNode
    for name in settings.Setup.field_names():
        setattr(node, name, getattr(case.setup, name))
    panel.widget._lastXrayID = case.xray.GetID()  # the geometry was read when the X-ray was picked
    case.ct.SetSpacing(np.nan, 12.0, 14.0)
    ids = _node_ids(scene)
    with caplog.at_level(logging.WARNING):
        panel.widget.onRenderButton()  # no exception leaves the handler
        panel.widget.onRegisterButton()
    assert len(panel.shown) == 2 and panel.cursor == []
    for (text, kwargs), heading in zip(panel.shown, ("Failed to render the DRR.", "Registration failed.")):
        assert text.startswith(heading + "\n\n") and "spacing of CT 'CT'" in text
        assert "detailedText" not in kwargs  # no traceback
    assert "spacing of CT 'CT'" in panel.widget.ui.statusLabel.text
    assert not any(record.exc_info for record in caplog.records)
    assert _node_ids(scene) == ids and node.outputTransform is None and node.outputDrr is None


def test_panel_keeps_the_traceback_for_bugs(scene, case, panel):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    panel.widget.logic.renderPreview = broken
    with pytest.raises(RuntimeError, match="a bug"):
        panel.widget.onRenderButton()
    (text, kwargs), = panel.shown
    assert "a bug" in text and "Traceback" in kwargs["detailedText"]


def test_panel_geometry_auto_fill_reports_bad_input_without_a_traceback(scene, case, panel, caplog):
    node = panel.widget._parameterNode
    case.xray.SetSpacing(np.nan, 16.0, 1.0)
    panel.widget._lastXrayID = None
    node.xrayVolume = case.xray
    with caplog.at_level(logging.WARNING):
        panel.widget._onParameterNodeModified()
    assert panel.widget.ui.statusLabel.text.startswith("Could not read the X-ray geometry: the spacing of X-ray")
    assert not any(record.exc_info for record in caplog.records)
    assert node.sdd == 0.0 and node.pixelSpacingRow == 0.0  # nothing filled in


def test_checks_import_without_torch():
    code = "import sys, DiffRegLogic.mrml.checks; assert 'torch' not in sys.modules and 'vtk' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
