"""The three plug points of registration: the start (initialisers), the similarity (Measure / callable), the optimiser.

Truths: the pose each initialiser must give follows from the geometry
functions tested in Testing/geometry; a plugged-in similarity that computes
ZNCC must register exactly like the built-in name; a plugged-in optimiser's
result is what it returns.
"""

from __future__ import annotations

import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.cli import build_parser
from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import clinical_to_pose, perturb_pose, random_motions, so3_log
from DiffRegLogic.registration import (OPTIMIZERS, ClinicalAngles, FixedPose, LevelResult, RandomStarts,
                                       RegistrationOptions, initial_poses, make_options, register)
from DiffRegLogic.similarity import Measure, as_measure, zncc, zncc_residual
from DiffRegLogic.xray import xray_from_array

FAST = dict(levels=(8.0, 4.0))


def _mtre(case, pose):
    return evaluation.mtre(pose, case["target"], case["points"])


# --------------------------------------------------------------------------
# Initialisers
# --------------------------------------------------------------------------


def test_fixed_pose_and_clinical_angles_give_the_geometry_functions_poses(case):
    volume, detector = case["volume"], case["detector"]
    poses = initial_poses(FixedPose(case["start"]), None, detector, volume)
    assert poses.shape == (1, 4, 4) and torch.equal(poses[0], case["start"])
    angles = ClinicalAngles(20.0, -10.0, 600.0)
    expected = clinical_to_pose(20.0, -10.0, 600.0, volume.center.to(torch.float64))
    torch.testing.assert_close(angles(None, detector, volume)[0], expected, rtol=0, atol=1e-12)
    iso = (10.0, -5.0, 3.0)
    torch.testing.assert_close(ClinicalAngles(20.0, -10.0, 600.0, iso)(None, detector, volume)[0],
                               clinical_to_pose(20.0, -10.0, 600.0, iso), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="source-to-isocentre distance must be positive"):
        ClinicalAngles(0.0, 0.0, 0.0)


def test_clinical_angles_from_an_xray_without_tags_names_the_missing_tags():
    xray = xray_from_array(torch.rand(8, 9).double())
    with pytest.raises(InputError, match="PositionerPrimaryAngle"):
        ClinicalAngles.from_xray(xray)
    xray.clinical = (15.0, -5.0, 700.0)
    assert ClinicalAngles.from_xray(xray) == ClinicalAngles(15.0, -5.0, 700.0)


def test_random_starts_are_seeded_motions_about_the_ct_centre(case):
    volume, detector = case["volume"], case["detector"]
    starts = RandomStarts(FixedPose(case["target"]), 5, 10.0, 20.0, seed=4)(None, detector, volume)
    assert starts.shape == (5, 4, 4) and torch.equal(starts[0], case["target"])
    expected = perturb_pose(case["target"], random_motions(4, 10.0, 20.0, 4), case["center"])
    torch.testing.assert_close(starts[1:], expected, rtol=0, atol=0)
    again = RandomStarts(FixedPose(case["target"]), 5, 10.0, 20.0, seed=4)(None, detector, volume)
    assert torch.equal(starts, again)


def test_several_hypotheses_feed_the_multistart_and_the_best_wins(case):
    far = perturb_pose(case["target"], torch.tensor([[0.4, -0.3, 0.3, 40.0, -30.0, 50.0]], dtype=torch.float64),
                       case["center"])[0]
    hypotheses = torch.stack([far, case["start"], far @ torch.eye(4, dtype=torch.float64)])
    result = register(case["volume"], case["xray"], case["detector"], FixedPose(hypotheses),
                      RegistrationOptions(**FAST))
    assert torch.equal(result.initial_pose, case["start"])  # the hypothesis with the best coarse similarity
    assert float(_mtre(case, result.pose)) < 1.0
    # the result's trace follows the chosen start through every level, the coarsest included
    assert len(result.trace) == result.iterations == sum(result.iterations_per_level)
    assert result.trace[0]["level"] == 0 and result.trace[-1]["level"] == 1
    with pytest.raises(InputError, match="one initial pose"):
        register(case["volume"], case["xray"], case["detector"], hypotheses, RegistrationOptions(**FAST))


def test_any_callable_is_an_initialiser(case):
    seen = {}

    def network(xray, detector, volume):  # what a pose-regression network looks like to registration
        seen["shape"] = tuple(xray.shape)
        return case["start"][None]

    result = register(case["volume"], case["xray"], case["detector"], network, RegistrationOptions(**FAST))
    assert seen["shape"] == case["detector"].shape
    assert torch.equal(result.initial_pose, case["start"]) and float(_mtre(case, result.pose)) < 1.0


def test_an_xray_object_registers_like_its_image_and_mask(case):
    xray = xray_from_array(case["xray"].double())
    assert xray.mask is not None  # the DRR's empty borders are found as collimation
    opts = RegistrationOptions(levels=(8.0,), max_iterations=10)
    a = register(case["volume"], xray, case["detector"], case["start"], opts)
    b = register(case["volume"], xray.image, case["detector"], case["start"], opts, mask=xray.mask)
    torch.testing.assert_close(a.pose, b.pose, rtol=0, atol=0)


# --------------------------------------------------------------------------
# Similarities
# --------------------------------------------------------------------------


class ModuleZNCC(torch.nn.Module):
    """A network-like similarity: records the dtype it is called with."""

    dtype = None  # compare in the DRR's own dtype, as a network would
    name = "module_zncc"

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def forward(self, drr, xray, mask=None):
        self.dtypes.add(drr.dtype)
        return zncc(drr, xray, mask)


def test_a_module_similarity_is_called_in_the_drr_dtype_and_registers(case):
    measure = ModuleZNCC()
    result = register(case["volume"], case["xray"], case["detector"], case["start"],
                      RegistrationOptions(similarity=measure, **FAST))
    assert measure.dtypes == {case["volume"].mu.dtype} == {torch.float32}
    assert float(_mtre(case, result.pose)) < 1.5
    assert result.options["similarity"] == "module_zncc"
    assert as_measure("zncc").dtype == torch.float64  # the built-ins keep comparing in float64


def test_a_measure_with_a_residual_drives_levenberg_marquardt_like_the_name(case):
    opts = dict(optimizer="lm", levels=(8.0,), max_iterations=8)
    named = register(case["volume"], case["xray"], case["detector"], case["start"],
                     RegistrationOptions(similarity="zncc", **opts))
    plugged = register(case["volume"], case["xray"], case["detector"], case["start"],
                       RegistrationOptions(similarity=Measure(zncc, zncc_residual, torch.float64, "mine"), **opts))
    torch.testing.assert_close(plugged.pose, named.pose, rtol=0, atol=0)
    assert plugged.similarity == named.similarity
    with pytest.raises(InputError, match="no .residual"):
        RegistrationOptions(similarity=ModuleZNCC(), optimizer="lm").validate()
    with pytest.raises(InputError, match="similarity must be a name"):
        RegistrationOptions(similarity=3).validate()


# --------------------------------------------------------------------------
# Optimisers
# --------------------------------------------------------------------------


class StayPut:
    """A level optimiser that evaluates its starts once and keeps them."""

    one_start_at_a_time = False
    needs_residual = False

    def run(self, ctx, level, index, x, steps):
        sim = ctx.score(level, x)
        ctx.report(index, 0, sim, sim, {}, x)
        return LevelResult(x, sim, ["converged"] * x.shape[0])


def test_a_registered_optimiser_is_used_by_name_and_offered_by_the_cli(case):
    OPTIMIZERS.register("stay_put", StayPut(), "test optimiser")
    try:
        result = register(case["volume"], case["xray"], case["detector"], case["start"],
                          RegistrationOptions(optimizer="stay_put", **FAST))
        torch.testing.assert_close(result.pose, case["start"], rtol=0, atol=1e-6)
        assert result.iterations == 2 and result.converged
        args = build_parser().parse_args(["demo", "--optimizer", "stay_put"])
        assert args.optimizer == "stay_put"
    finally:
        OPTIMIZERS.unregister("stay_put")
    with pytest.raises(InputError, match="unknown optimiser 'stay_put'"):
        RegistrationOptions(optimizer="stay_put").validate()
    with pytest.raises(InputError, match="already registered"):
        OPTIMIZERS.register("adam", StayPut())


def test_a_plugged_optimiser_that_needs_a_residual_is_checked_before_any_work():
    class NeedsResidual(StayPut):
        needs_residual = True

    OPTIMIZERS.register("needs_residual", NeedsResidual())
    try:
        RegistrationOptions(optimizer="needs_residual", similarity="zncc").validate()  # zncc has one
        with pytest.raises(InputError, match="'ssim' has no least-squares residual"):
            RegistrationOptions(optimizer="needs_residual", similarity="ssim").validate()
    finally:
        OPTIMIZERS.unregister("needs_residual")


# --------------------------------------------------------------------------
# Options built in one place
# --------------------------------------------------------------------------


def test_make_options_converts_checks_and_names_unknown_settings():
    opts = make_options(levels="8 4 2", max_iterations=40.0, n_starts=3, step_voxels=0.5)
    assert opts.levels == (8.0, 4.0, 2.0) and opts.max_iterations == 40 and isinstance(opts.max_iterations, int)
    assert opts.render_options() == {"step_voxels": 0.5, "max_memory_mb": 2048.0, "backend": "auto"}
    with pytest.raises(InputError, match=r"unknown registration option\(s\) \['iterations'\]"):
        make_options(iterations=3)
    with pytest.raises(InputError, match="whole number"):
        make_options(max_iterations=2.5)
    with pytest.raises(InputError, match="levels"):
        make_options(levels="8 x")
    with pytest.raises(InputError, match="max_step_reductions"):
        make_options(max_step_reductions=-1)
    base = make_options(optimizer="lm")
    assert make_options(base, seed=4).optimizer == "lm"


def test_the_demo_start_is_seven_degrees_from_the_target(case):
    """so3_log of the demo's motion equals the documented 7 deg offset (the demo scenario, used by the CLI)."""
    motion = torch.linalg.inv(case["target"]) @ case["start"]
    angle = float(torch.rad2deg(so3_log(motion[:3, :3]).norm()))
    assert angle == pytest.approx(7.0, abs=0.1)
