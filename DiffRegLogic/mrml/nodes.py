"""Volume nodes in and out: a CT node as a `Volume`, an X-ray node as an `XRay`, arrays into output nodes.

Input nodes are only read (their voxels are copied); `write_volume_array`
writes only into the output nodes it is given.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..volume.ct import Volume
from ..volume.hu import HUToMu
from ..xray.image import XRay
from ..xray.readers import read_xray, xray_from_array
from .matrices import _vtk, ijk_to_ras, parent_to_world, set_ijk_to_ras


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


def _voxels(node) -> np.ndarray | None:
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return None
    return voxels_of(node)[0]
