"""The one Gaussian blur (`DiffRegLogic.filters.gaussian_blur`) against scipy, both code paths, and by gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from DiffRegLogic import filters
from DiffRegLogic.errors import InputError
from DiffRegLogic.filters import FFT_RADIUS, blur_radius, gaussian_blur


def _reference(image: np.ndarray, sigma) -> np.ndarray:
    """scipy's blur of the last two axes with the engine's rule (nearest = replicated border, cut at 4 sigma)."""
    rows, cols = (sigma, sigma) if np.ndim(sigma) == 0 else sigma
    sigmas = (0.0,) * (image.ndim - 2) + (rows, cols)
    return scipy.ndimage.gaussian_filter(image.astype(np.float64), sigmas, mode="nearest", truncate=4.0)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(11).normal(size=(2, 37, 29)) * 3.0 + 1.0


# sigma, and which path each axis takes (radius int(4 sigma + 0.5) against FFT_RADIUS = 8)
SIGMAS = [
    0.6,             # radius 2: shifted sums
    1.5,             # radius 6: shifted sums
    2.0,             # radius 8: the last radius of the shifted sums
    2.2,             # radius 9: the first radius of the FFT
    (0.8, 3.1),      # anisotropic: sums along rows, FFT along columns
    (5.0, 1.0),      # anisotropic the other way
    12.0,            # radius 48, wider than the image: FFT, borders replicated well beyond the image
    (40.0, 25.0),    # scatter-like: radius 160 / 100 on a 37 x 29 image
]


@pytest.mark.parametrize("sigma", SIGMAS, ids=str)
def test_blur_matches_scipy_float64(image, sigma):
    out = gaussian_blur(torch.from_numpy(image), sigma)
    assert out.dtype == torch.float64 and out.shape == image.shape
    np.testing.assert_allclose(out.numpy(), _reference(image, sigma), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [1.5, 2.2, (0.8, 3.1), 12.0], ids=str)
def test_blur_matches_scipy_float32(image, sigma):
    out = gaussian_blur(torch.from_numpy(image).to(torch.float32), sigma)
    assert out.dtype == torch.float32
    # float32 rounding: |image| ~ 10, eps 1.2e-7, a few dozen operations per pixel
    np.testing.assert_allclose(out.numpy(), _reference(image, sigma), rtol=0, atol=2e-5)


def test_both_paths_agree_to_rounding(image, monkeypatch):
    """The same sampled kernel by shifted sums and by FFT, for radii on both sides of the switch."""
    x = torch.from_numpy(image)
    for sigma in (0.9, 2.2, 6.0, (3.0, 1.2)):
        monkeypatch.setattr(filters, "FFT_RADIUS", 10 ** 6)
        direct = gaussian_blur(x, sigma)
        monkeypatch.setattr(filters, "FFT_RADIUS", 0)
        fft = gaussian_blur(x, sigma)
        np.testing.assert_allclose(fft.numpy(), direct.numpy(), rtol=0, atol=1e-13)


def test_radius_rule_and_path_switch():
    # int(4 sigma + 0.5), scipy's rule
    assert [blur_radius(s) for s in (0.1, 0.12, 0.13, 1.0, 2.0, 2.2, 40.0)] == [0, 0, 1, 4, 8, 9, 160]
    assert blur_radius(2.0) == FFT_RADIUS  # sigma 2 is the widest blur done by shifted sums


def test_blurred_delta_has_the_sampled_gaussian_as_impulse_response():
    sigma = (1.75, 4.0)  # rows by shifted sums (radius 7), columns by FFT (radius 16)
    delta = torch.zeros(61, 71, dtype=torch.float64)
    delta[30, 35] = 1.0
    out = gaussian_blur(delta, sigma).numpy()
    r = np.arange(-7, 8)
    c = np.arange(-16, 17)
    kr = np.exp(-0.5 * (r / 1.75) ** 2)
    kc = np.exp(-0.5 * (c / 4.0) ** 2)
    expected = np.zeros((61, 71))
    expected[23:38, 19:52] = np.outer(kr / kr.sum(), kc / kc.sum())
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1.0, 3.0, (0.0, 20.0)], ids=str)
def test_constants_stay_constant(dtype, sigma):
    constant = torch.full((3, 16, 20), 0.4, dtype=dtype)
    out = gaussian_blur(constant, sigma)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    np.testing.assert_allclose(out.double().numpy(), 0.4, rtol=0, atol=tol)


def test_zero_sigma_is_the_identity():
    x = torch.randn(5, 6, dtype=torch.float64)
    assert gaussian_blur(x, 0.0) is x
    assert gaussian_blur(x, 0.1) is x  # radius 0: a single tap of weight 1
    np.testing.assert_allclose(gaussian_blur(x, (0.0, 1.0)).numpy(), _reference(x.numpy(), (0.0, 1.0)), atol=1e-14)


@pytest.mark.parametrize("sigma", [1.0, (0.7, 3.0)], ids=str)
def test_gradcheck(sigma):
    """Autograd gradient against finite differences, on the sums path and (columns of sigma 3) the FFT path."""
    x = torch.randn(1, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, sigma), (x,), eps=1e-6, atol=1e-8)


def test_gradient_is_the_adjoint_blur():
    """For a linear map y = G x, dL/dx = G^T w with w = dL/dy; check <G x, w> = <x, G^T w> on the FFT path."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(12, 10))).requires_grad_(True)
    w = torch.from_numpy(rng.normal(size=(12, 10)))
    y = gaussian_blur(x, 3.0)
    (y * w).sum().backward()
    # G as a matrix, column by column, from blurring unit images
    eye = torch.eye(120, dtype=torch.float64).reshape(120, 12, 10)
    g = gaussian_blur(eye, 3.0).reshape(120, 120).T  # G[:, j] = blur of the j-th unit image
    np.testing.assert_allclose(x.grad.numpy().ravel(), (g.T @ w.reshape(-1)).numpy(), rtol=0, atol=1e-12)


def test_bad_input_says_what_is_wrong():
    with pytest.raises(InputError, match="floating-point tensor"):
        gaussian_blur(np.zeros((4, 4)), 1.0)
    with pytest.raises(InputError, match="floating-point tensor"):
        gaussian_blur(torch.zeros(4, dtype=torch.float64), 1.0)
    with pytest.raises(InputError, match=r"sigma must be a finite number >= 0"):
        gaussian_blur(torch.zeros(4, 4), -1.0)
    with pytest.raises(InputError, match="sigma_cols"):
        gaussian_blur(torch.zeros(4, 4), (1.0, float("nan")))
    with pytest.raises(InputError, match=r"\(sigma_rows, sigma_cols\)"):
        gaussian_blur(torch.zeros(4, 4), (1.0, 2.0, 3.0))
