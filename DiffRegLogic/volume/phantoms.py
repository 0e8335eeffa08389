"""Synthetic CT phantoms generated in code (no download).

`chest_phantom` is the embedded default: a torso-like volume in Hounsfield
units with air, soft tissue, two unequal lungs, a heart, ribs, a sternum, a
spine with vertebral bodies and spinous processes, a right scapula and a
fiducial bead. It is deliberately asymmetric (left/right, anterior/posterior,
head/feet) so that every rigid pose gives a distinct DRR.

Also simple shapes with closed-form line integrals for tests.
"""

from __future__ import annotations

import torch

from .ct import Volume
from .hu import HUToMu


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


def _ellipsoid(p: torch.Tensor, center, radii) -> torch.Tensor:
    c = torch.as_tensor(center, dtype=p.dtype)
    r = torch.as_tensor(radii, dtype=p.dtype)
    return (((p - c) / r) ** 2).sum(-1) <= 1


def _box(p: torch.Tensor, lo, hi) -> torch.Tensor:
    lo = torch.as_tensor(lo, dtype=p.dtype)
    hi = torch.as_tensor(hi, dtype=p.dtype)
    return ((p >= lo) & (p <= hi)).all(-1)


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


def chest_phantom_hu(shape_ijk=(128, 112, 96), spacing=(2.6, 2.6, 3.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Hounsfield units (K, J, I) and ijk->RAS affine of the chest phantom.

    The default grid covers about 333 x 291 x 288 mm (R-L x A-P x S-I),
    centred on the RAS origin.
    """
    affine = grid_affine(shape_ijk, spacing)
    p = world_coordinates(shape_ijk, affine)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]  # R, A, S (mm)
    hu = torch.full(p.shape[:-1], -1000.0, dtype=torch.float64)

    # Torso: elliptical cylinder, slightly wider at the bottom; flat back.
    half_width = 150 + 0.08 * (-z).clamp_min(0)
    body = ((x / half_width) ** 2 + ((y - 5) / 110) ** 2 <= 1) & (y > -100) & (z.abs() <= 135)
    hu[body] = 30.0
    # Lungs: the right lung (+x) is larger and reaches lower than the left.
    right_lung = _ellipsoid(p, (62, 5, 20), (52, 70, 105))
    left_lung = _ellipsoid(p, (-60, 5, 35), (45, 65, 85))
    hu[(right_lung | left_lung) & body] = -820.0
    # Heart: left-anterior, overlapping the left lung.
    hu[_ellipsoid(p, (-22, 35, -5), (50, 42, 48)) & body] = 45.0
    # Liver: right, below the diaphragm.
    hu[_ellipsoid(p, (55, 10, -110), (80, 75, 40)) & body] = 60.0
    # Ribs: elliptical rings every 24 mm, 7 mm thick; two left ribs are short.
    ring = ((x / 138) ** 2 + ((y - 5) / 98) ** 2 <= 1) & ((x / 128) ** 2 + ((y - 5) / 89) ** 2 > 1)
    for n, level in enumerate(range(-84, 109, 24)):
        rib = ring & ((z - level - 0.12 * y).abs() <= 3.5) & (y < 70)
        if n in (2, 5):
            rib = rib & ~((x < 0) & (y > 0))
        hu[rib] = 750.0
    # Sternum (anterior, upper half) and a clavicle on each side, unequal.
    hu[_box(p, (-14, 88, -20), (14, 100, 95))] = 600.0
    hu[_ellipsoid(p, (60, 55, 118), (70, 8, 8))] = 800.0
    hu[_ellipsoid(p, (-55, 55, 112), (62, 8, 8))] = 800.0
    # Spine: vertebral bodies with cortical shell, discs, spinous processes.
    for level in range(-120, 130, 27):
        body_v = ((x**2 + (y + 55) ** 2) <= 17**2) & ((z - level).abs() <= 10.5)
        core = ((x**2 + (y + 55) ** 2) <= 13**2) & ((z - level).abs() <= 8)
        hu[body_v] = 900.0
        hu[core] = 350.0
        hu[_box(p, (-4, -95, level - 8), (4, -72, level + 6))] = 700.0
    # Right scapula: a thin tilted plate behind the right ribs.
    scap = ((x - 95).abs() <= 35) & ((y + 82 + 0.25 * (x - 95)).abs() <= 4) & (z > 0) & (z < 110)
    hu[scap & body] = 650.0
    # Fiducial bead (dense), anterior-left-inferior.
    hu[_ellipsoid(p, (-70, 60, -80), (6, 6, 6))] = 1800.0
    return hu.float(), affine


def chest_phantom(shape_ijk=(128, 112, 96), spacing=(2.6, 2.6, 3.0), hu_to_mu: HUToMu | None = None,
                  smooth_sigma_voxels: float = 0.0, dtype: torch.dtype = torch.float32) -> Volume:
    """The embedded default CT as a `Volume` (mu in 1/mm), optionally Gaussian-smoothed."""
    hu, affine = chest_phantom_hu(shape_ijk, spacing)
    hu = gaussian_smooth(hu.double(), smooth_sigma_voxels)
    return Volume.from_hu(hu, affine, hu_to_mu, dtype=dtype)
