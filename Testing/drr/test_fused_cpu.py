"""The fused CPU renderers (numba) against the PyTorch reference renderers and finite differences.

Values must agree to 1e-5 and gradients (pose, intrinsics) to 1e-4, relative
to the largest magnitude, on several poses, geometries and volumes, including
rays that miss the volume, rays along its faces, axis-parallel rays and rays
that start or end inside it.
"""

from __future__ import annotations

import pytest
import torch

from DiffRegLogic import render
from DiffRegLogic.drr import fused_cpu, siddon, trilinear
from DiffRegLogic.drr.jacobian import render_with_jacobian
from DiffRegLogic.drr.rays import RayBundle, clip_to_box
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector, clinical_to_pose, se3_exp
from DiffRegLogic.volume.phantoms import chest_phantom
from DiffRegLogic.volume import Volume

from references import look_at_pose, oblique_affine

pytestmark = pytest.mark.skipif(not fused_cpu.AVAILABLE, reason="numba is not installed")

REFERENCE = {"siddon": siddon.integrate, "trilinear": lambda mu, rays: trilinear.integrate(mu, rays, 1.0)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def phantom(dtype=torch.float64, affine=None) -> Volume:
    vol = chest_phantom(shape_ijk=(40, 36, 30), spacing=(8.0, 8.0, 9.0), dtype=dtype)
    return vol if affine is None else Volume(vol.mu, affine)


def random_volume(dtype=torch.float64, seed=0) -> Volume:
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand((9, 11, 13), generator=g, dtype=dtype) * 0.03
    return Volume(mu, oblique_affine(spacing=(7.0, 5.0, 9.0)))


# Poses avoid putting the source exactly on voxel-boundary planes (e.g. an AP view through the centre of a
# grid with an even size): there, crossings of two axes coincide, Siddon is not differentiable, and the
# reference's tie order (an unstable sort) picks one of the one-sided gradients arbitrarily.
CASES = {
    "phantom near-AP": (lambda dt: phantom(dt), Detector(30, 40, 1000.0, (9.0, 9.0)), (0.3, -0.2, 600.0)),
    "phantom oblique": (lambda dt: phantom(dt), Detector(32, 28, 1100.0, (8.0, 10.0), (12.0, 17.5)),
                        (37.0, -22.0, 650.0)),
    "oblique grid, half the rays miss": (lambda dt: random_volume(dt),
                                         Detector(24, 26, 900.0, (6.0, 6.0), (2.0, 3.0)), (-65.0, 30.0, 400.0)),
}


def gradients(volume: Volume, detector: Detector, pose: torch.Tensor, renderer: str, backend: str):
    """DRR, d(weighted sum)/d(pose) (4, 4) and d/d(sdd, spacing) with the given backend."""
    p = pose.clone().requires_grad_(True)
    sdd = torch.tensor(float(detector.sdd), dtype=torch.float64, requires_grad=True)
    spacing = torch.tensor(detector.pixel_spacing, dtype=torch.float64, requires_grad=True)
    det = Detector(detector.rows, detector.cols, sdd, spacing, detector.principal_point)
    drr = render(volume, det, p, renderer, backend=backend)
    weights = torch.linspace(0.5, 1.5, drr.numel(), dtype=drr.dtype).reshape(drr.shape)
    grads = torch.autograd.grad((drr * weights).sum(), (p, sdd, spacing))
    return drr.detach(), grads


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_values_and_gradients_match_the_reference(case, renderer):
    make, detector, (primary, secondary, distance) = CASES[case]
    volume = make(torch.float64)
    pose = clinical_to_pose(primary, secondary, distance, volume.center)
    ref, ref_grads = gradients(volume, detector, pose, renderer, "reference")
    out, out_grads = gradients(volume, detector, pose, renderer, "fused")
    assert float(ref.abs().max()) > 0
    assert rel(out, ref) < 1e-5
    for a, b in zip(out_grads, ref_grads):
        assert rel(a, b) < 1e-4
    if case.startswith("oblique grid"):
        assert 0.2 < float((ref == 0).double().mean()) < 0.8  # rays that miss are part of the test


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_float32_volume_matches_float64_reference(renderer):
    pose = clinical_to_pose(12.0, 5.0, 600.0, phantom().center)
    detector = Detector(20, 24, 1000.0, (12.0, 12.0))
    ref = render(phantom(torch.float64), detector, pose, renderer, backend="reference")
    out = render(phantom(torch.float32), detector, pose, renderer, backend="fused")
    assert out.dtype == torch.float32 and rel(out.double(), ref) < 1e-5


def _bundle(src, direction, shape_ijk) -> RayBundle:
    src = torch.as_tensor(src, dtype=torch.float64)[None, None].expand(1, len(direction), 3).clone()
    d = torch.as_tensor(direction, dtype=torch.float64)[None]
    tn, tf = clip_to_box(src, d, shape_ijk)
    return RayBundle(src, d, torch.ones_like(tn), tn, tf)


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_special_rays(renderer):
    """Axis-parallel rays, rays on the box faces and on voxel planes, rays from and to inside the volume."""
    mu = torch.rand((5, 6, 7), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shape_ijk = (7, 6, 5)
    src = (-4.0, 2.3, 1.7)
    directions = [
        (12.0, 0.0, 0.0),  # along i, parallel to two axes
        (12.0, 0.0, 0.5),  # parallel to j
        (12.0, 3.5, 1.2),  # oblique
        (12.0, -1.8, -3.3),
        (12.0, 0.0, 0.0),
        (2.0, 0.1, 0.05),  # ends inside the volume
        (-5.0, 0.0, 0.0),  # points away: misses
    ]
    bundle = _bundle(src, directions, shape_ijk)
    for rays in (bundle, _bundle((3.1, 2.7, 2.2), [(9.0, 4.0, -2.0), (0.0, 0.0, 7.0)], shape_ijk),  # from inside
                 _bundle((-4.0, -0.5, 1.0), [(12.0, 0.0, 0.0), (12.0, 0.0, 0.3)], shape_ijk),  # on the face j = -0.5
                 _bundle((-4.0, 2.0, 1.0), [(12.0, 0.0, 0.0)], shape_ijk)):  # on voxel centres
        ref = REFERENCE[renderer](mu, rays)
        out = fused_cpu.integrate(mu, rays, renderer, 1.0)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_special_rays_gradients(renderer):
    mu = torch.rand((5, 6, 7), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shape_ijk = (7, 6, 5)

    def value(src, d, backend):
        tn, tf = clip_to_box(src, d, shape_ijk)
        rays = RayBundle(src, d, torch.ones_like(tn), tn, tf)
        if backend == "fused":
            return fused_cpu.integrate(mu, rays, renderer, 1.0)
        return REFERENCE[renderer](mu, rays)

    src0 = torch.tensor([[[-4.0, 2.31, 1.73]]], dtype=torch.float64)
    d0 = torch.tensor([[[12.0, 0.0, 0.41], [12.0, 3.52, 1.21], [2.0, 0.13, 0.05], [9.0, 0.0, 0.0]]],
                      dtype=torch.float64)
    grads = {}
    for backend in ("reference", "fused"):
        s, d = src0.clone().requires_grad_(True), d0.clone().requires_grad_(True)
        grads[backend] = torch.autograd.grad(value(s, d, backend).sum(), (s, d))
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_trilinear_gradient_matches_finite_differences():
    """The analytic backward against central differences of the fused forward itself (an independent truth)."""
    volume = phantom(torch.float64)
    detector = Detector(16, 18, 1000.0, (14.0, 14.0))
    pose0 = clinical_to_pose(17.0, -9.0, 600.0, volume.center)
    center = volume.center

    def drr_sum(xi: torch.Tensor) -> torch.Tensor:
        motion = se3_exp(xi)
        shift = torch.eye(4, dtype=torch.float64)
        shift[:3, 3] = center
        unshift = torch.eye(4, dtype=torch.float64)
        unshift[:3, 3] = -center
        return render(volume, detector, pose0 @ shift @ motion @ unshift, "trilinear", backend="fused").sum()

    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    (analytic,) = torch.autograd.grad(drr_sum(xi), xi)
    eps = torch.tensor([1e-5] * 3 + [1e-3] * 3, dtype=torch.float64)
    with torch.no_grad():
        numeric = torch.stack([(drr_sum(eps[i] * torch.eye(6, dtype=torch.float64)[i])
                                - drr_sum(-eps[i] * torch.eye(6, dtype=torch.float64)[i])) / (2 * eps[i])
                               for i in range(6)])
    torch.testing.assert_close(analytic, numeric, rtol=2e-4, atol=1e-6 * float(analytic.abs().max()))


def test_thread_count_does_not_change_results():
    import numba

    volume = phantom(torch.float32)
    detector = Detector(30, 30, 1000.0, (9.0, 9.0))
    pose = clinical_to_pose(10.0, 4.0, 600.0, volume.center)
    before = numba.get_num_threads()
    try:
        out = {}
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            fused_cpu.set_threads(threads)
            out[threads] = gradients(volume, detector, pose, "siddon", "fused")
    finally:
        numba.set_num_threads(before)
    (a, ga), (b, gb) = out.values()
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # each ray is computed by one thread: bitwise equal
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=0)


def test_tiles_do_not_change_results():
    volume = phantom(torch.float64)
    detector = Detector(20, 21, 1000.0, (12.0, 12.0))
    pose = clinical_to_pose(-20.0, 8.0, 600.0, volume.center)
    whole = render(volume, detector, pose, "trilinear", backend="fused")
    tiled = render(volume, detector, pose, "trilinear", backend="fused", tile_rays=37)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=0)


def test_jacobian_matches_the_reference():
    volume = phantom(torch.float64)
    detector = Detector(12, 14, 1000.0, (16.0, 16.0))
    reference_pose = look_at_pose(volume.center + torch.tensor([0.0, -600.0, 0.0], dtype=torch.float64),
                                  volume.center)

    def pose_of(params):
        return reference_pose @ se3_exp(params)

    params = torch.tensor([[0.01, -0.02, 0.015, 3.0, -2.0, 4.0]], dtype=torch.float64)
    for renderer in ("siddon", "trilinear"):
        drr_f, jac_f = render_with_jacobian(volume, detector, pose_of, params, renderer, backend="fused")
        drr_r, jac_r = render_with_jacobian(volume, detector, pose_of, params, renderer, backend="reference")
        assert rel(drr_f, drr_r) < 1e-9 and rel(jac_f, jac_r) < 1e-8


def test_backend_choice_and_errors():
    volume = phantom(torch.float64)
    detector = Detector(8, 8, 1000.0, (20.0, 20.0))
    pose = clinical_to_pose(0.0, 0.0, 600.0, volume.center)
    with pytest.raises(InputError, match="unknown backend"):
        render(volume, detector, pose, backend="gpu")
    mu = volume.mu.clone().requires_grad_(True)
    graded = Volume(mu, volume.affine)
    with pytest.raises(InputError, match="no gradient w.r.t. mu"):
        render(graded, detector, pose, backend="fused")
    # auto falls back to the reference for gradients w.r.t. mu, and they flow
    (grad,) = torch.autograd.grad(render(graded, detector, pose).sum(), mu)
    assert float(grad.abs().sum()) > 0
    torch.testing.assert_close(render(volume, detector, pose), render(volume, detector, pose, backend="reference"),
                               rtol=1e-9, atol=1e-12)


def test_large_detector_renders_in_one_tile():
    """Memory is per ray: a 1536 x 1536 forward + backward fits the default budget without tiling."""
    from DiffRegLogic.drr import rays_per_tile

    volume = chest_phantom(dtype=torch.float32)
    assert rays_per_tile(volume, 1, "siddon", backend="fused") >= 1536 * 1536
    assert rays_per_tile(volume, 1, "siddon", backend="reference") < 1536 * 1536 / 10


def test_axis_aligned_views_through_voxel_planes():
    """Lateral/AP/axial views whose rays lie (within rounding) on voxel planes: parallel axes have no crossings.

    Regression: a direction component of 1e-14 used to produce a crossing before the entry and a
    negative segment in the fused Siddon. Both renderers must agree and stay close to a nearby pose.
    """
    volume = phantom(torch.float64)
    for primary, secondary, distance in ((270.0, 0.0, 1500.0), (90.0, 0.0, 600.0), (0.0, 90.0, 5000.0),
                                         (180.0, 0.0, 300.0)):
        detector = Detector(31, 41, distance + 400.0, (9.0, 9.0))
        pose = clinical_to_pose(primary, secondary, distance, volume.center)
        for renderer in ("siddon", "trilinear"):
            fused = render(volume, detector, pose, renderer, backend="fused")
            reference = render(volume, detector, pose, renderer, backend="reference")
            assert float(fused.min()) >= 0.0
            assert rel(fused, reference) < 1e-9, (primary, secondary, renderer)


def test_tied_dominant_components_share_the_step_gradient():
    """h = step / max|d|: with |d_i| = |d_k| the reference's amax splits the gradient; so must the fused kernel."""
    mu = torch.rand((6, 7, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    shape_ijk = (8, 7, 6)
    grads = {}
    for backend in ("reference", "fused"):
        # The source is inside the volume: a ray entering through a face of its dominant axis has every
        # sample exactly on a voxel centre along that axis, a kink of the interpolant where the two
        # implementations' rounding may pick different one-sided slopes.
        s = torch.tensor([[[1.31, 2.27, 1.17]]], dtype=torch.float64, requires_grad=True)
        d = torch.tensor([[[12.0, 1.7, 12.0], [12.0, -12.0, 3.3]]], dtype=torch.float64, requires_grad=True)
        tn, tf = clip_to_box(s, d, shape_ijk)
        rays = RayBundle(s, d, torch.ones_like(tn), tn, tf)
        value = (REFERENCE["trilinear"](mu, rays) if backend == "reference"
                 else fused_cpu.integrate(mu, rays, "trilinear", 1.0))
        grads[backend] = torch.autograd.grad(value.sum(), (s, d))
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_half_precision_volumes_use_the_reference():
    volume = phantom(torch.float32)
    half = Volume(volume.mu.to(torch.float16), volume.affine)
    detector = Detector(10, 12, 1000.0, (20.0, 20.0))
    pose = clinical_to_pose(5.0, 3.0, 600.0, volume.center)
    out = render(half, detector, pose)  # auto: the fused kernels take float32/float64 only
    assert out.dtype == torch.float16 and float(out.float().abs().max()) > 0
    with pytest.raises(InputError, match="float32 or float64"):
        render(half, detector, pose, backend="fused")


def test_second_derivatives_are_refused():
    volume = phantom(torch.float64)
    detector = Detector(6, 6, 1000.0, (30.0, 30.0))
    pose = clinical_to_pose(5.0, 3.0, 600.0, volume.center).requires_grad_(True)
    (grad,) = torch.autograd.grad(render(volume, detector, pose, backend="fused").sum(), pose, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()
