"""Varied chest phantom anatomy: each property measured from the volume, not from the code that made it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.volume.phantom_anatomy import SAMPLED_RANGES, PhantomAnatomy, sample_anatomy
from DiffRegLogic.volume.phantoms import chest_phantom, chest_phantom_hu, varied_chest_phantom

SMALL = dict(shape_ijk=(40, 36, 32), spacing=(8.4, 8.2, 9.2))  # the default extent, coarse


def _old_chest_phantom_hu(shape_ijk, spacing):
    """The phantom as it was before anatomy existed (whole-grid masks), kept here as the reference."""
    ni, nj, nk = shape_ijk
    origin = [-(n - 1) / 2.0 * s for n, s in zip(shape_ijk, spacing)]
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = torch.diag(torch.as_tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.as_tensor(origin, dtype=torch.float64)
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (nk, nj, ni)), indexing="ij")
    p = torch.stack([i, j, k], -1) @ affine[:3, :3].T + affine[:3, 3]
    x, y, z = p[..., 0], p[..., 1], p[..., 2]

    def ell(c, r):
        return (((p - torch.tensor(c, dtype=p.dtype)) / torch.tensor(r, dtype=p.dtype)) ** 2).sum(-1) <= 1

    def box(lo, hi):
        return ((p >= torch.tensor(lo, dtype=p.dtype)) & (p <= torch.tensor(hi, dtype=p.dtype))).all(-1)

    hu = torch.full(p.shape[:-1], -1000.0, dtype=torch.float64)
    half_width = 150 + 0.08 * (-z).clamp_min(0)
    body = ((x / half_width) ** 2 + ((y - 5) / 110) ** 2 <= 1) & (y > -100) & (z.abs() <= 135)
    hu[body] = 30.0
    hu[(ell((62, 5, 20), (52, 70, 105)) | ell((-60, 5, 35), (45, 65, 85))) & body] = -820.0
    hu[ell((-22, 35, -5), (50, 42, 48)) & body] = 45.0
    hu[ell((55, 10, -110), (80, 75, 40)) & body] = 60.0
    ring = ((x / 138) ** 2 + ((y - 5) / 98) ** 2 <= 1) & ((x / 128) ** 2 + ((y - 5) / 89) ** 2 > 1)
    for n, level in enumerate(range(-84, 109, 24)):
        rib = ring & ((z - level - 0.12 * y).abs() <= 3.5) & (y < 70)
        if n in (2, 5):
            rib = rib & ~((x < 0) & (y > 0))
        hu[rib] = 750.0
    hu[box((-14, 88, -20), (14, 100, 95))] = 600.0
    hu[ell((60, 55, 118), (70, 8, 8))] = 800.0
    hu[ell((-55, 55, 112), (62, 8, 8))] = 800.0
    for level in range(-120, 130, 27):
        hu[((x**2 + (y + 55) ** 2) <= 17**2) & ((z - level).abs() <= 10.5)] = 900.0
        hu[((x**2 + (y + 55) ** 2) <= 13**2) & ((z - level).abs() <= 8)] = 350.0
        hu[box((-4, -95, level - 8), (4, -72, level + 6))] = 700.0
    scap = ((x - 95).abs() <= 35) & ((y + 82 + 0.25 * (x - 95)).abs() <= 4) & (z > 0) & (z < 110)
    hu[scap & body] = 650.0
    hu[ell((-70, 60, -80), (6, 6, 6))] = 1800.0
    return hu.float(), affine


@pytest.mark.parametrize("grid", [SMALL, dict(shape_ijk=(33, 29, 25), spacing=(10.4, 10.4, 12.0))])
def test_default_is_bit_identical_to_the_phantom_before_anatomy(grid):
    old, old_affine = _old_chest_phantom_hu(**grid)
    for anatomy in ({}, {"anatomy": None}, {"anatomy": PhantomAnatomy()}):
        hu, affine = chest_phantom_hu(**grid, **anatomy)
        assert hu.dtype == torch.float32 and torch.equal(hu, old) and torch.equal(affine, old_affine)
    assert (old > 500).sum() > 50 and (old == -820).sum() > 500  # the grid resolves bone and lungs


def test_default_grid_same_with_none_and_default_anatomy():
    plain = chest_phantom()
    for anatomy in (None, PhantomAnatomy()):
        volume = chest_phantom(anatomy=anatomy)
        assert torch.equal(volume.mu, plain.mu) and torch.equal(volume.affine, plain.affine)


def test_same_seed_same_patient_different_seed_different_patient():
    a, b, c = (varied_chest_phantom(s, **SMALL) for s in (3, 3, 4))
    assert torch.equal(a.mu, b.mu) and torch.equal(a.affine, c.affine)
    assert sample_anatomy(3) == sample_anatomy(3) != sample_anatomy(4)
    differ = [f.name for f in dataclasses.fields(PhantomAnatomy)
              if getattr(sample_anatomy(3), f.name) != getattr(sample_anatomy(4), f.name)]
    assert len(differ) == len(dataclasses.fields(PhantomAnatomy))
    changed = (a.mu != c.mu).float().mean().item()
    assert changed > 0.02  # a few % of voxels change tissue
    assert torch.equal(chest_phantom(anatomy=sample_anatomy(4), **SMALL).mu, c.mu)
    assert not torch.equal(c.mu, chest_phantom(**SMALL).mu)


def _extent(hu_line: torch.Tensor, spacing: float) -> float:
    """Length (mm) covered by voxels in the body (anything denser than -950 HU) on a 1-D line."""
    return (hu_line > -950).sum().item() * spacing


def _lines(anatomy, step=0.5, dz=90.0):
    """HU along x (at y = 0) and along y (at x = 0), 801 voxels of ``step`` mm, in the slices z = -dz, 0, dz."""
    lateral, _ = chest_phantom_hu((801, 1, 3), (step, step, dz), anatomy=anatomy)
    depth, _ = chest_phantom_hu((1, 801, 3), (step, step, dz), anatomy=anatomy)
    return lateral[:, 0, :], depth[:, :, 0]


def test_body_width_and_depth_scale_the_outline():
    step = 0.5
    z = np.array([-90.0, 0.0, 90.0])
    # Closed form of the torso: half-width 150 + 0.08 max(-z, 0) mm, centre y = 5 mm, A-P radius 110 mm, flat back
    # at y = -100 mm; a body scale stretches it about the RAS origin.
    width_true = 2 * (150 + 0.08 * np.maximum(-z, 0)) * np.sqrt(1 - (5 / 110) ** 2)
    measured = {}
    for name, anatomy in (("ref", None), ("wide", PhantomAnatomy(body_width_scale=1.1)),
                          ("thin", PhantomAnatomy(body_depth_scale=0.9))):
        lateral, depth = _lines(anatomy, step)
        measured[name] = (np.array([_extent(r, step) for r in lateral]), np.array([_extent(r, step) for r in depth]))
    width, depth = measured["ref"]
    assert np.all(np.abs(width - width_true) <= step) and np.all(np.abs(depth - 215.0) <= step)
    wide_w, wide_d = measured["wide"]
    assert np.all(np.abs(wide_w - 1.1 * width) <= 2 * step)  # each extent is within a voxel of its truth
    assert np.all(np.abs(wide_w - 1.1 * width_true) <= step) and np.array_equal(wide_d, depth)
    thin_w, thin_d = measured["thin"]
    assert np.all(np.abs(thin_d - 0.9 * depth) <= 2 * step) and np.all(np.abs(thin_d - 0.9 * 215.0) <= step)
    assert np.array_equal(thin_w, width)  # the line y = 0 is on the scaling centre: its width is unchanged


BONE = (300.0, 1000.0)  # every bone of the phantom (350 .. 900 HU), not the 1800 HU bead, not soft tissue
GRID = dict(shape_ijk=(48, 42, 36), spacing=(6.9, 6.9, 8.0))


@pytest.mark.parametrize("scale", [0.8, 1.2])
def test_bone_density_scales_the_mean_bone_hu(scale):
    ref, _ = chest_phantom_hu(**GRID)
    hu, _ = chest_phantom_hu(**GRID, anatomy=PhantomAnatomy(bone_density_scale=scale))
    bone = (ref >= BONE[0]) & (ref <= BONE[1])
    assert bone.sum() > 1000
    ratio = hu[bone].double().mean() / ref[bone].double().mean()
    assert abs(ratio.item() - scale) < 1e-6
    assert torch.equal(hu[~bone], ref[~bone])  # the bead, soft tissue, lungs and air are untouched
    assert torch.equal(hu[ref == 1800.0], ref[ref == 1800.0]) and (ref == 1800.0).sum() > 0


def test_soft_tissue_offset_moves_soft_tissue_only():
    ref, _ = chest_phantom_hu(**GRID)
    hu, _ = chest_phantom_hu(**GRID, anatomy=PhantomAnatomy(soft_tissue_hu_offset=-15.0))
    soft = (ref > -100) & (ref < 100)
    assert soft.sum() > 10000 and set(torch.unique(ref[soft]).tolist()) == {30.0, 45.0, 60.0}
    assert torch.equal(hu[soft], ref[soft] - 15.0) and torch.equal(hu[~soft], ref[~soft])


def _centroid(mask: torch.Tensor, coordinates) -> np.ndarray:
    """Mean RAS position (mm) of the voxels of a (K, J, I) mask; ``coordinates`` = the (x, y, z) axes."""
    k, j, i = torch.nonzero(mask, as_tuple=True)
    x, y, z = coordinates
    return np.array([x[i].mean().item(), y[j].mean().item(), z[k].mean().item()])


def _axes(shape_ijk, spacing):
    return [torch.arange(n, dtype=torch.float64) * s - (n - 1) / 2 * s for n, s in zip(shape_ijk, spacing)]


def test_heart_moves_by_its_offset_and_with_the_body():
    grid = dict(shape_ijk=(58, 50, 48), spacing=(5.7, 5.9, 6.1))  # off the phantom's round numbers
    offset = np.array([8.0, -6.0, 5.0])
    axes = _axes(**grid)
    ref, _ = chest_phantom_hu(**grid)
    heart_ref = _centroid(ref == 45.0, axes)
    assert np.allclose(heart_ref, (-22, 35, -5), atol=0.5)  # the heart's documented centre
    hu, _ = chest_phantom_hu(**grid, anatomy=PhantomAnatomy(heart_offset_mm=tuple(offset)))
    assert np.allclose(_centroid(hu == 45.0, axes) - heart_ref, offset, atol=1.0)  # within a sixth of a voxel
    assert torch.equal(hu[(ref != 45.0) & (hu != 45.0)], ref[(ref != 45.0) & (hu != 45.0)])  # nothing else moved
    # A body scaled about the RAS origin carries the heart: its centre goes to (1.1 x, 0.9 y, z).
    hu, _ = chest_phantom_hu(**grid, anatomy=PhantomAnatomy(body_width_scale=1.1, body_depth_scale=0.9))
    assert np.allclose(_centroid(hu == 45.0, axes), (-22 * 1.1, 35 * 0.9, -5), atol=1.0)


def _u2(z):  # the documented centre line: bend * u**2, u = clamp((z + 135) / 270, 0, 1)
    return min(max((z + 135) / 270, 0.0), 1.0) ** 2


@pytest.mark.parametrize("lateral, sagittal", [(10.0, 0.0), (-12.0, 8.0), (0.0, -12.0)])
def test_spine_centre_line_bends(lateral, sagittal):
    # z = -141 + 3 k: slice 7 is z = -120, slice 88 is z = 123. x, y spacings off the phantom's round numbers, so
    # that no voxel centre lies on a bone boundary (a 0.03 mm move would flip it).
    shape, spacing = (51, 87, 95), (1.9, 2.3, 3.0)
    x, y, z = _axes(shape, spacing)
    bottom, top = 7, 88
    assert z[bottom].item() == -120.0 and z[top].item() == 123.0  # centres of the lowest and highest vertebrae
    window = (y >= -100) & (y <= -10)  # behind the lungs, in front of the skin; |x| <= 47.5 mm by the grid

    def spine(hu, k):  # centroid (x, y) of the vertebral body: bone in the posterior midline window of slice k,
        # less the 700 HU spinous process (its few voxel columns would weigh in by discretisation)
        mask = (hu[k] >= 300) & (hu[k] != 700) & window[:, None]
        jj, ii = torch.nonzero(mask, as_tuple=True)
        assert 150 < jj.numel() < 300  # a 17 mm radius disc: 908 mm^2 of 4.37 mm^2 pixels
        return np.array([x[ii].mean().item(), y[jj].mean().item()])

    straight, _ = chest_phantom_hu(shape, spacing)
    bent, _ = chest_phantom_hu(shape, spacing, anatomy=PhantomAnatomy(spine_lateral_bend_mm=lateral,
                                                                     spine_sagittal_bend_mm=sagittal))
    assert np.allclose(spine(straight, bottom), spine(straight, top), atol=0.25)  # the default spine is straight
    assert np.allclose(spine(straight, top), (0.0, -55.0), atol=0.25)  # on the documented axis x = 0, y = -55 mm
    moved = (spine(bent, top) - spine(bent, bottom)) - (spine(straight, top) - spine(straight, bottom))
    expected = np.array([lateral, sagittal]) * (_u2(123.0) - _u2(-120.0))
    assert np.allclose(moved, expected, atol=0.5)  # within a quarter voxel
    assert np.abs(expected).max() > 7.0  # and the bend is many voxels
    for k in (bottom, 43, top):  # 43: z = -12 mm, a middle vertebra, where the parabola is a fifth of the bend
        shift = spine(bent, k) - spine(straight, k)
        assert np.allclose(shift, np.array([lateral, sagittal]) * _u2(z[k].item()), atol=0.5), (k, shift)


@pytest.mark.parametrize("rib_spacing", [21.0, 24.0, 27.0])
def test_rib_spacing_measured_along_the_lateral_wall(rib_spacing):
    # A line along z at x = +133 mm, y = 0: inside the rib ring (128 .. 138 mm), away from scapula and clavicles.
    hu, affine = chest_phantom_hu((3, 1, 601), (133.0, 1.0, 0.5), anatomy=PhantomAnatomy(rib_spacing_mm=rib_spacing))
    assert affine[0, 3].item() + 2 * 133.0 == 133.0
    rib = (hu[:, 0, 2] == 750.0).numpy()
    z = np.arange(601) * 0.5 - 150.0
    edges = np.flatnonzero(np.diff(rib.astype(int)))
    starts, ends = edges[::2] + 1, edges[1::2]
    centres = (z[starts] + z[ends]) / 2
    assert len(centres) == 9 and np.allclose(ends - starts + 1, 14, atol=1)  # 9 ribs, 7 mm thick
    assert np.allclose(np.diff(centres), rib_spacing, atol=0.5)
    assert abs(centres[4] - 12.0) <= 0.5  # the fifth rib stays at z = 12 mm


DOCUMENTED = {  # the ranges PhantomAnatomy's docstring promises
    "body_width_scale": (0.85, 1.15), "body_depth_scale": (0.85, 1.15), "heart_offset_mm": (-10, 10),
    "right_lung_offset_mm": (-10, 10), "left_lung_offset_mm": (-10, 10), "liver_offset_mm": (-10, 10),
    "bone_density_scale": (0.8, 1.2), "spine_lateral_bend_mm": (-12, 12), "spine_sagittal_bend_mm": (-12, 12),
    "rib_spacing_mm": (21, 27), "soft_tissue_hu_offset": (-20, 20),
}


def test_sampled_anatomies_stay_in_the_documented_ranges_and_fill_them():
    assert SAMPLED_RANGES == DOCUMENTED
    samples = [sample_anatomy(seed) for seed in range(200)]
    for name, (low, high) in DOCUMENTED.items():
        values = np.array([getattr(s, name) for s in samples], dtype=float).reshape(200, -1)
        assert values.min() >= low and values.max() <= high, name
        span = high - low
        assert values.min(0).max() < low + 0.1 * span and values.max(0).min() > high - 0.1 * span, name
        assert abs(values.mean() - (low + high) / 2) < 0.1 * span, name
    defaults = PhantomAnatomy()
    assert defaults.rib_spacing_mm == 24.0 and defaults.body_width_scale == 1.0 and defaults.heart_offset_mm == (0, 0, 0)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "7", True, None, float("nan")])
def test_bad_seed_is_refused(seed):
    with pytest.raises(InputError, match="seed"):
        sample_anatomy(seed)
    with pytest.raises(InputError, match="seed"):
        varied_chest_phantom(seed, **SMALL)


@pytest.mark.parametrize("fields, message", [
    (dict(body_width_scale=0.0), "body_width_scale"), (dict(body_depth_scale=float("inf")), "body_depth_scale"),
    (dict(heart_offset_mm=(1.0, 2.0)), "three numbers"), (dict(liver_offset_mm="abc"), "three numbers"),
    (dict(left_lung_offset_mm=(0, 0, 99)), r"left_lung_offset_mm\[2\]"), (dict(bone_density_scale=-1), "bone"),
    (dict(spine_lateral_bend_mm="3"), "spine_lateral_bend_mm"), (dict(rib_spacing_mm=5.0), "rib_spacing_mm"),
    (dict(soft_tissue_hu_offset=1e6), "soft_tissue_hu_offset"),
])
def test_bad_anatomy_is_refused(fields, message):
    with pytest.raises(InputError, match=message):
        PhantomAnatomy(**fields)


def test_wrong_anatomy_argument_is_refused():
    with pytest.raises(InputError, match="PhantomAnatomy"):
        chest_phantom_hu(**SMALL, anatomy={"body_width_scale": 1.1})
    with pytest.raises(InputError, match="not both"):
        varied_chest_phantom(1, anatomy=PhantomAnatomy(), **SMALL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PhantomAnatomy().bone_density_scale = 2.0
