"""Surgical instruments drawn into a simulated X-ray only: wires, screws, K-wires, ECG electrodes.

The CT never contains them (they arrive in the operating room after it was
taken), so they are what a registration cannot explain. Each instrument is
a few *parts* in the **object plane**: the plane through the CT centre
perpendicular to the principal ray, with x along increasing detector column
and y along increasing detector row, in mm from the principal ray. A
detector point (x_det, y_det) mm from the principal point sees the object
plane at (x_det, y_det) / magnification, magnification = SDD / depth of the
CT centre (camera z). Rays are taken parallel through a part (its size is
small against the source distance), so a part's **metal path length**
(mm of metal along the ray) is a closed form:

* `Rod` (screw shaft or head, K-wire): a finite cylinder of ``radius_mm`` and
  ``length_mm`` whose axis lies at ``tilt_deg`` out of the object plane; a ray
  at distance b from the projected axis crosses it over the overlap of the
  radial interval (length 2 sqrt(r^2 - b^2) / cos tilt) and the axial one;
  flat (tilt 0) the core path is the diameter 2r;
* `Wire` (guide wire, sternal wire, ECG lead): a curved polyline of round
  cross-section lying in the object plane, path 2 sqrt(r^2 - d^2) at
  distance d from the polyline;
* `Disc` (an ECG electrode's pad and snap): a flat disc facing the beam,
  path = its thickness inside its radius.

Every pixel is sampled at ``supersample`` x ``supersample`` points, so thin
wires on coarse pixels attenuate by their partial area (the transmission
is the mean of exp(-mu L) over the samples, `InstrumentPaths.transmission`).
Paths are kept per material; the materials are those of
`DiffRegLogic.physics.tables` (metal parts: ``titanium`` by default, the
only metal in the table; an electrode's pad: ``aluminium``).

`rasterize` turns parts into per-pixel paths and the instrument mask;
`DiffRegLogic.physics.instrument_placement` places random instruments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..limits import check_number
from .tables import material_names

MAX_TILT_DEG = 85.0
"""Largest tilt of a rod's axis out of the object plane (90 would be a rod along the ray)."""
MAX_SUPERSAMPLE = 8
"""Samples per pixel side at most."""


# ---------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Rod:
    """A finite cylinder: screw shaft or head, K-wire (object-plane mm, deg; see the module docstring).

    ``center`` (x, y) mm; ``angle_deg`` the direction of the projected axis
    from +x towards +y; ``tilt_deg`` in [0, `MAX_TILT_DEG`] the axis's angle
    out of the object plane; ``length_mm`` and ``radius_mm`` > 0.
    """

    center: tuple[float, float]
    angle_deg: float
    tilt_deg: float
    length_mm: float
    radius_mm: float
    material: str = "titanium"

    def __post_init__(self) -> None:
        _point("center", self.center)
        _checks(self, angle_deg=(-1e4, 1e4), tilt_deg=(0.0, MAX_TILT_DEG), length_mm=(0.0, 1e4), radius_mm=(0.0, 1e3))

    def bounds(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) mm containing every ray the rod attenuates."""
        reach = self.length_mm / 2 + self.radius_mm
        return (self.center[0] - reach, self.center[0] + reach, self.center[1] - reach, self.center[1] + reach)

    def path_mm(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Metal path (mm) of the rays through object-plane points (x, y) (any shape, float)."""
        phi, beta = math.radians(self.angle_deg), math.radians(self.tilt_deg)
        dx, dy = x - self.center[0], y - self.center[1]
        a = dx * math.cos(phi) + dy * math.sin(phi)  # along the projected axis
        b = -dx * math.sin(phi) + dy * math.cos(phi)  # across it
        h = (self.radius_mm ** 2 - b * b).clamp_min(0).sqrt()
        cos_b, sin_b = math.cos(beta), math.sin(beta)
        lo, hi = (a * sin_b - h) / cos_b, (a * sin_b + h) / cos_b  # depths z inside the infinite cylinder
        half = self.length_mm / 2
        if sin_b > 1e-12:  # depths with axial coordinate a cos(beta) + z sin(beta) in [-L/2, L/2]
            lo = torch.maximum(lo, (-half - a * cos_b) / sin_b)
            hi = torch.minimum(hi, (half - a * cos_b) / sin_b)
            return (hi - lo).clamp_min(0) * (h > 0)
        return (hi - lo) * (a.abs() <= half)


@dataclass(frozen=True)
class Wire:
    """A curved wire of round cross-section along a polyline in the object plane (mm)."""

    points: tuple[tuple[float, float], ...]
    radius_mm: float
    material: str = "titanium"

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise InputError(f"a wire needs at least 2 points (x, y) mm, got {len(self.points)}")
        for p in self.points:
            _point("wire point", p)
        _checks(self, radius_mm=(0.0, 1e3))

    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.points], [p[1] for p in self.points]
        r = self.radius_mm
        return (min(xs) - r, max(xs) + r, min(ys) - r, max(ys) + r)

    def segments(self) -> list["Wire"]:
        """The wire as one two-point wire per segment (same radius and material)."""
        return [Wire((p, q), self.radius_mm, self.material) for p, q in zip(self.points[:-1], self.points[1:])]

    def path_mm(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Metal path (mm) 2 sqrt(r^2 - d^2), d = distance of (x, y) from the polyline."""
        d2 = None
        for (px, py), (qx, qy) in zip(self.points[:-1], self.points[1:]):
            ex, ey = qx - px, qy - py
            length2 = ex * ex + ey * ey
            t = ((x - px) * ex + (y - py) * ey) / length2 if length2 > 0 else torch.zeros_like(x)
            t = t.clamp(0, 1)
            seg = (x - px - t * ex) ** 2 + (y - py - t * ey) ** 2
            d2 = seg if d2 is None else torch.minimum(d2, seg)
        return 2 * (self.radius_mm ** 2 - d2).clamp_min(0).sqrt()


@dataclass(frozen=True)
class Disc:
    """A flat disc facing the beam (object-plane mm): path = ``thickness_mm`` within ``radius_mm`` of ``center``."""

    center: tuple[float, float]
    radius_mm: float
    thickness_mm: float
    material: str = "titanium"

    def __post_init__(self) -> None:
        _point("center", self.center)
        _checks(self, radius_mm=(0.0, 1e3), thickness_mm=(0.0, 1e3))

    def bounds(self) -> tuple[float, float, float, float]:
        r = self.radius_mm
        return (self.center[0] - r, self.center[0] + r, self.center[1] - r, self.center[1] + r)

    def path_mm(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        inside = (x - self.center[0]) ** 2 + (y - self.center[1]) ** 2 <= self.radius_mm ** 2
        return inside.to(x.dtype) * self.thickness_mm


Part = Rod | Wire | Disc


@dataclass(frozen=True)
class Instrument:
    """One instrument: its ``kind`` (a name of `INSTRUMENT_KINDS` or any label) and its parts (paths add)."""

    kind: str
    parts: tuple[Part, ...]


def _point(name: str, p) -> None:
    if len(p) != 2:
        raise InputError(f"{name} must be (x, y) in mm, got {p!r}")
    for v in p:
        check_number(name, v, -1e6, 1e6, unit="mm")


def _checks(part, **ranges) -> None:
    """Check a part's fields against ``ranges`` (lengths: > low; angles: >= low) and its material."""
    for name, (low, high) in ranges.items():
        angle = name.endswith("_deg")
        check_number(name, getattr(part, name), low, high, low_open=not angle, unit="deg" if angle else "mm")
    material_check(part.material)


def material_check(name) -> None:
    if name not in material_names():
        raise InputError(f"unknown instrument material {name!r}; choose one of {', '.join(material_names())} "
                         "(DiffRegLogic.physics.tables)")


# ---------------------------------------------------------------------------- rasterisation


@dataclass
class InstrumentPaths:
    """Per-pixel metal paths of some instruments on a detector.

    Attributes:
        paths: {material: (H, W, S*S) mm} the path at each of the S x S samples of each pixel.
        mask: (H, W) bool, True where any sample of the pixel crosses an instrument.
    """

    paths: dict[str, torch.Tensor]
    mask: torch.Tensor

    @property
    def coverage(self) -> float:
        """Fraction of the pixels the instruments touch."""
        return float(self.mask.float().mean())

    def mean_path_mm(self) -> torch.Tensor:
        """(H, W) mm of instrument material along each pixel's rays, averaged over its samples, summed over materials."""
        return sum(p.mean(-1) for p in self.paths.values()) if self.paths else torch.zeros(self.mask.shape)

    def transmission(self, mu_per_mm: dict[str, float]) -> torch.Tensor:
        """(H, W) mean over each pixel's samples of exp(-sum_m mu_m L_m), mu_m in 1/mm (1 where nothing is)."""
        exponent = sum(float(mu_per_mm[m]) * p for m, p in self.paths.items())
        if not self.paths:
            return torch.ones(self.mask.shape, dtype=torch.float64)
        return torch.exp(-exponent).mean(-1)

    def transmission_spectrum(self, mu_per_mm: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, E) transmission per energy bin of the N masked pixels (row-major order); mu_m (E,) in 1/mm."""
        index = self.mask.reshape(-1).nonzero()[:, 0]
        out = None
        for m, p in self.paths.items():
            flat = p.reshape(-1, p.shape[-1])[index].to(torch.float64)  # (N, S*S)
            term = flat[..., None] * mu_per_mm[m].to(torch.float64)  # (N, S*S, E)
            out = term if out is None else out + term
        if out is None:
            return torch.ones(0, 1, dtype=torch.float64)
        return torch.exp(-out).mean(1)


class _Grid:
    """Object-plane coordinates of the S x S samples of each detector pixel."""

    def __init__(self, detector: Detector, magnification: float, supersample: int):
        _, du, dv, cx, cy = (float(v) for v in detector.tensors())
        self.rows, self.cols, self.s = detector.rows, detector.cols, supersample
        self.du, self.dv, self.cx, self.cy, self.m = du, dv, cx, cy, magnification
        self.offsets = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5  # pixels

    def window(self, bounds) -> tuple[int, int, int, int] | None:
        """Pixel ranges (r0, r1, c0, c1), end exclusive, covering object-plane ``bounds``; None when off the detector."""
        x0, x1, y0, y1 = bounds
        c0 = max(0, math.floor(x0 * self.m / self.du + self.cx - 0.5))
        c1 = min(self.cols, math.ceil(x1 * self.m / self.du + self.cx + 0.5) + 1)
        r0 = max(0, math.floor(y0 * self.m / self.dv + self.cy - 0.5))
        r1 = min(self.rows, math.ceil(y1 * self.m / self.dv + self.cy + 0.5) + 1)
        return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None

    def coords(self, r0: int, r1: int, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) object-plane mm, each (r1 - r0, c1 - c0, S*S), float64."""
        cols = torch.arange(c0, c1, dtype=torch.float64)[:, None] + self.offsets[None, :]  # (w, S)
        rows = torch.arange(r0, r1, dtype=torch.float64)[:, None] + self.offsets[None, :]  # (h, S)
        x = ((cols - self.cx) * self.du / self.m)[None, :, None, :]  # (1, w, 1, S): column offset varies fastest
        y = ((rows - self.cy) * self.dv / self.m)[:, None, :, None]  # (h, 1, S, 1)
        h, w = r1 - r0, c1 - c0
        s = self.s
        return x.expand(h, w, s, s).reshape(h, w, s * s), y.expand(h, w, s, s).reshape(h, w, s * s)


def _add_part(grid: _Grid, part: Part, paths: dict[str, torch.Tensor]) -> None:
    """Add ``part``'s paths into ``paths`` (a wire: segment by segment, the longest path of the segments per sample)."""
    pieces = part.segments() if isinstance(part, Wire) else [part]
    window = grid.window(part.bounds())
    if window is None:
        return
    r0, r1, c0, c1 = window
    local = torch.zeros(r1 - r0, c1 - c0, grid.s * grid.s, dtype=torch.float64)
    for piece in pieces:  # each piece on its own (small) window; a wire's segments overlap at joints: max, not sum
        w = grid.window(piece.bounds())
        if w is None:
            continue
        x, y = grid.coords(*w)
        region = local[w[0] - r0:w[1] - r0, w[2] - c0:w[3] - c0]
        region.copy_(torch.maximum(region, piece.path_mm(x, y)))
    if part.material not in paths:
        paths[part.material] = torch.zeros(grid.rows, grid.cols, grid.s * grid.s, dtype=torch.float64)
    paths[part.material][r0:r1, c0:c1] += local


def rasterize(instruments: Sequence[Instrument], detector: Detector, magnification: float,
              supersample: int = 3) -> InstrumentPaths:
    """Per-pixel metal paths and mask of ``instruments`` on ``detector`` (paths of different parts add).

    ``magnification`` = SDD / depth of the object plane (> 0); ``supersample``
    samples per pixel side (1..`MAX_SUPERSAMPLE`; 1 samples the pixel centre only).
    """
    if not isinstance(detector, Detector):
        raise InputError(f"detector must be a DiffRegLogic Detector, got {type(detector).__name__}")
    magnification = check_number("magnification", magnification, 1e-3, 1e3)
    supersample = check_number("supersample", supersample, 1, MAX_SUPERSAMPLE, integer=True)
    grid = _Grid(detector, magnification, supersample)
    paths: dict[str, torch.Tensor] = {}
    for instrument in instruments:
        if not isinstance(instrument, Instrument):
            raise InputError(f"instruments must be Instrument objects, got {type(instrument).__name__}")
        for part in instrument.parts:
            _add_part(grid, part, paths)
    mask = torch.zeros(detector.shape, dtype=torch.bool)
    for p in paths.values():
        mask |= (p > 0).any(-1)
    return InstrumentPaths(paths, mask)
