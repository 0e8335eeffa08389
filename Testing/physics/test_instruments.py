"""Instruments as metal path lengths on the detector, and their random placement.

Truth: a flat rod's path is the chord 2 sqrt(r^2 - b^2) of its circle; a
tilted rod's path is measured by marching each ray through the 3D cylinder
in 1 um steps; a wire's distance by a dense sampling of its polyline; the
metal volume (sum of mean path x pixel area in the object plane) of a disc
and of a flat rod is pi r^2 t and pi r^2 L; the transmission of a pixel a
disc covers is exp(-mu t).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.physics.instrument_placement import INSTRUMENT_KINDS, Instruments, draw_instruments
from DiffRegLogic.physics.instruments import Disc, Instrument, Rod, Wire, rasterize

MAG = 2.0
DETECTOR = Detector(rows=60, cols=80, sdd=1000.0, pixel_spacing=(1.0, 1.0))  # object plane: 0.5 mm pixels


def _centres(detector=DETECTOR, mag=MAG):
    """Object-plane (x, y) mm of the pixel centres, each (H, W), numpy."""
    c = np.arange(detector.cols) - (detector.cols - 1) / 2
    r = np.arange(detector.rows) - (detector.rows - 1) / 2
    x = c[None, :] * float(detector.pixel_spacing[1]) / mag
    y = r[:, None] * float(detector.pixel_spacing[0]) / mag
    return np.broadcast_to(x, (detector.rows, detector.cols)), np.broadcast_to(y, (detector.rows, detector.cols))


def _paths(part, supersample=1):
    out = rasterize([Instrument("test", (part,))], DETECTOR, MAG, supersample)
    return out, out.paths[part.material][..., 0].numpy() if supersample == 1 else None


def test_a_flat_rod_has_the_chord_of_its_circle_as_path():
    rod = Rod((1.3, -0.7), 30.0, 0.0, 20.0, 3.0)
    _, path = _paths(rod)
    x, y = _centres()
    phi = math.radians(30.0)
    a = (x - 1.3) * math.cos(phi) + (y + 0.7) * math.sin(phi)
    b = -(x - 1.3) * math.sin(phi) + (y + 0.7) * math.cos(phi)
    expected = np.where((np.abs(a) <= 10.0) & (np.abs(b) <= 3.0), 2 * np.sqrt(np.clip(9.0 - b * b, 0, None)), 0.0)
    np.testing.assert_allclose(path, expected, atol=1e-9)
    assert path.max() == pytest.approx(6.0, abs=0.01)  # the core: the diameter


def _marched(rod: Rod, x: float, y: float, dz: float = 1e-3) -> float:
    """Path of the ray through (x, y) parallel to z, by marching through the 3D cylinder."""
    phi, beta = math.radians(rod.angle_deg), math.radians(rod.tilt_deg)
    axis = np.array([math.cos(beta) * math.cos(phi), math.cos(beta) * math.sin(phi), math.sin(beta)])
    z = np.arange(-60.0, 60.0, dz) + dz / 2
    p = np.stack([np.full_like(z, x - rod.center[0]), np.full_like(z, y - rod.center[1]), z], -1)
    s = p @ axis
    radial = np.linalg.norm(p - s[:, None] * axis, axis=1)
    return float(((radial <= rod.radius_mm) & (np.abs(s) <= rod.length_mm / 2)).sum() * dz)


@pytest.mark.parametrize("tilt, length", [(40.0, 30.0), (70.0, 36.0), (80.0, 8.0)])
def test_a_tilted_rod_matches_a_ray_march_through_the_cylinder(tilt, length):
    rod = Rod((0.0, 0.0), 25.0, tilt, length, 2.8)
    x, y = _centres()
    out = rasterize([Instrument("screw", (rod,))], DETECTOR, MAG, 1).paths["titanium"][..., 0].numpy()
    rng = np.random.default_rng(3)
    picks = [(30, 40), (29, 41)] + [tuple(rng.integers([0, 0], [60, 80])) for _ in range(10)]
    for r, c in picks:
        assert out[r, c] == pytest.approx(_marched(rod, x[r, c], y[r, c]), abs=3e-3)
    # at the centre the path is the shorter of the radial 2r / cos(tilt) and the axial L / sin(tilt) chord
    t = math.radians(tilt)
    core = min(2 * 2.8 / math.cos(t), length / math.sin(t))
    assert out.max() == pytest.approx(core, rel=0.02)


def test_a_wire_path_follows_its_distance_to_a_densely_sampled_polyline():
    points = ((-15.0, -8.0), (-2.0, 6.0), (9.0, 1.0), (16.0, 10.0))
    wire = Wire(points, 0.5)
    _, path = _paths(wire)
    x, y = _centres()
    dense = np.concatenate([np.linspace(p, q, 1500) for p, q in zip(points[:-1], points[1:])])  # < 0.02 mm apart
    d = np.stack([np.sqrt((x[r, :, None] - dense[:, 0]) ** 2 + (y[r, :, None] - dense[:, 1]) ** 2).min(-1)
                  for r in range(x.shape[0])])
    expected = 2 * np.sqrt(np.clip(0.25 - d * d, 0, None))
    np.testing.assert_allclose(path, expected, atol=0.02)
    assert (path > 0).sum() > 50


def test_metal_volume_of_a_disc_and_of_a_flat_rod_is_their_closed_form():
    pixel_area = (1.0 / MAG) ** 2  # mm^2 in the object plane
    disc = Disc((2.0, 1.0), 6.0, 1.5)
    rod = Rod((-3.0, 2.0), 75.0, 0.0, 24.0, 2.5)
    for part, volume in ((disc, math.pi * 36.0 * 1.5), (rod, math.pi * 2.5 ** 2 * 24.0)):
        out = rasterize([Instrument("x", (part,))], DETECTOR, MAG, supersample=8)
        measured = float(out.mean_path_mm().sum()) * pixel_area
        assert measured == pytest.approx(volume, rel=0.01)


def test_transmission_of_a_covered_pixel_is_exp_minus_mu_t_and_parts_add():
    disc = Disc((0.0, 0.0), 8.0, 1.5)
    snap = Disc((0.0, 0.0), 2.0, 2.0, "aluminium")
    out = rasterize([Instrument("electrode", (disc, snap))], DETECTOR, MAG, supersample=3)
    t = out.transmission({"titanium": 0.35, "aluminium": 0.075})
    assert float(t[30, 40]) == pytest.approx(math.exp(-0.35 * 1.5 - 0.075 * 2.0), rel=1e-12)
    assert float(t[30, 55]) == pytest.approx(math.exp(-0.35 * 1.5), rel=1e-12)  # x = 7.25 mm: pad only
    assert float(t[0, 0]) == 1.0 and not bool(out.mask[0, 0])
    spectrum = out.transmission_spectrum({"titanium": torch.tensor([0.35, 0.7]), "aluminium": torch.tensor([0.075, 0.1])})
    index = int(out.mask.reshape(-1)[: 30 * 80 + 40].sum())  # the masked pixels before (30, 40), row-major
    assert spectrum[index].tolist() == pytest.approx([math.exp(-0.35 * 1.5 - 0.15), math.exp(-0.7 * 1.5 - 0.2)])


def test_draw_instruments_fills_up_to_the_coverage_reproducibly():
    detector = Detector(rows=64, cols=64, sdd=1020.0, pixel_spacing=(9.375, 9.375))
    options = Instruments(coverage=0.05)
    placed, paths = draw_instruments(options, detector, 1.7, torch.Generator().manual_seed(5))
    again, paths_again = draw_instruments(options, detector, 1.7, torch.Generator().manual_seed(5))
    _, other = draw_instruments(options, detector, 1.7, torch.Generator().manual_seed(6))
    assert 0.025 <= paths.coverage <= 0.05
    assert placed == again and torch.equal(paths.mask, paths_again.mask)
    assert not torch.equal(paths.mask, other.mask)
    assert {i.kind for i in placed} == set(INSTRUMENT_KINDS)
    assert paths.coverage == pytest.approx(float(paths.mask.float().mean()))
    screw = next(i for i in placed if i.kind == "screw")
    assert 2.5 <= screw.parts[0].radius_mm <= 3.0 and 30.0 <= screw.parts[0].length_mm <= 40.0
    k_wire = next(i for i in placed if i.kind == "k_wire")
    assert 1.6 <= 2 * k_wire.parts[0].radius_mm <= 2.0 and k_wire.parts[0].length_mm >= 150.0


@pytest.mark.parametrize("make", [
    lambda: Instruments(coverage=0.0),
    lambda: Instruments(coverage=0.6),
    lambda: Instruments(kinds=("stent",)),
    lambda: Instruments(kinds=()),
    lambda: Instruments(material="steel"),
    lambda: Instruments(supersample=9),
    lambda: Rod((0, 0), 0.0, 90.0, 10.0, 1.0),
    lambda: Rod((0, 0), 0.0, 0.0, 10.0, 0.0),
    lambda: Rod((0, 0, 0), 0.0, 0.0, 10.0, 1.0),
    lambda: Wire(((0.0, 0.0),), 0.5),
    lambda: Disc((0, 0), 5.0, -1.0),
    lambda: rasterize([], DETECTOR, 0.0),
    lambda: rasterize(["screw"], DETECTOR, 1.0),
    lambda: draw_instruments(Instruments(), DETECTOR, 1.0, 0),
])
def test_bad_instrument_parameters_are_input_errors(make):
    with pytest.raises(InputError):
        make()
