"""The stored image's processing and the collimator, against closed forms, numpy and scipy.

Truth: window/level and gamma as numpy formulas; percentiles from numpy;
unsharp masking from scipy's Gaussian filter (mode nearest, truncate 4);
quantisation counted with numpy; inversion reverses every pair's order;
collimated areas counted by hand (rectangle) and pi r^2 (circle).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry import Detector
from DiffRegLogic.physics.processing import (CONVENTIONS, Collimation, Processing, apply_gamma, collimation_area_mm2,
                                             collimation_mask, convention_of, invert, percentile_window, process,
                                             quantize, unsharp_mask, window_level)

DETECTOR = Detector(rows=40, cols=50, sdd=1000.0, pixel_spacing=(2.0, 2.0))


@pytest.fixture(scope="module")
def intensity():
    """(1, 40, 50) I/I0 in (0.01, 1): a smooth field with a dense block."""
    gen = torch.Generator().manual_seed(1)
    li = torch.rand(1, 40, 50, generator=gen, dtype=torch.float64) * 0.5
    li[:, 10:25, 15:30] += 3.0
    return torch.exp(-li)


def test_window_level_and_percentile_window_are_their_closed_forms(intensity):
    v = intensity[0]
    out = window_level(v, 0.5, 0.4)
    np.testing.assert_allclose(out.numpy(), np.clip((v.numpy() - 0.3) / 0.4, 0, 1), atol=1e-15)
    level, width = percentile_window(v, 2.0, 97.0)
    lo, hi = np.percentile(v.numpy(), [2.0, 97.0])
    assert level == pytest.approx((lo + hi) / 2, rel=1e-12) and width == pytest.approx(hi - lo, rel=1e-12)
    assert percentile_window(torch.ones(5, 5, dtype=torch.float64), 1, 99) == (1.0, 1.0)


def test_gamma_is_a_power_of_the_clamped_values():
    v = torch.tensor([[-0.5, 0.0, 0.25], [0.5, 1.0, 1.5]], dtype=torch.float64)
    out = apply_gamma(v, 0.6).reshape(-1).tolist()
    assert out == pytest.approx([0.0, 0.0, 0.25 ** 0.6, 0.5 ** 0.6, 1.0, 1.0])


def test_unsharp_masking_matches_scipy_and_leaves_a_constant_unchanged(intensity):
    v = intensity[0]
    out = unsharp_mask(v, (1.5, 2.5), 1.2)
    blurred = gaussian_filter(v.numpy(), (1.5, 2.5), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(out.numpy(), v.numpy() + 1.2 * (v.numpy() - blurred), atol=1e-12)
    flat = torch.full((1, 30, 30), 0.37, dtype=torch.float64)
    assert torch.allclose(unsharp_mask(flat, 3.0, 2.0), flat, atol=1e-15, rtol=0)


def test_8_bit_quantisation_gives_at_most_256_levels_within_half_a_step(intensity):
    for v in (-torch.log(intensity), torch.linspace(-2.0, 5.0, 4000, dtype=torch.float64).reshape(1, 40, 100)):
        q = quantize(v, 8)
        assert len(np.unique(q.numpy())) <= 256
        step = float(v.max() - v.min()) / 255
        assert float((q - v).abs().max()) <= step / 2 * (1 + 1e-9)
        assert len(np.unique(quantize(v, 1).numpy())) == 2
    assert len(np.unique(q.numpy())) == 256  # a ramp fills every level


def test_inversion_reverses_every_order_and_keeps_the_range(intensity):
    v = intensity.reshape(-1)[:300]
    w = invert(v.reshape(1, 15, 20)).reshape(-1)
    dv, dw = v[:, None] - v[None, :], w[:, None] - w[None, :]
    assert bool(((dv > 0) == (dw < 0)).all())
    assert float(w.min()) == pytest.approx(float(v.min())) and float(w.max()) == pytest.approx(float(v.max()))
    assert torch.allclose(invert(invert(v.reshape(1, 15, 20))).reshape(-1), v, atol=1e-15)


def test_the_chain_and_its_convention(intensity):
    li = -torch.log(intensity)
    assert torch.allclose(process(intensity, DETECTOR), li, atol=1e-15)  # default: -log(I/I0) as it is
    assert torch.equal(process(intensity, DETECTOR, Processing(log=False)), intensity)
    assert torch.allclose(process(intensity, DETECTOR, Processing(invert=True)), li.min() + li.max() - li, atol=1e-14)
    full = Processing(window=(1.0, 99.0), gamma=0.6, unsharp_amount=1.5, unsharp_sigma_mm=4.0, bits=8)
    out = process(intensity, DETECTOR, full)
    level, width = percentile_window(li[0], 1.0, 99.0)
    by_hand = np.clip((li[0].numpy() - level + width / 2) / width, 0, 1) ** 0.6
    by_hand = np.clip(by_hand + 1.5 * (by_hand - gaussian_filter(by_hand, 2.0, mode="nearest", truncate=4.0)), 0, 1)
    lo, hi = by_hand.min(), by_hand.max()
    by_hand = lo + np.round((by_hand - lo) / (hi - lo) * 255) / 255 * (hi - lo)
    np.testing.assert_allclose(out[0].numpy(), by_hand, atol=1e-12)
    assert len(np.unique(out.numpy())) <= 256
    table = {(True, False): "line_integral", (True, True): "inverted", (False, False): "intensity",
             (False, True): "inverted_intensity"}
    for (log, inverted), name in table.items():
        assert convention_of(log, inverted) == name == Processing(log=log, invert=inverted).convention
    assert set(table.values()) == set(CONVENTIONS)
    # raw intensity is bone dark, its inversion bone bright: the dense block is darkest / brightest
    block = (slice(None), slice(10, 25), slice(15, 30))
    raw_inv = process(intensity, DETECTOR, Processing(log=False, invert=True))
    assert float(raw_inv[block].mean()) > float(raw_inv.mean())


def test_rectangular_collimation_area_is_counted_by_hand():
    detector = Detector(rows=100, cols=100, sdd=1000.0, pixel_spacing=(0.5, 0.8))
    mask = collimation_mask(detector, Collimation("rectangle", (0.5, 0.8)))
    # rows: |r - 49.5| <= 25 -> 25..74 (50 rows); columns: |c - 49.5| <= 40 -> 10..89 (80 columns)
    assert int(mask.sum()) == 50 * 80
    assert bool(mask[25, 10]) and bool(mask[74, 89]) and not bool(mask[24, 50]) and not bool(mask[50, 90])
    assert collimation_area_mm2(detector, Collimation("rectangle", (0.5, 0.8))) == pytest.approx(50 * 0.5 * 80 * 0.8)
    shifted = collimation_mask(detector, Collimation("rectangle", (0.5, 0.8), center=(0.1, -0.2)))
    assert int(shifted.sum()) == 50 * 80 and bool(shifted[5, 20]) and not bool(shifted[75, 20])


def test_circular_collimation_area_is_pi_r_squared():
    detector = Detector(rows=200, cols=240, sdd=1000.0, pixel_spacing=(1.0, 1.0))
    collimation = Collimation("circle", (0.8, 1.0))
    mask = collimation_mask(detector, collimation)
    radius_px = 0.8 * 200 / 2
    area = math.pi * radius_px ** 2
    assert int(mask.sum()) == pytest.approx(area, abs=2 * math.pi * radius_px * 0.1)
    assert collimation_area_mm2(detector, collimation) == pytest.approx(area)


@pytest.mark.parametrize("make", [
    lambda: Processing(gamma=0.0),
    lambda: Processing(gamma=0.8),  # gamma needs a window
    lambda: Processing(window=(60.0, 10.0)),
    lambda: Processing(window=(1.0, 101.0)),
    lambda: Processing(bits=0),
    lambda: Processing(bits=17),
    lambda: Processing(unsharp_amount=1.0),  # needs a sigma
    lambda: Processing(log="yes"),
    lambda: Collimation("hexagon"),
    lambda: Collimation(size=(1.5, 0.5)),
    lambda: Collimation(transmission=1.0),
    lambda: Collimation(transmission=0.0),
    lambda: window_level(torch.ones(3, 3), 0.5, 0.0),
    lambda: quantize(torch.ones(3, 3), 2.5),
    lambda: process(torch.ones(1, 3, 3), DETECTOR),
    lambda: process(torch.ones(1, 40, 50), DETECTOR, "full"),
    lambda: process(torch.ones(1, 40, 50), DETECTOR, Processing(unsharp_amount=1.0, unsharp_sigma_mm=1e4)),
])
def test_bad_processing_parameters_are_input_errors(make):
    with pytest.raises(InputError):
        make()
