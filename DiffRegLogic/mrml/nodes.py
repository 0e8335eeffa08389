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
from . import checks
from .matrices import _vtk, ijk_to_ras, parent_to_world, set_ijk_to_ras


def voxels_of(node, dims: tuple[int, int, int] | None = None) -> np.ndarray:
    """A copy of a scalar volume node's voxels, (K, J, I) float64 (``arrayFromVolume`` order).

    ``dims``: the node's (I, J, K) when the caller has checked them already
    (`checks.image_dimensions`). The scalars must be one grayscale component
    with one value per voxel.
    """
    from vtk.util import numpy_support

    i, j, k = checks.image_dimensions(node) if dims is None else dims
    name = checks.node_name(node)
    point_data = node.GetImageData().GetPointData()
    scalars = point_data.GetScalars() if point_data is not None else None
    if scalars is None:
        raise InputError(f"'{name}' has no voxels (empty volume node); load or select a volume with data")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(
            f"'{name}' has {scalars.GetNumberOfComponents()} components per voxel (colour or vector); "
            "DiffReg needs a grayscale scalar volume (convert it with the Vector to Scalar Volume module)"
        )
    if scalars.GetNumberOfTuples() != i * j * k:
        raise InputError(
            f"'{name}' claims {i} x {j} x {k} voxels but holds {scalars.GetNumberOfTuples()} values; the volume is "
            "damaged: reload it from its file"
        )
    try:
        values = numpy_support.vtk_to_numpy(scalars)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"'{name}' stores its voxels as {scalars.GetClassName()}, which DiffReg cannot read; "
                         "cast it to a number type (Cast Scalar Volume module)") from exc
    return values.reshape(k, j, i).astype(np.float64, copy=True)


def _require_volume_node(node, what: str, hint: str) -> None:
    if node is None:
        raise InputError(f"no {what} selected: {hint}")
    if not checks.is_node(node, "vtkMRMLScalarVolumeNode"):
        kind = node.GetClassName() if checks.is_node(node, "vtkMRMLNode") else type(node).__name__
        raise InputError(f"'{checks.node_name(node)}' ({kind}) is not a scalar volume; {hint}")


def volume_from_node(node, hu_to_mu: HUToMu | None = None, dtype: torch.dtype = torch.float32) -> Volume:
    """Engine `Volume` (mu in 1/mm, affine = world RAS incl. parent transforms) from a CT node in HU.

    The node is only read (its voxels are copied). Its size, spacing,
    directions and parent transforms are checked before the voxels are
    copied, the voxels (finite) before they are converted; InputError
    naming the node otherwise.
    """
    _require_volume_node(node, "CT volume", "pick the CT in 'Input CT'")
    dims = checks.image_dimensions(node)
    checks.check_ct_size(node, dims)
    affine = checks.check_ct_placement(node, ijk_to_ras(node), parent_to_world(node))
    hu = voxels_of(node, dims)
    checks.check_finite(node, hu, "CT")
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
    """The X-ray node's pixels (rows, cols) float64; its size is checked before any scalar is read."""
    _require_volume_node(node, "X-ray", "pick the 2D X-ray image in 'Input X-ray'")
    dims = checks.image_dimensions(node)
    checks.check_xray_size(node, dims)
    checks.check_xray_placement(node, ijk_to_ras(node))
    array = voxels_of(node, dims)[0]
    checks.check_finite(node, array, "X-ray")
    return array


def xray_from_node(node, intensity: str = "auto", file_for_instance: Callable[[str], str] | None = None) -> XRay:
    """Engine `XRay` from a single-slice volume node (the node is only read).

    With ``intensity="auto"`` a DICOM-loaded node follows its file's tags (see
    `DiffRegLogic.xray.read_xray`); where nothing states the convention the
    values are kept with ``meta["intensity_source"] = "default"``, and the
    registration detects it against a DRR at the start
    (`DiffRegLogic.xray.convention.resolve_at_pose`). ``"intensity"``
    converts raw detector intensity with -log(I / I0); ``"inverted"`` and
    ``"inverted_intensity"`` are the bone-dark log and bone-bright raw
    conventions.
    """
    array = _xray_array(node)
    path = dicom_file_of(node, file_for_instance)
    if path is not None:
        xr = read_xray(path, intensity=intensity)
        if xr.shape == array.shape:
            return xr
    spacing_x, spacing_y, _ = node.GetSpacing()
    return xray_from_array(array, intensity=intensity, pixel_spacing=(float(spacing_y), float(spacing_x)),
                           name=f"X-ray '{node.GetName()}'")


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
