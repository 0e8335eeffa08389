"""The intensity-domain scatter/heel/gain model: exact recovery of fields made in its span, gradients, pose scans."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, InputError, render
from DiffRegLogic.experiments.demo import demo_poses
from DiffRegLogic.filters import gaussian_blur
from DiffRegLogic.geometry.motions import perturb_pose
from DiffRegLogic.physics.realism import Realism, apply_realism
from DiffRegLogic.similarity import zncc
from DiffRegLogic.similarity.nuisance import (N_PARAMETERS, apply_scatter_model, fit_scatter_model, fitted_intensity,
                                              kernel_sigmas, target_intensity)
from DiffRegLogic.similarity.robust import configure_measure
from DiffRegLogic.volume.phantoms import chest_phantom

F64 = torch.float64
SIZE, PIXEL_MM = 40, 9.0


def scatter_measure(robust="none"):
    return configure_measure("zncc", SimpleNamespace(robust=robust, nuisance="scatter"))


@pytest.fixture(scope="module")
def line_integral():
    volume = chest_phantom().to(dtype=F64)
    detector = Detector(SIZE, SIZE, 1020.0, (PIXEL_MM, PIXEL_MM))
    target, _ = demo_poses(volume.center.to(F64))
    with torch.no_grad():
        return render(volume, detector, target, "siddon")[0]


def grid(h, w):
    return (torch.linspace(-1, 1, w, dtype=F64)[None, :].expand(h, w),
            torch.linspace(-1, 1, h, dtype=F64)[:, None].expand(h, w))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 2.0])
def test_scatter_of_the_realism_bench_with_a_model_kernel_is_fitted_exactly(line_integral, fraction):
    # physics.realism: I = P + f G*P; with the kernel at the model's first sigma the fit is exact, and the
    # scatter-to-primary ratio of a flat field, (sum_j b_j) / a, is f
    sigma_px = kernel_sigmas(SIZE, SIZE)[0]
    detector = Detector(SIZE, SIZE, 1020.0, (PIXEL_MM, PIXEL_MM))
    realism = Realism(scatter_fraction=fraction, scatter_sigma_mm=sigma_px * PIXEL_MM)
    intensity = apply_realism(torch.exp(-line_integral)[None], detector, realism)[0]
    xray = -torch.log(intensity)
    params = fit_scatter_model(line_integral, xray)[0]
    kappa, _, c, a, h_u, h_v, *b = params.tolist()
    assert kappa == pytest.approx(1.0, abs=1e-4)
    assert sum(b) / a == pytest.approx(fraction, rel=1e-4)
    assert b[0] / a == pytest.approx(fraction, rel=1e-3)
    assert abs(c) + abs(h_u) + abs(h_v) < 1e-4 * a
    assert float(scatter_measure()(line_integral, xray)) == pytest.approx(1.0, abs=1e-9)
    assert float(zncc(line_integral, xray)) < 1 - 2e-4  # plain ZNCC sees the compressed contrast


def test_known_scatter_heel_gain_offset_and_scale_are_explained_exactly(line_integral):
    h, w = line_integral.shape
    u, v = grid(h, w)
    primary = torch.exp(-line_integral)
    sigmas = kernel_sigmas(h, w)
    intensity = (0.02 + 0.9 * primary * (1 + 0.25 * u - 0.1 * v) + 0.3 * gaussian_blur(primary[None], sigmas[0])[0]
                 + 0.2 * gaussian_blur(primary[None], sigmas[2])[0])
    xray = 2.5 * (-torch.log(intensity)) + 1.7  # another scale and offset of the log image: kappa = 1 / 2.5
    measure = scatter_measure()
    assert float(measure(line_integral, xray)) == pytest.approx(1.0, abs=1e-9)
    assert float(zncc(line_integral, xray)) < 0.99
    params = fit_scatter_model(line_integral, xray)[0]
    kappa, x_ref, c, a, h_u, h_v, b1, b2, b3 = params.tolist()
    assert kappa == pytest.approx(0.4, rel=1e-4)
    gain = math.exp(kappa * (x_ref - 1.7))  # X_I = I * exp(kappa (x_ref - offset)): every coefficient times it
    expected = [0.02, 0.9, 0.225, -0.09, 0.3, 0.0, 0.2]
    assert [c, a, h_u, h_v, b1, b2, b3] == pytest.approx([gain * e for e in expected], abs=2e-4 * gain)
    model = apply_scatter_model(line_integral, params[None])[0]
    assert torch.allclose(model, target_intensity(xray, params[None], model)[0], atol=1e-6)


def test_batched_fit_equals_one_image_at_a_time_and_ignores_masked_pixels(line_integral):
    drrs = torch.stack([line_integral, 0.9 * line_integral, line_integral.flip(1)])
    xray = -torch.log(torch.exp(-line_integral) * 1.1 + 0.05)
    mask = torch.ones_like(line_integral, dtype=torch.bool)
    mask[:5] = False
    mask[:, 30:] = False
    xray_with_nan = xray.clone()
    xray_with_nan[~mask] = float("nan")  # masked pixels never enter
    batched = fit_scatter_model(drrs, xray_with_nan, mask)
    assert batched.shape == (3, N_PARAMETERS) and bool(torch.isfinite(batched).all())
    for i in range(3):
        assert torch.allclose(batched[i], fit_scatter_model(drrs[i], xray, mask)[0], rtol=1e-6, atol=1e-9)
    values = scatter_measure()(drrs, xray_with_nan, mask)
    for i in range(3):
        assert float(values[i]) == pytest.approx(float(scatter_measure()(drrs[i], xray, mask)), abs=1e-9)


def test_fitted_model_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    drr = torch.from_numpy(rng.uniform(0.2, 2.0, size=(2, 6, 7))).requires_grad_(True)
    target = torch.from_numpy(rng.uniform(0.1, 1.0, size=(2, 6, 7)))
    weights = torch.from_numpy(rng.uniform(0.2, 1.0, size=(2, 6, 7)))
    assert torch.autograd.gradcheck(lambda d: fitted_intensity(d, target, weights), (drr,))
    assert torch.autograd.gradcheck(lambda d: zncc(fitted_intensity(d, target, weights), target, weights), (drr,))


def test_configured_measure_gradient_matches_central_differences(line_integral):
    # kappa is searched at every call; at its optimum the value does not change to first order with it,
    # so the autograd gradient (kappa held) equals the derivative of the full re-fitted similarity
    xray = -torch.log(torch.exp(-line_integral) + 0.3 * gaussian_blur(torch.exp(-line_integral)[None], 5.0)[0])
    drr = torch.roll(line_integral, 1, 1)  # a little off the truth
    measure = scatter_measure()
    d = drr.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(measure(d, xray).sum(), d)
    for seed in range(3):
        direction = gaussian_blur(torch.from_numpy(np.random.default_rng(seed).normal(size=drr.shape))[None], 1.0)[0]
        step = 1e-5
        numeric = (measure(drr + step * direction, xray) - measure(drr - step * direction, xray)) / (2 * step)
        assert float((gradient * direction).sum()) == pytest.approx(float(numeric), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("robust", ["none", "tukey"])
def test_residual_norm_is_one_minus_similarity_with_mask_and_batch(line_integral, robust):
    drrs = torch.stack([line_integral, torch.roll(line_integral, 2, 0)])
    xray = -torch.log(torch.exp(-line_integral) + 0.2)
    xray[5:9, 5:12] += 1.0  # an instrument
    mask = torch.ones_like(line_integral)
    mask[:, :3] = 0
    measure = scatter_measure(robust)
    value = measure(drrs, xray, mask)
    r = measure.residual(drrs, xray, mask)
    assert r.shape[0] == 2
    assert torch.allclose((r ** 2).sum(-1), 1 - value, atol=1e-12)


def test_bad_parameters_are_refused(line_integral):
    with pytest.raises(InputError, match="fit_scatter_model"):
        apply_scatter_model(line_integral, torch.zeros(1, 8, dtype=F64))


@pytest.fixture(scope="module")
def scatter_case():
    from DiffRegLogic.physics.xray_simulation import preset, simulate_xray
    from DiffRegLogic.volume.hu import HUToMu, hu_from_mu

    volume = chest_phantom().to(dtype=F64)
    detector = Detector(48, 48, 1020.0, (12.5, 12.5))
    target, _ = demo_poses(volume.center.to(F64))
    hu = hu_from_mu(volume.mu.detach().cpu(), HUToMu())
    sim = simulate_xray(hu, volume.affine.cpu(), detector, target, preset("scatter", 0), hu_to_mu=HUToMu(),
                        renderer="siddon", dtype=F64)
    assert sim.convention == "line_integral"
    return sim.model.to(dtype=F64), detector, target, sim.image.to(F64), volume.center.to(F64)


@pytest.mark.parametrize("axis, steps, tolerance, unit", [
    (4, torch.arange(-8.0, 8.5, 1.0), 1.0, 1.0),  # translation along the camera-y axis, mm
    (2, torch.arange(-6.0, 6.25, 0.5), 0.5, math.pi / 180),  # rotation about the CT's z axis, deg
])
def test_scatter_preset_pose_scan_keeps_the_optimum_at_the_truth(scatter_case, axis, steps, tolerance, unit):
    model, detector, target, xray, center = scatter_case
    motions = torch.zeros(len(steps), 6, dtype=F64)
    motions[:, axis] = steps.to(F64) * unit
    with torch.no_grad():
        drrs = render(model, detector, perturb_pose(target, motions, center), "siddon")
    plain = zncc(drrs, xray)
    fitted = scatter_measure()(drrs, xray)
    assert abs(float(steps[int(fitted.argmax())])) < tolerance
    assert abs(float(steps[int(plain.argmax())])) >= 3 * tolerance  # the scatter moves plain ZNCC's optimum
