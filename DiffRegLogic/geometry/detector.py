"""The detector of the C-arm and the pinhole projection through it.

A `Detector` is the flat panel seen through a pinhole at the X-ray source:
size in pixels, source-to-detector distance, pixel spacing and principal
point (the convention is stated in `DiffRegLogic.geometry`). `project` maps
world points to pixels, `backproject` pixels to rays, `pixel_grid` lists the
pixel centres. Lengths in mm, pixel coordinates as (u = column, v = row).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from ..errors import InputError
from ..limits import (MAX_DETECTOR_PIXELS, MAX_DETECTOR_SIDE, MAX_PRINCIPAL_POINT_PX, PIXEL_SPACING_RANGE_MM,
                      SDD_RANGE_MM, check_number)

Number = float | torch.Tensor

# --------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    """A flat-panel detector seen through a pinhole at the X-ray source.

    Attributes:
        rows, cols: image size H, W in pixels.
        sdd: source-to-detector distance (mm).
        pixel_spacing: (row spacing dv, column spacing du) in mm, as DICOM
            ImagerPixelSpacing orders them.
        principal_point: (cx, cy) = (column, row) in pixels of the foot of the
            perpendicular from the source onto the detector; ``None`` means
            the image centre ((cols-1)/2, (rows-1)/2).

    ``sdd``, ``pixel_spacing`` and ``principal_point`` may be tensors with
    ``requires_grad`` so that DRRs are differentiable w.r.t. the intrinsics.
    """

    rows: int
    cols: int
    sdd: Number
    pixel_spacing: tuple[Number, Number] | torch.Tensor = (1.0, 1.0)
    principal_point: tuple[Number, Number] | torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            object.__setattr__(self, name, _check_side(name, getattr(self, name)))  # numpy integers -> int
        if self.rows * self.cols > MAX_DETECTOR_PIXELS:
            raise InputError(
                f"detector rows x cols = {self.rows} x {self.cols} = {self.rows * self.cols} pixels, more than the "
                f"{MAX_DETECTOR_PIXELS} a DRR may have; downsample the X-ray (or give a coarser geometry)"
            )
        checks = [("sdd", self.sdd, 1), ("pixel_spacing", self.pixel_spacing, 2)]
        if self.principal_point is not None:
            checks.append(("principal_point", self.principal_point, 2))
        for name, value, count in checks:  # the ranges of limits.py, messages naming the field
            must, limits, unit, hint = _FIELDS[name]
            for number in _values(name, value, count, must.format(*limits)):
                try:
                    check_number(name, number, *limits)
                except InputError:
                    raise InputError(f"{must.format(*limits)} (detector {name}), got {_shown(value)}{unit}; "
                                     f"{hint}") from None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.rows, self.cols)

    def tensors(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        """(sdd, du, dv, cx, cy) as 0-d tensors (gradients kept when inputs are tensors)."""

        def t(x):
            return torch.as_tensor(x, dtype=dtype, device=device)

        spacing = self.pixel_spacing
        dv, du = t(spacing[0]), t(spacing[1])
        if self.principal_point is None:
            cx, cy = t((self.cols - 1) / 2.0), t((self.rows - 1) / 2.0)
        else:
            cx, cy = t(self.principal_point[0]), t(self.principal_point[1])
        return t(self.sdd), du, dv, cx, cy

    def intrinsics(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """K, shape (3, 3)."""
        sdd, du, dv, cx, cy = self.tensors(dtype, device)
        zero, one = torch.zeros_like(sdd), torch.ones_like(sdd)
        return torch.stack(
            [
                torch.stack([sdd / du, zero, cx]),
                torch.stack([zero, sdd / dv, cy]),
                torch.stack([zero, zero, one]),
            ]
        )

    def downsample(self, factor: float) -> "Detector":
        """The same physical detector with ``factor`` (a finite number >= 1) times fewer pixels per side.

        The detector's physical extent and principal point (in mm) are kept:
        pixel spacing grows by ``old_size / new_size`` and pixel-centre
        coordinates map as ``c' = (c + 0.5) * new/old - 0.5``. The coarse
        detector of a pyramid level may have pixels larger than
        `PIXEL_SPACING_RANGE_MM` allows for an input geometry (its extent is
        that of this valid detector), so it is not checked against that bound.
        """
        try:
            factor = check_number("downsampling factor", factor, 1.0, None)
        except InputError as exc:
            raise InputError(f"{exc}; the factor divides the pixels per side (1 keeps the detector as it is)") from None
        rows = max(1, int(round(self.rows / factor)))
        cols = max(1, int(round(self.cols / factor)))
        sy, sx = self.rows / rows, self.cols / cols
        spacing = (self.pixel_spacing[0] * sy, self.pixel_spacing[1] * sx)
        pp = None
        if self.principal_point is not None:
            pp = ((self.principal_point[0] + 0.5) / sx - 0.5, (self.principal_point[1] + 0.5) / sy - 0.5)
        if rows == self.rows and cols == self.cols:
            return replace(self, pixel_spacing=spacing, principal_point=pp)
        # derived from this checked detector: fewer pixels, same extent (no re-check of the spacing bound)
        coarse = object.__new__(type(self))
        for field in fields(self):
            object.__setattr__(coarse, field.name, getattr(self, field.name))
        for name, value in (("rows", rows), ("cols", cols), ("pixel_spacing", spacing), ("principal_point", pp)):
            object.__setattr__(coarse, name, value)
        return coarse


def _check_side(name: str, value) -> int:
    """``value`` as an int in [1, MAX_DETECTOR_SIDE], else InputError naming detector ``name``."""
    must = f"detector {name} must be a positive integer (a whole number of pixels from 1 to {MAX_DETECTOR_SIDE})"
    hint = "a detector needs at least one pixel in each direction"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) > 2**53:
        # check_number would format such an integer as a float (OverflowError beyond 1e308)
        raise InputError(f"{must}, got an integer of about {_digits(value)} digits; {hint}")
    try:
        return check_number(name, value, 1, MAX_DETECTOR_SIDE, integer=True)
    except InputError:
        raise InputError(f"{must}, got {_shown(value)}; {hint}") from None


def _digits(value: numbers.Integral) -> int:
    """Decimal digits of a (huge) integer, without str() (which refuses more than 4300 digits)."""
    return int(abs(int(value)).bit_length() * 0.30103) + 1


_FIELDS = {
    "sdd": ("source-to-detector distance must be a finite positive number of mm from {:g} to {:g}", SDD_RANGE_MM,
            " mm", "C-arms have source-to-detector distances of about 1000 mm"),
    "pixel_spacing": ("pixel spacing must be two finite positive numbers (row mm, column mm) from {:g} to {:g} mm",
                      PIXEL_SPACING_RANGE_MM, " mm", "flat panels have pixels of 0.1 to 1 mm; check the units (mm) "
                      "and the DICOM ImagerPixelSpacing"),
    "principal_point": ("principal point must be two finite numbers (column px, row px) from {:g} to {:g} px",
                        (-MAX_PRINCIPAL_POINT_PX, MAX_PRINCIPAL_POINT_PX), " px",
                        "it is in pixels, near the image centre; leave it unset for the centre"),
}
"""Field -> (what it must be, given its range; range from `DiffRegLogic.limits`; unit; hint)."""


def _shown(value) -> str:
    """A short text of a field's value for a message (tensors as numbers)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.detach().cpu().tolist() if isinstance(value, torch.Tensor) else value.tolist()
    try:
        text = repr(tuple(value) if isinstance(value, list) else value)
    except ValueError:  # an integer of more than 4300 digits
        return "a huge integer"
    return text if len(text) <= 80 else text[:77] + "..."


def _values(name: str, value, count: int, what: str) -> list[float]:
    """The ``count`` numbers of a detector field (numbers, a sequence or a tensor) as floats, else InputError."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().reshape(-1)
        if value.numel() != count or (value.ndim > 1) or flat.is_complex() or flat.dtype == torch.bool:
            raise InputError(f"{what} (detector {name}), got a {flat.dtype} tensor of shape {tuple(value.shape)}")
        return [float(v) for v in flat.double().cpu()]
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim == 1 else value
    items = [value] if count == 1 and not isinstance(value, (tuple, list)) else value
    if not isinstance(items, (tuple, list)) or len(items) != count:
        raise InputError(f"{what} (detector {name}), got {_shown(value)}")
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.numel() != 1 or item.is_complex() or item.dtype == torch.bool:
                raise InputError(f"{what} (detector {name}), got a tensor of shape {tuple(item.shape)}")
            item = float(item.detach())
        elif isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise InputError(f"{what} (detector {name}), got {_shown(value)}")
        elif isinstance(item, numbers.Integral) and abs(int(item)) > 2**1023:  # beyond float range
            raise InputError(f"{what} (detector {name}), got an integer of about {_digits(item)} digits")
        out.append(item)
    return out


# --------------------------------------------------------------------------
# Projection and back-projection
# --------------------------------------------------------------------------


def project(points: torch.Tensor, pose: torch.Tensor, detector: Detector) -> torch.Tensor:
    """World points (..., N, 3) mm -> pixel coordinates (..., N, 2) as (u = column, v = row).

    ``pose`` (..., 4, 4) broadcasts against the points' leading dimensions.
    """
    k = detector.intrinsics(points.dtype, points.device)
    cam = points @ pose[..., :3, :3].transpose(-1, -2) + pose[..., None, :3, 3]
    hom = cam @ k.T
    return hom[..., :2] / hom[..., 2:3]


def backproject(pixels: torch.Tensor, pose: torch.Tensor, detector: Detector) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (..., N, 2) as (u, v) -> rays in world coordinates.

    Returns ``(source, target)``: the source position (..., 3) and, for each
    pixel, the point of the detector plane (..., N, 3) it sits on; the ray is
    ``source + alpha (target - source)`` with alpha in [0, 1] from source to
    detector.
    """
    sdd, du, dv, cx, cy = detector.tensors(pixels.dtype, pixels.device)
    x = (pixels[..., 0] - cx) * du
    y = (pixels[..., 1] - cy) * dv
    cam = torch.stack([x, y, sdd.expand_as(x)], -1)
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    source = -(rot_t @ pose[..., :3, 3:4])[..., 0]
    target = (cam - pose[..., None, :3, 3]) @ rot_t.transpose(-1, -2)
    return source, target


def pixel_grid(detector: Detector, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Pixel centres (H*W, 2) as (u = column, v = row), row-major."""
    v, u = torch.meshgrid(
        torch.arange(detector.rows, dtype=dtype, device=device),
        torch.arange(detector.cols, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1)
