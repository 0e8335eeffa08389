"""The detector of the C-arm and the pinhole projection through it.

A `Detector` is the flat panel seen through a pinhole at the X-ray source:
size in pixels, source-to-detector distance, pixel spacing and principal
point (the convention is stated in `DiffRegLogic.geometry`). `project` maps
world points to pixels, `backproject` pixels to rays, `pixel_grid` lists the
pixel centres. Lengths in mm, pixel coordinates as (u = column, v = row).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import torch

from ..errors import InputError

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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InputError(
                    f"detector {name} must be a positive integer, got {value!r}; "
                    "a detector needs at least one pixel in each direction"
                )
            object.__setattr__(self, name, int(value))  # numpy integers -> int
        sdd = _as_float_tensor(self.sdd)
        if sdd.numel() != 1 or not torch.isfinite(sdd).all() or float(sdd) <= 0:
            raise InputError(f"source-to-detector distance must be a finite positive number of mm, got {self.sdd!r}")
        spacing = _as_float_tensor(self.pixel_spacing)
        if spacing.shape != (2,) or not torch.isfinite(spacing).all() or (spacing <= 0).any():
            raise InputError(
                f"pixel spacing must be two finite positive numbers (row mm, column mm), got {self.pixel_spacing!r}"
            )
        if self.principal_point is not None:
            pp = _as_float_tensor(self.principal_point)
            if pp.shape != (2,) or not torch.isfinite(pp).all():
                raise InputError(
                    f"principal point must be two finite numbers (column px, row px), got {self.principal_point!r}"
                )

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
        """The same physical detector with ``factor`` times fewer pixels per side.

        The detector's physical extent and principal point (in mm) are kept:
        pixel spacing grows by ``old_size / new_size`` and pixel-centre
        coordinates map as ``c' = (c + 0.5) * new/old - 0.5``.
        """
        if factor < 1:
            raise InputError(f"downsampling factor must be >= 1, got {factor}")
        rows = max(1, int(round(self.rows / factor)))
        cols = max(1, int(round(self.cols / factor)))
        sy, sx = self.rows / rows, self.cols / cols
        spacing = (self.pixel_spacing[0] * sy, self.pixel_spacing[1] * sx)
        pp = None
        if self.principal_point is not None:
            pp = ((self.principal_point[0] + 0.5) / sx - 0.5, (self.principal_point[1] + 0.5) / sy - 0.5)
        return replace(self, rows=rows, cols=cols, pixel_spacing=spacing, principal_point=pp)


def _as_float_tensor(x) -> torch.Tensor:
    try:
        return torch.as_tensor(x, dtype=torch.float64).detach() if not isinstance(x, torch.Tensor) else x.detach().double()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"expected numbers, got {x!r}") from exc


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
