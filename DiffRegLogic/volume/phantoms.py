"""Synthetic CT phantoms generated in code (no download).

`chest_phantom` is the embedded default: a torso-like volume in Hounsfield
units with air, soft tissue, two unequal lungs, a heart, ribs, a sternum, a
spine with vertebral bodies and spinous processes, a right scapula and a
fiducial bead. It is deliberately asymmetric (left/right, anterior/posterior,
head/feet) so that every rigid pose gives a distinct DRR.

Its anatomy can vary: ``chest_phantom(anatomy=PhantomAnatomy(...))`` or
``varied_chest_phantom(seed)`` (see `phantom_anatomy`) scale the body, move
the organs, bend the spine, space the ribs and change bone and soft-tissue
HU, on the same grid, so that many "patients" can be drawn for training.
Structures are evaluated on their bounding blocks only (fast on large grids).

Also simple shapes with closed-form line integrals for tests.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .ct import Volume
from .hu import HUToMu
from .phantom_anatomy import PhantomAnatomy, sample_anatomy, spine_offset_mm


def grid_affine(shape_ijk, spacing, origin=None) -> torch.Tensor:
    """Axis-aligned ijk->RAS affine centred on the RAS origin unless ``origin`` is given."""
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = torch.diag(torch.as_tensor(spacing, dtype=torch.float64))
    if origin is None:
        origin = [-(n - 1) / 2.0 * s for n, s in zip(shape_ijk, spacing)]
    affine[:3, 3] = torch.as_tensor(origin, dtype=torch.float64)
    return affine


def world_coordinates(shape_ijk, affine: torch.Tensor) -> torch.Tensor:
    """RAS coordinates (K, J, I, 3) of every voxel centre."""
    ni, nj, nk = shape_ijk
    k, j, i = torch.meshgrid(
        torch.arange(nk, dtype=torch.float64), torch.arange(nj, dtype=torch.float64),
        torch.arange(ni, dtype=torch.float64), indexing="ij",
    )
    ijk = torch.stack([i, j, k], -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


class _Axes:
    """Voxel-centre coordinates of an axis-aligned grid, one tensor per axis, broadcastable to (K, J, I).

    x (1, 1, I), y (1, J, 1), z (K, 1, 1) in RAS mm, the same numbers `world_coordinates` gives.
    """

    def __init__(self, shape_ijk, affine: torch.Tensor):
        ni, nj, nk = shape_ijk
        self.shape = (nk, nj, ni)
        axis = [torch.arange(n, dtype=torch.float64) * affine[d, d] + affine[d, 3] for d, n in enumerate(shape_ijk)]
        self.x, self.y, self.z = axis[0].reshape(1, 1, ni), axis[1].reshape(1, nj, 1), axis[2].reshape(nk, 1, 1)

    def block(self, lo, hi, margin_mm: float = 1.0):
        """``(slices, x, y, z)`` of the voxels whose centres lie in the RAS box [lo, hi] (mm, widened by
        ``margin_mm``), with x, y, z that box's coordinates; None when no voxel centre is in it.

        Structures are evaluated on their block only: the same numbers as on the whole grid, far fewer of them.
        """
        slices = []
        for axis, low, high in zip((self.z, self.y, self.x), lo[::-1], hi[::-1]):
            inside = ((axis.flatten() >= low - margin_mm) & (axis.flatten() <= high + margin_mm)).nonzero()
            if inside.numel() == 0:
                return None
            slices.append(slice(int(inside[0]), int(inside[-1]) + 1))
        k, j, i = slices
        return (k, j, i), self.x[..., i], self.y[:, j], self.z[k]


def _ellipsoid(q, center, radii) -> torch.Tensor:
    x, y, z = q
    return (((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2
            + ((z - center[2]) / radii[2]) ** 2 <= 1)


def _box(q, lo, hi) -> torch.Tensor:
    x, y, z = q
    return (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])


def _paint(hu: torch.Tensor, slices, mask: torch.Tensor, value: float) -> None:
    view = hu[slices]
    view[mask.expand(view.shape)] = value


def _check_anatomy(anatomy) -> PhantomAnatomy:
    if anatomy is None:
        return PhantomAnatomy()
    if not isinstance(anatomy, PhantomAnatomy):
        raise InputError(f"anatomy must be a PhantomAnatomy (or None for the default phantom), got "
                         f"{type(anatomy).__name__}; make one with PhantomAnatomy(...) or sample_anatomy(seed)")
    return anatomy


def gaussian_smooth(volume: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """Separable Gaussian blur of a (K, J, I) tensor (edges replicated)."""
    if sigma_voxels <= 0:
        return volume
    radius = max(1, int(3 * sigma_voxels + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype)
    kernel = torch.exp(-0.5 * (x / sigma_voxels) ** 2)
    kernel = kernel / kernel.sum()
    out = volume[None, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = radius
        out = torch.nn.functional.conv3d(torch.nn.functional.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out[0, 0]


def chest_phantom_hu(shape_ijk=(128, 112, 96), spacing=(2.6, 2.6, 3.0),
                     anatomy: PhantomAnatomy | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hounsfield units (K, J, I) float32 and ijk->RAS affine (4, 4) float64 of the chest phantom.

    The default grid covers about 333 x 291 x 288 mm (R-L x A-P x S-I),
    centred on the RAS origin. ``anatomy`` varies the patient (see
    `PhantomAnatomy`); None (or ``PhantomAnatomy()``) is the embedded phantom,
    to the bit.
    """
    a = _check_anatomy(anatomy)
    affine = grid_affine(shape_ijk, spacing)
    g = _Axes(shape_ijk, affine)
    sx, sy = a.body_width_scale, a.body_depth_scale
    soft, bone = a.soft_tissue_hu_offset, a.bone_density_scale
    hu = torch.full(g.shape, -1000.0, dtype=torch.float64)

    def region(lo, hi, offset=(0.0, 0.0, 0.0)):
        """Block of the body-frame box [lo, hi] moved by ``offset`` (world mm), and its body-frame coordinates."""
        found = g.block((lo[0] * sx + offset[0], lo[1] * sy + offset[1], lo[2] + offset[2]),
                        (hi[0] * sx + offset[0], hi[1] * sy + offset[1], hi[2] + offset[2]))
        if found is None:
            return None, None
        slices, x, y, z = found
        return slices, ((x - offset[0]) / sx, (y - offset[1]) / sy, z - offset[2])

    def ellipsoid(center, radii, value, offset=(0.0, 0.0, 0.0), clip=True):
        slices, q = region([c - r for c, r in zip(center, radii)], [c + r for c, r in zip(center, radii)], offset)
        if slices is not None:
            mask = _ellipsoid(q, center, radii)
            _paint(hu, slices, mask & body[slices] if clip else mask, value)

    # Body frame (x / width scale, y / depth scale, z): R, A, S (mm).
    x, y, z = g.x / sx, g.y / sy, g.z
    # Torso: elliptical cylinder, slightly wider at the bottom; flat back.
    half_width = 150 + 0.08 * (-z).clamp_min(0)
    body = ((x / half_width) ** 2 + ((y - 5) / 110) ** 2 <= 1) & (y > -100) & (z.abs() <= 135)
    hu[body] = 30.0 + soft
    # Lungs: the right lung (+x) is larger and reaches lower than the left.
    ellipsoid((62, 5, 20), (52, 70, 105), -820.0, a.right_lung_offset_mm)
    ellipsoid((-60, 5, 35), (45, 65, 85), -820.0, a.left_lung_offset_mm)
    # Heart: left-anterior, overlapping the left lung.
    ellipsoid((-22, 35, -5), (50, 42, 48), 45.0 + soft, a.heart_offset_mm)
    # Liver: right, below the diaphragm.
    ellipsoid((55, 10, -110), (80, 75, 40), 60.0 + soft, a.liver_offset_mm)
    # Ribs: 9 elliptical rings (every 24 mm by default), 7 mm thick, tilted; two left ribs are short.
    for n in range(9):
        level = 12 + (n - 4) * a.rib_spacing_mm
        slices, q = region((-138, -93, level - 15.5), (138, 70, level + 12.5))
        if slices is None:
            continue
        x, y, z = q
        ring = ((x / 138) ** 2 + ((y - 5) / 98) ** 2 <= 1) & ((x / 128) ** 2 + ((y - 5) / 89) ** 2 > 1)
        rib = ring & ((z - level - 0.12 * y).abs() <= 3.5) & (y < 70)
        if n in (2, 5):
            rib = rib & ~((x < 0) & (y > 0))
        _paint(hu, slices, rib, 750.0 * bone)
    # Sternum (anterior, upper half) and a clavicle on each side, unequal.
    slices, q = region((-14, 88, -20), (14, 100, 95))
    if slices is not None:
        _paint(hu, slices, _box(q, (-14, 88, -20), (14, 100, 95)), 600.0 * bone)
    ellipsoid((60, 55, 118), (70, 8, 8), 800.0 * bone, clip=False)
    ellipsoid((-55, 55, 112), (62, 8, 8), 800.0 * bone, clip=False)
    # Spine: vertebral bodies with cortical shell, discs, spinous processes; its centre line bends.
    lat, sag = abs(a.spine_lateral_bend_mm), abs(a.spine_sagittal_bend_mm)
    for level in range(-120, 130, 27):
        found = g.block((-17 * sx - lat, -95 * sy - sag, level - 10.5), (17 * sx + lat, -38 * sy + sag, level + 10.5))
        if found is None:
            continue
        slices, x, y, z = found
        dx, dy = spine_offset_mm(a, z)
        x, y = (x - dx) / sx, (y - dy) / sy
        inside = body[slices]
        body_v = ((x**2 + (y + 55) ** 2) <= 17**2) & ((z - level).abs() <= 10.5)
        core = ((x**2 + (y + 55) ** 2) <= 13**2) & ((z - level).abs() <= 8)
        _paint(hu, slices, body_v & inside, 900.0 * bone)
        _paint(hu, slices, core & inside, 350.0 * bone)
        _paint(hu, slices, _box((x, y, z), (-4, -95, level - 8), (4, -72, level + 6)) & inside, 700.0 * bone)
    # Right scapula: a thin tilted plate behind the right ribs.
    slices, q = region((60, -94.75, 0), (130, -69.25, 110))
    if slices is not None:
        x, y, z = q
        scap = ((x - 95).abs() <= 35) & ((y + 82 + 0.25 * (x - 95)).abs() <= 4) & (z > 0) & (z < 110)
        _paint(hu, slices, scap & body[slices], 650.0 * bone)
    # Fiducial bead (dense, 6 mm radius whatever the body size), anterior-left-inferior.
    center = (-70 * sx, 60 * sy, -80)
    found = g.block([c - 6 for c in center], [c + 6 for c in center])
    if found is not None:
        _paint(hu, found[0], _ellipsoid(found[1:], center, (6, 6, 6)), 1800.0)
    return hu.float(), affine


def chest_phantom(shape_ijk=(128, 112, 96), spacing=(2.6, 2.6, 3.0), hu_to_mu: HUToMu | None = None,
                  smooth_sigma_voxels: float = 0.0, dtype: torch.dtype = torch.float32,
                  anatomy: PhantomAnatomy | None = None) -> Volume:
    """The embedded default CT as a `Volume` (mu in 1/mm), optionally Gaussian-smoothed.

    ``anatomy`` varies the patient (`PhantomAnatomy`; None: the embedded phantom).
    """
    hu, affine = chest_phantom_hu(shape_ijk, spacing, anatomy=anatomy)
    hu = gaussian_smooth(hu.double(), smooth_sigma_voxels)
    return Volume.from_hu(hu, affine, hu_to_mu, dtype=dtype)


def varied_chest_phantom(seed: int, **kwargs) -> Volume:
    """`chest_phantom` of the patient ``sample_anatomy(seed)``; ``kwargs`` go to `chest_phantom` (grid, dtype, ...).

    Different seeds are different patients (body size, organ positions, bone density, spine curvature,
    rib spacing, soft-tissue HU) on the same grid; the same seed is the same volume.
    """
    if "anatomy" in kwargs:
        raise InputError("varied_chest_phantom draws the anatomy from its seed: pass either a seed here or "
                         "anatomy= to chest_phantom, not both")
    return chest_phantom(anatomy=sample_anatomy(seed), **kwargs)
