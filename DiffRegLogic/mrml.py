"""The only bridge between MRML nodes and the engine's types.

Works inside 3D Slicer and outside it with the ``slicer-core`` wheel (real
MRML, no Qt): the Slicer module `DiffReg` calls nothing else, and the tests
run every function here against a real ``vtkMRMLScene``. No Qt, no GUI.

What the nodes mean
-------------------
* **CT**: a scalar volume node in Hounsfield units. Its voxels are placed in
  world RAS by its IJK->RAS matrix *and* its parent transforms (linear ones;
  a warping transform is refused), so a CT under a transform is rendered
  where Slicer shows it. World RAS is the engine's world.
* **X-ray**: a single-slice scalar volume node, array (1, rows, cols); row 0
  of the array is detector row 0. Its spacing gives the pixel spacing unless
  the geometry says otherwise; DICOM tags (source-to-detector distance,
  imager pixel spacing, C-arm angles) are read with pydicom from the file the
  node was loaded from (`dicom_file_of`).
* **Output transform** (``transformMeaning``):

  - ``"C-arm in patient"`` (default): matrix to parent = world_from_camera,
    i.e. the C-arm frame (X-ray source at the origin, +z along the principal
    ray towards the detector, +x along detector columns, +y along rows; mm)
    placed in patient RAS. The CT does not move. The outputs that live on
    the detector (the DRR, a copy of the X-ray, the C-arm outline model) are
    defined in camera coordinates and put under this transform, so in 3D
    they appear on the detector plane beside the CT, with the source and
    the detector outline shown.
  - ``"patient in C-arm"``: matrix to parent = camera_from_world x (the CT's
    current parent-to-world). Make it the CT's (only) parent transform to
    move the CT into the C-arm frame instead; the detector outputs then
    stay unparented, already in camera coordinates. DiffReg never sets the
    CT's parent itself (input nodes are never modified).

* **Detector-plane volumes** (the DRR and the X-ray copy): voxel (i=col,
  j=row, k=0) sits at camera point ((col - cx) du, (row - cy) dv, sdd), so
  the two overlay pixel for pixel in a slice view rotated to their plane.
  The DRR holds line integrals of mu (dimensionless, bone bright); the X-ray
  copy holds the registered image after the intensity conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import geometry
from .errors import InputError
from .geometry import Detector
from .volume import HUToMu, Volume
from .settings import CARM_IN_PATIENT, OVERLAY_MODES, PATIENT_IN_CARM, POSE_FROM_TRANSFORM, TRANSFORM_MEANINGS, Setup
from .xray import XRay, read_xray, xray_from_array

# Node reference roles this module sets on its output nodes.
ROLE_MOVING, ROLE_FIXED = "movingVolume", "fixedVolume"  # on the output transform, as registration modules do
ROLE_DRR, ROLE_XRAY_COPY, ROLE_MODEL, ROLE_OVERLAY = "diffregDrr", "diffregXray", "diffregCarm", "diffregOverlay"
ROLE_TABLE, ROLE_CHART = "diffregTable", "diffregChart"
CARM_COLOR = (1.0, 0.8, 0.2)  # source, detector outline and edge rays in 3D


# --------------------------------------------------------------------------
# Matrices
# --------------------------------------------------------------------------


def _vtk():
    import vtk  # provided by Slicer, or by the slicer-core wheel's vtk

    return vtk


def array_from_vtk_matrix(matrix) -> np.ndarray:
    """vtkMatrix4x4 -> (4, 4) float64."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def vtk_matrix_from_array(array) -> Any:
    """(4, 4) -> vtkMatrix4x4."""
    array = np.asarray(array, dtype=np.float64)
    matrix = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def parent_to_world(node) -> np.ndarray:
    """(4, 4) matrix of the node's parent transforms (identity when it has none).

    Raises InputError for a non-linear (warping) parent transform.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; DiffReg needs a rigid "
            "placement: harden that transform into a copy of the volume (Data module) or remove it"
        )
    return _to_world(parent)


def _to_world(transform_node) -> np.ndarray:
    """(4, 4) matrix to world of a linear transform node (its own parents included)."""
    matrix = _vtk().vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return array_from_vtk_matrix(matrix)


def ijk_to_ras(node) -> np.ndarray:
    """(4, 4) IJK->RAS of a volume node, without its parent transforms."""
    matrix = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return array_from_vtk_matrix(matrix)


def set_ijk_to_ras(node, matrix) -> None:
    node.SetIJKToRASMatrix(vtk_matrix_from_array(matrix))


def transform_matrix(node) -> np.ndarray:
    """Matrix to parent (4, 4) of a linear transform node."""
    matrix = _vtk().vtkMatrix4x4()
    node.GetMatrixTransformToParent(matrix)
    return array_from_vtk_matrix(matrix)


def set_transform_matrix(node, matrix) -> None:
    node.SetMatrixTransformToParent(vtk_matrix_from_array(matrix))


# --------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------


def voxels_of(node) -> np.ndarray:
    """A copy of a scalar volume node's voxels, (K, J, I) float64 (``arrayFromVolume`` order)."""
    from vtk.util import numpy_support

    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"'{node.GetName()}' has no voxels (empty volume node); load or select a volume with data")
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"'{node.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel (colour or vector); "
            "DiffReg needs a grayscale scalar volume"
        )
    i, j, k = image.GetDimensions()
    if i * j * k == 0:
        raise InputError(f"'{node.GetName()}' is empty (dimensions {i} x {j} x {k})")
    return numpy_support.vtk_to_numpy(scalars).reshape(k, j, i).astype(np.float64, copy=True)


def _require_volume_node(node, what: str, hint: str) -> None:
    if node is None:
        raise InputError(f"no {what} selected: {hint}")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{node.GetName()}' ({node.GetClassName()}) is not a scalar volume; {hint}")


def volume_from_node(node, hu_to_mu: HUToMu | None = None, dtype: torch.dtype = torch.float32) -> Volume:
    """Engine `Volume` (mu in 1/mm, affine = world RAS incl. parent transforms) from a CT node in HU.

    The node is only read (its voxels are copied).
    """
    _require_volume_node(node, "CT volume", "pick the CT in 'Input CT'")
    hu = voxels_of(node)
    if hu.shape[0] < 2 or min(hu.shape) < 2:
        raise InputError(
            f"'{node.GetName()}' has shape {hu.shape[2]} x {hu.shape[1]} x {hu.shape[0]} voxels: a single slice is "
            "an image, not a CT; pick the 3D CT volume (and the 2D image as the X-ray)"
        )
    affine = parent_to_world(node) @ ijk_to_ras(node)
    return Volume.from_hu(torch.from_numpy(hu), torch.from_numpy(affine), hu_to_mu, dtype=dtype)


def dicom_file_of(node, file_for_instance: Callable[[str], str] | None = None) -> str | None:
    """The DICOM file a volume node was loaded from, or None.

    Slicer's DICOM loader stores the instance UIDs in the node attribute
    ``DICOM.instanceUIDs``; ``file_for_instance`` (``slicer.dicomDatabase.
    fileForInstance`` in the application) turns the first into a path. A
    node loaded directly from a ``.dcm`` file is found through its storage
    node.
    """
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if uids and file_for_instance is not None:
        path = file_for_instance(uids[0])
        if path:
            return str(path)
    storage = node.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    if name and str(name).lower().endswith((".dcm", ".dicom")):
        return str(name)
    return None


def _xray_array(node) -> np.ndarray:
    _require_volume_node(node, "X-ray", "pick the 2D X-ray image in 'Input X-ray'")
    array = voxels_of(node)
    if array.shape[0] != 1:
        raise InputError(
            f"'{node.GetName()}' has {array.shape[0]} slices; an X-ray is a single-slice volume (cols x rows x 1). "
            "Pick the 2D X-ray (a multi-frame cine loads as a sequence: pick one frame)"
        )
    if min(array.shape[1:]) < 2:
        raise InputError(f"'{node.GetName()}' is {array.shape[2]} x {array.shape[1]} pixels; an X-ray needs at least 2 x 2")
    return array[0]


@dataclass
class XRayGeometry:
    """What the X-ray node and its DICOM file say about the C-arm (None = unknown)."""

    rows: int
    cols: int
    sdd: float | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row mm, column mm)
    clinical: tuple[float, float, float] | None = None  # primary deg, secondary deg, source-isocentre mm
    source: str = "node"  # "node" or the DICOM file path
    notes: list[str] = field(default_factory=list)


def geometry_from_xray(node, file_for_instance: Callable[[str], str] | None = None,
                       xray: XRay | None = None) -> XRayGeometry:
    """C-arm geometry known from the X-ray node: spacing from the node, the rest from its DICOM file if any.

    ``xray``: that file already read (`xray_from_node`), so it is not read twice.
    """
    array = _xray_array(node)
    rows, cols = array.shape
    spacing_x, spacing_y, _ = node.GetSpacing()
    geo = XRayGeometry(rows, cols, pixel_spacing=(float(spacing_y), float(spacing_x)))
    path = dicom_file_of(node, file_for_instance)
    if path is not None:
        xr = xray if xray is not None and xray.meta.get("path") == path else read_xray(path)
        geo.source = path
        if xr.shape != (rows, cols):
            geo.notes.append(f"{path} is {xr.shape[0]} x {xr.shape[1]} pixels, the node {rows} x {cols}: tags ignored")
            return geo
        if xr.pixel_spacing is not None:
            geo.pixel_spacing = xr.pixel_spacing
        if xr.detector is not None:
            geo.sdd = float(xr.detector.sdd)
        geo.clinical = xr.clinical
    return geo


def fill_geometry(setup: Setup, file_for_instance: Callable[[str], str] | None = None,
                  overwrite: bool = False) -> XRayGeometry:
    """Fill the setup's geometry and C-arm angle fields from the X-ray node and its DICOM tags.

    Without ``overwrite`` only unset (zero) fields are filled, so numbers the
    user entered stay. With ``overwrite`` (a new X-ray was picked) every value
    the X-ray states replaces the current one; fields it does not state are
    kept. Returns what was found.
    """
    geo = geometry_from_xray(setup.xrayVolume, file_for_instance)

    def put(name: str, value) -> None:
        if value and (overwrite or not getattr(setup, name) > 0):
            setattr(setup, name, float(value))

    put("sdd", geo.sdd)
    if geo.pixel_spacing:
        put("pixelSpacingRow", geo.pixel_spacing[0])
        put("pixelSpacingColumn", geo.pixel_spacing[1])
    if geo.clinical is not None and (overwrite or not setup.sourceToIsocenter > 0):
        setup.primaryAngle, setup.secondaryAngle, setup.sourceToIsocenter = (float(v) for v in geo.clinical)
    return geo


def xray_from_node(node, intensity: str = "auto", file_for_instance: Callable[[str], str] | None = None) -> XRay:
    """Engine `XRay` from a single-slice volume node (the node is only read).

    With ``intensity="auto"`` a DICOM-loaded node follows its file's tags (see
    `DiffRegLogic.xray.read_xray`); any other node is taken as a line integral
    (bone bright). ``"intensity"`` converts raw detector intensity with
    -log(I / I0).
    """
    array = _xray_array(node)
    path = dicom_file_of(node, file_for_instance)
    if path is not None:
        xr = read_xray(path, intensity=intensity)
        if xr.shape == array.shape:
            return xr
    spacing_x, spacing_y, _ = node.GetSpacing()
    return xray_from_array(array, intensity="line_integral" if intensity == "auto" else intensity,
                           pixel_spacing=(float(spacing_y), float(spacing_x)), name=f"X-ray '{node.GetName()}'")


def detector_from_setup(setup: Setup, geo: XRayGeometry) -> Detector:
    """The detector: the setup's numbers where set (non-zero), else the X-ray's."""
    sdd = setup.sdd if setup.sdd > 0 else geo.sdd
    if not sdd or not sdd > 0:
        raise InputError(
            "the source-to-detector distance is missing: the X-ray has no DICOM DistanceSourceToDetector (0018,1110); "
            "enter it (mm) under Geometry"
        )
    row, col = geo.pixel_spacing or (0.0, 0.0)
    row = setup.pixelSpacingRow if setup.pixelSpacingRow > 0 else row
    col = setup.pixelSpacingColumn if setup.pixelSpacingColumn > 0 else col
    if not (row > 0 and col > 0):
        raise InputError("the detector pixel spacing is missing; enter the row and column spacing (mm) under Geometry")
    pp = None if setup.principalPointAtCenter else (setup.principalPointColumn, setup.principalPointRow)
    return Detector(geo.rows, geo.cols, float(sdd), (float(row), float(col)), pp)


def detector_plane_matrix(detector: Detector) -> np.ndarray:
    """IJK -> camera (4, 4) of a detector-plane volume: (col, row, 0) -> ((col - cx) du, (row - cy) dv, sdd)."""
    sdd, du, dv, cx, cy = (float(t) for t in detector.tensors())
    return np.array([[du, 0, 0, -cx * du], [0, dv, 0, -cy * dv], [0, 0, 1, sdd], [0, 0, 0, 1]], dtype=np.float64)


# --------------------------------------------------------------------------
# Poses and the output transform
# --------------------------------------------------------------------------


def transform_from_pose(pose, meaning: str, ct_node) -> np.ndarray:
    """Matrix to parent (4, 4) of the output transform for camera_from_world ``pose`` (see module docstring)."""
    pose = np.asarray(torch.as_tensor(pose, dtype=torch.float64).cpu(), dtype=np.float64)
    if meaning == CARM_IN_PATIENT:
        return np.linalg.inv(pose)
    if meaning == PATIENT_IN_CARM:
        return pose @ parent_to_world(ct_node)
    raise InputError(f"unknown transform meaning {meaning!r}; choose one of {', '.join(TRANSFORM_MEANINGS)}")


def pose_from_transform(transform_node, meaning: str, ct_node) -> torch.Tensor:
    """camera_from_world (4, 4) float64 from a transform node read with ``meaning`` (inverse of `transform_from_pose`).

    The node's own parent transforms are included (its matrix to world).
    """
    if transform_node is None:
        raise InputError("no initial transform selected: pick one under Initial pose, or start from C-arm angles")
    if not transform_node.IsTransformToWorldLinear():
        raise InputError(f"initial transform '{transform_node.GetName()}' is not linear; pick a linear transform")
    m = _to_world(transform_node)
    if meaning == CARM_IN_PATIENT:
        pose = np.linalg.inv(m)
    elif meaning == PATIENT_IN_CARM:
        pose = m @ np.linalg.inv(parent_to_world(ct_node))
    else:
        raise InputError(f"unknown transform meaning {meaning!r}; choose one of {', '.join(TRANSFORM_MEANINGS)}")
    return geometry.check_pose(torch.from_numpy(pose), name=f"initial transform '{transform_node.GetName()}'")[0]


def initial_pose(setup: Setup, volume: Volume, geo: XRayGeometry) -> torch.Tensor:
    """camera_from_world (4, 4) float64 of the start: a transform node, or C-arm angles about the CT centre."""
    if setup.initialPoseMode == POSE_FROM_TRANSFORM:
        return pose_from_transform(setup.initialTransform, setup.transformMeaning, setup.inputVolume)
    distance = setup.sourceToIsocenter
    primary, secondary = setup.primaryAngle, setup.secondaryAngle
    if not distance > 0 and geo.clinical is not None:
        # unset C-arm fields come from the DICOM tags together, as fill_geometry fills them
        primary, secondary, distance = geo.clinical
    if not distance > 0:
        raise InputError(
            "the source-to-isocentre distance is missing (no DICOM DistanceSourceToPatient (0018,1111)); enter it "
            "(mm) under Initial pose"
        )
    center = volume.center.to(torch.float64).cpu()
    return geometry.clinical_to_pose(primary, secondary, distance, center, dtype=torch.float64)


# --------------------------------------------------------------------------
# Output nodes
# --------------------------------------------------------------------------


def _new_node(scene, class_name: str, name: str):
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    if hasattr(node, "CreateDefaultDisplayNodes"):
        node.CreateDefaultDisplayNodes()
    return node


def _referenced(owner, role: str, scene, class_name: str, name: str):
    """The node ``owner`` references under ``role``, created (and referenced) when missing."""
    node = owner.GetNodeReference(role)
    if node is None or node.GetScene() is not scene:
        node = _new_node(scene, class_name, name)
        owner.SetNodeReferenceID(role, node.GetID())
    return node


def write_volume_array(node, array: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> None:
    """Replace a volume node's voxels with ``array`` (K, J, I), stored as float32, and set its IJK->RAS."""
    from vtk.util import numpy_support

    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if array.ndim != 3:
        raise InputError(f"a volume array must be (K, J, I), got shape {array.shape}")
    vtk = _vtk()
    data = vtk.vtkImageData()
    data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk.VTK_FLOAT)
    data.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(data)
    set_ijk_to_ras(node, ijk_to_ras_matrix)
    if node.GetDisplayNode() is None and node.GetScene() is not None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None and hasattr(display, "AutoWindowLevelOn"):
        display.AutoWindowLevelOn()


def _write_volume(node, image: np.ndarray, ijk_to_camera: np.ndarray) -> None:
    """Put an (H, W) image into a volume node as (1, H, W) with the given IJK->RAS."""
    write_volume_array(node, np.asarray(image)[None], ijk_to_camera)


def carm_polydata(detector: Detector):
    """vtkPolyData in camera coordinates (mm): the source point, the detector outline, the four edge rays and the principal ray."""
    vtk = _vtk()
    sdd, du, dv, cx, cy = (float(t) for t in detector.tensors())
    h, w = detector.rows, detector.cols
    corners = [((c - cx) * du, (r - cy) * dv, sdd) for r, c in ((-0.5, -0.5), (-0.5, w - 0.5), (h - 0.5, w - 0.5),
                                                                  (h - 0.5, -0.5))]
    points = vtk.vtkPoints()
    points.InsertNextPoint(0.0, 0.0, 0.0)  # 0: source
    for p in corners:  # 1..4: detector corners
        points.InsertNextPoint(*p)
    points.InsertNextPoint(0.0, 0.0, sdd)  # 5: foot of the principal ray
    lines = vtk.vtkCellArray()
    for a, b in ((1, 2), (2, 3), (3, 4), (4, 1), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)):
        line = vtk.vtkLine()
        line.GetPointIds().SetId(0, a)
        line.GetPointIds().SetId(1, b)
        lines.InsertNextCell(line)
    verts = vtk.vtkCellArray()
    verts.InsertNextCell(1)
    verts.InsertCellPoint(0)
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetLines(lines)
    poly.SetVerts(verts)
    return poly


@dataclass
class Outputs:
    """The output nodes of one setup (all created on demand, never the inputs)."""

    transform: Any
    drr: Any
    xray_copy: Any
    model: Any
    overlay: Any


def ensure_outputs(scene, setup: Setup) -> Outputs:
    """Create the missing output nodes (named after the X-ray) and link them; returns them.

    ``setup.outputTransform`` and ``setup.outputDrr`` are set when they were
    empty. The X-ray copy, the C-arm model and the overlay volume are
    referenced from the DRR node so that later runs reuse them.
    """
    inputs = [n for n in (setup.inputVolume, setup.xrayVolume, setup.initialTransform) if n is not None]
    for node, what in ((setup.outputTransform, "output transform"), (setup.outputDrr, "output DRR")):
        if node is not None and any(node is n for n in inputs):
            raise InputError(f"the {what} '{node.GetName()}' is also an input; pick or create a separate output node")
    base = setup.xrayVolume.GetName() if setup.xrayVolume is not None else "X-ray"
    if setup.outputTransform is None:
        setup.outputTransform = _new_node(scene, "vtkMRMLLinearTransformNode", f"{base} C-arm pose")
    if setup.outputDrr is None:
        setup.outputDrr = _new_node(scene, "vtkMRMLScalarVolumeNode", f"{base} DRR")
    drr = setup.outputDrr
    if drr.GetDisplayNode() is None:
        drr.CreateDefaultDisplayNodes()
    xray_copy = _referenced(drr, ROLE_XRAY_COPY, scene, "vtkMRMLScalarVolumeNode", f"{base} on detector")
    model = _referenced(drr, ROLE_MODEL, scene, "vtkMRMLModelNode", f"{base} C-arm")
    display = model.GetDisplayNode()
    if display is not None:
        display.SetColor(*CARM_COLOR)
        display.SetLineWidth(2.0)
    overlay = _referenced(drr, ROLE_OVERLAY, scene, "vtkMRMLScalarVolumeNode", f"{base} overlay")
    transform = setup.outputTransform
    if setup.inputVolume is not None:
        transform.SetNodeReferenceID(ROLE_MOVING, setup.inputVolume.GetID())
    if setup.xrayVolume is not None:
        transform.SetNodeReferenceID(ROLE_FIXED, setup.xrayVolume.GetID())
    return Outputs(transform, drr, xray_copy, model, overlay)


def place_outputs(outputs: Outputs, meaning: str) -> None:
    """Parent the detector-plane nodes to the output transform (C-arm in patient) or to nothing."""
    parent_id = outputs.transform.GetID() if meaning == CARM_IN_PATIENT else None
    for node in (outputs.drr, outputs.xray_copy, outputs.model, outputs.overlay):
        node.SetAndObserveTransformNodeID(parent_id)


def write_pose(outputs: Outputs, pose, meaning: str, ct_node) -> None:
    """Write camera_from_world ``pose`` into the output transform."""
    set_transform_matrix(outputs.transform, transform_from_pose(pose, meaning, ct_node))


def write_detector_images(outputs: Outputs, detector: Detector, drr: np.ndarray | None = None,
                          xray: np.ndarray | None = None) -> None:
    """The DRR and/or X-ray copy as detector-plane volumes, and the C-arm outline model."""
    plane = detector_plane_matrix(detector)
    if drr is not None:
        _write_volume(outputs.drr, drr, plane)
    if xray is not None:
        _write_volume(outputs.xray_copy, xray, plane)
    outputs.model.SetAndObservePolyData(carm_polydata(detector))


def _zscore(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    std = image.std()
    return (image - image.mean()) / (std if std > 0 else 1.0)


def overlay_image(xray: np.ndarray, drr: np.ndarray, mode: str, tiles: int = 8) -> np.ndarray | None:
    """(H, W) image for ``difference`` (z-scored X-ray minus z-scored DRR) or ``checkerboard``; None for ``blend``."""
    if mode == "blend":
        return None
    a, b = _zscore(xray), _zscore(drr)
    if mode == "difference":
        return a - b
    if mode == "checkerboard":
        h, w = a.shape
        rows = (np.arange(h) * tiles // h)[:, None]
        cols = (np.arange(w) * tiles // w)[None, :]
        return np.where((rows + cols) % 2 == 0, a, b)
    raise InputError(f"unknown overlay mode {mode!r}; choose one of {', '.join(OVERLAY_MODES)}")


def existing_outputs(setup: Setup) -> Outputs:
    """The outputs of an earlier Render/Register of this setup; InputError when there are none yet."""
    drr, transform = setup.outputDrr, setup.outputTransform
    parts = None if drr is None or transform is None else [drr.GetNodeReference(r) for r in
                                                            (ROLE_XRAY_COPY, ROLE_MODEL, ROLE_OVERLAY)]
    if parts is None or any(p is None for p in parts):
        raise InputError("there is no DRR yet: press Render DRR or Register first")
    return Outputs(transform, drr, *parts)


def loss_chart(setup: Setup):
    """The loss-curve chart of the last registration into these outputs, or None."""
    return setup.outputDrr.GetNodeReference(ROLE_CHART) if setup.outputDrr is not None else None


def show_overlay(scene, outputs: Outputs, mode: str = "blend", opacity: float = 0.5,
                 views: tuple[str, ...] = ("Red",)) -> None:
    """Set the slice views: X-ray copy under the DRR (blend), or the difference/checkerboard volume alone.

    Each named slice view is rotated to the detector plane. (Fitting the
    field of view needs the application; the Slicer module does it.)
    """
    if mode not in OVERLAY_MODES:
        raise InputError(f"unknown overlay mode {mode!r}; choose one of {', '.join(OVERLAY_MODES)}")
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"overlay opacity must be between 0 and 1, got {opacity}")
    if mode != "blend":
        xray, drr = _voxels(outputs.xray_copy), _voxels(outputs.drr)
        if xray is None or drr is None:
            raise InputError("there is no DRR yet: press Render DRR or Register first")
        if xray.shape != drr.shape:
            raise InputError("the DRR is a live preview at a coarser size; show the difference when registration ends")
        _write_volume(outputs.overlay, overlay_image(xray, drr, mode), ijk_to_ras(outputs.xray_copy))
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if composite.GetLayoutName() not in views:
            continue
        if mode == "blend":
            composite.SetBackgroundVolumeID(outputs.xray_copy.GetID())
            composite.SetForegroundVolumeID(outputs.drr.GetID())
            composite.SetForegroundOpacity(float(opacity))
        else:
            composite.SetBackgroundVolumeID(outputs.overlay.GetID())
            composite.SetForegroundVolumeID(None)
        composite.SetCompositing(composite.Alpha)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        if slice_node.GetLayoutName() in views:
            slice_node.RotateToVolumePlane(outputs.xray_copy)
            slice_node.SetSliceVisible(True)  # the detector image in 3D, where the C-arm was


def _voxels(node) -> np.ndarray | None:
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return None
    return voxels_of(node)[0]


def write_loss_curve(scene, outputs: Outputs, trace: list[dict], similarity: str):
    """Table (iteration, level, best similarity) + plot chart of the registration; returns the chart node."""
    table = _referenced(outputs.drr, ROLE_TABLE, scene, "vtkMRMLTableNode", f"{outputs.drr.GetName()} loss")
    chart = _referenced(outputs.drr, ROLE_CHART, scene, "vtkMRMLPlotChartNode", f"{outputs.drr.GetName()} loss chart")
    vtk = _vtk()
    data = vtk.vtkTable()
    columns = {}
    for name in ("iteration", "level", similarity):
        column = vtk.vtkDoubleArray()
        column.SetName(name)
        data.AddColumn(column)
        columns[name] = column
    for n, entry in enumerate(trace):
        best = entry["best_similarity"]
        value = max(best) if isinstance(best, list) else float(best)
        columns["iteration"].InsertNextValue(n)
        columns["level"].InsertNextValue(entry["level"] + 1)
        columns[similarity].InsertNextValue(value)
    table.SetAndObserveTable(data)
    series = chart.GetNthPlotSeriesNode(0) if chart.GetNumberOfPlotSeriesNodes() else None
    if series is None:
        series = _new_node(scene, "vtkMRMLPlotSeriesNode", f"best {similarity}")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("iteration")
    series.SetYColumnName(similarity)
    series.SetPlotType(series.PlotTypeScatter)
    chart.SetTitle("DiffReg: best similarity so far")
    chart.SetXAxisTitle("iteration (all levels)")
    chart.SetYAxisTitle(similarity)
    return chart


# --------------------------------------------------------------------------
# The two actions of the panel
# --------------------------------------------------------------------------


@dataclass
class Inputs:
    """Engine-side inputs of one setup."""

    volume: Volume
    xray: XRay
    detector: Detector
    pose: torch.Tensor  # initial camera_from_world (4, 4) float64


def read_inputs(setup: Setup, file_for_instance: Callable[[str], str] | None = None) -> Inputs:
    """Check the setup and turn its nodes into engine inputs (nodes only read)."""
    from .devices import resolve_device

    setup.check_choices()
    device = resolve_device(setup.device)
    volume = volume_from_node(setup.inputVolume).to(device)
    xray = xray_from_node(setup.xrayVolume, setup.xrayIntensity, file_for_instance)
    geo = geometry_from_xray(setup.xrayVolume, file_for_instance, xray)
    detector = detector_from_setup(setup, geo)
    pose = initial_pose(setup, volume, geo)
    return Inputs(volume, xray, detector, pose)


class OutOfMemory(RuntimeError):
    """The renderer ran out of (GPU) memory; the message offers the CPU or smaller tiles."""


def _resource_errors(exc: BaseException) -> BaseException:
    """A clear error for out-of-memory failures; others unchanged."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return OutOfMemory(
            f"out of memory: {exc}. Choose Device 'cpu' under Options, or lower 'Memory budget (MB)' so the DRR is "
            "rendered in smaller tiles"
        )
    return exc


def render_preview(scene, setup: Setup, pose=None, file_for_instance=None) -> Outputs:
    """Render the DRR at ``pose`` (default: the initial pose) into the outputs; returns them."""
    from .drr import render

    inputs = read_inputs(setup, file_for_instance)
    pose = inputs.pose if pose is None else torch.as_tensor(pose, dtype=torch.float64)
    try:
        with torch.no_grad():
            drr = render(inputs.volume, inputs.detector, pose.to(inputs.volume.mu.device), setup.renderer,
                         max_memory_mb=setup.maxMemoryMb)[0]
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise _resource_errors(exc) from exc
    outputs = ensure_outputs(scene, setup)
    write_detector_images(outputs, inputs.detector, drr.cpu().numpy(), inputs.xray.image.cpu().numpy())
    place_outputs(outputs, setup.transformMeaning)
    write_pose(outputs, pose, setup.transformMeaning, setup.inputVolume)
    return outputs


@dataclass
class SceneResult:
    """What a registration in the scene produced."""

    result: Any  # registration.RegistrationResult
    outputs: Outputs
    chart: Any
    message: str


def registration_options(setup: Setup):
    from .registration import RegistrationOptions

    return RegistrationOptions(optimizer=setup.optimizer, similarity=setup.similarity, renderer=setup.renderer,
                               levels=setup.level_factors(), max_iterations=int(setup.iterations),
                               n_starts=int(setup.starts), max_memory_mb=float(setup.maxMemoryMb))


def run_registration(scene, setup: Setup, progress: Callable | None = None, cancel: Callable[[], bool] | None = None,
                     file_for_instance=None, live_every: int = 5, live_pixels: int = 128) -> SceneResult:
    """Register the setup's CT to its X-ray and write the pose, DRR, overlay and loss curve into output nodes.

    ``progress(Progress, text)`` is called after every iteration (the
    module updates its bar there and processes GUI events); every
    ``live_every`` iterations (0 = never) the output transform is moved to the
    best pose so far and the DRR node shows that pose, rendered on the same
    detector with at most ``live_pixels`` pixels per side (it covers the
    same detector area, so the overlay stays aligned) from a CT averaged to
    that pixel size, so the preview costs little next to an iteration. ``cancel()`` returning True stops the run: the best pose so
    far is written and the message says so. If the run fails, the output
    transform gets its previous matrix back. Input nodes are only read.
    """
    from .drr import render
    from .registration import register, volume_factor

    options = registration_options(setup)
    options.validate()
    inputs = read_inputs(setup, file_for_instance)
    outputs = ensure_outputs(scene, setup)
    previous = transform_matrix(outputs.transform)
    place_outputs(outputs, setup.transformMeaning)
    xray_image = inputs.xray.image.cpu().numpy()
    write_detector_images(outputs, inputs.detector, xray=xray_image)
    live_detector = inputs.detector.downsample(max(1.0, max(inputs.detector.shape) / max(1, live_pixels)))
    source = -(inputs.pose[:3, :3].T @ inputs.pose[:3, 3])
    live_factor = volume_factor(inputs.volume, live_detector, float((source - inputs.volume.center.cpu()).norm()))
    live_volume = inputs.volume if live_factor == (1.0, 1.0, 1.0) else inputs.volume.downsample(live_factor)

    def callback(info) -> None:
        text = (f"level {info.level + 1}/{info.n_levels}, iteration {info.iteration + 1}: "
                f"{setup.similarity} {info.similarity:.4f}")
        if live_every and info.pose is not None and info.total_iterations % live_every == 0:
            write_pose(outputs, info.pose, setup.transformMeaning, setup.inputVolume)
            with torch.no_grad():
                live = render(live_volume, live_detector, info.pose.to(inputs.volume.mu.device), setup.renderer,
                              max_memory_mb=setup.maxMemoryMb)[0]
            _write_volume(outputs.drr, live.cpu().numpy(), detector_plane_matrix(live_detector))
        if progress is not None:
            progress(info, text)

    try:
        result = register(inputs.volume, inputs.xray.image.to(inputs.volume.mu.device), inputs.detector, inputs.pose,
                          options, mask=inputs.xray.mask, callback=callback, cancel=cancel)
        with torch.no_grad():
            drr = render(inputs.volume, inputs.detector, result.pose.to(inputs.volume.mu.device), setup.renderer,
                         max_memory_mb=setup.maxMemoryMb)[0].cpu().numpy()
    except BaseException as exc:
        set_transform_matrix(outputs.transform, previous)
        error = _resource_errors(exc)
        if error is exc:
            raise
        raise error from exc
    write_pose(outputs, result.pose, setup.transformMeaning, setup.inputVolume)
    write_detector_images(outputs, inputs.detector, drr=drr)
    chart = write_loss_curve(scene, outputs, result.trace, setup.similarity)
    state = ("cancelled: the best pose so far was written" if result.cancelled else
             "converged" if result.converged else f"stopped ({result.stop_reason.replace('_', ' ')})")
    message = (f"{state}; {setup.similarity} {result.initial_similarity:.4f} -> {result.similarity:.4f} in "
               f"{result.iterations} iterations, {result.seconds:.1f} s")
    return SceneResult(result, outputs, chart, message)
