"""Augmentation towards real X-rays (`DiffRegLogic.learning.augment`).

Truth: each step alone against its closed form: scatter on a flat field
lowers every line integral by exactly log(1 + f) / s and shrinks a step's
contrast; quantum noise has the Poisson variance I / N0 in intensity;
detector blur equals `DiffRegLogic.filters.gaussian_blur` applied in the
intensity domain; collimation sets exactly the border bands; window and
gamma follow v = ((p - min) / (max - min)) ** gamma; inversion is
min + max - p; occluders only add, with the wire path of
`physics.instruments.Wire`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.filters import gaussian_blur
from DiffRegLogic.learning.augment import (DEFAULT_AUGMENTATION, NO_AUGMENTATION, Augmentation, _blur_batch,
                                           _segment_d2, augment)
from DiffRegLogic.physics.instruments import Wire


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth positive 'line integrals' (n, size, size) float64 in about [0.5, 4]."""
    g = _gen(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size, dtype=torch.float64),
                          torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    a = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return 0.5 + 3 * a[:, 0, None, None] * torch.exp(-((x - a[:, 1, None, None] + 0.5) ** 2 + y ** 2) * 2) \
        + (1 + y) * a[:, 2, None, None]


def _only(**fields) -> Augmentation:
    return replace(NO_AUGMENTATION, **fields)


def test_no_augmentation_is_the_identity():
    p = _images()
    assert NO_AUGMENTATION.is_identity and not DEFAULT_AUGMENTATION.is_identity
    assert augment(p, NO_AUGMENTATION, _gen()) is p
    assert augment(p, None, _gen()) is p


def test_scatter_on_a_flat_field_and_a_step():
    f = 0.4
    aug = _only(scatter_probability=1.0, scatter_fraction_range=(f, f), scatter_sigma_range=(0.2, 0.2))
    flat = torch.full((2, 32, 32), 2.0, dtype=torch.float64)
    torch.testing.assert_close(augment(flat, aug, _gen()), flat - math.log(1 + f), rtol=0, atol=1e-12)
    # a CT in other units: s = max_line_integral / max(p) = 0.4, the shift is log(1 + f) / s
    dense = torch.full((1, 16, 16), 20.0, dtype=torch.float64)
    torch.testing.assert_close(augment(dense, aug, _gen()), dense - math.log(1 + f) / 0.4, rtol=0, atol=1e-12)
    step = torch.full((1, 32, 32), 1.0, dtype=torch.float64)
    step[:, :, 16:] = 3.0
    out = augment(step, aug, _gen())
    intensity = torch.exp(-step)
    torch.testing.assert_close(out, -torch.log(intensity + f * gaussian_blur(intensity, 0.2 * 32)), rtol=0, atol=1e-12)
    assert float(out[0, 16, 28] - out[0, 16, 3]) < 2.0 - 0.04  # scatter fills in the dark side: less contrast
    assert bool((out < step).all())  # scatter only adds photons


def test_noise_has_the_poisson_variance():
    photons = 2e4
    aug = _only(noise_probability=1.0, photons_range=(photons, photons))
    p = torch.full((4, 64, 64), 1.0, dtype=torch.float64)
    intensity = torch.exp(-augment(p, aug, _gen(1)))
    assert float(intensity.mean()) == pytest.approx(math.exp(-1), rel=1e-3)
    assert float(intensity.var()) == pytest.approx(math.exp(-1) / photons, rel=0.05)  # 16384 samples: ~1 % sd


def test_blur_is_the_shared_gaussian_in_intensity():
    sigma = 0.05  # of 32 px: 1.6 px
    aug = _only(blur_probability=1.0, blur_sigma_range=(sigma, sigma))
    p = _images()
    expected = -torch.log(gaussian_blur(torch.exp(-p), sigma * 32))
    torch.testing.assert_close(augment(p, aug, _gen()), expected, rtol=0, atol=1e-10)


def test_batched_blur_equals_gaussian_blur_per_image():
    p = _images(4, 40)
    sigmas = torch.tensor([0.0, 0.7, 3.0, 12.5], dtype=torch.float64)  # the last two by FFT in gaussian_blur too
    out = _blur_batch(p, sigmas)
    for k in range(4):
        torch.testing.assert_close(out[k], gaussian_blur(p[k], float(sigmas[k])), rtol=0, atol=1e-10)


def test_collimation_fills_the_border_bands():
    aug = _only(collimation_probability=1.0, collimation_band_range=(0.125, 0.125), collimation_level_range=(0.5, 0.5))
    p = _images(3, 32)
    out = augment(p, aug, _gen())
    fill = 0.5 * p.flatten(1).amax(1)[:, None, None]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[4:28, 4:28] = True  # round(0.125 * 32) = 4 px on each side
    assert torch.equal(out[:, inside], p[:, inside])
    assert torch.equal(out[:, ~inside], fill.expand(3, 32, 32)[:, ~inside])


def test_window_and_gamma_follow_the_closed_form():
    g = 1.7
    aug = _only(window_probability=1.0, gamma_range=(g, g), window_low_range=(0.0, 0.0),
                window_high_range=(100.0, 100.0))
    p = _images(3, 64)
    lo, hi = p.flatten(1).amin(1)[:, None, None], p.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(augment(p, aug, _gen()), lo + ((p - lo) / (hi - lo)) ** g * (hi - lo),
                               rtol=0, atol=1e-12)
    clip = _only(window_probability=1.0, gamma_range=(1.0, 1.0), window_low_range=(20.0, 20.0),
                 window_high_range=(80.0, 80.0))
    out = augment(p, clip, _gen())
    low_share = (out == out.flatten(1).amin(1)[:, None, None]).flatten(1).double().mean(1)
    assert bool(((low_share > 0.18) & (low_share < 0.22)).all())  # the lowest 20 % clipped to the window's bottom
    order = p.flatten(1).argsort(1)
    assert bool((out.flatten(1).gather(1, order).diff(dim=1) >= 0).all())  # monotone: the ordering is kept


def test_inversion_flips_the_ordering():
    p = _images()
    out = augment(p, _only(inversion_probability=1.0), _gen())
    lo, hi = p.flatten(1).amin(1)[:, None, None], p.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(out, lo + hi - p, rtol=0, atol=1e-12)
    i, j = p.flatten(1).argmin(1), p.flatten(1).argmax(1)
    assert bool((out.flatten(1).gather(1, i[:, None]) > out.flatten(1).gather(1, j[:, None])).all())


def test_inversion_probability_is_per_image():
    p = _images(400, 8)
    out = augment(p, _only(inversion_probability=0.5), _gen(4))
    changed = (out != p).flatten(1).any(1).double().mean()
    assert 0.4 < float(changed) < 0.6  # 400 images: sd 0.025


def test_occluders_only_add_attenuation():
    aug = _only(occluder_probability=1.0, occluder_count_range=(2, 3), occluder_strength_range=(0.5, 1.0))
    p = _images(6, 48)
    out = augment(p, aug, _gen(2))
    added = out - p
    assert bool((added >= 0).all())
    assert bool((added.flatten(1).amax(1) > 0.2 * p.flatten(1).amax(1)).all())  # every image got something visible
    assert bool((added.flatten(1).amax(1) <= 3 * 1.0 * p.flatten(1).amax(1) + 1e-9).all())  # <= count x strength
    assert bool(((added > 0).flatten(1).double().mean(1) < 0.5).all())  # thin: most pixels untouched


def test_occluder_wire_path_is_the_instruments_closed_form():
    y, x = torch.meshgrid(torch.arange(20, dtype=torch.float64), torch.arange(30, dtype=torch.float64), indexing="ij")
    a, b, c = (3.0, 4.0), (15.0, 12.5), (27.0, 6.0)
    d2 = torch.minimum(_segment_d2(x, y, torch.tensor([a]), torch.tensor([b])),
                       _segment_d2(x, y, torch.tensor([b]), torch.tensor([c])))[0]
    r = 2.5
    ours = 2 * (r * r - d2).clamp_min(0).sqrt()
    torch.testing.assert_close(ours, Wire((a, b, c), r).path_mm(x, y), rtol=0, atol=1e-12)


def test_augment_is_seeded_keeps_dtype_and_differs_between_draws():
    p = _images(8, 32).float()
    a = augment(p, DEFAULT_AUGMENTATION, _gen(5))
    assert a.dtype == torch.float32 and a.shape == p.shape and bool(torch.isfinite(a).all())
    assert torch.equal(a, augment(p, DEFAULT_AUGMENTATION, _gen(5)))
    assert not torch.equal(a, augment(p, DEFAULT_AUGMENTATION, _gen(6)))
    g = _gen(5)
    assert not torch.equal(augment(p, DEFAULT_AUGMENTATION, g), augment(p, DEFAULT_AUGMENTATION, g))
    assert augment(p.double(), DEFAULT_AUGMENTATION, _gen(5)).dtype == torch.float64


def test_augmentation_dict_round_trip_and_checks():
    d = DEFAULT_AUGMENTATION.to_dict()
    assert d["photons_range"] == [1e3, 1e5]
    assert Augmentation.from_dict(d) == DEFAULT_AUGMENTATION
    assert Augmentation.from_dict(NO_AUGMENTATION.to_dict()) == NO_AUGMENTATION
    for bad in (dict(noise_probability=1.5), dict(gamma_range=(2.0, 1.0)), dict(photons_range=(0.0, 10.0)),
                dict(occluder_count_range=(1.5, 3)), dict(collimation_band_range=(0.0, 0.6)), dict(blur_sigma_range=3)):
        with pytest.raises(InputError):
            Augmentation(**bad)
    with pytest.raises(InputError, match="unknown"):
        Augmentation.from_dict({"sparkle_probability": 0.1})
    with pytest.raises(InputError):
        augment(torch.zeros(4, 4), DEFAULT_AUGMENTATION, _gen())
    with pytest.raises(InputError):
        augment(torch.zeros(1, 4, 4), DEFAULT_AUGMENTATION, 5)
