"""DRR values against closed forms and an independent per-ray Siddon.

Closed forms: a ray through a uniform box or sphere of attenuation mu has
integral chord_length x mu. For Siddon the box is aligned to voxel faces, so
the voxelised volume *is* the box and the result must be exact; a voxelised
sphere is not a sphere, so Siddon is checked there against an independent
textbook implementation on the same voxels, and against the geometric chord
only within the voxelisation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, Volume, render
from DiffRegLogic.geometry import backproject, pixel_grid

from references import look_at_pose, oblique_affine, reference_siddon

RENDERERS = ["siddon", "trilinear"]


def box_chord_mm(source: np.ndarray, target: np.ndarray, affine: np.ndarray, lo_idx, hi_idx) -> float:
    """Length (mm) of the segment source->target inside the world parallelepiped
    {affine @ ijk : lo_idx <= ijk <= hi_idx}, by clipping against its six face planes in world space."""
    lin, off = affine[:3, :3], affine[:3, 3]
    d = target - source
    t0, t1 = 0.0, 1.0
    normals = np.linalg.inv(lin)  # row a: world->index along axis a (a linear functional)
    for a in range(3):
        n = normals[a]
        s_val = n @ (source - off)
        d_val = n @ d
        if abs(d_val) < 1e-15:
            if not (lo_idx[a] <= s_val <= hi_idx[a]):
                return 0.0
            continue
        ta, tb = (lo_idx[a] - s_val) / d_val, (hi_idx[a] - s_val) / d_val
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    return max(0.0, t1 - t0) * float(np.linalg.norm(d))


def sphere_chord_mm(source: np.ndarray, target: np.ndarray, center: np.ndarray, radius: float) -> float:
    """Length (mm) of the chord of the segment source->target through a sphere (closed form)."""
    d = target - source
    length = np.linalg.norm(d)
    u = d / length
    foot = (center - source) @ u
    h2 = np.sum((source + foot * u - center) ** 2)
    if h2 >= radius ** 2:
        return 0.0
    half = np.sqrt(radius ** 2 - h2)
    return max(0.0, min(length, foot + half) - max(0.0, foot - half))


def oblique_views(center: np.ndarray, distance: float, n: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    poses = []
    for _ in range(n):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        poses.append(look_at_pose(center - distance * direction, center + rng.normal(scale=3.0, size=3)))
    return poses


def pixel_rays_world(detector: Detector, pose: torch.Tensor):
    src, tgt = backproject(pixel_grid(detector), pose, detector)
    return src.numpy(), tgt.numpy()


@pytest.mark.parametrize("renderer", RENDERERS)
def test_uniform_box_whole_volume_is_exact(renderer):
    """The whole oblique, anisotropic volume filled with mu: every ray gives chord x mu (both renderers)."""
    mu_value = 0.02
    shape_kji = (18, 21, 16)
    affine = oblique_affine()
    volume = Volume(torch.full(shape_kji, mu_value, dtype=torch.float64), affine)
    detector = Detector(rows=9, cols=11, sdd=900.0, pixel_spacing=(4.0, 3.0))
    center = volume.center.numpy()
    for pose in oblique_views(center, 500.0, 4, seed=1):
        drr = render(volume, detector, pose, renderer)[0].numpy().ravel()
        src, tgt = pixel_rays_world(detector, pose)
        hi = [n - 0.5 for n in volume.shape_ijk]
        expected = np.array([box_chord_mm(src, t, affine.numpy(), [-0.5] * 3, hi) for t in tgt]) * mu_value
        assert (expected > 0).sum() >= 50, "the view must put most rays through the box"
        np.testing.assert_allclose(drr, expected, rtol=1e-9, atol=1e-12)


def sub_box_volume(shape_kji, lo, hi, mu_value: float, spacing) -> tuple[Volume, list, list, torch.Tensor]:
    """Volume with mu_value on voxels lo..hi (i, j, k, inclusive), an oblique affine; returns
    (volume, box face minimum, box face maximum (index units), box centre (RAS))."""
    mu = torch.zeros(shape_kji, dtype=torch.float64)
    mu[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = mu_value
    volume = Volume(mu, oblique_affine(spacing=spacing))
    box_lo, box_hi = [v - 0.5 for v in lo], [v + 0.5 for v in hi]
    box_center = volume.index_to_world(torch.tensor([(a + b) / 2 for a, b in zip(lo, hi)], dtype=torch.float64))
    return volume, box_lo, box_hi, box_center


def test_siddon_sub_box_at_oblique_angles_is_exact():
    """A box of voxels inside the volume: Siddon equals the world-space chord x mu to < 1e-4 relative."""
    mu_value = 0.03
    shape_kji = (20, 24, 22)
    lo, hi = (4, 6, 3), (15, 17, 14)  # voxel index range (i, j, k), inclusive
    volume, box_lo, box_hi, box_center = sub_box_volume(shape_kji, lo, hi, mu_value, (1.1, 1.4, 0.8))
    affine = volume.affine
    detector = Detector(rows=15, cols=13, sdd=800.0, pixel_spacing=(1.5, 1.7))
    checked = 0
    for pose in oblique_views(box_center.numpy(), 400.0, 5, seed=2):
        for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            drr = render(volume.to(dtype=dtype), detector, pose.to(dtype), "siddon")[0].double().numpy().ravel()
            src, tgt = pixel_rays_world(detector, pose)
            expected = np.array([box_chord_mm(src, t, affine.numpy(), box_lo, box_hi) for t in tgt]) * mu_value
            hit = expected > 1e-3 * expected.max()
            np.testing.assert_allclose(drr[hit], expected[hit], rtol=rtol, atol=0.1 * rtol * expected.max())
            np.testing.assert_allclose(drr[~hit], expected[~hit], atol=1e-3 * expected.max())
            checked += int(hit.sum())
    assert checked > 500


def test_trilinear_sub_box_away_from_edges():
    """Trilinear within 1e-2 of the closed form for rays that cross the box far from its edges."""
    mu_value = 0.03
    shape_kji = (40, 40, 40)
    lo, hi = (8, 10, 9), (31, 29, 30)
    volume, box_lo, box_hi, box_center = sub_box_volume(shape_kji, lo, hi, mu_value, (1.0, 1.2, 0.9))
    affine = volume.affine
    detector = Detector(rows=21, cols=21, sdd=900.0, pixel_spacing=(1.0, 1.0))
    inner_lo, inner_hi = [v + 1.5 for v in box_lo], [v - 1.5 for v in box_hi]
    for pose in oblique_views(box_center.numpy(), 450.0, 4, seed=3):
        drr = render(volume, detector, pose, "trilinear", step_voxels=0.5)[0].numpy().ravel()
        src, tgt = pixel_rays_world(detector, pose)
        expected = np.array([box_chord_mm(src, t, affine.numpy(), box_lo, box_hi) for t in tgt]) * mu_value
        # "away from edges": the ray's chord through a box shrunk by 1.5 voxels is nearly as long (it enters
        # and leaves through face interiors, not close to an edge or corner)
        inner = np.array([box_chord_mm(src, t, affine.numpy(), inner_lo, inner_hi) for t in tgt]) * mu_value
        far_from_edges = inner > expected - 4.0 * mu_value * volume.spacing.max().item()
        far_from_edges &= expected > 10 * mu_value
        assert far_from_edges.sum() > 100
        np.testing.assert_allclose(drr[far_from_edges], expected[far_from_edges], rtol=1e-2)


def _sphere_volume(n: int, radius_vox: float, supersample: int, affine: torch.Tensor) -> Volume:
    """mu = partial-volume fraction of each voxel inside a sphere at the grid centre (x 0.02 / mm)."""
    c = (n - 1) / 2.0
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grid = np.arange(n)
    frac = np.zeros((n, n, n))
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                k, j, i = np.meshgrid(grid + oz, grid + oy, grid + ox, indexing="ij")
                frac += ((i - c) ** 2 + (j - c) ** 2 + (k - c) ** 2) <= radius_vox ** 2
    frac /= supersample ** 3
    return Volume(torch.from_numpy(frac * 0.02), affine)


def test_sphere_trilinear_matches_chord_and_siddon_matches_reference():
    """Uniform sphere (partial-volume voxelised, isotropic rotated grid), oblique views.

    Trilinear: within 1e-2 of the geometric chord for rays with impact parameter
    < 0.7 R. Siddon: equal (1e-9) to an independent per-ray Siddon on the same
    voxels, and within the voxelisation error (2e-2) of the geometric chord.
    """
    n, radius_vox, spacing = 56, 24.0, 1.0
    rot_affine = oblique_affine(spacing=(spacing,) * 3)
    volume = _sphere_volume(n, radius_vox, 4, rot_affine)
    center = volume.center.numpy()
    radius_mm = radius_vox * spacing
    detector = Detector(rows=17, cols=17, sdd=1000.0, pixel_spacing=(3.0, 3.0))
    for pose in oblique_views(center, 500.0, 3, seed=4):
        src, tgt = pixel_rays_world(detector, pose)
        chord = np.array([sphere_chord_mm(src, t, center, radius_mm) for t in tgt]) * 0.02
        # impact parameter of each ray relative to the sphere centre
        u = (tgt - src) / np.linalg.norm(tgt - src, axis=1, keepdims=True)
        foot = src + ((center - src) @ u.T)[:, None] * u
        impact = np.linalg.norm(foot - center, axis=1)
        central = impact < 0.7 * radius_mm
        assert central.sum() > 30

        tri = render(volume, detector, pose, "trilinear", step_voxels=0.5)[0].numpy().ravel()
        np.testing.assert_allclose(tri[central], chord[central], rtol=1e-2)

        sid = render(volume, detector, pose, "siddon")[0].numpy().ravel()
        ref = np.array([reference_siddon(volume.mu.numpy(), volume.affine.numpy(), src, t) for t in tgt])
        np.testing.assert_allclose(sid, ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sid[central], chord[central], rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_siddon_random_volume_matches_reference(dtype):
    """Random voxel values, anisotropic oblique grid, source outside and detector inside the volume."""
    gen = torch.Generator().manual_seed(5)
    mu = torch.rand((9, 12, 10), generator=gen, dtype=torch.float64) * 0.05
    affine = oblique_affine(spacing=(2.0, 1.5, 2.5), origin=(-10.0, -8.0, -11.0))
    volume = Volume(mu, affine)
    # a short SDD puts the detector plane through the volume: rays end inside it
    detector = Detector(rows=7, cols=8, sdd=70.0, pixel_spacing=(2.5, 2.0), principal_point=(3.0, 4.5))
    for pose in oblique_views(volume.center.numpy(), 60.0, 3, seed=6):
        drr = render(volume.to(dtype=dtype), detector, pose.to(dtype), "siddon")[0].double().numpy().ravel()
        src, tgt = pixel_rays_world(detector, pose)
        ref = np.array([reference_siddon(mu.numpy(), affine.numpy(), src, t) for t in tgt])
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        np.testing.assert_allclose(drr, ref, rtol=tol, atol=tol * ref.max())
        assert (ref > 0).sum() > 20
