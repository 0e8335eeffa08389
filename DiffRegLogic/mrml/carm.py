"""The C-arm geometry of an X-ray node: what the node and its DICOM file state, the setup's detector, the C-arm model.

Spacing comes from the node, the source-to-detector distance, pixel spacing
and C-arm angles from its DICOM file when there is one; the setup's numbers
win where the user set them (non-zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError
from ..geometry.detector import Detector
from ..xray.image import XRay
from ..xray.readers import read_xray
from .matrices import _vtk
from .nodes import _xray_array, dicom_file_of
from .settings import Setup


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
