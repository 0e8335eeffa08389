"""Registration: the DRR Jacobian, the optimisers' update rules, and recovery of known poses on the phantom.

Truth: finite differences for the Jacobian, hand-computed updates for the
optimisers, and for registration the pose the X-ray was rendered at (mTRE
over CT points against it).
"""

from __future__ import annotations

import math

import pytest
import torch

from DiffRegLogic import evaluation, geometry
from DiffRegLogic.experiments.demo import DEMO_DETECTOR
from DiffRegLogic.drr import render
from DiffRegLogic.drr.jacobian import render_with_jacobian
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.registration.steps import Adam, GradientDescent, LevenbergMarquardt, Momentum
from DiffRegLogic.registration import (PoseParameters, RegistrationOptions, perturb_pose, random_motions, register,
                                       register_batch)

from conftest_registration import FAST  # noqa: F401  (the shared case fixture lives in conftest.py)


def _mtre(case, pose) -> torch.Tensor:
    return evaluation.mtre(pose, case["target"], case["points"])


# --------------------------------------------------------------------------
# Jacobian
# --------------------------------------------------------------------------


@pytest.mark.parametrize("renderer", ["siddon", "trilinear"])
def test_jacobian_matches_finite_differences(case, renderer):
    volume = case["volume"].downsample(4).to(dtype=torch.float64)
    detector = Detector(**DEMO_DETECTOR).downsample(10)
    params = PoseParameters("se3", case["start"], case["center"], detector.sdd)
    x = torch.tensor([[0.01, -0.02, 0.03, 1.0, 2.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    drr, jac = render_with_jacobian(volume, detector, params.pose, x, renderer)
    # the same rays, computed per pixel: equal to rounding
    torch.testing.assert_close(drr, render(volume, detector, params.pose(x), renderer), rtol=1e-10, atol=1e-12)
    for j in range(6):
        h = 1e-6 if j < 3 else 1e-4
        e = torch.zeros_like(x)
        e[:, j] = h
        fd = (render(volume, detector, params.pose(x + e), renderer)
              - render(volume, detector, params.pose(x - e), renderer)) / (2 * h)
        assert float((fd - jac[..., j]).norm() / fd.norm()) < 1e-5


def test_jacobian_sums_to_the_gradient_of_the_pixel_sum(case):
    volume = case["volume"].downsample(4).to(dtype=torch.float64)
    detector = Detector(**DEMO_DETECTOR).downsample(10)
    params = PoseParameters("se3", case["start"], case["center"], detector.sdd)
    x = torch.tensor([[0.02, 0.01, -0.01, -2.0, 1.0, 4.0]], dtype=torch.float64, requires_grad=True)
    render(volume, detector, params.pose(x)).sum().backward()
    _, jac = render_with_jacobian(volume, detector, params.pose, x.detach())
    torch.testing.assert_close(jac.sum((1, 2)), x.grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# Optimiser update rules
# --------------------------------------------------------------------------


def test_gradient_descent_and_momentum_updates_by_hand():
    x = torch.tensor([[1.0, 2.0]])
    alpha = torch.tensor([[0.1, 0.5]])
    g1, g2 = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]])
    gd = GradientDescent(alpha)
    torch.testing.assert_close(gd.step(x, g1), torch.tensor([[0.9, 3.0]]))
    gdm = Momentum(alpha, momentum=0.5)
    x1 = gdm.step(x, g1)  # v = g1
    x2 = gdm.step(x1, g2)  # v = 0.5 g1 + g2 = (3.5, 0)
    torch.testing.assert_close(x2, torch.tensor([[0.9 - 0.35, 3.0]]))
    gddm = Momentum(alpha, momentum=0.5, damped=True)
    y1 = gddm.step(x, g1)  # v = 0.5 g1 = (0.5, -1)
    y2 = gddm.step(y1, g2)  # v = 0.5 (0.5, -1) + 0.5 (3, 1) = (1.75, 0)
    torch.testing.assert_close(y1, torch.tensor([[0.95, 2.5]]))
    torch.testing.assert_close(y2, torch.tensor([[0.95 - 0.175, 2.5]]))


def test_adam_first_steps_by_hand_and_inactive_rows_frozen():
    alpha = torch.tensor([[0.1, 0.2], [0.1, 0.2]], dtype=torch.float64)
    adam = Adam(alpha, betas=(0.9, 0.999), eps=0.0)
    x = torch.zeros(2, 2, dtype=torch.float64)
    g = torch.tensor([[4.0, -0.01], [1.0, 1.0]], dtype=torch.float64)
    active = torch.tensor([True, False])
    x1 = adam.step(x, g, active)
    # first Adam step: m_hat = g, v_hat = g^2 -> step = alpha * sign(g)
    torch.testing.assert_close(x1[0], torch.tensor([-0.1, 0.2], dtype=torch.float64))
    assert torch.equal(x1[1], x[1])
    g2 = torch.tensor([[2.0, -0.01], [1.0, 1.0]], dtype=torch.float64)
    x2 = adam.step(x1, g2, active)
    m = 0.9 * 0.1 * 4.0 + 0.1 * 2.0
    v = 0.999 * 0.001 * 16.0 + 0.001 * 4.0
    expected = -0.1 - 0.1 * (m / (1 - 0.81)) / math.sqrt(v / (1 - 0.999**2))
    assert float(x2[0, 0]) == pytest.approx(expected, rel=1e-12)


def test_levenberg_marquardt_solves_a_linear_least_squares_problem():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, 40, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(1, 40, generator=gen, dtype=torch.float64)
    lm = LevenbergMarquardt(1, initial_damping=1e-12)
    dx = lm.propose(-b, a)  # residual r(x) = A x - b at x = 0
    expected = torch.linalg.lstsq(a[0], b[0][:, None]).solution[:, 0]
    torch.testing.assert_close(dx[0], expected, rtol=1e-6, atol=1e-8)
    lm = LevenbergMarquardt(1, initial_damping=1e-3)
    lm.update(torch.tensor([True]))
    assert float(lm.damping[0]) == pytest.approx(1e-3 / 3)
    lm.update(torch.tensor([False]))
    assert float(lm.damping[0]) == pytest.approx(4e-3 / 3)


def test_random_motions_are_seeded_and_bounded():
    m1 = random_motions(50, 45.0, 60.0, seed=3)
    assert torch.equal(m1, random_motions(50, 45.0, 60.0, seed=3))
    assert not torch.equal(m1, random_motions(50, 45.0, 60.0, seed=4))
    assert float(m1[:, :3].abs().max()) <= math.radians(45.0)
    assert float(m1[:, 3:].abs().max()) <= 60.0
    assert float(m1[:, 3:].abs().max()) > 50.0  # the range is used


# --------------------------------------------------------------------------
# Registration on the phantom
# --------------------------------------------------------------------------


def _starts(case, n=3, seed=11):
    return perturb_pose(case["target"], random_motions(n, 10.0, 20.0, seed), case["center"])


@pytest.mark.parametrize("optimizer", ["adam", "lm"])
def test_adam_and_lm_recover_the_pose_from_10deg_20mm_starts(case, optimizer):
    # ending at full resolution: a half-resolution last level leaves a 0.2-1 mm spread along the depth valley
    starts = _starts(case)
    results = register_batch(case["volume"], case["xray"], case["detector"], starts,
                             RegistrationOptions(optimizer=optimizer, levels=(4.0, 2.0, 1.0)),
                             reference_pose=case["target"])
    before = _mtre(case, starts)
    after = torch.stack([_mtre(case, r.pose) for r in results])
    assert float(before.min()) > 5.0
    assert float(after.max()) < 0.5, (optimizer, before.tolist(), after.tolist())
    assert all(r.converged and r.stop_reason == "converged" for r in results)
    assert all(r.similarity > r.initial_similarity for r in results)


def test_plain_gradient_methods_improve_but_stall_short_of_adam(case):
    """GD, GDM and GDDM improve the similarity and the pose but, with the same stopping rule, stop
    several mm short on at least one start: the depth direction's gradient is small (the seed paper's finding)."""
    starts = _starts(case)
    before = _mtre(case, starts)
    for name in ("gd", "gdm", "gddm"):
        results = register_batch(case["volume"], case["xray"], case["detector"], starts,
                                 RegistrationOptions(optimizer=name, max_iterations=40, **FAST),
                                 reference_pose=case["target"])
        after = torch.stack([_mtre(case, r.pose) for r in results])
        assert all(r.similarity > r.initial_similarity for r in results)
        assert bool((after < before).all())
        assert float(after.max()) > 1.0, (name, after.tolist())


def test_spherical_parameterization_recovers_the_pose(case):
    result = register(case["volume"], case["xray"], case["detector"], case["start"],
                      RegistrationOptions(parameterization="spherical", **FAST))
    assert float(_mtre(case, result.pose)) < 1.0
    assert float(_mtre(case, case["start"])) > 10.0


def test_converged_flag_is_false_at_the_iteration_cap(case):
    result = register(case["volume"], case["xray"], case["detector"], case["start"],
                      RegistrationOptions(levels=(4.0,), max_iterations=3))
    assert not result.converged and result.stop_reason == "max_iterations"
    assert result.iterations == 3 and result.iterations_per_level == [3]
    assert result.similarity >= result.initial_similarity


def test_progress_callback_and_cancel_return_the_best_pose_so_far(case):
    seen = []

    def callback(progress):
        seen.append(progress)
        return progress.total_iterations >= 7

    xray_before = case["xray"].clone()
    result = register(case["volume"], case["xray"], case["detector"], case["start"],
                      RegistrationOptions(**FAST), callback=callback)
    assert result.cancelled and result.stop_reason == "cancelled" and not result.converged
    assert [p.total_iterations for p in seen] == list(range(1, 8))
    assert all(p.level == 0 and p.n_levels == 2 for p in seen)
    assert result.iterations == 7 and len(result.trace) == 7
    best_seen = max(p.similarity for p in seen)
    # the returned pose is the best one seen (scored again at the finest level, so compare poses' errors)
    assert float(_mtre(case, result.pose)) < float(_mtre(case, case["start"]))
    assert best_seen >= seen[0].current_similarity
    assert torch.equal(case["xray"], xray_before)  # the input is not modified

    flag = {"n": 0}

    def cancel():
        flag["n"] += 1
        return flag["n"] > 2

    result = register(case["volume"], case["xray"], case["detector"], case["start"], RegistrationOptions(**FAST),
                      cancel=cancel)
    assert result.cancelled and result.iterations == 3


def test_multistart_is_deterministic_for_a_seed(case):
    opts = RegistrationOptions(levels=(8.0,), n_starts=4, seed=5, max_iterations=20)
    a = register(case["volume"], case["xray"], case["detector"], case["start"], opts)
    b = register(case["volume"], case["xray"], case["detector"], case["start"], opts)
    assert torch.equal(a.pose, b.pose) and a.similarity == b.similarity
    # 4 starts per iteration, plus scoring the chosen start once at full size (not all 4: the multi-start fix)
    assert a.evaluations == 4 * a.iterations + 1


@pytest.mark.parametrize("optimizer", ["powell", "nelder-mead", "cma"])
def test_gradient_free_baselines_improve_the_pose(case, optimizer):
    start = perturb_pose(case["target"], torch.tensor([[0.03, -0.02, 0.04, 5.0, -4.0, 6.0]], dtype=torch.float64),
                         case["center"])[0]
    result = register(case["volume"], case["xray"], case["detector"], start,
                      RegistrationOptions(optimizer=optimizer, levels=(4.0,), max_evaluations=400))
    assert result.similarity > result.initial_similarity
    assert result.evaluations <= 400 + 20  # the budget (CMA-ES may finish its last generation)
    assert float(_mtre(case, result.pose)) < 0.25 * float(_mtre(case, start))


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_bad_input_is_refused_before_any_work(case):
    v, d, x, s = case["volume"], case["detector"], case["xray"], case["start"]
    with pytest.raises(InputError, match="100 x 100 pixels \\(rows x cols\\) but the detector is 200 x 200"):
        register(v, x[::2, ::2], d, s)
    with pytest.raises(InputError, match="constant"):
        register(v, torch.full_like(x, 3.0), d, s)
    nan = x.clone()
    nan[5, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        register(v, nan, d, s)
    behind = geometry.make_rigid(torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ s[:3, :3],
                                 torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ s[:3, 3])
    with pytest.raises(InputError, match="behind the X-ray source"):
        register(v, x, d, behind)
    with pytest.raises(InputError, match="mask excludes every pixel"):
        register(v, x, d, s, mask=torch.zeros_like(x))
    with pytest.raises(InputError, match="unknown optimiser"):
        register(v, x, d, s, RegistrationOptions(optimizer="sgd"))
    with pytest.raises(InputError, match="levels"):
        register(v, x, d, s, RegistrationOptions(levels=(0.5,)))
