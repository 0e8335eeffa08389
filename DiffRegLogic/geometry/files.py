"""Geometry and pose as JSON files: the detector (``geometry.json``) and ``camera_from_world`` (``pose.json``).

Formats (see ``docs/formats.md``)::

    geometry.json  {"source_to_detector_mm": 1020, "rows": 200, "cols": 200,
                    "pixel_spacing_mm": [row_mm, col_mm], "principal_point_px": [col_px, row_px] (optional)}
    pose.json      {"camera_from_world": [[...4 numbers...] x 4]}   (mm, RAS world)

Readers raise `InputError` naming the file and the field that is wrong.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import torch

from ..errors import InputError
from ..limits import (MAX_DETECTOR_PIXELS, MAX_DETECTOR_SIDE, MAX_PRINCIPAL_POINT_PX, PIXEL_SPACING_RANGE_MM,
                      SDD_RANGE_MM, check_number)
from .detector import Detector
from .rigid import check_pose


GEOMETRY_KEYS = ("source_to_detector_mm", "rows", "cols", "pixel_spacing_mm")


def _load_json(path: str | os.PathLike, what: str) -> dict:
    from ..validation.json_files import read_json_object

    return read_json_object(path, what)


def detector_from_dict(data: dict, source: str = "geometry") -> Detector:
    """Detector from ``{"source_to_detector_mm", "rows", "cols", "pixel_spacing_mm": [row, col],
    "principal_point_px": [col, row] (optional)}``."""
    missing = [k for k in GEOMETRY_KEYS if k not in data]
    if missing:
        raise InputError(
            f"{source} is missing {', '.join(repr(k) for k in missing)}; it needs "
            f"{', '.join(GEOMETRY_KEYS)} and optionally principal_point_px"
        )
    def pair(key, value, meaning, low, high, unit) -> tuple[float, float]:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and key == "pixel_spacing_mm":
            value = [value, value]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise InputError(f"{source}: {key} must be {meaning}, got {value!r}")
        return tuple(check_number(f"{source}: {key}[{i}]", v, low, high, unit=unit) for i, v in enumerate(value))

    for key in ("rows", "cols"):  # a count of pixels: 256.0 is a sign of a wrong file, not a number to round
        if isinstance(data[key], bool) or not isinstance(data[key], numbers.Integral) or data[key] < 1:
            raise InputError(f"{source}: {key} must be a positive integer number of pixels, got {data[key]!r}")
    # the ranges of limits.py, named by the file's keys (the Detector checks them again for the Python API)
    rows, cols = (check_number(f"{source}: {key}", data[key], 1, MAX_DETECTOR_SIDE, integer=True)
                  for key in ("rows", "cols"))
    if rows * cols > MAX_DETECTOR_PIXELS:
        raise InputError(f"{source}: rows x cols = {rows * cols} pixels; at most "
                         f"{MAX_DETECTOR_PIXELS} ({int(MAX_DETECTOR_PIXELS ** 0.5)}^2) are supported")
    sdd = check_number(f"{source}: source_to_detector_mm", data["source_to_detector_mm"], *SDD_RANGE_MM, unit="mm")
    spacing = pair("pixel_spacing_mm", data["pixel_spacing_mm"], "[row_mm, col_mm]", *PIXEL_SPACING_RANGE_MM, "mm")
    pp = data.get("principal_point_px")
    if pp is not None:
        pp = pair("principal_point_px", pp, "[col_px, row_px]", -MAX_PRINCIPAL_POINT_PX, MAX_PRINCIPAL_POINT_PX, "")
    try:  # the Detector checks the ranges (limits.py); the message then names the file too
        return Detector(rows=rows, cols=cols, sdd=sdd, pixel_spacing=spacing, principal_point=pp)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None


def detector_to_dict(detector: Detector) -> dict:
    out = {
        "source_to_detector_mm": float(detector.sdd),
        "rows": detector.rows,
        "cols": detector.cols,
        "pixel_spacing_mm": [float(detector.pixel_spacing[0]), float(detector.pixel_spacing[1])],
    }
    if detector.principal_point is not None:
        out["principal_point_px"] = [float(detector.principal_point[0]), float(detector.principal_point[1])]
    return out


def read_geometry(path: str | os.PathLike) -> Detector:
    """Detector from a geometry JSON file (see `detector_from_dict`)."""
    return detector_from_dict(_load_json(path, "geometry"), f"geometry file {path}")


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as UTF-8 JSON; NaN and infinity are refused (they are not JSON: other readers choke on them)."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError as exc:
        raise InputError(f"cannot write {path}: a value is NaN or infinite ({exc})") from None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def pose_from_dict(data: dict, source: str = "pose") -> torch.Tensor:
    """(4, 4) float64 camera_from_world from ``{"camera_from_world": [[...], ...]}`` (mm, RAS world)."""
    if "camera_from_world" not in data:
        raise InputError(f"{source} is missing 'camera_from_world' (a 4x4 matrix, mm, RAS world)")
    try:
        matrix = torch.tensor(data["camera_from_world"], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise InputError(f"{source}: camera_from_world must be a 4x4 array of numbers ({exc})") from exc
    return check_pose(matrix, name=f"{source} camera_from_world")[0]


def read_pose(path: str | os.PathLike) -> torch.Tensor:
    return pose_from_dict(_load_json(path, "pose"), f"pose file {path}")


def pose_to_dict(pose: torch.Tensor) -> dict:
    return {"camera_from_world": pose.detach().cpu().double().reshape(4, 4).tolist()}
