"""Bad input to `register` / `register_batch` (and the similarities under them) is an InputError (issue #18).

Each case failed before the fix with a TypeError, AttributeError, ValueError
from numpy or torch, a hang, or a silent "registration" with similarity 0.
The case is the small smooth phantom on a 32 x 32 detector, so every
refusal comes before (or after one coarse render of) the optimisation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DiffRegLogic import RegistrationOptions, register, register_batch
from DiffRegLogic.drr import render
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.demo import demo_poses
from DiffRegLogic.geometry import Detector
from DiffRegLogic.limits import MAX_START_PIXELS
from DiffRegLogic.similarity import multiscale_zncc, mutual_information, zncc
from DiffRegLogic.volume.ct import Volume

QUICK = dict(levels=(2.0,), max_iterations=2)


@pytest.fixture(scope="module")
def tiny(smooth_phantom):
    """The smooth phantom, a 32 x 32 detector (12 mm pixels), target and start poses and the X-ray at the target."""
    detector = Detector(32, 32, 1020.0, (12.0, 12.0))
    target, start = demo_poses(smooth_phantom.center)
    xray = render(smooth_phantom, detector, target)[0]
    return dict(volume=smooth_phantom, detector=detector, target=target, start=start, xray=xray)


def _register(tiny, *, volume=None, xray=None, start=None, mask=None, **options):
    return register(tiny["volume"] if volume is None else volume, tiny["xray"] if xray is None else xray,
                    tiny["detector"], tiny["start"] if start is None else start,
                    RegistrationOptions(**{**QUICK, **options}), mask=mask)


# --------------------------------------------------------------------------
# Pyramid sizes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("levels, level, size", [((1e6,), 0, "1 x 1"), ((4.0, 16.0), 1, "2 x 2")])
def test_a_level_below_the_smallest_detector_is_refused_naming_it(tiny, levels, level, size):
    with pytest.raises(InputError, match=rf"level {level} \(levels\[{level}\] = .*32 x 32 detector to {size} "
                                         r"pixels.*at least 4 pixels.*at most 8"):
        _register(tiny, levels=levels)


def test_starts_times_pixels_beyond_the_limit_are_refused_before_rendering(tiny):
    detector = Detector(1100, 1100, 1020.0, (0.35, 0.35))
    xray = torch.rand(1100, 1100, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match=rf"1000 starts x 1100 x 1100 pixels.*{MAX_START_PIXELS} .*lower n_starts"):
        register(tiny["volume"], xray, detector, tiny["start"], RegistrationOptions(levels=(1.0,), n_starts=1000))


# --------------------------------------------------------------------------
# X-ray and mask
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mask, message", [
    ("all", "mask must be a torch tensor or numpy array.*got str"),
    ([[1.0] * 32] * 32, "mask must be a torch tensor or numpy array.*got list"),
    (torch.ones(32, 32, dtype=torch.complex64), "mask has dtype torch.complex64"),
    (np.full((32, 32), "a"), "mask has numpy dtype"),
    (torch.full((32, 32), float("nan")), r"mask must hold weights in \[0, 1\]"),
    (torch.full((32, 32), 255, dtype=torch.uint8), r"\[0, 1\].*\(mask > 0\)"),
])
def test_a_mask_that_is_not_weights_is_refused(tiny, mask, message):
    with pytest.raises(InputError, match=message):
        _register(tiny, mask=mask)


@pytest.mark.parametrize("xray, message", [
    ("xray.png", "X-ray must be a torch tensor or numpy array.*got str.*read_xray"),
    ([[0.0] * 32] * 32, "X-ray must be a torch tensor or numpy array.*got list"),
    (torch.ones(32, 32, dtype=torch.bool), "X-ray has dtype torch.bool"),
    (torch.ones(32, 32, dtype=torch.complex128), "X-ray has dtype torch.complex128"),
])
def test_an_xray_that_is_not_an_image_is_refused(tiny, xray, message):
    with pytest.raises(InputError, match=message):
        _register(tiny, xray=xray)


def test_an_xray_without_contrast_is_refused(tiny):
    with pytest.raises(InputError, match="X-ray has no contrast: its values span .*e-200.*rescale"):
        _register(tiny, xray=tiny["xray"].double() * 1e-200)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[5:9, 5:9] = True
    flat = tiny["xray"].double().clone()
    flat[mask] = 2.0
    with pytest.raises(InputError, match="X-ray has no contrast inside the mask"):
        _register(tiny, xray=flat, mask=mask)


def test_numpy_images_in_any_layout_are_read(tiny):
    xray = np.ascontiguousarray(tiny["xray"].numpy()[::-1])[::-1].astype(">f4")  # negative strides, big-endian
    result = _register(tiny, xray=xray, mask=np.ones((32, 32), dtype=bool)[::-1])
    assert np.isfinite(result.similarity)


# --------------------------------------------------------------------------
# The CT and the start
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_ct_is_refused_with_what_to_do(tiny, dtype):
    volume = Volume(tiny["volume"].mu.to(dtype), tiny["volume"].affine)
    with pytest.raises(InputError, match=rf"stored in {dtype}.*float32 or float64.*mu.float\(\)") as info:
        _register(tiny, volume=volume)
    assert "not rigid" not in str(info.value)  # the float64 start pose is not blamed


@pytest.mark.parametrize("value", [0.0, -0.01])
def test_a_ct_without_attenuating_voxels_is_refused(tiny, value):
    volume = Volume(torch.full_like(tiny["volume"].mu, value), tiny["volume"].affine)
    with pytest.raises(InputError, match="CT has no attenuating voxels"):
        _register(tiny, volume=volume)


def test_a_start_whose_drr_misses_the_detector_is_refused(tiny):
    off = tiny["start"].clone()
    off[0, 3] += 2000.0  # 2 m sideways: the CT projects beside the detector
    with pytest.raises(InputError, match="start pose the CT does not project onto the detector"):
        _register(tiny, start=off)
    with pytest.raises(InputError, match=r"start\(s\) \[1\] of 2 the CT does not project"):
        register_batch(tiny["volume"], tiny["xray"], tiny["detector"], torch.stack([tiny["start"], off]),
                       RegistrationOptions(**QUICK))
    faint = Volume(tiny["volume"].mu * 1e-30, tiny["volume"].affine)  # attenuating, but below any contrast
    with pytest.raises(InputError, match="DRR on the coarsest level has no contrast"):
        _register(tiny, volume=faint)


def test_random_starts_behind_the_source_name_the_start_settings(tiny):
    with pytest.raises(InputError, match="random start .*start_translation_mm = 1e\\+06.*behind the X-ray source"):
        _register(tiny, n_starts=5, start_translation_mm=1e6)


def test_the_largest_seed_drives_cma(tiny):
    result = _register(tiny, optimizer="cma", seed=2**32 - 1, max_evaluations=10)
    assert np.isfinite(result.similarity)


def test_callbacks_and_reference_pose_are_checked(tiny):
    with pytest.raises(InputError, match="callback must be a function"):
        register(tiny["volume"], tiny["xray"], tiny["detector"], tiny["start"], RegistrationOptions(**QUICK),
                 callback=3)
    with pytest.raises(InputError, match="reference_pose must be one 4x4 pose"):
        register_batch(tiny["volume"], tiny["xray"], tiny["detector"], tiny["start"], RegistrationOptions(**QUICK),
                       reference_pose=torch.stack([tiny["start"]] * 2))


def test_registration_changes_none_of_its_inputs(tiny):
    xray, start = tiny["xray"].double(), tiny["start"].clone()
    mask = torch.ones(32, 32, dtype=torch.float64)
    opts = RegistrationOptions(levels=[2.0], max_iterations=2.0)
    copies = [t.clone() for t in (xray, start, mask)]
    result = register(tiny["volume"], xray, tiny["detector"], start, opts, mask=mask)
    for original, copy in zip((xray, start, mask), copies):
        assert torch.equal(original, copy)
    assert opts.levels == [2.0] and opts.max_iterations == 2.0
    assert result.options["levels"] == [2.0] and result.options["max_iterations"] == 2
    result.initial_pose[0, 3] += 1.0  # the result holds its own tensors
    assert torch.equal(start, copies[1])


# --------------------------------------------------------------------------
# Similarities (what registration calls at every iteration)
# --------------------------------------------------------------------------


def test_similarity_arguments_and_images_out_of_range_are_refused():
    a = torch.rand(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = torch.rand(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(InputError, match="patch_sizes must be a non-empty sequence"):
        multiscale_zncc(a, b, patch_sizes=4.0)
    with pytest.raises(InputError, match="bins must be at most 1024"):
        mutual_information(a, b, bins=2**70)
    with pytest.raises(InputError, match="sigma_bins must be at least"):
        mutual_information(a, b, sigma_bins=1e-300)
    with pytest.raises(InputError, match="mask has numpy dtype"):
        zncc(a, b, mask=np.full((16, 16), None))
    with pytest.raises(InputError, match="drr has values up to 1e\\+300.*rescale"):
        zncc(a * 0 + 1e300, b)
    with pytest.raises(InputError, match="drr has NaN"):
        zncc(a * float("nan"), b)
    flipped = zncc(np.flipud(a.numpy()), b)  # a numpy view with negative strides
    assert torch.equal(flipped, zncc(torch.flip(a, (0,)), b))


# --------------------------------------------------------------------------
# What the optimiser runs into
# --------------------------------------------------------------------------


def test_a_pose_the_optimiser_moves_out_of_range_is_an_input_error_naming_the_steps(tiny):
    with pytest.raises(InputError, match="adam optimiser moved the pose.*step_translation_mm = 1e\\+06"):
        _register(tiny, step_translation_mm=1e6, max_iterations=20)


def test_a_similarity_with_a_non_finite_gradient_is_an_input_error(tiny):
    def kinked(drr, xray, mask):  # value 0, gradient 1 / (2 sqrt(0)) = inf
        return torch.sqrt(drr - drr.detach()).mean((-2, -1))

    with pytest.raises(InputError, match="gradient of the similarity 'kinked' is not finite.*gradient-free"):
        _register(tiny, similarity=kinked)
