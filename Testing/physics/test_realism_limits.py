"""Realism options outside their ranges are refused with an InputError naming the field; the blur filter is bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, InputError, Volume
from DiffRegLogic.drr.radiograph import simulate_radiograph
from DiffRegLogic.filters import check_sigma, gaussian_blur
from DiffRegLogic.limits import MAX_BLUR_PX, SEED_RANGE
from DiffRegLogic.physics.realism import Realism, apply_realism
from DiffRegLogic.volume.phantoms import grid_affine

DETECTOR = Detector(6, 8, 1000.0, (0.5, 0.25))


@pytest.mark.parametrize("field, value", [
    ("photons_per_pixel", 1e-300), ("photons_per_pixel", 0.0), ("photons_per_pixel", 1e300),
    ("photons_per_pixel", float("nan")), ("photons_per_pixel", "1e4"),
    ("blur_mm", 1e9), ("blur_mm", -0.1), ("blur_mm", float("inf")), ("blur_mm", None),
    ("scatter_fraction", -0.5), ("scatter_fraction", 1e6), ("scatter_fraction", float("nan")),
    ("scatter_sigma_mm", -1.0), ("scatter_sigma_mm", 1e12), ("scatter_sigma_mm", float("inf")),
    ("heel", 1.0), ("heel", -1.5), ("heel", float("nan")), ("heel", "0.1"),
    ("seed", 2**70), ("seed", -1), ("seed", 2.5), ("seed", float("nan")), ("seed", "3"), ("seed", True),
    ("seed", 10**400), pytest.param("seed", 10**5000, id="seed-10**5000"),
])
def test_realism_field_outside_its_range_is_refused(field, value):
    with pytest.raises(InputError, match=field):
        Realism(**{field: value})


def test_valid_realism_values_are_kept_as_plain_numbers():
    realism = Realism(photons_per_pixel=np.float32(1e4), blur_mm=1, scatter_fraction=0.3, heel=-0.2,
                      seed=np.uint32(SEED_RANGE[1]))
    assert realism.seed == SEED_RANGE[1] and isinstance(realism.seed, int)
    assert realism.photons_per_pixel == pytest.approx(1e4) and isinstance(realism.blur_mm, float)
    assert Realism(seed=7.0).seed == 7


def test_kernels_wider_than_the_limit_in_pixels_are_refused_before_rendering():
    """blur 1 m is 4000 pixels of 0.25 mm: refused by name (it was an allocation failure of the blur)."""
    wide = Realism(blur_mm=MAX_BLUR_PX * 0.25 * 1.01)
    with pytest.raises(InputError, match="blur_mm"):
        apply_realism(torch.ones(1, 6, 8), DETECTOR, wide)
    with pytest.raises(InputError, match="scatter_sigma_mm"):
        apply_realism(torch.ones(1, 6, 8), DETECTOR, Realism(scatter_fraction=0.2, scatter_sigma_mm=300.0))
    # scatter_sigma_mm only matters with scatter
    assert torch.equal(apply_realism(torch.ones(1, 6, 8), DETECTOR, Realism(scatter_sigma_mm=300.0)),
                       torch.ones(1, 6, 8))
    volume = Volume(torch.full((4, 5, 6), 0.02), grid_affine((6, 5, 4), (1.0, 1.0, 1.0)))
    pose = torch.eye(4, dtype=torch.float64)
    pose[2, 3] = 50.0
    with pytest.raises(InputError, match="blur_mm"):
        simulate_radiograph(volume, DETECTOR, pose, wide)


@pytest.mark.parametrize("bad", [[[1.0]], np.ones((1, 6, 8)), torch.ones(1, 6, 8, dtype=torch.int64)])
def test_apply_realism_refuses_what_is_not_a_float_tensor(bad):
    with pytest.raises(InputError, match="intensity"):
        apply_realism(bad, DETECTOR, Realism(blur_mm=0.5))


def test_apply_realism_needs_a_realism_and_a_detector():
    with pytest.raises(InputError, match="realism"):
        apply_realism(torch.ones(1, 6, 8), DETECTOR, {"blur_mm": 0.5})
    with pytest.raises(InputError, match="detector"):
        apply_realism(torch.ones(1, 6, 8), (6, 8), Realism())


@pytest.mark.parametrize("sigma", [1e9, MAX_BLUR_PX * 1.5, -1.0, float("nan"), "2", True, 10**400,
                                   pytest.param(10**5000, id="10**5000")])
def test_gaussian_blur_refuses_sigmas_it_cannot_apply(sigma):
    with pytest.raises(InputError, match="sigma"):
        gaussian_blur(torch.ones(4, 4), sigma)


def test_gaussian_blur_at_the_limit_still_works():
    assert check_sigma(MAX_BLUR_PX) == MAX_BLUR_PX
    out = gaussian_blur(torch.ones(3, 5, dtype=torch.float64), (0.0, 20.0))
    assert torch.allclose(out, torch.ones(3, 5, dtype=torch.float64))
