"""Multi-view with one view and other optimisers; the footprint mask, the search / robust hooks, bad views.

Truths: the similarity over the footprint computed directly; the pose error
of a truncated CT against the known pose; which hook ran, by recording
stand-ins for the search and robust modules.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from DiffRegLogic.drr import render
from DiffRegLogic.drr.footprint import footprint_mask
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.motions import perturb_pose, random_motions
from DiffRegLogic.registration import (OPTIMIZERS, RegistrationContext, View, camera_error_mm,
                                       make_options, register, register_views)
from DiffRegLogic.registration.parameters import PoseParameters
from DiffRegLogic.registration.pyramid import build_view_levels
from DiffRegLogic.similarity.measure import Measure, as_measure
from DiffRegLogic.similarity.ncc import zncc
from DiffRegLogic.volume.ct import Volume

from views_case import DETECTOR, FAST, PX, biplane  # noqa: F401  (biplane is a fixture)
from test_plug_points import StayPut  # a level optimiser that scores its starts once and keeps them


def test_one_view_gives_the_same_pose_as_register(biplane):
    b = biplane
    start = perturb_pose(b["target"], random_motions(1, 6.0, 12.0, 7), b["center"])[0]
    opts = make_options(levels=(2.0,), max_iterations=20)
    single = register(b["volume"], b["xrays"][0], DETECTOR, start, opts)
    views = register_views(b["volume"], [View(b["xrays"][0], DETECTOR)], start, opts)
    torch.testing.assert_close(views.pose, single.pose, rtol=0, atol=1e-12)
    assert views.view_poses.shape == (1, 4, 4) and views.view_similarities == [single.similarity]


@pytest.mark.parametrize("optimizer, extra", [("lm", dict(max_iterations=4)), ("powell", dict(max_evaluations=60))])
def test_lm_and_a_baseline_register_two_views(biplane, optimizer, extra):
    b = biplane
    start = perturb_pose(b["target"], random_motions(1, 4.0, 8.0, 2), b["center"])[0]
    views = [View(b["xrays"][0], DETECTOR), View(b["xrays"][1], DETECTOR, from_first=b["relation"])]
    result = register_views(b["volume"], views, start, make_options(optimizer=optimizer, levels=(2.0,), **extra))
    assert result.similarity > result.initial_similarity + 0.005
    assert result.similarity == pytest.approx(sum(result.view_similarities) / 2, abs=1e-6)
    before = float(camera_error_mm(start, b["target"], b["center"]).norm())
    assert float(camera_error_mm(result.pose, b["target"], b["center"]).norm()) < 0.5 * before


def _truncated(volume: Volume, low: float, high: float) -> Volume:
    """The slices k in [low, high) (fractions) of ``volume``, in place in the world (a shorter CT)."""
    n = volume.mu.shape[0]
    first, last = int(n * low), int(n * high)
    affine = volume.affine.clone()
    affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * first
    return Volume(volume.mu[first:last].contiguous(), affine)


def test_the_footprint_mask_keeps_a_truncated_ct_on_target(biplane):
    b = biplane
    center, target = b["center"], b["target"]
    xray = render(b["volume"], DETECTOR, target)[0]  # the whole body
    short = _truncated(b["volume"], 0.3, 0.7)  # the CT covers 40 % of it
    # the similarity the registration sees = ZNCC over the footprint at the current pose
    pose = perturb_pose(target, random_motions(1, 5.0, 10.0, 4), center)[0]
    params = PoseParameters("se3", pose, center, DETECTOR.sdd)
    level = build_view_levels(short, [(xray.double(), DETECTOR, None, None, 600.0)], (1.0,))[0]
    ctx = RegistrationContext(make_options(footprint_mask=True), params, as_measure("zncc"), torch.float64,
                              None, None, 1)
    expected = zncc(render(level.volume, DETECTOR, pose).double(), xray.double(),
                    footprint_mask(level.volume, DETECTOR, pose, exclude_cut_faces=True))
    torch.testing.assert_close(ctx.score(level, torch.zeros(1, 6)), expected, rtol=0, atol=1e-6)
    errors = {}
    for on in (False, True):
        result = register(short, xray, DETECTOR, pose, make_options(footprint_mask=on, max_iterations=30, **FAST))
        errors[on] = float(camera_error_mm(result.pose, target, center).norm())
    assert errors[True] < 10.0 and errors[True] < 0.5 * errors[False], errors


def test_a_pose_whose_footprint_covers_nothing_is_compared_over_the_plain_mask(biplane):
    b = biplane
    center, target = b["center"], b["target"]
    xray = render(b["volume"], DETECTOR, target)[0]
    params = PoseParameters("se3", target, center, DETECTOR.sdd)
    level = build_view_levels(b["volume"], [(xray.double(), DETECTOR, None, None, 600.0)], (2.0,))[0]
    ctx = RegistrationContext(make_options(footprint_mask=True), params, as_measure("zncc"), torch.float64,
                              None, None, 1)
    away = perturb_pose(target, torch.tensor([[0.0, 0.0, 0.0, 5000.0, 0.0, 0.0]], dtype=torch.float64), center)
    poses = torch.cat([target[None].to(torch.float64), away])  # the second moves the CT 5 m off the beam
    view = level.views[0]
    footprint = footprint_mask(view.volume, view.detector, poses, exclude_cut_faces=True)
    assert footprint[0].sum() > 0 and footprint[1].sum() == 0
    weights = ctx.view_mask(view, poses)
    torch.testing.assert_close(weights[0], footprint[0].to(torch.float64))
    torch.testing.assert_close(weights[1], torch.ones_like(weights[1]))  # no mask given: every pixel


class _Found:
    def __init__(self, poses, info):
        self.poses, self.info = poses, info


def test_the_wide_search_and_robust_hooks_are_called_only_when_asked(biplane, monkeypatch):
    b = biplane
    calls = {}
    start = perturb_pose(b["target"], random_motions(1, 8.0, 16.0, 5), b["center"])[0]
    candidates = torch.stack([start, b["target"]])

    def wide_search(volume, image, detector, mask, first, opts, measure):
        calls["search"] = (tuple(image.shape), opts.search, float((first - start).abs().max()))
        return _Found(candidates, {"candidates": 2, "best": [0.5, 0.9]})

    def configure_measure(measure, opts):
        calls["nuisance"] = opts.nuisance
        return Measure(measure.function, measure.residual, measure.dtype, "configured")

    def robust_weights(drr, xray, mask=None, c=None):  # the per-level reweighting (`engine.reweighted_level`)
        calls["robust"] = c
        return torch.ones_like(drr)

    monkeypatch.setitem(sys.modules, "DiffRegLogic.registration.search", types.SimpleNamespace(wide_search=wide_search))
    monkeypatch.setitem(sys.modules, "DiffRegLogic.similarity.robust",
                        types.SimpleNamespace(configure_measure=configure_measure, robust_weights=robust_weights,
                                              REGISTRATION_TUKEY_C=20.0))
    OPTIMIZERS.register("stay_put_views", StayPut(), "test optimiser")
    try:
        plain = register(b["volume"], b["xrays"][0], DETECTOR, start, make_options(optimizer="stay_put_views",
                                                                                    levels=(2.0,)))
        assert calls == {} and plain.search is None and "search" not in plain.to_dict()
        result = register(b["volume"], b["xrays"][0], DETECTOR, start,
                          make_options(optimizer="stay_put_views", levels=(2.0,), search="wide", robust="tukey"))
        # one level: the robust weights are set at its start, with the registration's constant; the measure is
        # configured only for a nuisance model
        assert calls["search"] == ((PX, PX), "wide", 0.0) and calls["robust"] == 20.0 and "nuisance" not in calls
        # the multi-start took the better candidate: the true pose
        torch.testing.assert_close(result.initial_pose, b["target"], rtol=0, atol=1e-9)
        assert result.search == {"candidates": 2, "best": [0.5, 0.9], "start_camera_from_world": start.tolist()}
        assert result.to_dict()["search"]["candidates"] == 2
        calls.clear()
        views = [View(b["xrays"][0], DETECTOR), View(b["xrays"][1], DETECTOR, from_first=b["relation"])]
        both = register_views(b["volume"], views, start, make_options(optimizer="stay_put_views", levels=(2.0,),
                                                                       search="wide"))
        assert calls["search"][0] == (PX, PX) and "robust" not in calls  # the search runs on view 1
        torch.testing.assert_close(both.pose, b["target"], rtol=0, atol=1e-6)
        assert both.search["candidates"] == 2
    finally:
        OPTIMIZERS.unregister("stay_put_views")


def test_bad_views_are_refused_with_a_message_naming_the_view(biplane):
    b = biplane
    volume, target, relation = b["volume"], b["target"], b["relation"]
    good = View(b["xrays"][0], DETECTOR)
    with pytest.raises(InputError, match="list of View"):
        register_views(volume, good, target)
    with pytest.raises(InputError, match=r"views\[1\] must be a View"):
        register_views(volume, [good, b["xrays"][1]], target)
    with pytest.raises(InputError, match="first view's from_first must be the identity"):
        register_views(volume, [View(b["xrays"][0], DETECTOR, from_first=relation)], target)
    with pytest.raises(InputError, match="X-ray 2: the X-ray is constant"):
        register_views(volume, [good, View(torch.full((PX, PX), 3.0), DETECTOR, from_first=relation)], target)
    with pytest.raises(InputError, match="from_first of lateral"):
        register_views(volume, [good, View(b["xrays"][1], DETECTOR, from_first=torch.eye(3), name="lateral")],
                       target)
    away = torch.eye(4, dtype=torch.float64)
    away[0, 3] = 5000.0  # view 2's camera looks far past the CT
    with pytest.raises(InputError, match="X-ray 2: at the start pose the CT does not project"):
        register_views(volume, [good, View(b["xrays"][1], DETECTOR, from_first=away @ relation)], target,
                       make_options(levels=(2.0,)))
    with pytest.raises(InputError, match="X-ray 2: the CT's footprint"):
        register_views(volume, [good, View(b["xrays"][1], DETECTOR, from_first=away @ relation)], target,
                       make_options(levels=(2.0,), footprint_mask=True))
    assert np.isfinite(float(b["xrays"][0].sum()))  # nothing was changed in place
