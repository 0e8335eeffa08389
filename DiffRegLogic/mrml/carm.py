"""The C-arm geometry of an X-ray node: what the node and its DICOM file state, the setup's detector, the C-arm model.

Spacing comes from the node, the source-to-detector distance, pixel spacing
and C-arm angles from its DICOM file when there is one; the setup's numbers
win where the user set them (non-zero).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import limits
from ..errors import InputError
from ..geometry.detector import Detector
from ..xray.image import XRay
from ..xray.readers import read_xray
from . import checks
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


def _where(geo: XRayGeometry) -> str:
    return f"the X-ray's DICOM file {geo.source}" if geo.source != "node" else "the X-ray node"


def _stated_sdd(geo: XRayGeometry) -> float | None:
    """The source-to-detector distance (mm) the X-ray's DICOM tags state, checked against the limits; None if none."""
    if geo.sdd is None:
        return None
    return checks.check_xray_value(f"the source-to-detector distance (DistanceSourceToDetector) of {_where(geo)}",
                                   geo.sdd, *limits.SDD_RANGE_MM, "mm", "sdd")


def _stated_spacing(geo: XRayGeometry) -> tuple[float, float] | None:
    """The (row, column) pixel spacing (mm) the X-ray states, checked against the limits; None if none."""
    if geo.pixel_spacing is None:
        return None
    return tuple(checks.check_xray_value(f"the {axis} pixel spacing of {_where(geo)}", value,
                                         *limits.PIXEL_SPACING_RANGE_MM, "mm", field)
                 for axis, value, field in zip(("row", "column"), geo.pixel_spacing,
                                               ("pixelSpacingRow", "pixelSpacingColumn")))


def fill_geometry(setup: Setup, file_for_instance: Callable[[str], str] | None = None,
                  overwrite: bool = False) -> XRayGeometry:
    """Fill the setup's geometry and C-arm angle fields from the X-ray node and its DICOM tags.

    Without ``overwrite`` only unset (zero) fields are filled, so numbers the
    user entered stay. With ``overwrite`` (a new X-ray was picked) every value
    the X-ray states replaces the current one; fields it does not state are
    kept. Returns what was found. A stated value outside the limits
    (`DiffRegLogic.limits`) raises InputError before any field is changed.
    """
    geo = geometry_from_xray(setup.xrayVolume, file_for_instance)
    sdd, spacing = _stated_sdd(geo), _stated_spacing(geo)
    clinical = None
    if geo.clinical is not None:
        primary, secondary, distance = geo.clinical
        where = _where(geo)
        clinical = (
            checks.check_xray_value(f"PositionerPrimaryAngle of {where}", primary, -checks.MAX_ANGLE_DEG,
                                    checks.MAX_ANGLE_DEG, "deg", "primaryAngle"),
            checks.check_xray_value(f"PositionerSecondaryAngle of {where}", secondary, -checks.MAX_ANGLE_DEG,
                                    checks.MAX_ANGLE_DEG, "deg", "secondaryAngle"),
            checks.check_xray_value(f"DistanceSourceToPatient of {where}", distance, *limits.SDD_RANGE_MM, "mm",
                                    "sourceToIsocenter"))

    def unset(name: str) -> bool:  # 0 (or a number that cannot be meant: negative, NaN)
        value = getattr(setup, name)
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and not value > 0

    def put(name: str, value) -> None:
        if value is not None and (overwrite or unset(name)):
            setattr(setup, name, float(value))

    put("sdd", sdd)
    if spacing is not None:
        put("pixelSpacingRow", spacing[0])
        put("pixelSpacingColumn", spacing[1])
    if clinical is not None and (overwrite or unset("sourceToIsocenter")):
        setup.primaryAngle, setup.secondaryAngle, setup.sourceToIsocenter = clinical
    return geo


def detector_from_setup(setup: Setup, geo: XRayGeometry) -> Detector:
    """The detector: the setup's numbers where set (non-zero), else the X-ray's.

    InputError naming the panel field when a set number is out of the limits
    (`DiffRegLogic.limits`), or naming the X-ray when a number it states is.
    """
    checks.check_geometry_fields(setup)
    sdd = setup.sdd or _stated_sdd(geo)
    if not sdd:
        raise InputError(
            "the source-to-detector distance is missing: the X-ray has no DICOM DistanceSourceToDetector (0018,1110); "
            f"enter it (mm) under {checks.field_label('sdd')}"
        )
    row, col = (0.0, 0.0) if setup.pixelSpacingRow and setup.pixelSpacingColumn else _stated_spacing(geo) or (0.0, 0.0)
    row, col = setup.pixelSpacingRow or row, setup.pixelSpacingColumn or col
    if not (row and col):
        raise InputError("the detector pixel spacing is missing; enter the row and column spacing (mm) under "
                         f"{checks.field_label('pixelSpacingRow')} and {checks.field_label('pixelSpacingColumn')}")
    pp = None if setup.principalPointAtCenter else (float(setup.principalPointColumn), float(setup.principalPointRow))
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
