"""Robust (Tukey) weights and the configured measure: against closed forms, exact matches and a pose scan."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from DiffRegLogic import Detector, InputError, render
from DiffRegLogic.experiments.demo import demo_poses
from DiffRegLogic.similarity import zncc
from DiffRegLogic.similarity.measure import as_measure
from DiffRegLogic.similarity.robust import TUKEY_C, configure_measure, robust_weights
from DiffRegLogic.volume.phantoms import chest_phantom

F64 = torch.float64


def options(robust="none", nuisance="none"):
    return SimpleNamespace(robust=robust, nuisance=nuisance)


def smooth(shape, seed, sigma=3.0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=shape))
    from DiffRegLogic.filters import gaussian_blur
    return gaussian_blur(x.reshape(-1, *shape[-2:]), sigma).reshape(shape) * 10


def test_exact_affine_match_gets_weight_one():
    d = smooth((40, 44), 0)
    w = robust_weights(d, 3.0 - 0.5 * d)
    assert w.shape == (1, 40, 44)
    assert torch.allclose(w, torch.ones_like(w), rtol=0, atol=1e-12)


def test_gaussian_residual_mean_weight_matches_the_closed_form():
    # E[(1 - (z/c)^2)^2 ; |z| < c] for z ~ N(0, 1), by quadrature of the normal density
    z = np.linspace(-TUKEY_C, TUKEY_C, 200001)
    expected = np.trapezoid((1 - (z / TUKEY_C) ** 2) ** 2 * np.exp(-z * z / 2) / math.sqrt(2 * math.pi), z)
    d = smooth((200, 200), 1)
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=(200, 200)))
    w = robust_weights(d, 2 * d + 0.5 * noise)  # noise well above the scale floor (0.05 of the X-ray's sd)
    assert float(w.mean()) == pytest.approx(expected, abs=0.01)  # ~0.87: "~1" for Gaussian inliers


def test_bright_square_gets_weight_zero_and_the_rest_about_one():
    d = smooth((64, 64), 3)
    x = 1.5 * d + 0.01 * torch.from_numpy(np.random.default_rng(4).normal(size=(64, 64)))
    x[10:20, 30:40] += 20 * float(d.std())
    w = robust_weights(d, x)[0]
    assert float(w[10:20, 30:40].max()) == 0.0
    outside = torch.ones_like(w, dtype=torch.bool)
    outside[10:20, 30:40] = False
    assert float(w[outside].mean()) > 0.85


def test_weights_are_batched_and_respect_the_mask():
    d = smooth((3, 32, 32), 5)
    x = d[0] * 2 + 1
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[:, :4] = False
    w = robust_weights(d, x, mask)
    for i in range(3):
        assert torch.allclose(w[i], robust_weights(d[i], x, mask)[0])
    assert float(w[:, :, :4].abs().max()) == 0.0
    assert torch.allclose(w[0][mask], torch.ones(int(mask.sum()), dtype=F64), rtol=0, atol=1e-12)


def test_configure_measure_none_is_the_measure_itself_and_names_the_wrapping():
    base = as_measure("zncc")
    assert configure_measure(base, options()) is base
    robust = configure_measure(base, options("tukey"))
    assert robust.name == "zncc+tukey" and robust.dtype == base.dtype and robust.residual is not None
    assert configure_measure("mi", options("tukey", "scatter")).residual is None
    for bad in (options("huber"), options(nuisance="heel")):
        with pytest.raises(InputError, match="choose one of"):
            configure_measure(base, bad)


@pytest.mark.parametrize("name", ["zncc", "patch_zncc", "gradient_ncc", "multiscale_zncc"])
@pytest.mark.parametrize("robust, nuisance", [("tukey", "none"), ("none", "scatter"), ("tukey", "scatter")])
def test_residual_norm_is_one_minus_similarity(name, robust, nuisance):
    d = smooth((2, 32, 32), 6).abs() * 0.3
    x = -torch.log(torch.exp(-d[1]) + 0.2) + 0.02 * torch.from_numpy(np.random.default_rng(7).normal(size=(32, 32)))
    x[5:9, 5:12] += 3.0
    measure = configure_measure(name, options(robust, nuisance))
    value = measure(d, x)
    r = measure.residual(d, x)
    assert torch.allclose((r ** 2).sum(-1), 1 - value, atol=1e-12)


def phantom_case(size=48, pixel_mm=8.0):
    volume = chest_phantom().to(dtype=F64)
    detector = Detector(size, size, 1020.0, (pixel_mm, pixel_mm))
    target, _ = demo_poses(volume.center.to(F64))
    return volume, detector, target


def test_instrument_outlier_moves_the_plain_optimum_but_not_the_robust_one():
    volume, detector, target = phantom_case()
    with torch.no_grad():
        xray = render(volume, detector, target, "siddon")[0]
        shifts = torch.arange(-8.0, 8.5, 1.0, dtype=F64)  # mm along the camera x axis
        poses = target.expand(len(shifts), 4, 4).clone()
        poses[:, 0, 3] += shifts
        drrs = render(volume, detector, poses, "siddon")
    # an instrument: a bright wire with a bulb, off to one side
    wire = xray.clone()
    wire[8:40, 30:33] += 2.5 * float(xray.std())
    wire[12:20, 26:34] += 2.5 * float(xray.std())
    plain = zncc(drrs, wire)
    robust = configure_measure("zncc", options("tukey"))(drrs, wire)
    assert float(shifts[int(zncc(drrs, xray).argmax())]) == 0.0  # clean: the optimum is the true pose
    assert abs(float(shifts[int(plain.argmax())])) >= 1.0  # the wire pulls plain ZNCC off it
    assert float(shifts[int(robust.argmax())]) == 0.0


def test_gradients_with_the_weights_held_fixed_match_finite_differences():
    d = (smooth((1, 6, 7), 8).abs() * 0.2).requires_grad_(True)
    x = 0.5 * d.detach()[0] + 0.1 * smooth((6, 7), 9, 1.0)
    w = robust_weights(d, x)
    assert torch.autograd.gradcheck(lambda a: zncc(a, x, w), (d,))
    measure = configure_measure("zncc", options("tukey"))
    value = measure(d, x)
    value.sum().backward()
    expected = torch.autograd.grad(zncc(d, x, w).sum(), d)[0]
    assert torch.allclose(d.grad, expected)
