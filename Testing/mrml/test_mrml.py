"""The MRML bridge against real MRML (the slicer-core wheel): volumes, X-rays, transforms, outputs, registration.

Independent truths: our SimpleITK reader (itself checked against nibabel)
for files loaded through Slicer's volumes logic; Slicer's own transform
hardening; the engine's projection for where detector-plane voxels sit; the
known pose a simulated X-ray was rendered from.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch

from DiffRegLogic import evaluation, mrml
from DiffRegLogic.mrml import selftest, settings
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector, clinical_to_pose, invert_rigid, project
from DiffRegLogic.volume.phantoms import chest_phantom_hu
from DiffRegLogic.registration import perturb_pose
from DiffRegLogic.volume import HUToMu
from DiffRegLogic.volume.io import read_volume

from references import oblique_affine

SDD = 1000.0
DISTANCE = 600.0
ROWS, COLS, SPACING = 60, 64, 8.0  # X-ray pixels and mm: coarse (fast) but seeing the whole phantom


# --------------------------------------------------------------------------
# Scene helpers
# --------------------------------------------------------------------------


def new_scene():
    scene = slicer.vtkMRMLScene()
    manager = slicer.vtkCacheManager()
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(manager)
    scene.SetDataIOManager(io_manager)
    scene.SetCacheManager(manager)
    return scene


@pytest.fixture
def scene(tmp_path):
    scene = new_scene()
    scene.GetCacheManager().SetRemoteCacheDirectory(str(tmp_path / "cache"))
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)


def volume_node(scene, array: np.ndarray, affine: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    mrml.set_ijk_to_ras(node, affine)
    return node


def ct_node(scene, affine=None, name="CT"):
    hu, grid = chest_phantom_hu(shape_ijk=(48, 42, 36), spacing=(6.0, 6.0, 7.0))
    affine = grid.numpy() if affine is None else np.asarray(affine)
    return volume_node(scene, hu.numpy().astype(np.float32), affine, name), hu.numpy()


def xray_node(scene, image: np.ndarray, spacing=None, name="X-ray"):
    """A single-slice node as Slicer's DICOM reader makes it: IJK->RAS = diag(-sx, -sy, 1) at the origin."""
    spacing = (SPACING, SPACING) if spacing is None else spacing
    affine = np.diag([-spacing[1], -spacing[0], 1.0, 1.0])
    return volume_node(scene, image[None].astype(np.float32), affine, name)


def snapshot(node) -> tuple[np.ndarray, np.ndarray, str | None]:
    return (slicer.util.arrayFromVolume(node).copy(), mrml.ijk_to_ras(node), node.GetTransformNodeID())


def simulated_case(scene, primary=20.0, secondary=-10.0):
    """CT node + X-ray node (a DRR at a known pose) + that pose."""
    ct, _ = ct_node(scene)
    volume = mrml.volume_from_node(ct)
    truth = clinical_to_pose(primary, secondary, DISTANCE, volume.center)
    detector = Detector(ROWS, COLS, SDD, (SPACING, SPACING))
    with torch.no_grad():
        image = render(volume, detector, truth)[0].numpy()
    return ct, xray_node(scene, image), truth, volume, detector


def base_setup(ct, xr, **kw) -> settings.Setup:
    setup = settings.Setup(inputVolume=ct, xrayVolume=xr, sdd=SDD, sourceToIsocenter=DISTANCE, levels="4 2 1",
                       device="cpu")
    for key, value in kw.items():
        setattr(setup, key, value)
    return setup


# --------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------


def test_oblique_ct_round_trip(scene):
    affine = oblique_affine().numpy()
    node, hu = ct_node(scene, affine)
    volume = mrml.volume_from_node(node)
    np.testing.assert_allclose(volume.affine.numpy(), affine, atol=1e-9)
    np.testing.assert_allclose(volume.mu.numpy(), HUToMu()(torch.from_numpy(hu)).numpy(), rtol=1e-6, atol=1e-7)


def test_ct_under_parent_transform_is_where_slicer_shows_it(scene):
    affine = oblique_affine().numpy()
    node, _ = ct_node(scene, affine)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    rot = clinical_to_pose(30.0, 15.0, 100.0).numpy()  # any rigid matrix
    rot[:3, 3] = (12.0, -7.0, 30.0)
    mrml.set_transform_matrix(parent, rot)
    node.SetAndObserveTransformNodeID(parent.GetID())
    moved = mrml.volume_from_node(node)
    # Slicer's own hardening of a copy is the independent truth
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    copy.Copy(node)
    copy.SetAndObserveImageData(node.GetImageData())
    copy.SetAndObserveTransformNodeID(parent.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(copy)
    assert copy.GetParentTransformNode() is None
    np.testing.assert_allclose(moved.affine.numpy(), mrml.ijk_to_ras(copy), atol=1e-9)
    np.testing.assert_allclose(moved.affine.numpy(), rot @ affine, atol=1e-9)


def test_ct_under_nonlinear_transform_is_refused(scene):
    node, _ = ct_node(scene)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    node.SetAndObserveTransformNodeID(grid.GetID())
    assert not grid.IsTransformToWorldLinear()
    with pytest.raises(InputError, match="non-linear transform"):
        mrml.volume_from_node(node)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_lps_file_through_volumes_logic(scene, tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.normal(0, 300, (6, 7, 8)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.2, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    direction = oblique_affine(spacing=(1, 1, 1)).numpy()[:3, :3]
    image.SetDirection(tuple(direction.ravel()))
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddArchetypeScalarVolume(str(path), "ct", 0, None)
    assert node is not None
    volume = mrml.volume_from_node(node)
    reference = read_volume(path)  # SimpleITK, LPS -> RAS (tested against nibabel)
    np.testing.assert_allclose(volume.affine.numpy(), reference.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(volume.mu.numpy(), reference.mu.numpy(), rtol=1e-6)


def test_ct_input_errors(scene):
    with pytest.raises(InputError, match="no CT volume selected"):
        mrml.volume_from_node(None)
    flat = volume_node(scene, np.ones((1, 20, 20), np.float32), np.eye(4), "flat")
    with pytest.raises(InputError, match="single slice is an image, not a CT"):
        mrml.volume_from_node(flat)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.volume_from_node(empty)
    bad = volume_node(scene, np.full((4, 4, 4), np.nan, np.float32), np.eye(4), "nan")
    with pytest.raises(InputError, match="NaN"):
        mrml.volume_from_node(bad)
    model = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(InputError, match="not a scalar volume|no voxels"):
        mrml.volume_from_node(model)


# --------------------------------------------------------------------------
# X-rays and geometry
# --------------------------------------------------------------------------


def test_xray_node_pixels_and_spacing(scene):
    image = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) % 17
    node = xray_node(scene, image, spacing=(0.3, 0.2))
    xr = mrml.xray_from_node(node)
    np.testing.assert_array_equal(xr.image.numpy(), image)  # row 0 = detector row 0
    assert xr.pixel_spacing == pytest.approx((0.3, 0.2))
    geo = mrml.geometry_from_xray(node)
    assert (geo.rows, geo.cols, geo.sdd, geo.clinical) == (ROWS, COLS, None, None)
    assert geo.pixel_spacing == pytest.approx((0.3, 0.2))
    raw = mrml.xray_from_node(xray_node(scene, np.exp(-image / 10.0) * 1000), intensity="intensity")
    np.testing.assert_allclose(raw.image.numpy() - raw.image.numpy().min(), image / 10.0 - image.min() / 10.0,
                               atol=1e-6)


def test_xray_node_errors(scene):
    stack = volume_node(scene, np.random.default_rng(0).random((3, 20, 20)).astype(np.float32), np.eye(4), "stack")
    with pytest.raises(InputError, match="3 slices; an X-ray is a single-slice volume"):
        mrml.xray_from_node(stack)
    with pytest.raises(InputError, match="no X-ray selected"):
        mrml.xray_from_node(None)
    const = xray_node(scene, np.ones((20, 20)))
    with pytest.raises(InputError, match="constant"):
        mrml.xray_from_node(const)


def test_dicom_tags_through_the_instance_uid(scene, tmp_path):
    from references import write_dicom

    image = np.random.default_rng(1).integers(100, 4000, (ROWS, COLS)).astype(np.uint16)
    path = tmp_path / "xa.dcm"
    write_dicom(path, image, ImagerPixelSpacing=[0.3, 0.25], DistanceSourceToDetector=1100.0,
                DistanceSourceToPatient=700.0, PositionerPrimaryAngle=30.0, PositionerSecondaryAngle=-5.0)
    node = xray_node(scene, image.astype(np.float64), spacing=(0.3, 0.25))
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")
    asked = []

    def file_for_instance(uid):
        asked.append(uid)
        return str(path)

    geo = mrml.geometry_from_xray(node, file_for_instance)
    assert asked == ["1.2.3.4"]
    assert geo.sdd == pytest.approx(1100.0)
    assert geo.pixel_spacing == pytest.approx((0.3, 0.25))
    assert geo.clinical == pytest.approx((30.0, -5.0, 700.0))
    # the panel's zeros mean "from the X-ray"; set numbers win
    detector = mrml.detector_from_setup(settings.Setup(), geo)
    assert (float(detector.sdd), tuple(detector.pixel_spacing)) == (1100.0, (0.3, 0.25))
    detector = mrml.detector_from_setup(settings.Setup(sdd=900.0, pixelSpacingRow=0.5), geo)
    assert (float(detector.sdd), tuple(detector.pixel_spacing)) == (900.0, (0.5, 0.25))
    assert geo.source == str(path)
    # auto-fill: zeros take the X-ray's values, entered numbers stay
    setup = settings.Setup(xrayVolume=node, pixelSpacingColumn=0.2)
    mrml.fill_geometry(setup, file_for_instance)
    assert (setup.sdd, setup.pixelSpacingRow, setup.pixelSpacingColumn) == (1100.0, 0.3, 0.2)
    assert (setup.primaryAngle, setup.secondaryAngle, setup.sourceToIsocenter) == (30.0, -5.0, 700.0)
    assert all(type(getattr(setup, n)) is float for n in ("sdd", "pixelSpacingRow", "primaryAngle"))
    # a newly picked X-ray: what it states replaces old values; what it does not state is kept
    plain = xray_node(scene, image.astype(np.float64), spacing=(0.5, 0.4), name="plain")
    setup.xrayVolume = plain
    mrml.fill_geometry(setup, overwrite=True)
    assert (setup.sdd, setup.pixelSpacingRow, setup.pixelSpacingColumn) == (1100.0, 0.5, 0.4)
    assert setup.sourceToIsocenter == 700.0


def test_missing_geometry_messages(scene):
    node = xray_node(scene, np.random.default_rng(0).random((20, 30)))
    geo = mrml.geometry_from_xray(node)
    with pytest.raises(InputError, match="source-to-detector distance is missing"):
        mrml.detector_from_setup(settings.Setup(), geo)
    ct, _ = ct_node(scene)
    volume = mrml.volume_from_node(ct)
    with pytest.raises(InputError, match="source-to-isocentre distance is missing"):
        mrml.initial_pose(settings.Setup(sdd=SDD), volume, geo)
    with pytest.raises(InputError, match="no initial transform selected"):
        mrml.initial_pose(settings.Setup(initialPoseMode=settings.POSE_FROM_TRANSFORM), volume, geo)


# --------------------------------------------------------------------------
# Poses, transforms and the detector plane
# --------------------------------------------------------------------------


@pytest.mark.parametrize("meaning", settings.TRANSFORM_MEANINGS)
def test_pose_transform_round_trip(scene, meaning):
    ct, _ = ct_node(scene)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -3.0, 8.0)
    mrml.set_transform_matrix(parent, shift)
    ct.SetAndObserveTransformNodeID(parent.GetID())
    pose = clinical_to_pose(-25.0, 12.0, 650.0, (1.0, 2.0, 3.0))
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    mrml.set_transform_matrix(node, mrml.transform_from_pose(pose, meaning, ct))
    np.testing.assert_allclose(mrml.pose_from_transform(node, meaning, ct).numpy(), pose.numpy(), atol=1e-9)
    if meaning == settings.PATIENT_IN_CARM:
        # used as the CT's only parent, the transform moves CT points into camera coordinates
        ijk = np.array([3.0, 4.0, 5.0, 1.0])
        world = shift @ mrml.ijk_to_ras(ct) @ ijk
        np.testing.assert_allclose(mrml.transform_matrix(node) @ mrml.ijk_to_ras(ct) @ ijk, pose.numpy() @ world,
                                   atol=1e-9)


def test_detector_plane_voxels_project_onto_their_pixels(scene):
    """A DRR voxel (col, row, 0) placed through the output transform projects, by the engine's K[R|t], to (col, row)."""
    ct, xr, truth, volume, detector = simulated_case(scene)
    detector = Detector(ROWS, COLS, SDD, (SPACING, 0.8 * SPACING), principal_point=(20.0, 30.0))
    setup = base_setup(ct, xr)
    outputs = mrml.ensure_outputs(scene, setup)
    mrml.place_outputs(outputs, setup.transformMeaning)
    mrml.write_pose(outputs, truth, setup.transformMeaning, ct)
    mrml.write_detector_images(outputs, detector, drr=np.zeros((ROWS, COLS)), xray=np.ones((ROWS, COLS)))
    world_from_ijk = mrml.parent_to_world(outputs.drr) @ mrml.ijk_to_ras(outputs.drr)
    pixels = np.array([[0, 0], [COLS - 1, ROWS - 1], [7.0, 33.0]])
    points = np.stack([world_from_ijk @ np.array([c, r, 0.0, 1.0]) for c, r in pixels])[:, :3]
    uv = project(torch.from_numpy(points), truth, detector).numpy()
    np.testing.assert_allclose(uv, pixels, atol=1e-9)
    # the model's source point is the X-ray source
    source = invert_rigid(truth)[:3, 3].numpy()
    model_world = mrml.parent_to_world(outputs.model)
    np.testing.assert_allclose((model_world @ np.r_[outputs.model.GetPolyData().GetPoint(0), 1.0])[:3], source,
                               atol=1e-9)
    np.testing.assert_allclose(mrml.ijk_to_ras(outputs.xray_copy), mrml.ijk_to_ras(outputs.drr))


def test_overlay_views_and_images(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("Red")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetLayoutName("Red")
    setup = base_setup(ct, xr)
    outputs = mrml.render_preview(scene, setup)
    mrml.show_overlay(scene, outputs, "blend", 0.3)
    assert composite.GetBackgroundVolumeID() == outputs.xray_copy.GetID()
    assert composite.GetForegroundVolumeID() == outputs.drr.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    assert slice_node.GetSliceVisible()  # shown in 3D on the detector plane
    assert outputs.model.GetDisplayNode().GetColor() == pytest.approx(mrml.CARM_COLOR)
    # the slice plane is the detector plane: its normal is the principal ray in world
    normal = np.array([slice_node.GetSliceToRAS().GetElement(r, 2) for r in range(3)])
    ray = invert_rigid(setup_pose := mrml.initial_pose(setup, volume, mrml.geometry_from_xray(xr)))[:3, 2].numpy()
    assert abs(abs(normal @ ray) / np.linalg.norm(normal) - 1) < 1e-9
    mrml.show_overlay(scene, outputs, "difference")
    assert composite.GetBackgroundVolumeID() == outputs.overlay.GetID() and composite.GetForegroundVolumeID() is None
    diff = slicer.util.arrayFromVolume(outputs.overlay)[0]
    xz = (xr_img := slicer.util.arrayFromVolume(xr)[0].astype(np.float64)) - xr_img.mean()
    drr = render(volume, detector, setup_pose)[0].numpy()
    expected = xz / xz.std() - (drr - drr.mean()) / drr.std()
    np.testing.assert_allclose(diff, expected, atol=1e-4)
    mrml.show_overlay(scene, outputs, "checkerboard")
    board = slicer.util.arrayFromVolume(outputs.overlay)[0]
    np.testing.assert_allclose(board[0, 0], xz[0, 0] / xz.std(), atol=1e-5)
    # 8 square tiles along the shorter side (60 rows: 7.5 px each), so the 64 columns hold a ninth, cut tile
    # column from column 60 on; the X-ray on the tiles an even number of steps from the top left
    side = min(ROWS, COLS)
    r, c = np.mgrid[:ROWS, :COLS]
    xray_tiles = ((r * 8 // side) + (c * 8 // side)) % 2 == 0
    assert xray_tiles[0, 60] and not xray_tiles[0, 59] and xray_tiles[7, 0] and not xray_tiles[8, 0]
    np.testing.assert_allclose(board, np.where(xray_tiles, xz / xz.std(), (drr - drr.mean()) / drr.std()), atol=1e-4)
    with pytest.raises(InputError, match="opacity"):
        mrml.show_overlay(scene, outputs, "blend", 1.5)


# --------------------------------------------------------------------------
# The panel's two actions, end to end in a real scene
# --------------------------------------------------------------------------


def test_render_preview_writes_the_drr(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    setup = base_setup(ct, xr, primaryAngle=20.0, secondaryAngle=-10.0)
    outputs = mrml.render_preview(scene, setup)
    assert setup.outputDrr is outputs.drr and setup.outputTransform is outputs.transform
    np.testing.assert_allclose(slicer.util.arrayFromVolume(outputs.drr)[0], slicer.util.arrayFromVolume(xr)[0],
                               rtol=1e-5, atol=1e-5)  # rendered at the true pose = the simulated X-ray
    assert outputs.transform.GetNodeReference(mrml.ROLE_MOVING) is ct
    assert outputs.transform.GetNodeReference(mrml.ROLE_FIXED) is xr


def test_registration_in_the_scene(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    start = perturb_pose(truth, torch.tensor([[0.06, -0.05, 0.04, 8.0, -6.0, 10.0]], dtype=torch.float64),
                         volume.center)[0]
    before = [snapshot(ct), snapshot(xr)]
    # the start as a transform node ("C-arm in patient" meaning), as the panel offers it
    start_node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "start")
    mrml.set_transform_matrix(start_node, mrml.transform_from_pose(start, settings.CARM_IN_PATIENT, ct))
    start_matrix = mrml.transform_matrix(start_node)
    setup = base_setup(ct, xr, initialPoseMode=settings.POSE_FROM_TRANSFORM, initialTransform=start_node)
    seen, live_shapes = [], []

    def progress(info, text):
        seen.append((info, text))
        live_shapes.append(setup.outputDrr.GetImageData().GetDimensions() if setup.outputDrr.GetImageData() else None)

    done = mrml.run_registration(scene, setup, progress=progress, live_pixels=32)
    estimate = mrml.pose_from_transform(setup.outputTransform, settings.CARM_IN_PATIENT, ct)
    points = evaluation.target_points(volume, 500)
    assert float(evaluation.mtre(start, truth, points)) > 10
    assert float(evaluation.mtre(estimate, truth, points)) < 1.0
    np.testing.assert_allclose(estimate.numpy(), done.result.pose.numpy(), atol=1e-9)
    for node, (array, matrix, parent) in zip((ct, xr), before):  # inputs untouched
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
        np.testing.assert_array_equal(mrml.ijk_to_ras(node), matrix)
        assert node.GetTransformNodeID() == parent
    np.testing.assert_array_equal(mrml.transform_matrix(start_node), start_matrix)
    assert len(seen) == done.result.iterations and "level 1/3" in seen[0][1]
    assert (32, 30, 1) in live_shapes  # the live DRR: 64 x 60 detector at half size, while registering
    assert mrml.loss_chart(setup) is done.chart
    table = done.chart.GetNthPlotSeriesNode(0).GetTableNode().GetTable()
    assert table.GetNumberOfRows() == done.result.iterations
    assert table.GetValueByName(table.GetNumberOfRows() - 1, "zncc").ToDouble() == pytest.approx(
        done.result.trace[-1]["best_similarity"])
    assert done.message.startswith("converged") or done.message.startswith("stopped")
    drr = slicer.util.arrayFromVolume(setup.outputDrr)[0]
    with torch.no_grad():
        expected = render(volume, detector, done.result.pose)[0].numpy()
    np.testing.assert_allclose(drr, expected, rtol=1e-5, atol=1e-5)


def test_cancel_keeps_the_best_pose_so_far(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    setup = base_setup(ct, xr, primaryAngle=24.0, secondaryAngle=-7.0)
    calls = []
    done = mrml.run_registration(scene, setup, progress=lambda info, text: calls.append(info),
                                 cancel=lambda: len(calls) >= 4)
    assert done.result.cancelled and len(calls) == 4
    assert "cancelled" in done.message
    written = mrml.pose_from_transform(setup.outputTransform, settings.CARM_IN_PATIENT, ct)
    np.testing.assert_allclose(written.numpy(), done.result.pose.numpy(), atol=1e-9)
    np.testing.assert_allclose(calls[-1].pose.numpy(), done.result.pose.numpy(), atol=1e-6)


def test_failure_restores_the_output_transform(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    setup = base_setup(ct, xr, primaryAngle=24.0)
    outputs = mrml.ensure_outputs(scene, setup)
    marker = np.eye(4)
    marker[:3, 3] = (1.0, 2.0, 3.0)
    mrml.set_transform_matrix(outputs.transform, marker)

    def boom(info, text):
        if info.total_iterations == 7:  # after a live update (every 5 iterations)
            raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError, match="simulated failure"):
        mrml.run_registration(scene, setup, progress=boom)
    np.testing.assert_array_equal(mrml.transform_matrix(outputs.transform), marker)


def test_setup_errors(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    with pytest.raises(InputError, match="no CT volume selected"):
        mrml.run_registration(scene, base_setup(None, xr))
    with pytest.raises(InputError, match="levels"):
        mrml.run_registration(scene, base_setup(ct, xr, levels="4 x"))
    with pytest.raises(InputError, match="optimizer"):
        mrml.read_inputs(base_setup(ct, xr, optimizer="sgd"))
    with pytest.raises(InputError, match="is also an input"):
        mrml.ensure_outputs(scene, base_setup(ct, xr, outputDrr=xr))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            mrml.read_inputs(base_setup(ct, xr, device="cuda"))
    assert scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode") == 0  # nothing created on failure


def test_out_of_memory_message():
    error = mrml.actions._resource_errors(MemoryError("the GPU ran out of memory"))
    assert isinstance(error, mrml.OutOfMemory) and "Device 'cpu'" in str(error) and "Memory budget" in str(error)
    other = ValueError("x")
    assert mrml.actions._resource_errors(other) is other


def _stored_case(scene, device):
    """The self-test case in a scene, its setup stored in a real parameter node as the panel stores it."""
    case = selftest.build_case(scene, device=device)
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    node.SetAttribute("ModuleName", "DiffReg")
    settings.write_parameter_node(node, case.setup)
    return case, node


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_cpu_retry_leaves_the_stored_device_alone(scene, device):
    """Review fix: the retry after running out of memory runs on a copy of the setup with device "cpu"."""
    case, node = _stored_case(scene, device)
    ran, prompts = [], []

    def action(setup):
        ran.append(setup.device)
        if setup.device != "cpu":
            raise mrml.OutOfMemory("out of memory: simulated")
        return "done on the CPU"

    setup = settings.read_parameter_node(node)
    assert mrml.with_cpu_fallback(setup, action, lambda message: prompts.append(message) or True) == "done on the CPU"
    assert ran == [device, "cpu"] and len(prompts) == 1 and prompts[0].endswith("Retry on the CPU?")
    assert setup.device == device
    settings.write_parameter_node(node, setup)  # the caller's setup is safe to store back
    assert node.GetParameter("device") == device and settings.read_parameter_node(node).device == device
    # declined, or already on the CPU: the error goes up, one attempt, nothing asked on the CPU
    ran.clear()
    with pytest.raises(mrml.OutOfMemory):
        mrml.with_cpu_fallback(settings.read_parameter_node(node), action, lambda message: False)
    assert ran == [device]
    calls = []

    def out_of_memory(setup):
        calls.append(setup.device)
        raise mrml.OutOfMemory("out of memory: simulated")

    with pytest.raises(mrml.OutOfMemory):
        mrml.with_cpu_fallback(settings.Setup(device="cpu"), out_of_memory, lambda message: pytest.fail("asked"))
    assert calls == ["cpu"] and node.GetParameter("device") == device


def test_cpu_retry_of_a_real_render_stores_its_outputs_not_its_device(scene, monkeypatch):
    """A real render_preview whose renderer runs out of memory off the CPU: retried on the CPU, outputs kept."""
    from DiffRegLogic.drr import rendering

    case, node = _stored_case(scene, "auto")
    devices = []
    real_read_inputs, real_render = mrml.actions.read_inputs, rendering.render

    def read_inputs(setup, *args, **kwargs):
        devices.append(setup.device)
        return real_read_inputs(setup, *args, **kwargs)

    def render(*args, **kwargs):
        if devices[-1] != "cpu":
            raise MemoryError("simulated: CUDA out of memory")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(mrml.actions, "read_inputs", read_inputs)
    monkeypatch.setattr(rendering, "render", render)
    setup = settings.read_parameter_node(node)
    outputs = mrml.with_cpu_fallback(setup, lambda s: mrml.render_preview(scene, s), lambda message: True)
    assert devices == ["auto", "cpu"]
    assert setup.device == "auto" and setup.outputDrr is outputs.drr and setup.outputTransform is outputs.transform
    settings.write_parameter_node(node, setup)
    stored = settings.read_parameter_node(node)
    assert stored.device == "auto" and stored.outputDrr is outputs.drr and stored.outputTransform is outputs.transform
    with torch.no_grad():  # the CPU run rendered the start pose
        start = mrml.initial_pose(setup, case.volume, mrml.geometry_from_xray(setup.xrayVolume))
        detector = Detector(selftest.ROWS, selftest.COLS, selftest.SDD_MM, (selftest.PIXEL_MM, selftest.PIXEL_MM))
        expected = real_render(case.volume, detector, start)[0].numpy()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(outputs.drr)[0], expected, rtol=1e-5, atol=1e-5)


def test_overlay_needs_a_drr_first(scene):
    ct, xr, truth, volume, detector = simulated_case(scene)
    with pytest.raises(InputError, match="no DRR yet"):
        mrml.existing_outputs(base_setup(ct, xr))
    setup = base_setup(ct, xr)
    outputs = mrml.render_preview(scene, setup)
    again = mrml.existing_outputs(setup)
    assert [n.GetID() for n in (again.drr, again.xray_copy, again.model, again.overlay)] == [
        n.GetID() for n in (outputs.drr, outputs.xray_copy, outputs.model, outputs.overlay)]
    mrml.render_preview(scene, setup)  # a second render reuses every output node
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2 + 3
    with pytest.raises(InputError, match="overlay mode"):
        mrml.show_overlay(scene, outputs, "sideways")


def test_self_test_scenario(scene):
    """What DiffRegTest does inside Slicer, on its logic path: build the case, register, check."""
    case = selftest.build_case(scene)
    done = mrml.run_registration(scene, case.setup)
    report = selftest.check_case(case)
    assert report["mtre_before_mm"] > 10 and report["mtre_after_mm"] < 1.0 and report["inputs_unchanged"]
    assert done.result.similarity > 0.99
    # the check fails when the pose is wrong or an input changed
    mrml.write_pose(done.outputs, case.truth @ torch.from_numpy(np.diag([1.0, 1, 1, 1])), "C-arm in patient", None)
    case.setup.inputVolume.GetImageData().GetPointData().GetScalars().SetValue(0, 1234.0)
    with pytest.raises(AssertionError, match="was modified"):
        selftest.check_case(case)


# --------------------------------------------------------------------------
# The parameter node survives a scene save and reload
# --------------------------------------------------------------------------


def _stored_setup(scene, tmp_path):
    ct, xr, truth, volume, detector = simulated_case(scene)
    init = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "init")
    second = xray_node(scene, slicer.util.arrayFromVolume(xr)[0].astype(np.float64) * 2.0, name="second view")
    setup = base_setup(ct, xr, initialTransform=init, optimizer="lm", similarity="gradient_ncc", iterations=77,
                       principalPointAtCenter=False, principalPointColumn=12.5, overlayOpacity=0.25,
                       transformMeaning=settings.PATIENT_IN_CARM, secondXrayVolume=second,
                       secondAnglesFromXray=False, secondPrimaryAngle=-80.5, polychromatic=True, tubeVoltage=100.0,
                       search="wide", searchRotation=30.0, robust="tukey", footprintMask=True, nuisance="scatter",
                       similarityModelPath=tmp_path / "sim.pt", polishSimilarity="mse",
                       trainingKind=settings.TRAINING_SIMILARITY, trainingEmbedding="se3")
    mrml.ensure_outputs(scene, setup)
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    node.SetAttribute("ModuleName", "DiffReg")
    settings.write_parameter_node(node, setup)
    for n in (ct, xr, second):
        n.AddDefaultStorageNode()
    return setup


def _check_reloaded(scene2, setup):
    node = scene2.GetFirstNodeByClass("vtkMRMLScriptedModuleNode")
    loaded = settings.read_parameter_node(node)
    for name in settings.Setup.field_names():
        value, original = getattr(loaded, name), getattr(setup, name)
        if name in settings.NODE_FIELDS:
            assert value is not None and value.GetName() == original.GetName(), name
        else:
            assert value == original and type(value) is type(original), name
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded.inputVolume),
                                  slicer.util.arrayFromVolume(setup.inputVolume))
    np.testing.assert_allclose(mrml.ijk_to_ras(loaded.inputVolume), mrml.ijk_to_ras(setup.inputVolume))


def test_parameter_node_survives_mrb(scene, tmp_path):
    setup = _stored_setup(scene, tmp_path)
    assert scene.WriteToMRB(str(tmp_path / "scene.mrb"))
    scene2 = new_scene()
    scene2.GetCacheManager().SetRemoteCacheDirectory(str(tmp_path / "cache2"))
    assert scene2.ReadFromMRB(str(tmp_path / "scene.mrb"))
    _check_reloaded(scene2, setup)


def test_parameter_node_survives_mrml(scene, tmp_path):
    setup = _stored_setup(scene, tmp_path)
    scene.SetRootDirectory(str(tmp_path))
    for node in (setup.inputVolume, setup.xrayVolume, setup.secondXrayVolume):
        storage = node.GetStorageNode()
        storage.SetFileName(str(tmp_path / f"{node.GetName()}.nrrd"))
        assert storage.WriteData(node)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    scene2 = new_scene()
    scene2.SetURL(str(tmp_path / "scene.mrml"))
    assert scene2.Connect()
    _check_reloaded(scene2, setup)


def test_defaults_when_parameters_absent(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    assert settings.read_parameter_node(node) == settings.Setup()


def test_read_inputs_reads_the_dicom_file_once(scene, tmp_path, monkeypatch):
    from references import write_dicom

    ct, _ = ct_node(scene)
    image = np.random.default_rng(2).integers(100, 4000, (ROWS, COLS)).astype(np.uint16)
    path = tmp_path / "xa.dcm"
    write_dicom(path, image, ImagerPixelSpacing=[SPACING, SPACING], DistanceSourceToDetector=SDD,
                DistanceSourceToPatient=DISTANCE, PositionerPrimaryAngle=15.0, PositionerSecondaryAngle=-5.0)
    node = xray_node(scene, image.astype(np.float64))
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3")
    reads = []
    original = mrml.nodes.read_xray
    for module in (mrml.nodes, mrml.carm):  # every place the bridge reads an X-ray file
        monkeypatch.setattr(module, "read_xray", lambda *a, **k: reads.append(a) or original(*a, **k))
    inputs = mrml.read_inputs(settings.Setup(inputVolume=ct, xrayVolume=node, device="cpu"), lambda uid: str(path))
    assert len(reads) == 1
    assert float(inputs.detector.sdd) == SDD and tuple(inputs.detector.pixel_spacing) == (SPACING, SPACING)
    expected = clinical_to_pose(15.0, -5.0, DISTANCE, inputs.volume.center)
    np.testing.assert_allclose(inputs.pose.numpy(), expected.numpy(), atol=1e-9)
