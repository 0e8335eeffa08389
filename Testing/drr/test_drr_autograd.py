"""Gradients of the DRR against finite differences, batching and tiling invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, render
from DiffRegLogic.drr import rays_per_tile
from DiffRegLogic.geometry import pose_from_se3_about

from references import look_at_pose

RENDERERS = ["siddon", "trilinear"]


def reference_pose(volume, direction=(0.25, -1.0, 0.15), distance=700.0) -> torch.Tensor:
    center = volume.center.numpy()
    d = np.asarray(direction) / np.linalg.norm(direction)
    return look_at_pose(center - distance * d, center + np.array([4.0, 0.0, -6.0]))


@pytest.mark.parametrize("renderer", RENDERERS)
def test_gradcheck_pose_se3_about_center(renderer, smooth_phantom):
    """d DRR / d (rotation, translation) about the CT centre matches central finite differences (float64)."""
    detector = Detector(rows=4, cols=5, sdd=1020.0, pixel_spacing=(60.0, 55.0))
    ref = reference_pose(smooth_phantom)
    center = smooth_phantom.center

    def drr(xi):
        return render(smooth_phantom, detector, pose_from_se3_about(ref, xi, center), renderer)

    xi = torch.tensor([0.02, -0.03, 0.01, 3.0, -2.0, 4.0], dtype=torch.float64, requires_grad=True)
    assert drr(xi).min() > 0.1, "every pixel must see the phantom"
    assert torch.autograd.gradcheck(drr, (xi,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_gradcheck_intrinsics(renderer, smooth_phantom):
    """d DRR / d (SDD, pixel spacing, principal point) matches finite differences (float64)."""
    ref = reference_pose(smooth_phantom, direction=(-0.3, -1.0, 0.2))

    def drr(sdd, spacing, pp):
        detector = Detector(rows=3, cols=4, sdd=sdd, pixel_spacing=spacing, principal_point=pp)
        return render(smooth_phantom, detector, ref, renderer)

    sdd = torch.tensor(1000.0, dtype=torch.float64, requires_grad=True)
    spacing = torch.tensor([55.0, 62.0], dtype=torch.float64, requires_grad=True)
    pp = torch.tensor([1.7, 0.8], dtype=torch.float64, requires_grad=True)
    assert drr(sdd, spacing, pp).min() > 0.1
    assert torch.autograd.gradcheck(drr, (sdd, spacing, pp), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_gradient_wrt_mu_is_the_ray_weights(renderer, smooth_phantom):
    """The DRR is linear in mu: d(sum of DRR)/d mu applied to mu gives back the sum (Euler's theorem)."""
    detector = Detector(rows=6, cols=6, sdd=1020.0, pixel_spacing=(45.0, 45.0))
    ref = reference_pose(smooth_phantom)
    mu = smooth_phantom.mu.clone().requires_grad_(True)
    volume = type(smooth_phantom)(mu, smooth_phantom.affine)
    total = render(volume, detector, ref, renderer).sum()
    (grad,) = torch.autograd.grad(total, mu)
    torch.testing.assert_close((grad * mu).sum(), total, rtol=1e-10, atol=0)
    assert (grad >= 0).all()


@pytest.mark.parametrize("renderer", RENDERERS)
def test_batched_render_equals_loop(renderer, smooth_phantom):
    detector = Detector(rows=10, cols=9, sdd=1020.0, pixel_spacing=(30.0, 32.0), principal_point=(4.0, 5.5))
    ref = reference_pose(smooth_phantom)
    gen = torch.Generator().manual_seed(0)
    xis = torch.randn(4, 6, generator=gen, dtype=torch.float64) * torch.tensor([0.2, 0.2, 0.2, 20, 20, 20.0])
    poses = pose_from_se3_about(ref, xis, smooth_phantom.center)
    batch = render(smooth_phantom, detector, poses, renderer)
    loop = torch.stack([render(smooth_phantom, detector, p, renderer)[0] for p in poses])
    assert batch.shape == (4, 10, 9)
    torch.testing.assert_close(batch, loop, rtol=1e-12, atol=1e-12)
    assert (batch[0] - batch[1]).abs().max() > 0.1, "different poses must give different DRRs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("renderer", RENDERERS)
def test_tiled_equals_untiled_values_and_gradients(renderer, dtype, smooth_phantom):
    """Tiles of 7 rays (many ragged tiles, with and without recomputation in backward) = one tile."""
    volume = smooth_phantom.to(dtype=dtype)
    detector = Detector(rows=11, cols=13, sdd=1020.0, pixel_spacing=(28.0, 25.0))
    ref = reference_pose(smooth_phantom).to(dtype)
    results = []
    # the smallest budget (limits.MEMORY_MB_RANGE) with explicit tiles, the default budget, one tile; the reference
    # backend's recomputation at the smallest budget: test_render_limits.py
    for kwargs in ({"tile_rays": 7, "max_memory_mb": 1.0}, {"tile_rays": 7}, {"max_memory_mb": 1e6}):
        xi = torch.tensor([0.05, -0.02, 0.03, 5.0, 1.0, -3.0], dtype=dtype, requires_grad=True)
        pose = pose_from_se3_about(ref, xi, volume.center.to(dtype))
        image = render(volume, detector, pose, renderer, **kwargs)
        (image * torch.linspace(0, 1, image.numel(), dtype=dtype).reshape(image.shape)).sum().backward()
        results.append((image.detach(), xi.grad))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for tiled in results[:2]:
        torch.testing.assert_close(tiled[0], results[2][0], **tol)
        torch.testing.assert_close(tiled[1], results[2][1], **tol)
    assert results[0][1].abs().max() > 0


def test_memory_budget_sets_tile_size(smooth_phantom):
    """A 1536 x 1536 detector at a 64 MB budget is cut into many tiles, and the tile count scales with the budget."""
    small = rays_per_tile(smooth_phantom.to(dtype=torch.float32), 1, "siddon", max_memory_mb=64)
    large = rays_per_tile(smooth_phantom.to(dtype=torch.float32), 1, "siddon", max_memory_mb=256)
    assert 1536 * 1536 // small > 1
    assert large == pytest.approx(4 * small, rel=1e-3)
    # float64 needs twice the bytes per sample
    assert rays_per_tile(smooth_phantom, 1, "siddon", max_memory_mb=64) == pytest.approx(small / 2, rel=1e-3)
