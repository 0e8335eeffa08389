"""Multi-view registration (`register_views`), the footprint mask option and the search / robust hooks.

Truths: the relation of two start poses by matrix algebra; the combined
similarity against the views' similarities computed directly from renders;
the Levenberg-Marquardt residual against 1 - mean similarity and its
Jacobian against reverse-mode autograd through the renderer; depth errors against the known pose of
simulated X-rays (the phantom, 48 px, seeded noise and starts).
"""

from __future__ import annotations

import math


import pytest
import torch

from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.motions import perturb_pose, random_motions
from DiffRegLogic.registration import (RegistrationContext, View, camera_error_mm, make_options, register_batch,
                                       register_views, relative_poses, views_from_starts)
from DiffRegLogic.registration.levels import LM
from DiffRegLogic.registration.parameters import PoseParameters
from DiffRegLogic.registration.pyramid import build_view_levels
from DiffRegLogic.similarity.measure import as_measure
from DiffRegLogic.similarity.ncc import zncc

from views_case import DETECTOR, FAST, biplane  # noqa: F401  (biplane is a fixture)


def test_relative_poses_and_views_from_starts_are_start_k_times_inverse_start_1(biplane):
    b = biplane
    starts = torch.stack([b["target"], b["second"]])
    relations = relative_poses(starts)
    torch.testing.assert_close(relations[0], torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(relations[1] @ b["target"], b["second"], rtol=0, atol=1e-9)
    views, first = views_from_starts(b["xrays"], [DETECTOR, DETECTOR], starts, names=["A", "B"])
    assert views[0].from_first is None and views[1].name == "B"
    torch.testing.assert_close(first, b["target"], rtol=0, atol=0)
    torch.testing.assert_close(views[1].from_first, b["relation"], rtol=0, atol=1e-9)
    with pytest.raises(InputError, match="2 X-rays but 1 detectors"):
        views_from_starts(b["xrays"], [DETECTOR], starts)


def test_the_combined_similarity_is_the_mean_of_the_views_and_lm_stacks_their_residuals(biplane):
    b = biplane
    volume, center = b["volume"], b["center"]
    opts = make_options(optimizer="lm", levels=(2.0,))
    measure = as_measure("zncc")
    params = PoseParameters("se3", b["target"], center, DETECTOR.sdd)
    level = build_view_levels(volume, [(b["xrays"][0].double(), DETECTOR, None, None, 600.0),
                                       (b["xrays"][1].double(), DETECTOR, None, b["relation"], 600.0)], (2.0,))[0]
    ctx = RegistrationContext(opts, params, measure, torch.float64, None, None, 1)
    x = torch.tensor([[0.02, -0.03, 0.01, 3.0, -4.0, 6.0]], dtype=torch.float32)
    pose = params.pose(x.double())
    direct = [zncc(render(v.volume, v.detector, p).double(), v.xray)
              for v, p in zip(level.views, (pose, b["relation"] @ pose))]
    torch.testing.assert_close(ctx.score(level, x), (direct[0] + direct[1]) / 2, rtol=0, atol=1e-6)
    residual = measure.require_residual()
    res, jac = LM._linearise(ctx, level, x, residual)
    torch.testing.assert_close((res * res).sum(-1), 1 - ctx.score(level, x), rtol=0, atol=1e-6)
    # J^T v against reverse-mode autograd of the stacked residual through the differentiable renderer
    xv = x.double().requires_grad_(True)
    with torch.enable_grad():
        first = params.pose(xv)
        stacked = torch.cat([residual(render(v.volume, v.detector, v.poses(first)).double(), v.xray, None)
                             for v in level.views], 1) / math.sqrt(2)
    torch.testing.assert_close(stacked.detach(), res, rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(res.shape, generator=g, dtype=torch.float64)
        (auto,) = torch.autograd.grad((stacked * v).sum(), xv, retain_graph=True)
        torch.testing.assert_close((jac.transpose(1, 2) @ v[..., None])[..., 0], auto, rtol=1e-3, atol=1e-7)


def test_two_views_lower_the_depth_error_of_either_view_alone(biplane):
    b = biplane
    volume, center, target, relation = b["volume"], b["center"], b["target"], b["relation"]
    starts = perturb_pose(target, random_motions(3, 10.0, 20.0, 1), center)
    opts = make_options(max_iterations=20, **FAST)
    alone_1 = register_batch(volume, b["xrays"][0], DETECTOR, starts, opts)
    alone_2 = register_batch(volume, b["xrays"][1], DETECTOR, relation @ starts, opts)
    both = [register_views(volume, [View(b["xrays"][0], DETECTOR), View(b["xrays"][1], DETECTOR,
                                                                          from_first=relation)], s, opts)
            for s in starts]
    back = torch.linalg.inv(relation)
    err_1 = torch.stack([camera_error_mm(r.pose, target, center) for r in alone_1])
    err_2 = torch.stack([camera_error_mm(back @ r.pose, target, center) for r in alone_2])
    err_both = torch.stack([camera_error_mm(r.pose, target, center) for r in both])
    # view 2's beam is view 1's x axis (90 deg): each view alone is loose along its own beam
    depth_1, depth_2 = err_1[:, 2].abs().median(), err_2[:, 0].abs().median()
    assert float(err_both[:, 2].abs().median()) < 0.5 * float(depth_1)
    assert float(err_both[:, 0].abs().median()) < float(depth_2)
    assert float(err_both.norm(dim=1).median()) < 0.8 * min(float(err_1.norm(dim=1).median()),
                                                            float(err_2.norm(dim=1).median()))
    for r in both:
        assert r.view_poses.shape == (2, 4, 4)
        torch.testing.assert_close(r.view_poses[1], relation @ r.pose, rtol=0, atol=1e-9)
        assert r.similarity == pytest.approx(sum(r.view_similarities) / 2, abs=1e-9)
        assert {"view_poses", "view_similarities"} <= set(r.to_dict())
