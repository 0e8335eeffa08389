"""Random instruments for a simulated X-ray: screws, K-wires, wires, ECG electrodes, placed until a coverage.

`Instruments` (the options) and `draw_instruments` place instruments of
`DiffRegLogic.physics.instruments` parts at random, with a
`torch.Generator` the caller seeds (the same seed, the same instruments),
until they cover ``coverage`` of the image. Sizes are object-plane mm (the
plane through the CT centre, see `DiffRegLogic.physics.instruments`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..geometry.detector import Detector
from ..limits import check_number
from .instruments import (MAX_SUPERSAMPLE, Disc, Instrument, InstrumentPaths, Rod, Wire, material_check,
                          rasterize)

INSTRUMENT_KINDS = ("screw", "k_wire", "wire", "electrode")
"""Instrument kinds `draw_instruments` knows (see `Instruments`)."""
MAX_INSTRUMENTS = 500
"""Instruments `draw_instruments` places at most."""
PLACEMENT_FRACTION = 0.7
"""Instrument centres lie in the central fraction of the detector's field (object plane), per side."""
PAD_MATERIAL, PAD_THICKNESS_MM = "aluminium", 1.0
"""An ECG electrode's pad (Ag/AgCl sensor and gel) as 1 mm of aluminium: a faint disc."""
SNAP_RADIUS_MM, SNAP_THICKNESS_MM = 2.0, 1.5
"""An ECG electrode's snap (the metal stud the lead clips to): 4 mm across, 1.5 mm of metal."""


@dataclass(frozen=True)
class Instruments:
    """Options of the random instruments: kinds cycled in order until they cover ``coverage`` of the image.

    Sizes (object plane, uniform in the ranges): ``screw`` a shaft 5-6 mm
    across and 30-40 mm long with a head 1.7x as wide and 4 mm long, tilt
    0-60 deg; ``k_wire`` 1.6-2.0 mm across, 150-250 mm long, tilt 0-30 deg;
    ``wire`` 1 mm across, 150-300 mm along a smoothly curving path (4 mm steps,
    the heading turning by a constant 0-3 deg plus N(0, 8 deg) per step);
    ``electrode`` a pad 10-15 mm across (`PAD_THICKNESS_MM` of
    `PAD_MATERIAL`), a snap (`SNAP_RADIUS_MM`, `SNAP_THICKNESS_MM` of
    ``material``) and a lead wire 0.8 mm across running 120-250 mm away.
    Metal parts are ``material``.

    Args:
        coverage: target fraction of the pixels touched, in (0, 0.5]; an
            instrument that would push the coverage past it is left out, and
            placing stops after as many rejections in a row as there are kinds.
        kinds: which kinds, cycled in this order.
        material: a material of `DiffRegLogic.physics.tables` for the metal parts.
        supersample: samples per pixel side (1..`MAX_SUPERSAMPLE`).
    """

    coverage: float = 0.05
    kinds: tuple[str, ...] = INSTRUMENT_KINDS
    material: str = "titanium"
    supersample: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "coverage", check_number("instrument coverage", self.coverage, 0.0, 0.5,
                                                          low_open=True))
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        if not kinds:
            raise InputError(f"instrument kinds is empty; choose from {', '.join(INSTRUMENT_KINDS)}")
        for kind in kinds:
            if kind not in INSTRUMENT_KINDS:
                raise InputError(f"unknown instrument kind {kind!r}; choose from {', '.join(INSTRUMENT_KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        material_check(self.material)
        object.__setattr__(self, "supersample", check_number("supersample", self.supersample, 1, MAX_SUPERSAMPLE,
                                                             integer=True))


def _u(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _n(generator: torch.Generator, sigma: float) -> float:
    return sigma * float(torch.randn((), generator=generator, dtype=torch.float64))


def _curve(generator, start, heading_deg, length_mm, step_mm=4.0, bend_deg=3.0, wobble_deg=8.0):
    """Points (mm) of a smooth random curve from ``start``: a constant turn plus a random wobble per step."""
    turn = _u(generator, -bend_deg, bend_deg)
    x, y, heading = start[0], start[1], math.radians(heading_deg)
    points = [(x, y)]
    for _ in range(max(1, int(round(length_mm / step_mm)))):
        heading += math.radians(turn + _n(generator, wobble_deg))
        x, y = x + step_mm * math.cos(heading), y + step_mm * math.sin(heading)
        points.append((x, y))
    return tuple(points)


def make_instrument(kind: str, center: tuple[float, float], generator: torch.Generator,
                    material: str = "titanium") -> Instrument:
    """One random instrument of ``kind`` centred at ``center`` (object-plane mm); sizes as `Instruments` says."""
    angle = _u(generator, 0.0, 360.0)
    if kind == "screw":
        radius, length, tilt = _u(generator, 2.5, 3.0), _u(generator, 30.0, 40.0), _u(generator, 0.0, 60.0)
        shaft = Rod(center, angle, tilt, length, radius, material)
        back = (length + 4.0) / 2 * math.cos(math.radians(tilt))  # the head sits on one end of the shaft's projection
        head_center = (center[0] - back * math.cos(math.radians(angle)), center[1] - back * math.sin(math.radians(angle)))
        return Instrument(kind, (shaft, Rod(head_center, angle, tilt, 4.0, 1.7 * radius, material)))
    if kind == "k_wire":
        return Instrument(kind, (Rod(center, angle, _u(generator, 0.0, 30.0), _u(generator, 150.0, 250.0),
                                     _u(generator, 0.8, 1.0), material),))
    if kind == "wire":
        length = _u(generator, 150.0, 300.0)
        half = _curve(generator, center, angle, length / 2)
        other = _curve(generator, center, angle + 180.0, length / 2)
        return Instrument(kind, (Wire(tuple(reversed(other)) + half[1:], 0.5, material),))
    if kind == "electrode":
        pad = Disc(center, _u(generator, 5.0, 7.5), PAD_THICKNESS_MM, PAD_MATERIAL)
        snap = Disc(center, SNAP_RADIUS_MM, SNAP_THICKNESS_MM, material)
        lead = Wire(_curve(generator, center, angle, _u(generator, 120.0, 250.0), bend_deg=2.0, wobble_deg=5.0),
                    0.4, material)
        return Instrument(kind, (pad, snap, lead))
    raise InputError(f"unknown instrument kind {kind!r}; choose from {', '.join(INSTRUMENT_KINDS)}")


def draw_instruments(options: Instruments, detector: Detector, magnification: float,
                     generator: torch.Generator) -> tuple[tuple[Instrument, ...], InstrumentPaths]:
    """Random instruments covering up to ``options.coverage`` of ``detector``, and their rasterised paths.

    Centres are uniform in the central `PLACEMENT_FRACTION` of the field (object
    plane). Deterministic for a given ``generator`` state.
    """
    if not isinstance(options, Instruments):
        raise InputError(f"options must be Instruments, got {type(options).__name__}")
    if not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    magnification = check_number("magnification", magnification, 1e-3, 1e3)
    _, du, dv, _, _ = (float(v) for v in detector.tensors())
    half_x = PLACEMENT_FRACTION * detector.cols * du / magnification / 2
    half_y = PLACEMENT_FRACTION * detector.rows * dv / magnification / 2
    placed: list[Instrument] = []
    union = torch.zeros(detector.shape, dtype=torch.bool)
    total = union.numel()
    rejected, i = 0, 0
    while rejected < len(options.kinds) and len(placed) < MAX_INSTRUMENTS:
        kind = options.kinds[i % len(options.kinds)]
        i += 1
        center = (_u(generator, -half_x, half_x), _u(generator, -half_y, half_y))
        instrument = make_instrument(kind, center, generator, options.material)
        mask = rasterize([instrument], detector, magnification, options.supersample).mask
        grown = union | mask
        if float(grown.sum()) / total > options.coverage or not mask.any():
            rejected += 1
            continue
        rejected = 0
        placed.append(instrument)
        union = grown
    return tuple(placed), rasterize(placed, detector, magnification, options.supersample)
