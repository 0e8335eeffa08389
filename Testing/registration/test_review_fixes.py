"""Regression tests for the registration bugs a review found (each fails on the code before the fix).

* convergence halved the steps three times, not the documented ``max_step_reductions`` (two);
* a cancelled ``register_batch`` with a gradient-free optimiser returned one result for several starts,
  paired with the wrong start;
* Levenberg-Marquardt with the ``mse`` residual could not be chosen (the similarity table lacked ``mse``);
* every start of a multi-start was scored at full resolution before the first level; only the chosen one is.
"""

from __future__ import annotations

import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.drr import render
from DiffRegLogic.geometry import perturb_pose, random_motions
from DiffRegLogic.registration import RegistrationOptions, register, register_batch
from DiffRegLogic.registration import context as context_module
from DiffRegLogic.registration.pyramid import volume_factor
from DiffRegLogic.similarity import zncc


def _mtre(case, pose):
    return evaluation.mtre(pose, case["target"], case["points"])


@pytest.mark.parametrize("max_step_reductions", [0, 1, 2])
def test_a_level_converges_after_exactly_max_step_reductions_halvings(case, max_step_reductions):
    opts = RegistrationOptions(levels=(8.0,), max_iterations=400, patience=3, tolerance=1e-3,
                               max_step_reductions=max_step_reductions)
    result = register(case["volume"], case["xray"], case["detector"], case["start"], opts)
    assert result.converged and result.stop_reason == "converged"
    ctx_trace = _raw_trace(case, opts)  # the context's own trace keeps the step scale of every iteration
    seen = sorted({round(entry["step_scale"][0], 12) for entry in ctx_trace}, reverse=True)
    assert seen == [0.5 ** k for k in range(max_step_reductions + 1)]
    assert ctx_trace[-1]["step_scale"][0] == pytest.approx(0.5 ** max_step_reductions)


def _raw_trace(case, opts):
    """The context's trace (step_scale included) of registering the demo start once."""
    seen = {}
    original = context_module.RegistrationContext.report

    def spy(self, *args, **kwargs):
        seen["ctx"] = self
        return original(self, *args, **kwargs)

    context_module.RegistrationContext.report = spy
    try:
        register(case["volume"], case["xray"], case["detector"], case["start"], opts)
    finally:
        context_module.RegistrationContext.report = original
    return seen["ctx"].trace


@pytest.mark.parametrize("optimizer", ["powell", "cma"])
def test_cancelled_gradient_free_batch_returns_one_result_per_start_with_its_own_start(case, optimizer):
    starts = perturb_pose(case["target"], random_motions(3, 4.0, 8.0, seed=3), case["center"])
    first = register_batch(case["volume"], case["xray"], case["detector"], starts[:1],
                           RegistrationOptions(optimizer=optimizer, levels=(8.0,), max_evaluations=300),
                           reference_pose=case["target"])[0]
    second = register_batch(case["volume"], case["xray"], case["detector"], starts[1:2],
                            RegistrationOptions(optimizer=optimizer, levels=(8.0,), max_evaluations=300),
                            reference_pose=case["target"])[0]
    assert len(second.trace) >= 2
    calls = {"n": 0}

    def cancel():  # stop in the middle of the second start (one report per iteration)
        calls["n"] += 1
        return calls["n"] > len(first.trace) + 1

    results = register_batch(case["volume"], case["xray"], case["detector"], starts,
                             RegistrationOptions(optimizer=optimizer, levels=(8.0,), max_evaluations=300),
                             reference_pose=case["target"], cancel=cancel)
    assert len(results) == 3
    assert all(r.cancelled and r.stop_reason == "cancelled" for r in results)
    for r, start in zip(results, starts):
        assert torch.equal(r.initial_pose, start)
    # the first start finished before the cancel: its pose is its own optimum, not another start's
    assert float(_mtre(case, results[0].pose)) == pytest.approx(float(_mtre(case, first.pose)), abs=1e-6)
    # the third start was never reached: it is returned where it started
    torch.testing.assert_close(results[2].pose, starts[2], rtol=0, atol=1e-6)  # float32 parameters
    # each reported similarity is that pose's similarity at the (only) level, rendered on its detector and CT
    detector = case["detector"].downsample(8.0)
    distance = float((case["target"][:3, :3] @ case["center"] + case["target"][:3, 3]).norm())
    volume = case["volume"].downsample(volume_factor(case["volume"], detector, distance))
    xr = torch.nn.functional.interpolate(case["xray"][None, None].double(), size=detector.shape, mode="area")[0, 0]
    for r in results:
        with torch.no_grad():
            drr = render(volume, detector, r.pose)
        assert r.similarity == pytest.approx(float(zncc(drr.double(), xr)), abs=1e-6)  # float32 parameters
    # each start's trace holds only its own iterations
    assert results[0].trace and all(e["level"] == 0 for e in results[0].trace)


def test_levenberg_marquardt_with_the_mse_residual_registers(case):
    """mse is a similarity now (1 - MSE), so LM can use its residual; on a DRR target (same scale) it converges."""
    start = perturb_pose(case["target"], torch.tensor([[0.03, -0.02, 0.02, 3.0, -4.0, 5.0]], dtype=torch.float64),
                         case["center"])[0]
    result = register(case["volume"], case["xray"], case["detector"], start,
                      RegistrationOptions(optimizer="lm", similarity="mse", levels=(4.0, 2.0)))
    assert result.similarity > result.initial_similarity
    assert float(_mtre(case, result.pose)) < 0.25 * float(_mtre(case, start))
    assert float(_mtre(case, result.pose)) < 1.0


def test_a_multistart_scores_only_the_chosen_start_at_full_resolution(case, monkeypatch):
    rendered = []
    original = context_module.render

    def counting_render(volume, detector, pose, *args, **kwargs):
        rendered.append((detector.shape, pose.shape[0]))
        return original(volume, detector, pose, *args, **kwargs)

    monkeypatch.setattr(context_module, "render", counting_render)
    opts = RegistrationOptions(levels=(8.0, 4.0), n_starts=6, seed=2, max_iterations=5)
    result = register(case["volume"], case["xray"], case["detector"], case["start"], opts)
    finest = case["detector"].downsample(4.0).shape
    at_finest = [n for shape, n in rendered if shape == finest]
    assert at_finest and max(at_finest) == 1  # never all six starts at the finest level
    # the reported initial similarity is the chosen start's, at the finest level (its detector and CT)
    chosen = result.initial_pose
    detector = case["detector"].downsample(4.0)
    distance = float((case["start"][:3, :3] @ case["center"] + case["start"][:3, 3]).norm())
    volume = case["volume"].downsample(volume_factor(case["volume"], detector, distance))
    with torch.no_grad():
        drr = original(volume, detector, chosen)
    xr = torch.nn.functional.interpolate(case["xray"][None, None].double(), size=finest, mode="area")[0, 0]
    assert result.initial_similarity == pytest.approx(float(zncc(drr.double(), xr)), abs=1e-6)  # float32 parameters
